/**
 * The differentiable mixed-batch op (rowRoutedLora, src/peft/lora_rows.ts) on the CPU, where it runs the
 * kernels' CPU twins: its output and every gradient against the formulas computed here in f64 on the host
 * (y = base + scale_s B_s A_s x per token, dx = scale_s A_sᵀ B_sᵀ dy, dA_s and dB_s summed over adapter s's
 * rows only, base rows none), fast-check over random row-to-adapter maps, ranks, odd sizes, tokens per row,
 * trainable or frozen parts, f32 and f16.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { cpuDevice, type DType, Linear, mul, sum, type Tensor, tensor, tidy } from "../../mod.ts";
import { rowRoutedLora } from "../../src/peft/lora_rows.ts";
import { newAdapter } from "../../src/peft/lora_linear.ts";
import type { LoraAdapter } from "../../src/peft/lora_fields.ts";
import { Rng } from "../../src/core/random.ts";
import { roundToF16 } from "../../src/core/half.ts";
import { relErr } from "../helpers.ts";

interface Case {
  k: number;
  n: number;
  chunk: number;
  ranks: number[];
  rows: number[];
  dtype: DType;
  /** Which parts need gradients: x, base, adapters' weights. */
  grads: [boolean, boolean, boolean];
  seed: number;
}

const round = (v: number, dtype: DType) => (dtype === "f16" ? roundToF16(v) : Math.fround(v));

function check(c: Case): void {
  const device = cpuDevice();
  const rng = new Rng(c.seed);
  const draw = (size: number) => Float64Array.from({ length: size }, () => round(rng.normal(), c.dtype));
  const layer = new Linear(c.k, c.n, { bias: false, device, dtype: c.dtype, seed: c.seed });
  const adapters: LoraAdapter[] = c.ranks.map((r, i) =>
    newAdapter(layer, { dim: r, alpha: 1 + i, loraDtype: c.dtype, seed: c.seed + i }, "test", false)
  );
  for (const a of adapters) {
    a.lora_A.weight.requiresGrad = c.grads[2];
    a.lora_B.weight.requiresGrad = c.grads[2];
  }
  const m = c.rows.length * c.chunk;
  const xv = draw(m * c.k), bv = draw(m * c.n), rv = draw(m * c.n);
  const shape = (last: number) => (c.chunk === 1 ? [c.rows.length, last] : [c.rows.length, c.chunk, last]);
  const x = tensor(xv, shape(c.k), { device, dtype: c.dtype, requiresGrad: c.grads[0] });
  const base = tensor(bv, shape(c.n), { device, dtype: c.dtype, requiresGrad: c.grads[1] });
  const rows = c.rows.map((r) => (r < 0 ? null : adapters[r]));
  const y = rowRoutedLora(x, base, rows, c.chunk);
  const loss = sum(mul(y, tensor(rv, shape(c.n), { device, dtype: c.dtype })));
  // (a batch of base rows only with just the adapters trainable has no graph at all)
  if (loss.requiresGrad) loss.backward();

  // The formulas, in f64 from the stored (rounded) values.
  const host = (t: Tensor) => Float64Array.from(t.dataSync());
  const A = adapters.map((a) => host(a.lora_A.weight)), B = adapters.map((a) => host(a.lora_B.weight));
  const yRef = Float64Array.from(bv), dx = new Float64Array(m * c.k);
  const dA = A.map((a) => new Float64Array(a.length)), dB = B.map((b) => new Float64Array(b.length));
  for (let tok = 0; tok < m; tok++) {
    const s = c.rows[Math.floor(tok / c.chunk)];
    if (s < 0) continue;
    const r = c.ranks[s], sc = adapters[s].scale;
    const tv = new Float64Array(r), uv = new Float64Array(r);
    for (let j = 0; j < r; j++) {
      for (let i = 0; i < c.k; i++) tv[j] += A[s][j * c.k + i] * xv[tok * c.k + i];
      for (let o = 0; o < c.n; o++) uv[j] += B[s][o * r + j] * rv[tok * c.n + o];
    }
    for (let o = 0; o < c.n; o++) {
      for (let j = 0; j < r; j++) yRef[tok * c.n + o] += sc * B[s][o * r + j] * tv[j];
    }
    for (let i = 0; i < c.k; i++) {
      for (let j = 0; j < r; j++) dx[tok * c.k + i] += sc * uv[j] * A[s][j * c.k + i];
    }
    for (let j = 0; j < r; j++) {
      for (let i = 0; i < c.k; i++) dA[s][j * c.k + i] += sc * uv[j] * xv[tok * c.k + i];
      for (let o = 0; o < c.n; o++) dB[s][o * r + j] += sc * rv[tok * c.n + o] * tv[j];
    }
  }
  const tol = c.dtype === "f16" ? 1e-2 : 1e-5;
  const close = (what: string, got: ArrayLike<number>, want: ArrayLike<number>) => {
    const e = relErr(got, want);
    assert.ok(e <= tol, `${what}: relative error ${e} > ${tol} on ${JSON.stringify(c)}`);
  };
  close("y", y.dataSync(), yRef);
  // A gradient nothing reached is null: compared as zeros.
  const grad = (t: Tensor) => t.grad?.dataSync() ?? new Float32Array(t.size);
  if (c.grads[0]) close("dx", grad(x), dx);
  else assert.equal(x.grad, null);
  if (c.grads[1]) close("dbase", grad(base), Float64Array.from(rv));
  adapters.forEach((a, s) => {
    const used = c.rows.includes(s);
    if (!c.grads[2]) {
      assert.equal(a.lora_A.weight.grad, null);
      return;
    }
    if (!used) {
      // an adapter of no row: no gradient, or an exact zero one
      for (const w of [a.lora_A.weight, a.lora_B.weight]) {
        assert.ok(w.grad === null || w.grad.dataSync().every((v) => v === 0), `adapter ${s} of no row`);
      }
      return;
    }
    close(`dA ${s}`, a.lora_A.weight.grad!.dataSync(), dA[s]);
    close(`dB ${s}`, a.lora_B.weight.grad!.dataSync(), dB[s]);
  });
}

const caseArb: fc.Arbitrary<Case> = fc.record({
  k: fc.integer({ min: 1, max: 23 }),
  n: fc.integer({ min: 1, max: 23 }),
  chunk: fc.constantFrom(1, 1, 2, 3),
  ranks: fc.array(fc.integer({ min: 1, max: 9 }), { minLength: 1, maxLength: 4 }),
  pick: fc.array(fc.integer({ min: -1, max: 3 }), { minLength: 1, maxLength: 7 }),
  dtype: fc.constantFrom<DType>("f32", "f16"),
  grads: fc.tuple(fc.boolean(), fc.boolean(), fc.boolean()),
  seed: fc.integer({ min: 0, max: 1e6 }),
}).map(({ pick, ...c }) => ({ ...c, rows: pick.map((p) => (p < 0 ? -1 : p % c.ranks.length)) }));

Deno.test("rowRoutedLora on the CPU twins: output and gradients equal the formulas over random cases", () => {
  fc.assert(fc.property(caseArb, check), { numRuns: 40 });
});

Deno.test("rowRoutedLora: every row without an adapter, one adapter on every row, rank 1, 3-D input", () => {
  check({
    k: 5,
    n: 3,
    chunk: 2,
    ranks: [2],
    rows: [-1, -1],
    dtype: "f32",
    grads: [true, true, true],
    seed: 1,
  });
  check({
    k: 7,
    n: 4,
    chunk: 3,
    ranks: [3, 1],
    rows: [1, 1, 1],
    dtype: "f32",
    grads: [true, false, true],
    seed: 2,
  });
  check({ k: 1, n: 1, chunk: 1, ranks: [1], rows: [0], dtype: "f16", grads: [false, false, true], seed: 3 });
});

Deno.test("rowRoutedLora: a backward after the forward's tidy scope freed its packed copy packs again", () => {
  const device = cpuDevice();
  const layer = new Linear(6, 5, { bias: false, device, seed: 1 });
  const adapters = [2, 3].map((r, i) => newAdapter(layer, { dim: r, seed: 4 + i }, "test", false));
  const rows = [adapters[1], null, adapters[0]];
  const grads = (scoped: boolean) => {
    for (const a of adapters) for (const w of [a.lora_A.weight, a.lora_B.weight]) w.grad = null;
    const x = tensor(Float32Array.from({ length: 18 }, (_, i) => Math.sin(i)), [3, 6], { device });
    const base = tensor(new Float32Array(15), [3, 5], { device });
    const y = scoped ? tidy(() => rowRoutedLora(x, base, rows, 1)) : rowRoutedLora(x, base, rows, 1);
    sum(mul(y, y)).backward();
    return adapters.flatMap((a) => [a.lora_A.weight.grad!.dataSync(), a.lora_B.weight.grad!.dataSync()]);
  };
  const want = grads(false), got = grads(true);
  got.forEach((g, i) => assert.deepEqual([...g], [...want[i]]));
});
