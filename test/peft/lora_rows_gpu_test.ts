/**
 * The fused mixed-batch forward (src/peft/lora_rows.ts) on WebGPU against the composed forward on the CPU
 * reference, through PeftModel's `adapterNames`: fast-check over random numbers of adapters with random
 * ranks and targets, random row-to-adapter maps with "__base__" rows, 2-D and 3-D inputs, f32 and f16.
 * Each case also checks that the fused kernel ran (a profile row for lora_rows, no per-adapter GEMMs).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  cpuDevice,
  type Device,
  type DType,
  getPeftModel,
  Linear,
  LoraConfig,
  manualSeed,
  Module,
  noGrad,
  type PeftModel,
  randn,
  type Tensor,
} from "../../mod.ts";
import { relErr } from "../helpers.ts";
import { gpuTest } from "../backend/webgpu/gpu.ts";
import { floatTypes } from "../backend/webgpu/compare.ts";

/** Two projections, the second fed by the first, so a row's adapters compound across layers. */
class TwoLayers extends Module {
  q_proj: Linear;
  v_proj: Linear;
  constructor(inF: number, mid: number, out: number, device: Device, dtype: DType) {
    super();
    this.q_proj = new Linear(inF, mid, { seed: 1, device, dtype });
    this.v_proj = new Linear(mid, out, { seed: 2, device, dtype });
  }
  override forward(x: Tensor): Tensor {
    return this.v_proj.forward(this.q_proj.forward(x));
  }
}

interface Case {
  inF: number;
  mid: number;
  out: number;
  adapters: { r: number; alpha: number; targets: string[] }[];
  rows: number[];
  tokens: number;
  dtype: "f32" | "f16";
  seed: number;
}

/** The case's model on `device` with every adapter loaded, in eval mode (same seeds on every device). */
function build(c: Case, device: Device): PeftModel {
  manualSeed(c.seed);
  const pm = getPeftModel(
    new TwoLayers(c.inF, c.mid, c.out, device, c.dtype),
    new LoraConfig({
      r: c.adapters[0].r,
      loraAlpha: c.adapters[0].alpha,
      targetModules: c.adapters[0].targets,
      initLoraWeights: false,
    }),
    { adapterName: "a0" },
  );
  c.adapters.slice(1).forEach((a, i) =>
    pm.addAdapter(
      `a${i + 1}`,
      new LoraConfig({ r: a.r, loraAlpha: a.alpha, targetModules: a.targets, initLoraWeights: false }),
    )
  );
  return pm.eval();
}

async function check(dev: Device, c: Case): Promise<void> {
  const names = c.rows.map((r) => (r < 0 ? "__base__" : `a${r}`));
  const shape = c.tokens === 0 ? [c.rows.length, c.inF] : [c.rows.length, c.tokens, c.inF];
  const run = async (device: Device, profile: boolean) => {
    const pm = build(c, device);
    const x = randn(shape, { seed: c.seed + 7, device, dtype: c.dtype });
    if (profile) device.backend.beginProfile();
    // No gradient to record: the cached forward path (the recorded one is checked in mixed_training_*).
    const y = noGrad(() => pm.forward(x, { adapterNames: names }) as Tensor);
    const values = await y.data();
    const rows = profile ? await device.backend.endProfile() : [];
    pm.unload();
    return { values, rows };
  };
  const want = await run(cpuDevice(), false);
  const got = await run(dev, true);
  const err = relErr(got.values, want.values);
  assert.ok(err <= (c.dtype === "f16" ? 1e-2 : 1e-4), `relative error ${err} on ${JSON.stringify(c)}`);
  const fused = got.rows.find((r) => r.name === "lora_rows")?.calls ?? 0;
  const routed = new Set(c.rows.filter((r) => r >= 0));
  const layersWithAdapters =
    ["q_proj", "v_proj"].filter((l) => [...routed].some((r) => c.adapters[r].targets.includes(l))).length;
  assert.equal(fused, layersWithAdapters, "one lora_rows dispatch per layer some row's adapter targets");
}

const caseArb = (dev: Device): fc.Arbitrary<Case> =>
  fc.record({
    inF: fc.integer({ min: 1, max: 70 }),
    mid: fc.integer({ min: 1, max: 70 }),
    out: fc.integer({ min: 1, max: 70 }),
    adapters: fc.array(
      fc.record({
        r: fc.oneof(fc.integer({ min: 1, max: 12 }), fc.constantFrom(8, 9, 17)),
        alpha: fc.integer({ min: 1, max: 32 }),
        targets: fc.constantFrom<string[]>(["q_proj"], ["v_proj"], ["q_proj", "v_proj"]),
      }),
      { minLength: 1, maxLength: 4 },
    ),
    pick: fc.array(fc.integer({ min: -1, max: 3 }), { minLength: 1, maxLength: 8 }),
    tokens: fc.constantFrom(0, 1, 3),
    dtype: floatTypes(dev),
    seed: fc.integer({ min: 0, max: 1e6 }),
  }).map(({ pick, ...c }) => ({ ...c, rows: pick.map((p) => (p < 0 ? -1 : p % c.adapters.length)) }));

gpuTest(
  "mixed-batch forward on WebGPU (one lora_rows dispatch per layer) equals the CPU's composed forward",
  async (dev) => {
    await fc.assert(fc.asyncProperty(caseArb(dev), (c) => check(dev, c)), { numRuns: 12 });
  },
);

gpuTest(
  "mixed-batch forward: 8 rows over 4 adapters of ranks 1, 8, 9, 16 with base rows, 3-D input",
  async (dev) => {
    await check(dev, {
      inF: 33,
      mid: 20,
      out: 17,
      adapters: [
        { r: 1, alpha: 2, targets: ["q_proj"] },
        { r: 8, alpha: 16, targets: ["q_proj", "v_proj"] },
        { r: 9, alpha: 3, targets: ["v_proj"] },
        { r: 16, alpha: 8, targets: ["q_proj", "v_proj"] },
      ],
      rows: [3, -1, 0, 1, 2, 3, -1, 1],
      tokens: 3,
      dtype: "f32",
      seed: 5,
    });
  },
);
