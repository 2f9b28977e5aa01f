/**
 * The Tensor API: constructors (and the seeded random ones' distributions), shape validation errors,
 * reading values back, moving between devices, dispose semantics and the device's memory accounting.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  add,
  concat,
  ConfigError,
  cpuDevice,
  crossEntropy,
  type Device,
  DeviceError,
  dropout,
  DTypeError,
  full,
  linear,
  logSoftmax,
  matmul,
  mean,
  mul,
  ones,
  rand,
  randn,
  reshape,
  rmsNorm,
  ShapeError,
  slice,
  softmax,
  sub,
  type Tensor,
  tensor,
  tidy,
  zeros,
} from "../../mod.ts";

const dev = cpuDevice();
const size = (shape: readonly number[]) => shape.reduce((p, d) => p * d, 1);
const shapeArb = fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 0, maxLength: 4 });
const dtypeArb = fc.constantFrom("f32" as const, "f64" as const);

/** Sample mean, standard deviation and kurtosis (3 for a normal distribution). */
function moments(v: ArrayLike<number>): { mean: number; std: number; kurtosis: number } {
  let m = 0;
  for (let i = 0; i < v.length; i++) m += v[i];
  m /= v.length;
  let m2 = 0, m4 = 0;
  for (let i = 0; i < v.length; i++) {
    const d = (v[i] - m) ** 2;
    m2 += d;
    m4 += d * d;
  }
  m2 /= v.length;
  m4 /= v.length;
  return { mean: m, std: Math.sqrt(m2), kurtosis: m4 / (m2 * m2) };
}

// ---------------------------------------------------------------------------------------------------
// Constructors

Deno.test("tensor() keeps shape and values: f32 rounds like Math.fround, f64 is exact", () => {
  fc.assert(
    fc.property(shapeArb, fc.integer(), (shape, seed) => {
      const values = Array.from({ length: size(shape) }, (_, i) => Math.sin(seed + i) * 1e3);
      const t32 = tensor(values, shape);
      assert.deepEqual([...t32.shape], shape);
      assert.equal(t32.dtype, "f32");
      assert.equal(t32.device, dev);
      assert.equal(t32.size, size(shape));
      assert.equal(t32.ndim, shape.length);
      assert.equal(t32.requiresGrad, false);
      assert.deepEqual([...t32.dataSync()], values.map(Math.fround));
      const t64 = tensor(values, shape, { dtype: "f64" });
      assert.deepEqual([...t64.dataSync()], values);
    }),
    { numRuns: 50 },
  );
});

Deno.test("tensor() without a shape is 1-D; a 0-d tensor holds one value", () => {
  assert.deepEqual([...tensor([1, 2, 3]).shape], [3]);
  const s = tensor([7], []);
  assert.deepEqual([...s.shape], []);
  assert.equal(s.size, 1);
});

Deno.test("tensor() accepts typed arrays and requiresGrad", () => {
  const t = tensor(new Float64Array([1.5, -2]), [2], { dtype: "f64", requiresGrad: true });
  assert.ok(t.requiresGrad);
  assert.ok(t.isLeaf);
  assert.deepEqual([...t.dataSync()], [1.5, -2]);
});

Deno.test("shape is frozen: the caller's array and the tensor's shape are independent", () => {
  const shape = [2, 3];
  const t = zeros(shape);
  shape[0] = 5;
  assert.deepEqual([...t.shape], [2, 3]);
  assert.ok(Object.isFrozen(t.shape));
});

Deno.test("zeros / ones / full fill every element", () => {
  fc.assert(
    fc.property(shapeArb, dtypeArb, fc.double({ min: -1e4, max: 1e4, noNaN: true }), (shape, dtype, v) => {
      const round = dtype === "f32" ? Math.fround : (x: number) => x;
      for (
        const [t, expected] of [[zeros(shape, { dtype }), 0], [ones(shape, { dtype }), 1], [
          full(shape, v, { dtype }),
          round(v),
        ]] as const
      ) {
        assert.deepEqual([...t.shape], shape);
        assert.equal(t.dtype, dtype);
        assert.ok(t.dataSync().every((x) => x === expected));
      }
    }),
    { numRuns: 30 },
  );
});

Deno.test("randn and rand are reproducible with a seed and differ across seeds", () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 32 - 1 }), (seed) => {
      for (const make of [randn, rand]) {
        const a = make([64], { seed }).dataSync(), b = make([64], { seed }).dataSync();
        assert.deepEqual([...a], [...b]);
        const c = make([64], { seed: (seed + 1) >>> 0 }).dataSync();
        assert.notDeepEqual([...a], [...c]);
      }
    }),
    { numRuns: 20 },
  );
  // Without a seed every call draws fresh values.
  assert.notDeepEqual([...randn([16]).dataSync()], [...randn([16]).dataSync()]);
});

Deno.test("randn is standard normal: mean ≈ 0, std ≈ 1, kurtosis ≈ 3", () => {
  for (const seed of [1, 2, 3]) {
    const m = moments(randn([40_000], { seed, dtype: "f64" }).dataSync());
    assert.ok(Math.abs(m.mean) < 0.02, `mean ${m.mean}`);
    assert.ok(Math.abs(m.std - 1) < 0.02, `std ${m.std}`);
    assert.ok(Math.abs(m.kurtosis - 3) < 0.15, `kurtosis ${m.kurtosis}`);
  }
});

Deno.test("rand is uniform on [0, 1): bounds, mean ≈ 1/2, variance ≈ 1/12, flat histogram", () => {
  for (const seed of [4, 5]) {
    const v = rand([40_000], { seed, dtype: "f64" }).dataSync();
    assert.ok(v.every((x) => x >= 0 && x < 1));
    const m = moments(v);
    assert.ok(Math.abs(m.mean - 0.5) < 0.01, `mean ${m.mean}`);
    assert.ok(Math.abs(m.std ** 2 - 1 / 12) < 0.003, `variance ${m.std ** 2}`);
    const bins = new Array(10).fill(0);
    for (const x of v) bins[Math.floor(x * 10)]++;
    for (const b of bins) assert.ok(Math.abs(b - 4000) < 300, `bin count ${b}`);
  }
});

Deno.test("randn / rand honour dtype and shape", () => {
  const t = randn([2, 3], { seed: 9, dtype: "f64" });
  assert.equal(t.dtype, "f64");
  assert.deepEqual([...t.shape], [2, 3]);
  assert.ok(t.dataSync() instanceof Float64Array);
  const u = rand([4], { seed: 9, requiresGrad: true });
  assert.ok(u.requiresGrad);
});

// ---------------------------------------------------------------------------------------------------
// Validation errors

/** Asserts `fn` throws `cls` with a message containing every string in `mentions`. */
function throwsNaming(fn: () => unknown, cls: new (...a: never[]) => Error, mentions: string[]): void {
  assert.throws(fn, (e: Error) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e?.constructor?.name}: ${e?.message}`);
    for (const m of mentions) assert.ok(e.message.includes(m), `message "${e.message}" lacks "${m}"`);
    return true;
  });
}

Deno.test("constructor errors name the function and the bad shape or dtype", () => {
  throwsNaming(() => tensor([1, 2, 3], [2, 2]), ShapeError, ["tensor", "3", "[2,2]"]);
  throwsNaming(() => zeros([2, -1]), ShapeError, ["zeros", "[2,-1]"]);
  throwsNaming(() => ones([1.5]), ShapeError, ["ones", "[1.5]"]);
  throwsNaming(() => full([3, -2], 7), ShapeError, ["full", "[3,-2]"]);
  throwsNaming(() => randn([2, 0.5]), ShapeError, ["randn", "[2,0.5]"]);
  throwsNaming(() => tensor([1], [1], { dtype: "bf16" as "f32" }), DTypeError, ["tensor", "bf16"]);
});

Deno.test("non-broadcastable operands: ShapeError naming the op and both shapes", () => {
  const arb = fc.tuple(
    shapeArb,
    fc.integer({ min: 0, max: 3 }),
    fc.integer({ min: 2, max: 4 }),
    fc.integer({
      min: 1,
      max: 3,
    }),
  );
  fc.assert(
    fc.property(arb, ([shape, at, d, delta]) => {
      // Two shapes that differ in one dim where neither is 1.
      const a = [...shape.slice(0, at), d, ...shape.slice(at)];
      const b = [...a];
      b[at] = d + delta;
      throwsNaming(() => add(zeros(a), zeros(b)), ShapeError, ["add", `[${a}]`, `[${b}]`]);
    }),
    { numRuns: 30 },
  );
});

Deno.test("matmul inner-dim mismatch: ShapeError naming both shapes", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 4 }),
      fc.integer({ min: 1, max: 4 }),
      fc.integer({ min: 1, max: 3 }),
      (
        m,
        k,
        delta,
      ) => {
        throwsNaming(() => matmul(zeros([m, k]), zeros([k + delta, 2])), ShapeError, [
          "matmul",
          `[${m},${k}]`,
          `[${k + delta},2]`,
        ]);
      },
    ),
    { numRuns: 20 },
  );
});

Deno.test("reshape to a different element count: ShapeError naming both shapes", () => {
  throwsNaming(() => reshape(zeros([2, 3]), [4, 2]), ShapeError, ["reshape", "[2,3]", "[4,2]"]);
  throwsNaming(() => reshape(zeros([2, 3]), [-1, 4]), ShapeError, ["reshape", "[2,3]", "[-1,4]"]);
});

Deno.test("mixing f32 and f64 operands is a DTypeError naming both dtypes", () => {
  throwsNaming(() => add(zeros([2]), zeros([2], { dtype: "f64" })), DTypeError, ["add", "f32", "f64"]);
});

// ---------------------------------------------------------------------------------------------------
// Reading values

Deno.test("data() and dataSync() return copies: Float32Array for f32/f16, Float64Array for f64", async () => {
  const t = tensor([1, 2, 3], [3]);
  const d = await t.data();
  assert.ok(d instanceof Float32Array);
  d[0] = 99;
  assert.deepEqual([...(await t.data())], [1, 2, 3]);
  const s = t.dataSync();
  s[1] = 99;
  assert.deepEqual([...t.dataSync()], [1, 2, 3]);
  assert.ok((await tensor([1], [1], { dtype: "f64" }).data()) instanceof Float64Array);
  assert.ok(tensor([1], [1], { dtype: "f16" }).dataSync() instanceof Float32Array);
});

Deno.test("item() reads one-element tensors and refuses others with a ShapeError", async () => {
  assert.equal(await tensor([2.5], []).item(), 2.5);
  assert.equal(await tensor([-4], [1, 1]).item(), -4);
  await assert.rejects(
    tensor([1, 2], [2]).item(),
    (e: Error) => e instanceof ShapeError && /item/.test(e.message),
  );
});

Deno.test("toArray() nests values by shape", async () => {
  fc.assert(
    await fc.asyncProperty(shapeArb, async (shape) => {
      const values = Array.from({ length: size(shape) }, (_, i) => i);
      const nested = await tensor(values, shape).toArray();
      // Flattening the nesting shape by shape gives back the row-major values.
      let flat: unknown = nested;
      for (let i = 0; i < shape.length; i++) {
        assert.ok(Array.isArray(flat) || i > 0);
        flat = (flat as unknown[]).flat();
      }
      if (shape.length === 0) assert.equal(nested, 0);
      else assert.deepEqual(flat, values);
      let level: unknown = nested;
      for (const d of shape) {
        assert.ok(Array.isArray(level) && level.length === d);
        level = (level as unknown[])[0];
      }
    }),
    { numRuns: 30 },
  );
});

Deno.test("to(cpuDevice()) keeps values, shape, dtype and requiresGrad", async () => {
  const t = tensor([1, 2, 3, 4], [2, 2], { dtype: "f64", requiresGrad: true });
  const u = await t.to(cpuDevice());
  assert.equal(u.device, dev);
  assert.deepEqual([...u.shape], [2, 2]);
  assert.equal(u.dtype, "f64");
  assert.ok(u.requiresGrad);
  assert.deepEqual([...u.dataSync()], [1, 2, 3, 4]);
});

// ---------------------------------------------------------------------------------------------------
// Dispose and memory

Deno.test("dispose is idempotent and later use is a DeviceError naming the operation", async () => {
  const t = tensor([1, 2], [2]);
  assert.equal(t.isDisposed, false);
  t.dispose();
  t.dispose();
  t[Symbol.dispose]();
  assert.ok(t.isDisposed);
  const disposed = (op: string) => (e: Error) =>
    e instanceof DeviceError && e.message.includes(op) && /dispos/.test(e.message);
  assert.throws(() => t.dataSync(), disposed("dataSync"));
  await assert.rejects(t.data(), disposed("data"));
  assert.throws(() => add(t, t), disposed("add"));
  assert.throws(() => matmul(reshape(zeros([2]), [1, 2]), reshape(t, [2, 1])), disposed("reshape"));
});

Deno.test("`using` disposes a tensor at the end of its block", () => {
  let kept: Tensor;
  {
    using t = tensor([1], [1]);
    kept = t;
    assert.equal(t.isDisposed, false);
  }
  assert.ok(kept.isDisposed);
});

Deno.test("memory(): constructors add buffers and bytes by dtype; disposing returns to the start", () => {
  fc.assert(
    fc.property(shapeArb, fc.constantFrom("f32" as const, "f64" as const, "f16" as const), (shape, dtype) => {
      const start = dev.memory();
      const made = [
        zeros(shape, { dtype }),
        ones(shape, { dtype }),
        randn(shape, { seed: 1, dtype }),
        rand(shape, {
          seed: 2,
          dtype,
        }),
        tensor(new Array(size(shape)).fill(3), shape, { dtype }),
      ];
      const now = dev.memory();
      const bytesPer = dtype === "f64" ? 8 : dtype === "f32" ? 4 : 2;
      assert.equal(now.buffers - start.buffers, made.length);
      assert.equal(now.bytes - start.bytes, made.length * size(shape) * bytesPer);
      for (const t of made) t.dispose();
      assert.deepEqual(dev.memory(), start);
    }),
    { numRuns: 30 },
  );
});

Deno.test("memory(): tensors made by single-kernel ops and reads are freed by dispose", () => {
  const start = dev.memory();
  const a = randn([3, 4], { seed: 1 }), b = randn([4, 2], { seed: 2 });
  const made = [add(a, a), matmul(a, b), a.detach(), reshape(a, [4, 3])];
  a.dataSync();
  for (const t of [a, b, ...made]) t.dispose();
  assert.deepEqual(dev.memory(), start);
});

Deno.test("disposing a tensor twice never frees another tensor's memory", () => {
  const start = dev.memory();
  const a = zeros([4]);
  a.dispose();
  const b = ones([4]);
  a.dispose();
  assert.equal(dev.memory().buffers, start.buffers + 1);
  assert.deepEqual([...b.dataSync()], [1, 1, 1, 1]);
  b.dispose();
  assert.deepEqual(dev.memory(), start);
});

Deno.test("memory(): inside tidy, composite ops keep only their result; disposing it returns to the start", () => {
  const x = randn([3, 4], { seed: 1 }), w = randn([5, 4], { seed: 2 }), g = rand([4], { seed: 3 });
  const start = dev.memory();
  const ops: [string, () => Tensor][] = [
    ["scalar operands", () => sub(1, mul(add(x, 2), 0.5))],
    ["mean", () => mean(x, 0)],
    ["softmax on dim 0", () => softmax(x, 0)],
    ["logSoftmax", () => logSoftmax(x)],
    ["rmsNorm", () => rmsNorm(x, g, 1e-6)],
    ["linear", () => linear(x, w, zeros([5]))],
    ["crossEntropy", () => crossEntropy(x, [0, 1, -100])],
    ["dropout", () => dropout(x, 0.5, { seed: 4 })],
    ["concat and slice", () => slice(concat([x, x], 1), 1, 2, 6)],
  ];
  for (const [name, op] of ops) {
    const y = tidy(op);
    assert.equal(dev.memory().buffers, start.buffers + 1, `${name}: only the result is left`);
    y.dispose();
    assert.deepEqual(dev.memory(), start, name);
  }
});

Deno.test("memory(): a forward + backward step in tidy leaves only the leaf gradients", () => {
  const w = randn([4, 3], { seed: 5, requiresGrad: true }), x = randn([2, 3], { seed: 6 });
  const start = dev.memory();
  tidy(() => {
    crossEntropy(linear(x, w), [1, 3]).backward();
  });
  assert.equal(dev.memory().buffers, start.buffers + 1, "w.grad");
  tidy(() => {
    crossEntropy(linear(x, w), [0, 2]).backward();
  });
  assert.equal(dev.memory().buffers, start.buffers + 1, "accumulation reuses w.grad");
  w.grad!.dispose();
  w.grad = null;
  assert.deepEqual(dev.memory(), start);
});

Deno.test("options.device that is not a Device is a ConfigError naming the constructor", () => {
  const notADevice = { kind: "cpu" } as unknown as Device;
  assert.throws(
    () => tensor([1, 2], [2], { device: notADevice }),
    (e: unknown) => e instanceof ConfigError && /^tensor: options\.device/.test(e.message),
  );
  assert.throws(() => zeros([2], { device: notADevice }), /^ConfigError: zeros: options\.device/);
});
