/** PeftModel.hotswapAdapter on WebGPU (cases in hotswap_cases.ts). */
import { gpuDevice, noGpu } from "../backend/webgpu/gpu.ts";
import { runHotswapCases } from "./hotswap_cases.ts";

Deno.test({
  name:
    "hotswapAdapter on WebGPU: same tensors and bytes, outputs of a fresh load, shape errors change nothing",
  ignore: noGpu,
  fn: (t) => runHotswapCases(gpuDevice(), 1e-4, t),
});
