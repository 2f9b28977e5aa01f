/** PEFT's own API against cases made with PEFT 0.21 itself, on WebGPU (relative error ≤ 1e-4). */
import { gpuDevice, noGpu } from "../backend/webgpu/gpu.ts";
import { runAllCases } from "./peft_cases.ts";

Deno.test({
  name: "PEFT reference cases on WebGPU: each adapter, disabled, mixed rows, weighted cat / linear",
  ignore: noGpu,
  fn: (t) => runAllCases(gpuDevice(), 1e-4, t),
});
