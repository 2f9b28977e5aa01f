/**
 * The fused LoRA linear's kept intermediate t = drop_pre(x)·Aᵀ on WebGPU (src/backend/webgpu/lora.ts):
 * `loraInner` against the CPU reference over random shapes, dtypes and dropouts; the forward and the
 * backward given t compute bit for bit what they compute without it (on the GPU and on the CPU); the
 * backward given t records exactly `loraInner`'s dispatches fewer; a t of the wrong size or dtype is a
 * ShapeError or DTypeError.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { cpuDevice, type Device, DTypeError, profile, ShapeError } from "../../../mod.ts";
import type { Backend, FusedDropout, LoraForwardArgs, Storage } from "../../../src/backend/backend.ts";
import {
  assertClose,
  dim,
  type FloatType,
  floatTypes,
  fusedDropoutArb,
  onBoth,
  printWorst,
  seedArb,
  values,
} from "./compare.ts";
import { gpu, gpuTest } from "./gpu.ts";

const f = gpu === null ? fc.constant<FloatType>("f32") : floatTypes(gpu);

/** One LoRA problem: sizes, dropout, the base's and the adapters' dtypes, data seed. */
interface InnerCase {
  m: number;
  inF: number;
  outF: number;
  rank: number;
  dropout: FusedDropout | null;
  dtype: FloatType;
  adapters: FloatType;
  seed: number;
}

const caseArb: fc.Arbitrary<InnerCase> = fc.record({
  m: dim(),
  inF: dim(),
  outF: dim(),
  rank: fc.oneof(fc.integer({ min: 1, max: 64 }), fc.constantFrom(1, 7, 16, 64)),
  dropout: fusedDropoutArb,
  dtype: f,
  adapters: f,
  seed: seedArb,
});

/** The case's operands uploaded to `be` (x, W, dy in the base's dtype; A and B in the adapters'). */
function operands(be: Backend, c: InnerCase) {
  const up = (n: number, k: number, dtype: FloatType) => be.upload(values(n, c.seed + k, dtype), dtype);
  const made: Storage[] = [
    up(c.m * c.inF, 0, c.dtype),
    up(c.outF * c.inF, 1, c.dtype),
    up(c.rank * c.inF, 3, c.adapters),
    up(c.outF * c.rank, 4, c.adapters),
    up(c.m * c.outF, 5, c.dtype),
  ];
  const [x, w, a, b, dy] = made;
  const args: LoraForwardArgs = {
    x,
    w,
    a,
    b,
    bias: null,
    m: c.m,
    inFeatures: c.inF,
    outFeatures: c.outF,
    rank: c.rank,
    scale: 2,
    dropout: c.dropout,
  };
  return { args, dy, free: () => made.forEach((s) => be.free(s)) };
}

/** Host values of `storages`, freed after reading. */
async function readAll(be: Backend, storages: (Storage | null)[]): Promise<Float64Array[]> {
  const out: Float64Array[] = [];
  for (const s of storages) {
    if (s === null) continue;
    out.push(Float64Array.from(await be.read(s)));
    be.free(s);
  }
  return out;
}

/**
 * y, dA, dB (and dx) of the case on `device`, once with t computed inside each call and once with t from
 * loraInner passed to both: the two runs must agree bit for bit, and leave no storage behind.
 */
async function sameWithAndWithoutInner(device: Device, c: InnerCase, needDx: boolean): Promise<void> {
  const be = device.backend;
  const before = be.memory();
  const { args, dy, free } = operands(be, c);
  const run = async (keep: boolean) => {
    const inner = keep ? be.loraInner(args) : null;
    const y = be.loraForward({ ...args, inner });
    const g = be.loraBackward({ ...args, dy, needDx, inner });
    if (inner !== null) be.free(inner);
    return await readAll(be, [y, g.dA, g.dB, g.dx]);
  };
  const recomputed = await run(false), kept = await run(true);
  free();
  assert.deepEqual(be.memory(), before, `${device}: storages leaked`);
  const names = ["y", "dA", "dB", "dx"];
  recomputed.forEach((want, i) => {
    const got = kept[i];
    const at = want.findIndex((v, j) => !Object.is(v, got[j]));
    assert.equal(
      at,
      -1,
      `${device} ${names[i]}: element ${at} is ${got[at]} with t kept, ${want[at]} without`,
    );
  });
}

gpuTest("loraInner (t = drop_pre(x)·Aᵀ, f32) matches the CPU reference", async (dev) => {
  await fc.assert(
    fc.asyncProperty(caseArb, async (c) => {
      const r = await onBoth(dev, c.dtype, (u) => {
        const { args, free } = operands(u.be, c);
        const t = u.be.loraInner(args);
        free();
        return t;
      });
      // The GPU keeps t in f32, the CPU in f64; both accumulate the same products of the inputs.
      assertClose(`loraInner t${c.dropout ? ` drop-${c.dropout.position}` : ""}`, r.gpu[0], r.cpu[0], "f32");
    }),
    { numRuns: 40 },
  );
});

gpuTest(
  "fused LoRA forward and backward given the kept t equal them without it, bit for bit",
  async (dev) => {
    await fc.assert(
      fc.asyncProperty(caseArb, fc.boolean(), async (c, needDx) => {
        await sameWithAndWithoutInner(dev, c, needDx);
      }),
      { numRuns: 30 },
    );
  },
);

gpuTest(
  "fused LoRA with the kept t, many tokens (split-K dA/dB) with few features: bit for bit",
  async (dev) => {
    const arb = fc.record({
      m: fc.integer({ min: 200, max: 1500 }),
      inF: fc.integer({ min: 1, max: 40 }),
      outF: fc.integer({ min: 1, max: 40 }),
      rank: fc.integer({ min: 1, max: 64 }),
      dropout: fusedDropoutArb,
      dtype: f,
      adapters: f,
      seed: seedArb,
    });
    await fc.assert(fc.asyncProperty(arb, async (c) => await sameWithAndWithoutInner(dev, c, true)), {
      numRuns: 6,
    });
  },
);

Deno.test("CPU reference: fused LoRA given the kept t (f64) equals it without, bit for bit", async () => {
  const small = fc.record({
    m: fc.integer({ min: 1, max: 20 }),
    inF: fc.integer({ min: 1, max: 20 }),
    outF: fc.integer({ min: 1, max: 20 }),
    rank: fc.integer({ min: 1, max: 8 }),
    dropout: fusedDropoutArb,
    dtype: fc.constant<FloatType>("f32"),
    adapters: fc.constant<FloatType>("f32"),
    seed: seedArb,
  });
  await fc.assert(
    fc.asyncProperty(small, fc.boolean(), async (c, needDx) => {
      await sameWithAndWithoutInner(cpuDevice(), c, needDx);
    }),
    { numRuns: 40 },
  );
});

/** Kernel dispatches `fn` records on `dev` (every row of a profile). */
async function dispatches(dev: Device, fn: () => void): Promise<number> {
  const p = await profile(fn, { device: dev });
  return p.rows.reduce((s, r) => s + r.calls, 0);
}

// Shapes like the benchmark's (few tokens, deep features) and many tokens over few features (split-K).
for (
  const [name, c] of [
    ["512 tokens, 256 -> 384, rank 16", { m: 512, inF: 256, outF: 384, rank: 16 }],
    ["1500 tokens, 24 -> 40, rank 8 (split-K)", { m: 1500, inF: 24, outF: 40, rank: 8 }],
  ] as const
) {
  for (const position of ["pre", "post"] as const) {
    gpuTest(
      `fused LoRA backward given the kept t records loraInner's dispatches fewer (${name}, dropout ${position})`,
      async (dev) => {
        const be = dev.backend;
        const before = be.memory();
        const dropout = { p: 0.25, seed: 7, position };
        const { args, dy, free } = operands(be, { ...c, dropout, dtype: "f32", adapters: "f32", seed: 3 });
        let t: Storage | null = null;
        const made: Storage[] = [];
        const innerCalls = await dispatches(dev, () => void (t = be.loraInner(args)));
        const inner = t!;
        const keep = (g: { dx: Storage | null; dA: Storage; dB: Storage }) => made.push(g.dx!, g.dA, g.dB);
        const without = await dispatches(dev, () => keep(be.loraBackward({ ...args, dy, needDx: true })));
        const given = await dispatches(
          dev,
          () => keep(be.loraBackward({ ...args, dy, needDx: true, inner })),
        );
        const fwdWithout = await dispatches(dev, () => void made.push(be.loraForward(args)));
        const fwdGiven = await dispatches(dev, () => void made.push(be.loraForward({ ...args, inner })));
        assert.ok(innerCalls >= 1, `loraInner dispatched ${innerCalls}`);
        assert.equal(without - given, innerCalls, `backward: ${without} dispatches without t, ${given} with`);
        assert.equal(fwdWithout - fwdGiven, innerCalls, `forward: ${fwdWithout} without t, ${fwdGiven} with`);
        for (const s of [...made, inner]) be.free(s);
        free();
        assert.deepEqual(be.memory(), before);
      },
    );
  }
}

gpuTest("a kept t of the wrong size or dtype is a ShapeError or DTypeError naming the op", (dev) => {
  for (const device of [dev, cpuDevice()]) {
    const be = device.backend;
    const before = be.memory();
    const c: InnerCase = {
      m: 5,
      inF: 7,
      outF: 6,
      rank: 3,
      dropout: null,
      dtype: "f32",
      adapters: "f32",
      seed: 1,
    };
    const { args, dy, free } = operands(be, c);
    const short = be.fill(c.m * c.rank - 1, 0, "f32");
    // The other dtype than loraInner's own: f32 on the CPU (which keeps f64), f16 on WebGPU where it exists.
    const otherType = device.kind === "cpu" ? "f32" : dev.supportsDType("f16") ? "f16" : null;
    const other = otherType === null ? null : be.fill(c.m * c.rank, 0, otherType);
    try {
      assert.throws(
        () => be.loraForward({ ...args, inner: short }),
        (e) => e instanceof ShapeError && /loraForward/.test(e.message),
      );
      assert.throws(
        () => be.loraBackward({ ...args, dy, needDx: true, inner: short }),
        (e) => e instanceof ShapeError && /loraBackward/.test(e.message),
      );
      if (other !== null) {
        assert.throws(
          () => be.loraForward({ ...args, inner: other }),
          (e) => e instanceof DTypeError && /loraForward/.test(e.message),
        );
        assert.throws(
          () => be.loraBackward({ ...args, dy, needDx: false, inner: other }),
          (e) => e instanceof DTypeError && /loraBackward/.test(e.message),
        );
      }
      assert.throws(
        () => be.loraInner({ ...args, m: c.m + 1 }),
        (e) => e instanceof ShapeError && /loraInner/.test(e.message),
      );
    } finally {
      be.free(short);
      if (other !== null) be.free(other);
      free();
    }
    // Nothing half-made: every refusal came before an allocation.
    assert.deepEqual(be.memory(), before, `${device}`);
  }
});

Deno.test({
  name: "kept-t property errors summary",
  ignore: gpu === null,
  fn: () => printWorst("lora inner"),
});
