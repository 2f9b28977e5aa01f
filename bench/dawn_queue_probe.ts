/**
 * Why a WebGPU implementation slows down when steps are queued: times one LoRA linear step (the base
 * linear's forward + backward, and the fused LoRA linear's) at several queue depths (steps recorded per
 * wait), under three submission patterns, and prints for each the host time spent recording, the time
 * waiting, the buffers and bind groups the runtime created meanwhile, and the pool's bytes. Run it with
 * `nvidia-smi --query-gpu=... -lms 100` beside it to see clocks and memory move (bench/h200_dawn_probe.sh).
 *
 * Patterns: `batched` (the runtime's default: dispatches recorded into one compute pass per batch of up
 * to 256 dispatches, submitted at the wait), `submit-per-step` (a submit after every step) and
 * `pass-per-dispatch` (every dispatch in a compute pass of its own, as a timed profile records them).
 *
 * Usage: deno run -A bench/dawn_queue_probe.ts [--dawn] [--shape M,D,r] [--depths 1,4,16] [--reps 3]
 *        [--dtype f32|f16] [--steps base,fused,composed,gemm] [--patterns ...] [--waits ...]
 * (`gemm` is the plain product of a D x D matrix with the layer's weight; `composed` the LoRA linear
 * without its fused kernels.)
 * @module
 */
import { type DType, Linear, linear, patchLinearModule, profile, randn, type Tensor, tidy } from "../mod.ts";
import type { WebGpuBackend } from "../src/backend/webgpu/backend.ts";
import { argValue, benchDevice, implementationName } from "./bench_device.ts";

const [M, D, r] = argValue(Deno.args, "--shape", "8192,4096,16").split(",").map(Number);
const depths = argValue(Deno.args, "--depths", "1,4,16").split(",").map(Number);
const reps = Number(argValue(Deno.args, "--reps", "3"));
const patterns = argValue(Deno.args, "--patterns", "batched,submit-per-step,pass-per-dispatch").split(",");
/**
 * How the host waits: `plain` (the await alone), `wake` and `throttle` (the runtime's pollMode), or
 * `timeout1` (every setImmediate call replaced by a 1 ms setTimeout during the await).
 */
const waits = argValue(Deno.args, "--waits", "plain").split(",");

const device = await benchDevice(Deno.args);
const be = device.backend as unknown as WebGpuBackend;
const rt = be.rt;
let created = 0;
const createBuffer = rt.device.createBuffer.bind(rt.device);
rt.device.createBuffer = (d: GPUBufferDescriptor) => {
  created++;
  return createBuffer(d);
};
const t00 = performance.now();
const stamp = () => `${((performance.now() - t00) / 1000).toFixed(2)}s`;
console.log(
  `# ${implementationName(Deno.args)} on ${device}, (M, D, r) = (${M}, ${D}, ${r}), ${
    new Date().toISOString()
  }`,
);

const dtype = argValue(Deno.args, "--dtype", "f32") as DType;
const which = argValue(Deno.args, "--steps", "base,fused").split(",");
const x = randn([M, D], { device, dtype, seed: 1, requiresGrad: true });
const dy = randn([M, D], { device, dtype, seed: 2 });
const base = new Linear(D, D, { device, dtype, seed: 3, bias: false });
const fused = patchLinearModule(base, { dim: r, alpha: 2 * r, seed: 4 });
fused.lora_B.weight._assign(randn([D, r], { device, dtype, seed: 5 }).scale(0.1));
fused.lora_B.weight.requiresGrad = true;
const A = fused.lora_A.weight, B = fused.lora_B.weight;
const clearGrads = () => {
  for (const t of [x, A, B]) {
    t.grad?.dispose();
    t.grad = null;
  }
};
const square = randn([D, D], { device, dtype, seed: 6 });
const allSteps: [string, () => void][] = [
  ["gemm", () => tidy(() => void linear(square, fused.weight as Tensor))],
  ["composed", () =>
    tidy(() => {
      fused.useFused = false;
      fused.forward(x).backward(dy);
      fused.useFused = true;
      clearGrads();
    })],
  ["base", () =>
    tidy(() => {
      const W = fused.weight as Tensor;
      W.requiresGrad = false;
      linear(x, W, null).backward(dy);
      clearGrads();
    })],
  ["fused", () =>
    tidy(() => {
      fused.forward(x).backward(dy);
      clearGrads();
    })],
];
const steps = allSteps.filter(([name]) => which.includes(name));

const g = globalThis as unknown as { setImmediate: (cb: () => void) => unknown };
const immediate = g.setImmediate;
for (const [name, step] of steps) {
  for (const pattern of patterns) {
    for (const wait of waits) {
      rt.passPerDispatch = pattern === "pass-per-dispatch";
      for (let i = 0; i < 3; i++) step();
      await device.backend.sync();
      for (const depth of depths) {
        for (let rep = 0; rep < reps; rep++) {
          const c0 = created, g0 = rt.bindGroupsMade;
          const t0 = performance.now();
          for (let i = 0; i < depth; i++) {
            step();
            if (pattern === "submit-per-step") rt.flush();
          }
          rt.flush();
          const t1 = performance.now();
          if (wait === "wake" || wait === "throttle") rt.pollMode = wait;
          if (wait === "timeout1") g.setImmediate = (cb: () => void) => setTimeout(cb, 1);
          await device.backend.sync();
          g.setImmediate = immediate;
          rt.pollMode = "plain";
          const t2 = performance.now();
          console.log(
            `${stamp()} ${name.padEnd(8)} ${pattern.padEnd(17)} ${wait.padEnd(8)} depth ${
              String(depth).padStart(2)
            }: ${((t2 - t0) / depth).toFixed(2).padStart(8)} ms/step (record ${
              (t1 - t0).toFixed(1)
            } ms, wait ${(t2 - t1).toFixed(1)} ms), buffers +${created - c0}, bind groups +${
              rt.bindGroupsMade - g0
            }, pooled ${(rt.pooledBytes / 2 ** 20).toFixed(0)} MiB, in use ${
              (rt.inUseBytes / 2 ** 20).toFixed(0)
            } MiB`,
          );
        }
      }
      rt.passPerDispatch = false;
      const p = await profile(step, { device, detail: true });
      console.log(
        `${stamp()} ${name} profile after ${pattern} ${wait}: ${p.totalMs.toFixed(2)} ms wall, ${
          p.measuredMs.toFixed(2)
        } ms in kernels; ${
          p.rows.slice(0, 3).map((row) => `${row.ms.toFixed(2)} ms x${row.calls} ${row.name}`).join("; ")
        }`,
      );
    }
  }
}
