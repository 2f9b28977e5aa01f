/**
 * Model-level properties of the fused training path (causalAttention + linearCrossEntropy) against the
 * composed one it replaced (eager attention with a [seq, keys] mask, the loss from whole logits): on
 * random small configs (grouped-query ratios, head widths, tied heads, Qwen3's q/k norms, padding, ignored
 * labels), the loss and every LoRA gradient agree to 1e-5 on the CPU and 1e-4 on WebGPU; and a training
 * forward that never reads its logits never makes them.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  applyLoraToLinearModules,
  cpuDevice,
  type Device,
  llamaConfig,
  LlamaForCausalLM,
  manualSeed,
  PeftConfig,
  Qwen3ForCausalLM,
  tensor,
  tidy,
} from "../../mod.ts";
import { Rng } from "../../src/core/random.ts";
import { gpu, noGpu } from "../backend/webgpu/gpu.ts";

interface Case {
  layers: number;
  kvHeads: number;
  group: number;
  headDim: number;
  vocab: number;
  batch: number;
  seq: number;
  tied: boolean;
  qwen3: boolean;
  padded: boolean;
  seed: number;
}

const caseArb: fc.Arbitrary<Case> = fc.record({
  layers: fc.integer({ min: 1, max: 2 }),
  kvHeads: fc.integer({ min: 1, max: 2 }),
  group: fc.constantFrom(1, 2, 3),
  headDim: fc.constantFrom(2, 4, 6, 8),
  vocab: fc.integer({ min: 3, max: 70 }),
  batch: fc.integer({ min: 1, max: 3 }),
  seq: fc.integer({ min: 1, max: 9 }),
  tied: fc.boolean(),
  qwen3: fc.boolean(),
  padded: fc.boolean(),
  seed: fc.integer({ min: 0, max: 1e6 }),
});

/** The model of a case with LoRA on every projection and non-zero lora_B (so lora_A's gradient is too). */
async function loraModel(c: Case, device: Device, fused: boolean): Promise<LlamaForCausalLM> {
  const heads = c.kvHeads * c.group;
  const config = llamaConfig({
    ...(c.qwen3 ? { architectures: ["Qwen3ForCausalLM"] } : {}),
    vocabSize: c.vocab,
    hiddenSize: heads * c.headDim,
    intermediateSize: 2 * heads * c.headDim + 1,
    numHiddenLayers: 1,
    numAttentionHeads: heads,
    numKeyValueHeads: c.kvHeads,
    headDim: c.headDim,
    rmsNormEps: 1e-5,
    tieWordEmbeddings: c.tied,
  });
  const Model = c.qwen3 ? Qwen3ForCausalLM : LlamaForCausalLM;
  const model = new Model(config, { device: cpuDevice(), seed: c.seed });
  manualSeed(c.seed + 1);
  applyLoraToLinearModules(model, new PeftConfig({ targetModules: ["*_proj"], dim: 2, alpha: 4 }));
  const rng = new Rng(c.seed + 2);
  for (const [name, p] of model.namedParameters()) {
    if (name.includes("lora_B")) {
      p._assign(tensor(Array.from({ length: p.size }, () => 0.5 * rng.normal()), p.shape));
    }
  }
  await model.to(device);
  model.train();
  model.attnImplementation = fused ? "fused" : "eager";
  model.fusedLoss = fused;
  return model;
}

/** Loss and LoRA gradients (by parameter name) of one training step on the case's batch. */
async function step(c: Case, device: Device, fused: boolean): Promise<Map<string, Float32Array>> {
  const model = await loraModel(c, device, fused);
  const rng = new Rng(c.seed + 3);
  const ids = Array.from(
    { length: c.batch },
    () => Array.from({ length: c.seq }, () => Math.floor(rng.uniform() * c.vocab)),
  );
  // Left padding of up to seq − 1 tokens per row (a whole padded row of queries included), labels −100
  // there and at random elsewhere, but at least one label kept.
  const pad = ids.map(() => (c.padded ? Math.floor(rng.uniform() * c.seq) : 0));
  const attentionMask = ids.map((row, b) => row.map((_, i) => (i < pad[b] ? 0 : 1)));
  const labels = ids.map((row, b) => row.map((t, i) => (i < pad[b] || rng.uniform() < 0.2 ? -100 : t)));
  labels[0][c.seq - 1] = ids[0][c.seq - 1];
  if (c.seq === 1) labels[0][0] = ids[0][0];
  const out = new Map<string, Float32Array>();
  const loss = tidy(() => {
    const { loss } = model.forward(ids, { labels, attentionMask: c.padded ? attentionMask : undefined });
    loss!.backward();
    return loss!;
  });
  out.set("loss", Float32Array.from(await loss.data()));
  loss.dispose();
  for (const [name, p] of model.namedParameters()) {
    if (p.requiresGrad) out.set(name, Float32Array.from(await p.grad!.data()));
  }
  return out;
}

function assertAgree(a: Map<string, Float32Array>, b: Map<string, Float32Array>, tol: number, what: string) {
  assert.deepEqual([...a.keys()], [...b.keys()]);
  for (const [name, x] of a) {
    const y = b.get(name)!;
    let err = 0, size = 0;
    for (let i = 0; i < x.length; i++) {
      err = Math.max(err, Math.abs(x[i] - y[i]));
      size = Math.max(size, Math.abs(y[i]));
    }
    if (Number.isNaN(y[0]) && name === "loss") continue;
    assert.ok(err <= tol * Math.max(1, size), `${what}: ${name} differs by ${err} (values up to ${size})`);
  }
}

Deno.test("the fused training step's loss and LoRA gradients equal the composed path's on the CPU (1e-5)", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb, async (c) => {
      assertAgree(await step(c, cpuDevice(), true), await step(c, cpuDevice(), false), 1e-5, "CPU");
    }),
    { numRuns: 25 },
  );
});

Deno.test({
  name: "the fused training step's loss and LoRA gradients equal the composed path's on WebGPU (1e-4)",
  ignore: noGpu,
  fn: async () => {
    await fc.assert(
      fc.asyncProperty(caseArb, async (c) => {
        assertAgree(await step(c, gpu!, true), await step(c, gpu!, false), 1e-4, "WebGPU");
      }),
      { numRuns: 6 },
    );
  },
});

Deno.test("with labels, forward runs the fused kernels and makes no logits until they are read (then as without labels)", () => {
  const c: Case = {
    layers: 1,
    kvHeads: 1,
    group: 2,
    headDim: 4,
    vocab: 50,
    batch: 2,
    seq: 5,
    tied: false,
    qwen3: false,
    padded: false,
    seed: 3,
  };
  const config = llamaConfig({
    vocabSize: 50,
    hiddenSize: 8,
    intermediateSize: 12,
    numHiddenLayers: 1,
    numAttentionHeads: 2,
    numKeyValueHeads: 1,
  });
  const model = new LlamaForCausalLM(config, { device: cpuDevice(), seed: 5 });
  const ids = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]];
  const be = cpuDevice().backend;
  const run = be.run;
  const kernels = new Set<string>();
  be.run = (record, inputs, args) => {
    kernels.add(record.name);
    return run(record, inputs, args);
  };
  try {
    model.forward(ids, { labels: ids }).loss!.dispose();
    assert.ok(kernels.has("attention_forward") && kernels.has("cross_entropy_rows"), "the fused kernels ran");
    kernels.clear();
    model.attnImplementation = "eager";
    model.fusedLoss = false;
    model.forward(ids, { labels: ids }).loss!.dispose();
    assert.ok(!kernels.has("attention_forward") && !kernels.has("cross_entropy_rows"), "the eager path ran");
    model.attnImplementation = "fused";
    model.fusedLoss = true;
  } finally {
    be.run = run;
  }
  tidy(() => {
    const before = be.memory().bytes;
    const out = model.forward(ids, { labels: ids });
    const kept = be.memory().bytes - before;
    // Whole logits would be 2 × 5 × 50 f32 = 2000 bytes on top of everything else the forward keeps.
    const logits = out.logits;
    assert.ok(be.memory().bytes - before - kept >= 2000, "the logits appear only when read");
    assert.equal(out.logits, logits, "read twice, made once");
    const plain = model.forward(ids).logits;
    assert.deepEqual(Array.from(logits.dataSync()), Array.from(plain.dataSync()));
    assert.deepEqual(logits.shape, [2, 5, 50]);
  });
});
