/**
 * Host time per op on a WebGPU device: how long recording one small dispatch takes on the CPU (bind
 * groups, uniforms, pipeline lookup, buffer pool), with the GPU work itself kept tiny (64 elements) so
 * the host cost is what is measured. Times N ops with no await in between, then awaits once and divides;
 * the median of several repetitions after a warm-up.
 *
 * Usage: deno run -A bench/op_overhead.ts [--ops 4000] [--reps 7] [--json]
 * Host time is also given without the time spent inside `queue.submit` (where a software adapter runs
 * the submitted kernels on the calling thread, so that part is GPU work, not per-op overhead).
 * Prints one line per case: backend-level (`Backend.unary`/`binary` with the result freed at once) and
 * tensor-level (`a.add(b)` inside `tidy`, autograd off).
 * @module
 */
import { noGrad, randn, tidy, webgpuDevice } from "../mod.ts";
import type { Storage } from "../src/backend/backend.ts";
import type { WebGpuBackend } from "../src/backend/webgpu/backend.ts";

const argv = Deno.args;
const num = (name: string, fallback: number) => {
  const i = argv.indexOf(name);
  return i >= 0 ? Number(argv[i + 1]) : fallback;
};
const OPS = num("--ops", 4000);
const REPS = num("--reps", 7);

const device = await webgpuDevice();
const be = device.backend;
// Time inside queue.submit, kept apart: a software adapter runs the submitted work there, on this thread.
const queue = (be as WebGpuBackend).gpuDevice.queue;
const submit = queue.submit.bind(queue);
let submitMs = 0;
queue.submit = (buffers: Iterable<GPUCommandBuffer>) => {
  const t = performance.now();
  submit(buffers);
  submitMs += performance.now() - t;
};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** µs of host time per op: `body` runs OPS times, then one sync (not counted in the host figure). */
async function time(
  body: (i: number) => void,
): Promise<{ hostUs: number; minUs: number; recordUs: number; wallUs: number }> {
  const host: number[] = [];
  const record: number[] = [];
  const wall: number[] = [];
  for (let r = 0; r < REPS + 1; r++) {
    await device.backend.sync();
    submitMs = 0;
    const t0 = performance.now();
    for (let i = 0; i < OPS; i++) body(i);
    const t1 = performance.now();
    const inSubmit = submitMs;
    await device.backend.sync();
    const t2 = performance.now();
    if (r === 0) continue; // warm-up: pipelines compiled, pool filled
    host.push(((t1 - t0) * 1000) / OPS);
    record.push(((t1 - t0 - inSubmit) * 1000) / OPS);
    wall.push(((t2 - t0) * 1000) / OPS);
  }
  // The minimum too: on a shared machine other processes only ever add time.
  return { hostUs: median(host), minUs: Math.min(...host), recordUs: median(record), wallUs: median(wall) };
}

const x = be.upload(Float32Array.from({ length: 64 }, (_, i) => i / 64), "f32");
const y = be.upload(Float32Array.from({ length: 64 }, (_, i) => 1 - i / 64), "f32");
const shape = [8, 8];

const cases: [string, (i: number) => void][] = [
  ["backend unary (exp, 64 f32)", () => {
    const o: Storage = be.unary("exp", x);
    be.free(o);
  }],
  ["backend binary (add, 8x8 f32)", () => {
    const o = be.binary("add", x, shape, y, shape, shape);
    be.free(o);
  }],
  ["backend matmul (8x8 @ 8x8 f32)", () => {
    const o = be.matmul(x, y, {
      batch: 1,
      aBatch: 1,
      bBatch: 1,
      m: 8,
      k: 8,
      n: 8,
      transA: false,
      transB: false,
    });
    be.free(o);
  }],
];
const a = randn([8, 8], { device, seed: 1 });
const b = randn([8, 8], { device, seed: 2 });
cases.push(["tensor a.add(b) in tidy, no grad", () => {
  noGrad(() => tidy(() => a.add(b)));
}]);

const results = [];
for (const [name, body] of cases) {
  const r = await time(body);
  results.push({
    kind: "op_overhead",
    case: name,
    ops: OPS,
    host_us_per_op: +r.hostUs.toFixed(2),
    host_us_per_op_min: +r.minUs.toFixed(2),
    host_us_per_op_outside_submit: +r.recordUs.toFixed(2),
    wall_us_per_op: +r.wallUs.toFixed(2),
    device: device.name,
  });
  console.log(
    argv.includes("--json")
      ? JSON.stringify(results.at(-1))
      : `${name.padEnd(40)} host ${r.hostUs.toFixed(2)} us/op (min ${r.minUs.toFixed(2)}, outside submit ${
        r.recordUs.toFixed(2)
      })   wall ${r.wallUs.toFixed(2)} us/op`,
  );
}
be.free(x);
be.free(y);
device.destroy();
