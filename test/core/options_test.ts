/**
 * Option validation, table-driven: every option of PeftConfig, LinearLoRA, patchLinearModule, AdamW,
 * train, generate and LlamaForCausalLM / fromPretrained given a bad value (wrong type, out of range,
 * misspelt name) is the right error class with a message naming the function and the option — thrown
 * before any work is done. (webgpuDevice's options are in webgpu_options_test.ts.)
 */
import assert from "node:assert/strict";
import {
  AdamW,
  ConfigError,
  cpuDevice,
  DeviceError,
  DTypeError,
  FormatError,
  isLoraLinear,
  Linear,
  LinearLoRA,
  llamaConfig,
  LlamaForCausalLM,
  modelToFiles,
  Module,
  patchLinearModule,
  PeftConfig,
  sum,
  type Tensor,
  tensor,
  train,
} from "../../mod.ts";

type ErrorClass = new (...args: never[]) => Error;

interface Case {
  /** The function or class whose option is bad. */
  api: string;
  /** The option (as the message must name it) and the bad value, for the test name. */
  option: string;
  value: unknown;
  run: () => unknown;
  error: ErrorClass;
}

const config = llamaConfig({
  vocabSize: 16,
  hiddenSize: 8,
  intermediateSize: 8,
  numHiddenLayers: 1,
  numAttentionHeads: 2,
  numKeyValueHeads: 1,
});
const model = new LlamaForCausalLM(config, { device: cpuDevice(), seed: 1 });
const files = await modelToFiles(model);
const checkpoint = {
  config: files["config.json"] as string,
  weights: files["model.safetensors"] as Uint8Array,
};

/** Cases for one option: each bad value must raise `error`. */
function each(
  api: string,
  option: string,
  values: unknown[],
  error: ErrorClass,
  run: (value: unknown) => unknown,
): Case[] {
  return values.map((value) => ({ api, option, value, error, run: () => run(value) }));
}

// ---------------------------------------------------------------------------------------------------
// PeftConfig

const peft = (o: Record<string, unknown>) => new PeftConfig(o as never);
const peftCases: Case[] = [
  ...each("PeftConfig", "targetModules", [5, [1], {}], ConfigError, (v) => peft({ targetModules: v })),
  ...each("PeftConfig", "excludeModules", [7, [null]], ConfigError, (v) => peft({ excludeModules: v })),
  ...each("PeftConfig", "matchAllLinear", ["yes", 1], ConfigError, (v) => peft({ matchAllLinear: v })),
  ...each("PeftConfig", "dim", [0, -2, 2.5, "8", NaN, Infinity], ConfigError, (v) => peft({ dim: v })),
  ...each("PeftConfig", "alpha", [NaN, Infinity, "32"], ConfigError, (v) => peft({ alpha: v })),
  ...each("PeftConfig", "dropout", [-0.1, 1, NaN, "0.1"], ConfigError, (v) => peft({ dropout: v })),
  ...each("PeftConfig", "dropoutPosition", ["mid", 3], ConfigError, (v) => peft({ dropoutPosition: v })),
  ...each("PeftConfig", "loraAInit", ["normal", 5], ConfigError, (v) => peft({ loraAInit: v })),
  ...each("PeftConfig", "loraDtype", ["int4", 16, {}], ConfigError, (v) => peft({ loraDtype: v })),
  ...each("PeftConfig", "useFused", ["yes", 0], ConfigError, (v) => peft({ useFused: v })),
  ...each("PeftConfig", "rank", [4], ConfigError, (v) => peft({ rank: v })),
  ...each("PeftConfig", "options", [5, "dim=4"], ConfigError, (v) => new PeftConfig(v as never)),
];

// ---------------------------------------------------------------------------------------------------
// LinearLoRA and patchLinearModule (the same options)

const loraBad: [string, unknown[]][] = [
  ["dim", [0, 2.5, "4"]],
  ["alpha", [NaN, "x"]],
  ["dropout", [1, -1, "0"]],
  ["dropoutPosition", ["mid"]],
  ["loraAInitMethod", ["normal", "xavier_uniform"]],
  ["loraDtype", ["int4", 5]],
  ["useFused", ["yes", 1]],
  ["seed", [1.5, "x", NaN]],
  ["scale", [NaN, "2", Infinity]],
  ["rank", [2]],
];
const loraCases: Case[] = [];
for (const [option, values] of loraBad) {
  loraCases.push(
    ...each(
      "LinearLoRA",
      option,
      values,
      ConfigError,
      (v) => new LinearLoRA(new Linear(4, 4), { [option]: v }),
    ),
    ...each(
      "patchLinearModule",
      option,
      values,
      ConfigError,
      (v) => patchLinearModule(new Linear(4, 4), { [option]: v }),
    ),
  );
}
loraCases.push(
  ...each("LinearLoRA", "options", [5], ConfigError, (v) => new LinearLoRA(new Linear(4, 4), v as never)),
  ...each(
    "patchLinearModule",
    "options",
    [5],
    ConfigError,
    (v) => patchLinearModule(new Linear(4, 4), v as never),
  ),
  ...each("LinearLoRA", "Linear", [{}, null], ConfigError, (v) => new LinearLoRA(v as never)),
  ...each("patchLinearModule", "Linear", [{}, null], ConfigError, (v) => patchLinearModule(v as never)),
);

// ---------------------------------------------------------------------------------------------------
// AdamW

const param = tensor([1, 2], [2], { requiresGrad: true });
const adamw = (o: Record<string, unknown>) => new AdamW([param], { lr: 0.1, ...o } as never);
const adamwCases: Case[] = [
  // An absent lr (undefined) takes torch's default 1e-3: test/optim/adamw_default_lr_test.ts checks that.
  ...each("AdamW", "lr", [-1, NaN, "0.1", Infinity, null], ConfigError, (v) => adamw({ lr: v })),
  ...each(
    "AdamW",
    "betas",
    [[0.9], [1, 0.9], "x", [-0.1, 0.9], [0.9, NaN]],
    ConfigError,
    (v) => adamw({ betas: v }),
  ),
  ...each("AdamW", "eps", [-1, NaN, Infinity, "1e-8"], ConfigError, (v) => adamw({ eps: v })),
  ...each("AdamW", "weightDecay", [-1, NaN, Infinity, "0"], ConfigError, (v) => adamw({ weightDecay: v })),
  ...each("AdamW", "weight_decay", [0], ConfigError, (v) => adamw({ weight_decay: v })),
  ...each("AdamW", "options", [5], ConfigError, (v) => new AdamW([param], v as never)),
  ...each("AdamW", "params", [null, 5], ConfigError, (v) => new AdamW(v as never, { lr: 0.1 })),
  ...each("AdamW", "params[1]", [[param, 2]], ConfigError, (v) => new AdamW(v as never, { lr: 0.1 })),
  ...each("AdamW", "empty", [[]], ConfigError, (v) => new AdamW(v as never, { lr: 0.1 })),
  ...each(
    "AdamW",
    "more than once",
    [[param, param]],
    ConfigError,
    (v) => new AdamW(v as never, { lr: 0.1 }),
  ),
];

// ---------------------------------------------------------------------------------------------------
// train: a bad option must fail before the first forward

/** A model that counts its forwards, so a test can tell that no step ran. */
class Counting extends Module {
  w: Tensor = tensor([1, -2], [2], { requiresGrad: true });
  forwards = 0;
  override forward() {
    this.forwards++;
    return { loss: sum(this.w.mul(this.w)) };
  }
}
const counting = new Counting();
const trainBase = {
  model: counting,
  optimizer: new AdamW([counting.w], { lr: 0.1 }),
  batches: [{ inputIds: [[1]] }],
  steps: 3,
};
const trainWith = (o: Record<string, unknown>) => train({ ...trainBase, ...o } as never);
const trainCases: Case[] = [
  ...each("train", "model", [null, {}, 5], ConfigError, (v) => trainWith({ model: v })),
  ...each("train", "optimizer", [null, {}], ConfigError, (v) => trainWith({ optimizer: v })),
  ...each("train", "batches", [[], null, "x"], ConfigError, (v) => trainWith({ batches: v })),
  ...each("train", "steps", [-1, 1.5, "3", NaN], ConfigError, (v) => trainWith({ steps: v })),
  ...each("train", "logEvery", [0, 1.5, "2"], ConfigError, (v) => trainWith({ logEvery: v })),
  ...each("train", "onProgress", ["x", 5], ConfigError, (v) => trainWith({ onProgress: v })),
  ...each("train", "scheduler", [{}, 5, { step() {} }], ConfigError, (v) => trainWith({ scheduler: v })),
  ...each("train", "clipNorm", [0, -1, NaN, "1"], ConfigError, (v) => trainWith({ clipNorm: v })),
  ...each("train", "checkpointDir", [5, ""], ConfigError, (v) => trainWith({ checkpointDir: v })),
  ...each("train", "resumeFrom", [5, ""], ConfigError, (v) => trainWith({ resumeFrom: v })),
  ...each("train", "skipNonFinite", ["yes", 1], ConfigError, (v) => trainWith({ skipNonFinite: v })),
  ...each("train", "log_every", [1], ConfigError, (v) => trainWith({ log_every: v })),
  ...each("train", "options", [null, 5], ConfigError, (v) => train(v as never)),
];

// ---------------------------------------------------------------------------------------------------
// generate

const gen = (o: Record<string, unknown>) => model.generate([[1, 2]], { maxNewTokens: 1, ...o } as never);
const sampled = (o: Record<string, unknown>) => gen({ greedy: false, ...o });
const generateCases: Case[] = [
  ...each(
    "generate",
    "maxNewTokens",
    [-1, 1.5, "2", undefined],
    ConfigError,
    (v) => gen({ maxNewTokens: v }),
  ),
  ...each("generate", "greedy", ["no", 0], ConfigError, (v) => gen({ greedy: v })),
  ...each("generate", "temperature", [0, -1, NaN, "1"], ConfigError, (v) => sampled({ temperature: v })),
  ...each("generate", "topK", [0, 1.5, -1], ConfigError, (v) => sampled({ topK: v })),
  ...each("generate", "topP", [0, 1.5, NaN], ConfigError, (v) => sampled({ topP: v })),
  ...each("generate", "seed", [1.5, "x"], ConfigError, (v) => sampled({ seed: v })),
  ...each("generate", "eosTokenId", [-1, 16, 1.5, [1, 99]], ConfigError, (v) => gen({ eosTokenId: v })),
  // Sampling settings without greedy: false would be ignored silently.
  ...each("generate", "greedy", [0.7], ConfigError, (v) => gen({ temperature: v })),
  ...each("generate", "max_new_tokens", [3], ConfigError, (v) => gen({ max_new_tokens: v })),
  ...each("generate", "options", [undefined, 5], ConfigError, (v) => model.generate([[1, 2]], v as never)),
];

// ---------------------------------------------------------------------------------------------------
// LlamaForCausalLM and fromPretrained

const fromPretrainedCases: Case[] = [];
for (
  const [api, make] of [
    ["LlamaForCausalLM", (o: unknown) => new LlamaForCausalLM(config, o as never)],
    [
      "LlamaForCausalLM.fromPretrained",
      (o: unknown) => LlamaForCausalLM.fromPretrained(checkpoint, o as never),
    ],
  ] as const
) {
  fromPretrainedCases.push(
    ...each(api, "device", ["gpu", {}, 1], DeviceError, (v) => make({ device: v })),
    ...each(api, "dtype", ["int8", "float16", 16], DTypeError, (v) => make({ dtype: v })),
    ...each(api, "seed", ["x", 1.5], ConfigError, (v) => make({ seed: v })),
    ...each(api, "materialize", ["no"], ConfigError, (v) => make({ materialize: v })),
    ...each(api, "revision", ["main"], ConfigError, (v) => make({ revision: v })),
    ...each(api, "options", [5], ConfigError, (v) => make(v)),
  );
}
fromPretrainedCases.push(
  ...each(
    "LlamaForCausalLM.fromPretrained",
    "source",
    [5, null, { config: {} }],
    ConfigError,
    (v) => LlamaForCausalLM.fromPretrained(v as never),
  ),
  ...each(
    "LlamaForCausalLM.fromPretrained",
    "weights",
    ["x", []],
    FormatError,
    (v) => LlamaForCausalLM.fromPretrained({ config: checkpoint.config, weights: v as never }),
  ),
  // Options are checked before the directory is even looked at.
  ...each(
    "LlamaForCausalLM.fromPretrained",
    "dtype",
    ["int8"],
    DTypeError,
    (v) => LlamaForCausalLM.fromPretrained("/nonexistent/checkpoint", { dtype: v as never }),
  ),
);

const allCases = [
  ...peftCases,
  ...loraCases,
  ...adamwCases,
  ...trainCases,
  ...generateCases,
  ...fromPretrainedCases,
];

/** Runs a case, sync or async, and returns what it threw (or null). */
async function thrown(c: Case): Promise<unknown> {
  try {
    await c.run();
    return null;
  } catch (e) {
    return e;
  }
}

const shown = (v: unknown) => (typeof v === "number" ? String(v) : JSON.stringify(v) ?? String(v));

for (const [api, cases] of Object.entries(Object.groupBy(allCases, (c) => c.api))) {
  Deno.test(`options: ${api} — each bad value is the right error class naming ${api} and the option`, async () => {
    const failures: string[] = [];
    for (const c of cases!) {
      const e = await thrown(c);
      const what = `${c.option} = ${shown(c.value)}`;
      if (!(e instanceof c.error)) {
        failures.push(`${what}: expected ${c.error.name}, got ${e === null ? "no error" : `${e}`}`);
        continue;
      }
      const msg = e.message;
      const apiName = api.split(".").at(-1)!;
      for (const m of [apiName, c.option]) {
        if (!msg.includes(m)) failures.push(`${what}: message lacks ${JSON.stringify(m)}: ${msg}`);
      }
    }
    assert.deepEqual(failures, [], failures.join("\n"));
  });
}

Deno.test("options: the PeftConfig table covers every option toDict() lists", () => {
  const covered = new Set(peftCases.map((c) => c.option));
  for (const key of Object.keys(new PeftConfig().toDict())) {
    assert.ok(covered.has(key), `no bad-value case for ${key}`);
  }
});

Deno.test("options: a bad train() option fails before the first forward, however late it would be used", async () => {
  assert.ok(trainCases.length > 20);
  assert.equal(counting.forwards, 0, "no case ran a training step");
  const w = Array.from(await counting.w.data());
  assert.deepEqual(w, [1, -2]);
});

Deno.test("options: a failed patchLinearModule leaves the Linear untouched (not frozen, not patched)", () => {
  for (const bad of [{ dim: 0 }, { loraDtype: "int4" }, { seed: "x" }, { useFused: "yes" }]) {
    const layer = new Linear(4, 3, { seed: 2 });
    assert.throws(() => patchLinearModule(layer, bad as never), ConfigError);
    assert.equal(isLoraLinear(layer), false, `${JSON.stringify(bad)} left a half-patched layer`);
    assert.ok(layer.weight.requiresGrad && layer.bias!.requiresGrad, "the base weights stay trainable");
    assert.equal(patchLinearModule(layer, { dim: 2 }).dim, 2, "the layer can still be patched");
  }
  const shared = new Linear(4, 3, { seed: 3 });
  assert.throws(() => new LinearLoRA(shared, { loraDtype: "int4" } as never), ConfigError);
  assert.ok(shared.weight.requiresGrad, "a failed LinearLoRA does not freeze the Linear it would wrap");
});

Deno.test("options: valid values at the edges are accepted", () => {
  assert.equal(new PeftConfig({ dropout: 0, alpha: -4, dim: 1 }).dim, 1);
  assert.equal(new PeftConfig(undefined).dim, 8);
  assert.equal(new AdamW([param], { lr: 0, eps: 0, weightDecay: 0, betas: [0, 0.999999] }).lr, 0);
  assert.equal(patchLinearModule(new Linear(2, 2), { seed: -5, useFused: false }).useFused, false);
});

Deno.test(`options: ${allCases.length} bad values tried across the table`, () => {
  const perApi = Object.entries(Object.groupBy(allCases, (c) => c.api)).map(([api, cs]) =>
    `${api} ${cs!.length}`
  );
  console.log(`option cases: ${allCases.length} (${perApi.join(", ")})`);
  assert.ok(allCases.length >= 150);
});
