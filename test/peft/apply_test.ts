/**
 * `applyLoraToLinearModules`, patching a whole model as NeMo AutoModel's `apply_lora_to_linear_modules`
 * does: zero matches as an error that lists module names, only Linears patched, `lm_head` skipped under
 * matchAllLinear on a causal LM only, names unchanged after patching, base weights shared and frozen,
 * every other parameter frozen, re-applying refused.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  applyLoraToLinearModules,
  ConfigError,
  Embedding,
  isLoraLinear,
  Linear,
  LinearLoRA,
  Module,
  PeftConfig,
  RMSNorm,
  type Tensor,
} from "../../mod.ts";

// ---------------------------------------------------------------------------------------------------
// A small Llama-shaped model

class Attention extends Module {
  q_proj = new Linear(8, 8);
  k_proj = new Linear(8, 4, { bias: false });
  v_proj = new Linear(8, 4, { bias: false });
  o_proj = new Linear(8, 8, { bias: false });
}

class Mlp extends Module {
  gate_proj = new Linear(8, 16, { bias: false });
  up_proj = new Linear(8, 16, { bias: false });
  down_proj = new Linear(16, 8, { bias: false });
}

class Layer extends Module {
  self_attn = new Attention();
  mlp = new Mlp();
  input_layernorm = new RMSNorm(8);
}

class Body extends Module {
  embed_tokens = new Embedding(32, 8);
  layers: Layer[];
  norm = new RMSNorm(8);
  constructor(n: number) {
    super();
    this.layers = Array.from({ length: n }, () => new Layer());
  }
}

/** `model.*` body plus an `lm_head`; `architectures` goes into `config` like a Hugging Face model. */
class TinyLM extends Module {
  model: Body;
  lm_head = new Linear(8, 32, { bias: false });
  constructor(readonly config: { architectures?: string[] }, layers = 2) {
    super();
    this.model = new Body(layers);
  }
}

const causal = (layers = 2) => new TinyLM({ architectures: ["LlamaForCausalLM"] }, layers);
const linearNames = (m: Module) => m.namedModules().filter(([, x]) => x instanceof Linear).map(([n]) => n);
const patchedNames = (m: Module) => m.namedModules().filter(([, x]) => isLoraLinear(x)).map(([n]) => n);

// ---------------------------------------------------------------------------------------------------
// applyLoraToLinearModules

Deno.test("applyLoraToLinearModules with the defaults patches every *_proj and returns the count", () => {
  const model = causal(3);
  const n = applyLoraToLinearModules(model, new PeftConfig());
  assert.equal(n, 3 * 7);
  assert.deepEqual(patchedNames(model), linearNames(new TinyLM({}, 3)).filter((x) => x.endsWith("_proj")));
  assert.equal(isLoraLinear(model.lm_head), false);
});

Deno.test("targeting `*.layers.1.*` patches layer 1 only, not layer 10 or 11", () => {
  const model = causal(12);
  const n = applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*.layers.1.*"] }));
  assert.equal(n, 7);
  assert.ok(patchedNames(model).every((x) => x.startsWith("model.layers.1.")));
});

Deno.test("zero matches is a ConfigError listing module names, and changes nothing", () => {
  const model = causal();
  const before = model.parameters().map((p) => p.requiresGrad);
  assert.throws(
    () => applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["q_proj"] })),
    (e: Error) =>
      e instanceof ConfigError && e.message.includes("q_proj") && e.message.includes("model.embed_tokens") &&
      /model\.layers\.0/.test(e.message),
  );
  assert.deepEqual(model.parameters().map((p) => p.requiresGrad), before, "nothing frozen");
  assert.deepEqual(patchedNames(model), []);
});

Deno.test("only Linears are patched: containers and norms a pattern also names are passed over", () => {
  const model = causal();
  // `*.layers.0.*` names self_attn, mlp and input_layernorm as well as the seven projections.
  assert.equal(applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*.layers.0.*"] })), 7);
  assert.deepEqual(patchedNames(model), linearNames(causal()).filter((x) => x.startsWith("model.layers.0.")));
  // A pattern that names only non-Linear modules matches nothing.
  const other = causal();
  assert.throws(
    () =>
      applyLoraToLinearModules(other, new PeftConfig({ targetModules: ["model.norm", "*.input_layernorm"] })),
    (e: Error) => e instanceof ConfigError && e.message.includes("model.norm"),
  );
  assert.deepEqual(patchedNames(other), []);
});

Deno.test("matchAllLinear skips lm_head on a causal LM (config.architectures[0] has CausalLM) only", () => {
  const lm = causal();
  const n = applyLoraToLinearModules(lm, new PeftConfig({ matchAllLinear: true }));
  assert.equal(n, 2 * 7);
  assert.equal(isLoraLinear(lm.lm_head), false);
  for (const config of [{ architectures: ["LlamaModel"] }, {}]) {
    const other = new TinyLM(config);
    assert.equal(applyLoraToLinearModules(other, new PeftConfig({ matchAllLinear: true })), 2 * 7 + 1);
    assert.ok(isLoraLinear(other.lm_head));
  }
});

Deno.test("excludeModules patches every other Linear", () => {
  const model = causal();
  const n = applyLoraToLinearModules(model, new PeftConfig({ excludeModules: ["lm_head", "*.mlp.*"] }));
  assert.equal(n, 2 * 4);
  assert.deepEqual(patchedNames(model), linearNames(causal()).filter((x) => x.includes("self_attn")));
});

Deno.test("after patching, names are unchanged and stateDict gains exactly lora_A / lora_B per module", () => {
  fc.assert(
    fc.property(
      fc.subarray(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"], {
        minLength: 1,
      }),
      fc.integer({ min: 1, max: 4 }),
      (targets, dim) => {
        const model = causal();
        const modulesBefore = model.namedModules();
        const keysBefore = Object.keys(model.stateDict());
        const patterns = targets.map((t) => (t === "lm_head" ? t : `*.${t}`));
        applyLoraToLinearModules(model, new PeftConfig({ targetModules: patterns, dim }));
        const patched = patchedNames(model);
        // Every old module keeps its name and object; the new ones are the adapters' children.
        const after = new Map(model.namedModules());
        for (const [name, m] of modulesBefore) assert.equal(after.get(name), m, name);
        const expectedKeys = [
          ...keysBefore,
          ...patched.flatMap((p) => [`${p}.lora_A.weight`, `${p}.lora_B.weight`]),
        ];
        assert.deepEqual(Object.keys(model.stateDict()).sort(), expectedKeys.sort());
        // Within a patched module the order is weight, bias, lora_A, lora_B.
        const first = model.namedModules().find(([n]) => n === patched[0])![1];
        assert.deepEqual(Object.keys(first.stateDict()).filter((k) => k !== "bias"), [
          "weight",
          "lora_A.weight",
          "lora_B.weight",
        ]);
      },
    ),
    { numRuns: 25 },
  );
});

Deno.test("base weight and bias stay the same tensors, frozen; every other parameter is frozen too", () => {
  const model = causal();
  const q = model.model.layers[0].self_attn.q_proj;
  const [w, b] = [q.weight, q.bias as Tensor];
  const wValues = [...w.dataSync()];
  applyLoraToLinearModules(
    model,
    new PeftConfig({ targetModules: ["*.q_proj", "*.v_proj"], dim: 2, alpha: 5 }),
  );
  assert.ok(q instanceof LinearLoRA);
  assert.equal(q.weight, w);
  assert.equal(q.bias, b);
  assert.deepEqual([...q.weight.dataSync()], wValues);
  const trainable = model.namedParameters().filter(([, p]) => p.requiresGrad).map(([n]) => n);
  assert.deepEqual(
    trainable.sort(),
    ["0", "1"].flatMap((l) =>
      ["q_proj", "v_proj"].flatMap((m) =>
        ["A", "B"].map((ab) => `model.layers.${l}.self_attn.${m}.lora_${ab}.weight`)
      )
    ).sort(),
  );
});

Deno.test("adapters from applyLoraToLinearModules: scale = alpha / dim, B zero, A [dim, in], B [out, dim]", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 16 }),
      fc.double({ min: 0.5, max: 128, noNaN: true }),
      (dim, alpha) => {
        const model = causal(1);
        applyLoraToLinearModules(model, new PeftConfig({ dim, alpha, targetModules: ["*.gate_proj"] }));
        const g = model.model.layers[0].mlp.gate_proj as LinearLoRA;
        assert.equal(g.scale, alpha / dim);
        assert.equal(g.dim, dim);
        assert.deepEqual([...g.lora_A.weight.shape], [dim, 8]);
        assert.deepEqual([...g.lora_B.weight.shape], [16, dim]);
        assert.ok(g.lora_B.weight.dataSync().every((v) => v === 0));
        assert.ok(g.lora_A.weight.dataSync().some((v) => v !== 0));
        assert.ok(g.lora_A instanceof Linear && g.lora_B instanceof Linear);
        assert.equal(g.lora_A.bias, null);
        assert.equal(g.lora_B.bias, null);
      },
    ),
    { numRuns: 20 },
  );
});

Deno.test("re-applying: already adapted modules are a ConfigError before anything changes", () => {
  const model = causal();
  applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*.q_proj"] }));
  const grads = () => model.parameters().map((p) => p.requiresGrad);
  const before = grads();
  for (const targets of [["*.q_proj"], ["*.layers.0.*"]]) {
    assert.throws(
      () => applyLoraToLinearModules(model, new PeftConfig({ targetModules: targets })),
      (e: Error) => e instanceof ConfigError && /already/.test(e.message) && e.message.includes("q_proj"),
    );
    assert.deepEqual(grads(), before, "the first adapters stay trainable");
  }
  // The adapters' own lora_A / lora_B Linears are never candidates, even under matchAllLinear.
  const next = new TinyLM({});
  applyLoraToLinearModules(next, new PeftConfig({ targetModules: ["lm_head"] }));
  assert.equal(applyLoraToLinearModules(next, new PeftConfig({ excludeModules: ["lm_head"] })), 2 * 7);
  assert.ok(!isLoraLinear((next.lm_head as LinearLoRA).lora_A));
});
