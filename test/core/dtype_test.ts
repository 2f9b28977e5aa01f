/**
 * dtype rules: the one f16 rounding (src/core/half.ts) must agree exactly with a brute-force oracle that
 * picks the nearest of the two neighbouring f16 values (ties to the even pattern), f16 tensors on the CPU hold f16 values after construction and after every op,
 * and dtype sizes match what memory accounting reports.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { add, cpuDevice, exp, matmul, mul, scale, sum, tensor } from "../../mod.ts";
import { dtypeSize, roundInPlace } from "../../src/core/dtype.ts";
import { f16BitsToNumber, roundToF16 } from "../../src/core/half.ts";

/** Same value, telling −0 from +0 and NaN equal to NaN. */
const same = (a: number, b: number) => Object.is(a, b);

/** The non-negative finite f16 values in increasing order (pattern i is value i for 0..0x7bff). */
const F16_POSITIVE = Array.from({ length: 0x7c00 }, (_, h) => f16BitsToNumber(h));

/** Nearest f16 by search over all finite values; ties go to the even pattern; 65520 and up overflow. */
function oracleF16(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const a = Math.abs(x), sign = x < 0 || Object.is(x, -0) ? -1 : 1;
  if (a >= 65520) return sign * Infinity;
  let lo = 0, hi = F16_POSITIVE.length - 1; // invariant: F16_POSITIVE[lo] <= a (a < 65520 here)
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (F16_POSITIVE[mid] <= a) lo = mid;
    else hi = mid;
  }
  if (a >= F16_POSITIVE[hi]) lo = hi;
  const below = F16_POSITIVE[lo], above = lo + 1 < F16_POSITIVE.length ? F16_POSITIVE[lo + 1] : 65536;
  const dBelow = a - below, dAbove = above - a;
  const pick = dBelow < dAbove ? lo : dAbove < dBelow ? lo + 1 : (lo % 2 === 0 ? lo : lo + 1);
  const v = pick < F16_POSITIVE.length ? F16_POSITIVE[pick] : Infinity;
  return sign * v;
}

function assertAgrees(x: number): void {
  const ours = roundToF16(x), oracle = oracleF16(x);
  assert.ok(same(ours, oracle), `roundToF16(${x}): half.ts gives ${ours}, the oracle ${oracle}`);
}

Deno.test("roundToF16 agrees with the nearest-value oracle on every f16 value and the points between", () => {
  for (let h = 0; h < 0x10000; h++) {
    const v = f16BitsToNumber(h);
    assertAgrees(v);
    const next = f16BitsToNumber(h + 1);
    // Between neighbours of the same sign: the midpoint (a tie) and points just off it on both sides.
    if (
      h !== 0x7bff && h !== 0xfbff && Number.isFinite(v) && Number.isFinite(next) && (h & 0x7fff) !== 0x7fff
    ) {
      const mid = (v + next) / 2;
      for (const x of [mid, v + (next - v) * 0.25, v + (next - v) * 0.75]) assertAgrees(x);
      const eps = Math.abs(mid) * 2 ** -40 + Number.MIN_VALUE;
      assertAgrees(mid + eps);
      assertAgrees(mid - eps);
    }
  }
});

Deno.test("roundToF16 agrees with the nearest-value oracle on edge cases", () => {
  const edges = [
    0,
    -0,
    Infinity,
    -Infinity,
    NaN,
    65504, // largest f16
    65519.99,
    65520, // the tie with the next power: rounds to infinity
    -65520,
    1e300,
    -1e300,
    2 ** -14, // smallest normal
    2 ** -14 - 2 ** -25,
    2 ** -24, // smallest subnormal
    2 ** -25, // a tie between 0 and the smallest subnormal: to even (0)
    2 ** -25 + 2 ** -60,
    3 * 2 ** -25,
    2 ** -26,
    Number.MIN_VALUE,
    -Number.MIN_VALUE,
    1 + 2 ** -11, // tie between 1 and 1 + 2^-10: to even (1)
    1 + 3 * 2 ** -11, // tie: to even (1 + 2^-9)
    2047.5,
    2049,
    Math.PI,
    -Math.E,
    0.1,
  ];
  for (const x of edges) assertAgrees(x);
  assert.ok(same(roundToF16(2 ** -25), 0));
  assert.ok(same(roundToF16(-(2 ** -25)), -0));
  assert.equal(roundToF16(65520), Infinity);
  assert.equal(roundToF16(65519.99), 65504);
  assert.equal(roundToF16(1 + 2 ** -11), 1);
  assert.equal(roundToF16(1 + 3 * 2 ** -11), 1 + 2 ** -9);
});

Deno.test("roundToF16 agrees with the nearest-value oracle on random doubles of every magnitude", () => {
  fc.assert(
    fc.property(fc.double({ min: -1e6, max: 1e6 }), (x) => assertAgrees(x)),
    { numRuns: 20_000 },
  );
  fc.assert(
    fc.property(
      fc.integer({ min: -30, max: 17 }),
      fc.double({ min: 1, max: 2, noNaN: true }),
      fc.boolean(),
      (e, m, neg) => {
        assertAgrees((neg ? -1 : 1) * m * 2 ** e);
      },
    ),
    { numRuns: 20_000 },
  );
});

Deno.test("roundToF16 matches Math.f16round where the runtime has it", () => {
  const f16round = (Math as unknown as { f16round?: (x: number) => number }).f16round;
  assert.equal(typeof f16round, "function", "Deno's V8 ships Math.f16round");
  fc.assert(fc.property(fc.double(), (x) => same(roundToF16(x), f16round!(x))), { numRuns: 20_000 });
});

Deno.test("f16 tensors on the CPU hold f16 values after construction", () => {
  fc.assert(
    fc.property(
      fc.array(fc.double({ min: -7e4, max: 7e4, noNaN: true }), { minLength: 1, maxLength: 40 }),
      (v) => {
        const t = tensor(v, [v.length], { dtype: "f16" });
        assert.equal(t.dtype, "f16");
        assert.deepEqual([...t.dataSync()], v.map(roundToF16));
      },
    ),
    { numRuns: 50 },
  );
});

Deno.test("f16 ops on the CPU store f16(f32(result)): f16 values, as a GPU computing in f32 stores", () => {
  const f16Values = fc.array(fc.double({ min: -100, max: 100, noNaN: true }).map(roundToF16), {
    minLength: 1,
    maxLength: 12,
  });
  fc.assert(
    fc.property(f16Values, fc.double({ min: -3, max: 3, noNaN: true }), (v, s) => {
      const t = tensor(v, [v.length], { dtype: "f16" });
      // The documented CPU rule: the f64 result is stored as f32, then rounded to f16 (what a GPU that
      // computes in f32 stores), so the expected value is f16(f32(exact)).
      const r = (x: number) => roundToF16(Math.fround(x));
      assert.deepEqual([...add(t, t).dataSync()], v.map((a) => r(a + a)));
      assert.deepEqual([...mul(t, t).dataSync()], v.map((a) => r(a * a)));
      // Compared with ==: the sign of a zero product is not part of the contract.
      scale(t, s).dataSync().forEach((y, i) => assert.ok(y === r(v[i] * s), `${v[i]} · ${s}`));
      assert.deepEqual([...exp(scale(t, 0.01)).dataSync()], v.map((a) => r(Math.exp(r(a * 0.01)))));
      const total = sum(t).dataSync()[0];
      assert.equal(total, r(v.reduce((p, a) => p + a, 0)));
      const dot = matmul(
        tensor(v, [1, v.length], { dtype: "f16" }),
        tensor(v, [v.length, 1], { dtype: "f16" }),
      );
      assert.equal(dot.dtype, "f16");
      assert.equal(dot.dataSync()[0], r(v.reduce((p, a) => p + a * a, 0)));
    }),
    { numRuns: 50 },
  );
});

Deno.test("roundInPlace rounds f16 arrays and leaves f32 / f64 arrays alone", () => {
  const v = [0.1, 1 / 3, 70000, -(2 ** -26)];
  assert.deepEqual(
    [...roundInPlace(Float32Array.from(v), "f16")],
    Array.from(Float32Array.from(v), roundToF16),
  );
  assert.deepEqual([...roundInPlace(Float32Array.from(v), "f32")], [...Float32Array.from(v)]);
  assert.deepEqual([...roundInPlace(Float64Array.from(v), "f64")], v);
});

Deno.test("dtype sizes are 2, 4 and 8 bytes, as the device's memory accounting reports", () => {
  assert.deepEqual([dtypeSize("f16"), dtypeSize("f32"), dtypeSize("f64")], [2, 4, 8]);
  for (const dtype of ["f16", "f32", "f64"] as const) {
    const before = cpuDevice().memory().bytes;
    const t = tensor([1, 2, 3], [3], { dtype });
    assert.equal(cpuDevice().memory().bytes - before, 3 * dtypeSize(dtype));
    t.dispose();
  }
});
