/**
 * Causal attention kernels on a WebGPU device (src/backend/kernels/attention.ts): the forward and the
 * forward + backward (dq, then dk/dv) at model shapes, f32 and f16, timed as n and 2n iterations recorded
 * back to back with one wait at the end each, the difference over n (the wait alone costs about 11 ms in
 * Deno and drops out), the median of the repetitions; plus each kernel's GPU time from one profiled run
 * of 3 forward + backward iterations (timestamps where the adapter has them). TFLOP/s count causal FLOPs: the forward
 * 2 · B · H · T² · D (two T × T × D products, half of them masked), the backward 2.5 times that.
 *
 * Usage: deno run -A bench/attention_bench.ts [--quick] [--rows] [--variants] [--dtype f32|f16|both]
 *          [--shapes main|all] [--reps 5] [--dawn]
 *   --rows      also time the one-workgroup-per-row kernels (the schedule before the tiled one)
 *   --variants  also time the tile variants below at the first shape (--variants-at I: shape I of the
 *               list; --variants-dtype f32|f16: that type only)
 *   --quick     tiny shapes (for the software adapter and CI)
 * Each kernel is run on the backend directly (no autograd), on random inputs of the call's shapes.
 * @module
 */
import { profile } from "../mod.ts";
import type { Storage } from "../src/backend/backend.ts";
import {
  ATTENTION_BACKWARD_KV,
  ATTENTION_BACKWARD_KV_ROWS,
  ATTENTION_BACKWARD_Q,
  ATTENTION_BACKWARD_Q_ROWS,
  ATTENTION_FORWARD,
  ATTENTION_FORWARD_ROWS,
  type AttentionTiles,
  defaultTiles,
  type KeyTile,
  type QueryTile,
  type TiledAttentionArgs,
} from "../src/backend/kernels/attention.ts";
import type { KernelRecord } from "../src/backend/kernels/record.ts";
import { argValue, benchDevice, implementationName } from "./bench_device.ts";

const argv = Deno.args;
const quick = argv.includes("--quick");
const REPS = Number(argValue(argv, "--reps", quick ? "3" : "5"));
const dtypeArg = argValue(argv, "--dtype", "both");

interface Shape {
  name: string;
  batch: number;
  heads: number;
  kvHeads: number;
  seq: number;
  dim: number;
}

const SHAPES: Shape[] = quick ? [{ name: "quick", batch: 1, heads: 3, kvHeads: 1, seq: 64, dim: 16 }] : [
  { name: "SmolLM2-135M 8x512", batch: 8, heads: 9, kvHeads: 3, seq: 512, dim: 64 },
  { name: "SmolLM2-135M 1x2048", batch: 1, heads: 9, kvHeads: 3, seq: 2048, dim: 64 },
  { name: "Llama-3.2-1B 4x512", batch: 4, heads: 32, kvHeads: 8, seq: 512, dim: 64 },
];
const shapes = argValue(argv, "--shapes", "all") === "main" ? SHAPES.slice(0, 1) : SHAPES;

const device = await benchDevice(argv);
const be = device.backend;
const dtypes = (dtypeArg === "both" ? ["f32", "f16"] : [dtypeArg]).filter((d) =>
  be.supportsDType(d as "f32" | "f16")
) as ("f32" | "f16")[];

/** One schedule: the three records and the tiles they run with. */
interface Schedule {
  label: string;
  forward: KernelRecord<TiledAttentionArgs>;
  backwardQ: KernelRecord<TiledAttentionArgs>;
  backwardKV: KernelRecord<TiledAttentionArgs>;
  tiles?: AttentionTiles;
  workgroupBytes?: number;
}

const tiled = (label: string, tiles?: AttentionTiles, workgroupBytes?: number): Schedule => ({
  label,
  forward: ATTENTION_FORWARD,
  backwardQ: ATTENTION_BACKWARD_Q,
  backwardKV: ATTENTION_BACKWARD_KV,
  tiles,
  workgroupBytes,
});
const ROWS: Schedule = {
  label: "rows (before)",
  forward: ATTENTION_FORWARD_ROWS,
  backwardQ: ATTENTION_BACKWARD_Q_ROWS,
  backwardKV: ATTENTION_BACKWARD_KV_ROWS,
};

const qt = (BR: number, KS: number, BC: number): QueryTile => ({ BR, KS, BC });
const kt = (BC: number, KS: number, BQ: number): KeyTile => ({ BC, KS, BQ });
/** Query-side variants (forward and dq alike) and key-side ones, paired up by index. */
const QUERY_VARIANTS = [
  qt(64, 1, 16),
  qt(32, 2, 16),
  qt(64, 4, 16),
  qt(128, 1, 16),
  qt(32, 4, 16),
  qt(64, 2, 8),
];
const KEY_VARIANTS = [kt(32, 2, 8), kt(16, 4, 8), kt(32, 8, 8), kt(16, 8, 8), kt(32, 2, 4), kt(16, 2, 8)];
/** Tiles past 16 KiB of workgroup memory (timed with the H200's 48 KiB allowed). */
const BIG_QUERY_VARIANTS = [qt(64, 2, 32), qt(128, 2, 32), qt(64, 4, 32)];
const BIG_KEY_VARIANTS = [kt(64, 4, 8), kt(64, 2, 16), kt(32, 4, 16)];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function randomStorage(n: number, dtype: "f32" | "f16", seed: number): Storage {
  const a = new Float32Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    a[i] = (x / 4294967296 - 0.5) * 2;
  }
  return be.upload(a, dtype);
}

/** ms of `n` iterations of `step` recorded back to back, with the one wait at the end. */
async function run(step: () => void, n: number): Promise<number> {
  const t = performance.now();
  for (let i = 0; i < n; i++) step();
  await be.sync();
  return performance.now() - t;
}

/**
 * ms per iteration of `step`: the median over REPS of (time of 2n iterations − time of n) / n, so the
 * wait's fixed cost (about 11 ms in Deno) drops out; n is chosen for at least ~50 ms of work.
 */
async function time(step: () => void): Promise<number> {
  await run(step, 1); // pipelines compiled, pools filled
  let n = 2;
  while (n < 1024 && (await run(step, 2 * n)) - (await run(step, n)) < 50) n *= 2;
  const out: number[] = [];
  for (let r = 0; r < REPS; r++) {
    const one = await run(step, n), two = await run(step, 2 * n);
    out.push((two - one) / n);
  }
  return median(out);
}

const fmt = (ms: number) => ms.toFixed(3).padStart(9);
const tflops = (flop: number, ms: number) => (flop / (ms * 1e-3) / 1e12).toFixed(3).padStart(7);

console.log(`attention_bench on ${be.description} (${implementationName(argv)}), reps ${REPS}`);
// Most wanted first (a time limit may cut the run): the defaults everywhere, the variants, the old kernels.
const jobs: [Shape, "f32" | "f16", Schedule][] = [];
for (const s of shapes) {
  for (const dtype of dtypes) {
    jobs.push([s, dtype, tiled(`tiled default ${JSON.stringify(defaultTiles(s.dim))}`)]);
  }
}
if (argv.includes("--variants")) {
  const at = SHAPES[Number(argValue(argv, "--variants-at", "0"))] ?? shapes[0];
  const only = argValue(argv, "--variants-dtype", "");
  for (const dtype of dtypes.filter((d) => only === "" || d === only)) {
    QUERY_VARIANTS.forEach((t, i) =>
      jobs.push([
        at,
        dtype,
        tiled(`tiled q ${JSON.stringify(t)} kv ${JSON.stringify(KEY_VARIANTS[i])}`, {
          forward: t,
          backwardQ: t,
          backwardKV: KEY_VARIANTS[i],
        }),
      ])
    );
    BIG_QUERY_VARIANTS.forEach((t, i) =>
      jobs.push([
        at,
        dtype,
        tiled(`tiled 48K q ${JSON.stringify(t)} kv ${JSON.stringify(BIG_KEY_VARIANTS[i])}`, {
          forward: t,
          backwardQ: t,
          backwardKV: BIG_KEY_VARIANTS[i],
        }, 49152),
      ])
    );
  }
}
if (argv.includes("--rows")) {
  for (const s of shapes) {
    for (const dtype of dtypes) jobs.push([s, dtype, ROWS]);
  }
}

for (const [s, dtype, sch] of jobs) {
  const keys = s.seq;
  const fwdFlop = 2 * s.batch * s.heads * s.seq * s.seq * s.dim;
  const nq = s.batch * s.heads * s.seq * s.dim, nkv = s.batch * s.kvHeads * keys * s.dim;
  const q = randomStorage(nq, dtype, 1), k = randomStorage(nkv, dtype, 2), v = randomStorage(nkv, dtype, 3);
  const dout = randomStorage(nq, dtype, 4);
  const args: TiledAttentionArgs = {
    batch: s.batch,
    heads: s.heads,
    kvHeads: s.kvHeads,
    seq: s.seq,
    keys,
    dim: s.dim,
    scale: 1 / Math.sqrt(s.dim),
    window: 0,
    keyMask: null,
    tiles: sch.tiles,
    workgroupBytes: sch.workgroupBytes,
  };
  try {
    const [o0, l0] = be.run(sch.forward, [q, k, v], args);
    const forward = () => {
      const [o, l] = be.run(sch.forward, [q, k, v], args);
      be.free(o);
      be.free(l);
    };
    const backward = () => {
      const [dq, delta] = be.run(sch.backwardQ, [q, k, v, o0, dout, l0], args);
      const [dk, dv] = be.run(sch.backwardKV, [q, k, v, dout, l0, delta], args);
      for (const x of [dq, delta, dk, dv]) be.free(x);
    };
    const fMs = await time(forward);
    const fbMs = await time(() => {
      forward();
      backward();
    });
    const p = await profile(() => {
      for (let i = 0; i < 3; i++) {
        forward();
        backward();
      }
    }, { device });
    const per = p.rows.map((r) => `${r.name} ${(r.ms / r.calls).toFixed(3)}`).join(", ");
    console.log(
      `${s.name.padEnd(20)} ${dtype} ${sch.label}\n    forward ${fmt(fMs)} ms ${
        tflops(fwdFlop, fMs)
      } TFLOP/s` +
        ` | fwd+bwd ${fmt(fbMs)} ms ${tflops(3.5 * fwdFlop, fbMs)} TFLOP/s | per call (${p.timing}): ${per}`,
    );
    be.free(o0);
    be.free(l0);
  } catch (e) {
    console.log(`${s.name.padEnd(20)} ${dtype} ${sch.label}: FAILED ${(e as Error).message}`);
  }
  for (const x of [q, k, v, dout]) be.free(x);
}
