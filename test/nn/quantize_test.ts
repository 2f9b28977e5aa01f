/**
 * Quantized frozen bases on the CPU reference: the packing's definition (API.md's NF4 and int8 rules,
 * checked element by element against the NF4 table), quantizeLinear / quantizeModel / dequantizeLinear,
 * the bad input the issue names, and the LoRA lifecycle on quantized Linears (patch, train, merge into a
 * dequantized f32 weight, adapters saved from a dense model loaded onto a quantized one).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  adapterToFiles,
  applyLoraToLinearModules,
  ConfigError,
  cpuDevice,
  DTypeError,
  Linear,
  linear,
  loadAdapter,
  mergeAndUnload,
  Module,
  NF4_VALUES,
  patchLinearModule,
  PeftConfig,
  quantizeLinear,
  quantizeModel,
  type Tensor,
  tensor,
} from "../../mod.ts";
import { dequantizeValues, quantizeValues, quantLayout } from "../../src/backend/kernels/quantize.ts";
import { dequantizeLinear } from "../../src/nn/quantize.ts";
import { Rng } from "../../src/core/random.ts";

const host = (t: Tensor) => Float32Array.from(t.dataSync());

/** Seeded normal values with an optional outlier and zeroed blocks. */
function weights(n: number, seed: number, block: number, zeroEvery: number, outlier: boolean): Float32Array {
  const rng = new Rng(seed);
  const w = Float32Array.from({ length: n }, () => rng.normal());
  if (zeroEvery > 0) { for (let i = 0; i < n; i++) if (Math.floor(i / block) % zeroEvery === 0) w[i] = 0; }
  if (outlier) w[seed % n] = 777.25;
  return w;
}

/** The NF4 value nearest to v (ties to the lower one), by exhaustive search: the rule as API.md states it. */
function nearestNf4(v: number): number {
  let best = 0;
  for (let j = 1; j < 16; j++) {
    if (Math.abs(v - NF4_VALUES[j]) < Math.abs(v - NF4_VALUES[best])) best = j;
  }
  return NF4_VALUES[best];
}

Deno.test("NF4 packing follows the definition: nearest table value of w / absmax, per block", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 300 }),
      fc.integer({ min: 2, max: 80 }),
      fc.integer({ min: 0, max: 1 << 30 }),
      fc.constantFrom(0, 2, 3),
      fc.boolean(),
      (n, block, seed, zeroEvery, outlier) => {
        const w = weights(n, seed, block, zeroEvery, outlier);
        const layout = quantLayout("nf4", n, block);
        const packed = quantizeValues(w, layout);
        assert.equal(
          packed.length,
          Math.ceil(n / 8) + Math.ceil(n / block),
          "two codes per byte, f32 absmax",
        );
        const dq = dequantizeValues(packed, layout);
        for (let i = 0; i < n; i++) {
          const b = Math.floor(i / block);
          let absmax = 0;
          for (let j = b * block; j < Math.min(n, (b + 1) * block); j++) {
            absmax = Math.max(absmax, Math.abs(w[j]));
          }
          if (absmax === 0) {
            assert.equal(dq[i], 0, `all-zero block ${b}: element ${i}`);
            continue;
          }
          const v = Math.fround(w[i] / absmax);
          // Exhaustive nearest equals the midpoint rule except for a value exactly on a midpoint.
          const want = Math.fround(nearestNf4(v) * absmax);
          assert.equal(dq[i], want, `element ${i}: w ${w[i]}, absmax ${absmax}`);
          if (Math.abs(w[i]) === absmax) assert.equal(dq[i], w[i], `the block's absmax element is exact`);
        }
      },
    ),
    { numRuns: 60 },
  );
});

Deno.test("int8 packing follows the definition: per row s = absmax / 127, q rounded half away from zero", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 12 }),
      fc.integer({ min: 1, max: 40 }),
      fc.integer({ min: 0, max: 1 << 30 }),
      fc.boolean(),
      (rows, cols, seed, outlier) => {
        const w = weights(rows * cols, seed, cols, 3, outlier);
        const layout = quantLayout("int8", w.length, cols);
        const packed = quantizeValues(w, layout);
        assert.equal(packed.length, Math.ceil(w.length / 4) + rows, "one byte per value, f32 scale per row");
        const dq = dequantizeValues(packed, layout);
        for (let r = 0; r < rows; r++) {
          const row = w.subarray(r * cols, (r + 1) * cols);
          const s = Math.fround(Math.max(...row.map(Math.abs)) / 127);
          for (let c = 0; c < cols; c++) {
            const v = Math.fround(row[c] / s);
            const q = s === 0 ? 0 : Math.max(-127, Math.min(127, Math.sign(v) * Math.round(Math.abs(v))));
            // A code is an integer: a tiny negative value is code 0, never −0.
            assert.equal(dq[r * cols + c], Math.fround((q + 0) * s), `row ${r} col ${c}`);
          }
        }
      },
    ),
    { numRuns: 60 },
  );
});

Deno.test("quantizeLinear packs in place, frees the dense weight, freezes the layer; forward = dequantized linear", () => {
  const dev = cpuDevice();
  for (const scheme of ["nf4", "int8"] as const) {
    const l = new Linear(70, 9, { seed: 5 });
    const x = tensor(weights(3 * 70, 1, 70, 0, false), [3, 70]);
    const before = dev.memory().bytes;
    const dense = l.weight;
    assert.equal(quantizeLinear(l, { scheme, blockSize: 32 }), l);
    assert.ok(dense.isDisposed, "the dense weight is freed");
    assert.ok(
      dev.memory().bytes < before - 0.7 * 70 * 9 * 4,
      `${scheme}: ${dev.memory().bytes} vs ${before}`,
    );
    assert.deepEqual(l.quantization, { scheme, blockSize: scheme === "nf4" ? 32 : 70 });
    assert.equal(l.weight.requiresGrad, false);
    assert.equal(l.bias!.requiresGrad, false);
    const w = l.dequantizedWeight();
    assert.deepEqual(w.shape, [9, 70]);
    const y = host(l.forward(x)), ref = host(linear(x, w, l.bias));
    for (let i = 0; i < y.length; i++) assert.ok(Math.abs(y[i] - ref[i]) <= 1e-6 * (1 + Math.abs(ref[i])));
    dequantizeLinear(l);
    assert.equal(l.quantization, null);
    assert.deepEqual(host(l.weight), host(w), "dequantizeLinear keeps the dequantized values");
  }
});

Deno.test("bad input names the value: schemes, block sizes, options, adapters, double quantization, f64", () => {
  const l = () => new Linear(8, 4, { seed: 1 });
  const bad: [unknown, RegExp][] = [
    [{ scheme: "nf8" }, /unknown scheme "nf8"/],
    [{ scheme: "NF4" }, /unknown scheme "NF4"/],
    [{}, /unknown scheme undefined/],
    [{ scheme: "nf4", blockSize: 1 }, /blockSize must be an integer of at least 2, got 1/],
    [{ scheme: "nf4", blockSize: 2.5 }, /got 2\.5/],
    [{ scheme: "nf4", blockSize: "64" }, /got "64"/],
    [{ scheme: "nf4", block: 64 }, /block/],
    [null, /options must be an object/],
  ];
  for (const [opts, re] of bad) {
    const layer = l();
    const w = host(layer.weight);
    assert.throws(
      () => quantizeLinear(layer, opts as never),
      (e) => e instanceof ConfigError && re.test(e.message),
    );
    assert.equal(layer.quantization, null);
    assert.deepEqual(host(layer.weight), w, "nothing changed");
  }
  const patched = patchLinearModule(l(), { dim: 2 });
  assert.throws(() => quantizeLinear(patched, { scheme: "nf4" }), /carries a LoRA adapter/);
  const q = quantizeLinear(l(), { scheme: "int8" });
  assert.throws(() => quantizeLinear(q, { scheme: "nf4" }), /already quantized \(int8\)/);
  assert.throws(
    () => quantizeLinear(new Linear(8, 4, { materialize: false }), { scheme: "nf4" }),
    /no weight values/,
  );
  assert.throws(() => quantizeLinear(new Linear(8, 4, { dtype: "f64" }), { scheme: "nf4" }), DTypeError);
  assert.throws(() => quantizeLinear({} as Linear, { scheme: "nf4" }), /expected a Linear/);
});

/** A small model: two projections and an output head, Llama's names. */
class Tiny extends Module {
  q_proj = new Linear(16, 12, { seed: 1 });
  down_proj = new Linear(12, 16, { seed: 2, bias: false });
  lm_head = new Linear(16, 10, { seed: 3, bias: false });
  override forward(x: Tensor): Tensor {
    return this.lm_head.forward(this.down_proj.forward(this.q_proj.forward(x)));
  }
}

Deno.test("quantizeModel quantizes every Linear but lm_head and the excluded; refuses adapters before changing anything", () => {
  const m = new Tiny();
  assert.equal(quantizeModel(m, { scheme: "nf4", blockSize: 16 }), 2);
  assert.equal(m.lm_head.quantization, null);
  assert.equal(m.q_proj.quantization?.scheme, "nf4");
  const e = new Tiny();
  assert.equal(quantizeModel(e, { scheme: "int8", exclude: ["down_proj"] }), 1);
  assert.equal(e.down_proj.quantization, null);
  const withAdapter = new Tiny();
  patchLinearModule(withAdapter.down_proj, { dim: 2 });
  assert.throws(() => quantizeModel(withAdapter, { scheme: "nf4" }), /down_proj carries a LoRA adapter/);
  assert.equal(withAdapter.q_proj.quantization, null, "nothing was quantized");
  assert.throws(() => quantizeModel(new Tiny(), { scheme: "nf4", exclude: "lm_head" as never }), ConfigError);
  assert.throws(() => quantizeModel(new Tiny(), { scheme: "fp4" as never }), /unknown scheme "fp4"/);
});

/** Max relative difference of two arrays. */
function relDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

Deno.test("LoRA on a quantized Linear keeps the quantized forward, trains A and B in f32, merges into a dense f32 weight", async () => {
  for (const scheme of ["nf4", "int8"] as const) {
    for (const useFused of [true, false]) {
      const l = quantizeLinear(new Linear(20, 6, { seed: 9 }), { scheme, blockSize: 7 });
      const dq = host(l.dequantizedWeight());
      const lora = patchLinearModule(l, { dim: 3, alpha: 6, seed: 4, useFused });
      assert.equal(lora.quantization?.scheme, scheme, "still quantized");
      assert.equal(lora.lora_A.weight.dtype, "f32");
      lora.lora_B.weight._assign(tensor(weights(18, 3, 18, 0, false), [6, 3]));
      const x = tensor(weights(4 * 20, 2, 20, 0, false), [4, 20], { requiresGrad: true });
      const y = lora.forward(x);
      // The reference: a dense Linear holding the dequantized weight, the same adapter.
      const ref = new Linear(20, 6, { seed: 0 });
      ref.weight._assign(tensor(dq, [6, 20]));
      ref.bias!._assign(tensor(host(l.bias!), [6]));
      const refLora = patchLinearModule(ref, { dim: 3, alpha: 6, seed: 4 });
      refLora.lora_B.weight._assign(tensor(host(lora.lora_B.weight), [6, 3]));
      const xr = tensor(host(x), [4, 20], { requiresGrad: true });
      const yr = refLora.forward(xr);
      assert.ok(relDiff(host(y), host(yr)) < 1e-6, `${scheme} fused=${useFused} forward`);
      y.sum().backward();
      yr.sum().backward();
      assert.ok(relDiff(host(x.grad!), host(xr.grad!)) < 1e-6, "dx");
      assert.ok(relDiff(host(lora.lora_A.weight.grad!), host(refLora.lora_A.weight.grad!)) < 1e-6, "dA");
      assert.ok(relDiff(host(lora.lora_B.weight.grad!), host(refLora.lora_B.weight.grad!)) < 1e-6, "dB");
      assert.equal(lora.weight.grad, null, "the frozen base has no gradient");
      await lora.merge();
      assert.equal(lora.quantization, null, "merged into a dense weight, not re-quantized");
      assert.equal(lora.weight.dtype, "f32");
      assert.deepEqual(lora.weight.shape, [6, 20]);
      assert.ok(relDiff(host(lora.forward(x)), host(yr)) < 1e-6, "merged forward");
      await lora.unmerge();
      assert.ok(relDiff(host(lora.weight), dq) < 1e-6, "unmerge leaves the dequantized weight");
    }
  }
});

Deno.test("applyLoraToLinearModules, adapters from a dense model and mergeAndUnload on a quantized model", async () => {
  const dense = new Tiny();
  applyLoraToLinearModules(dense, new PeftConfig({ targetModules: ["*_proj"], dim: 2, alpha: 4 }));
  for (const [, m] of dense.namedModules()) {
    if (m instanceof Linear && m.inFeatures === 2) {
      m.weight._assign(tensor(weights(m.outFeatures * 2, 7, 8, 0, false), [m.outFeatures, 2]));
    }
  }
  const files = adapterToFiles(dense);
  const q = new Tiny();
  assert.equal(quantizeModel(q, { scheme: "nf4", blockSize: 16 }), 2);
  const dqQ = host(q.q_proj.dequantizedWeight()), dqD = host(q.down_proj.dequantizedWeight());
  await loadAdapter(q, files);
  assert.equal(q.q_proj.quantization?.scheme, "nf4", "loading an adapter keeps the quantized base");
  const x = tensor(weights(5 * 16, 8, 16, 0, false), [5, 16]);
  const yq = host(q.forward(x));
  // The same adapter over dense copies of the dequantized weights.
  const ref = new Tiny();
  ref.q_proj.weight._assign(tensor(dqQ, [12, 16]));
  ref.q_proj.bias!._assign(tensor(host(q.q_proj.bias!), [12]));
  ref.down_proj.weight._assign(tensor(dqD, [16, 12]));
  ref.lm_head.weight._assign(tensor(host(q.lm_head.weight), [10, 16]));
  await loadAdapter(ref, files);
  assert.ok(relDiff(yq, host(ref.forward(x))) < 1e-6);
  await mergeAndUnload(q);
  assert.equal(q.q_proj.quantization, null);
  assert.ok(q.q_proj instanceof Linear && !("lora_A" in q.q_proj));
  assert.ok(relDiff(host(q.forward(x)), yq) < 1e-5, "merged = unmerged");
});

Deno.test("f16 requests on a device without shader-f16 are DTypeErrors naming f16; the layer is unchanged", async () => {
  const { Device } = await import("../../src/backend/device.ts");
  const { createCpuBackend } = await import("../../src/backend/cpu/cpu_backend.ts");
  // The CPU reference, posing as an adapter without shader-f16.
  const cpu = createCpuBackend();
  const noF16 = new Device({ ...cpu, supportsDType: (d) => d === "f32" }, "cpu", "no-f16");
  const l = quantizeLinear(new Linear(8, 4, { device: noF16, seed: 2 }), { scheme: "nf4", blockSize: 4 });
  assert.throws(
    () => l.dequantizedWeight("f16"),
    (e) => e instanceof DTypeError && /dtype f16/.test(e.message),
  );
  assert.throws(
    () => patchLinearModule(l, { loraDtype: "f16" }),
    (e) => e instanceof DTypeError && /f16/.test(e.message),
  );
  assert.ok(!("lora_A" in l), "no adapter was installed");
  assert.equal(l.quantization?.scheme, "nf4");
});

Deno.test("PeftModel on an NF4 base: per-row adapters (and __base__ rows) keep the quantized forward", async () => {
  const { AutoModelForCausalLM, getPeftModel, LoraConfig } = await import("../../mod.ts");
  const base = await AutoModelForCausalLM.fromPretrained("examples/demo/base-model", {
    quantize: { scheme: "nf4" },
  });
  assert.equal(base.model.layers[0].self_attn.q_proj.quantization?.scheme, "nf4");
  const ids = { data: Int32Array.from({ length: 3 * 6 }, (_, i) => (i * 37) % 256), shape: [3, 6] };
  const plain = host(base.forward(ids).logits);
  // initLoraWeights false: B is not zero, so each adapter changes the logits.
  const cfg = (seedish: number) =>
    new LoraConfig({
      r: 2 + seedish,
      loraAlpha: 4,
      targetModules: ["q_proj", "v_proj"],
      initLoraWeights: false,
    });
  const pm = getPeftModel(base, cfg(0));
  pm.addAdapter("b", cfg(1));
  const rows = (names: string[]) => host(pm.forward(ids, { adapterNames: names }).logits);
  const mixed = rows(["default", "__base__", "b"]);
  const allA = rows(["default", "default", "default"]);
  const allB = rows(["b", "b", "b"]);
  const row = (v: Float32Array, i: number) => v.subarray(i * 6 * 256, (i + 1) * 6 * 256);
  assert.ok(relDiff(row(mixed, 0), row(allA, 0)) < 1e-6);
  assert.ok(relDiff(row(mixed, 1), row(plain, 1)) < 1e-6, "__base__ rows are the quantized base");
  assert.ok(relDiff(row(mixed, 2), row(allB, 2)) < 1e-6);
  assert.ok(relDiff(row(allA, 0), row(plain, 0)) > 1e-4, "the adapter changes the logits");
});
