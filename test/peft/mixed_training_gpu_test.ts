/**
 * Training several adapters in one mixed batch on WebGPU (cases in mixed_training_cases.ts): the fused
 * mixed-batch op with its two-dispatch backward, against training each adapter alone. f32 only: f16 is
 * covered kernel by kernel (lora_rows_props_test.ts) and by the op's CPU twins (lora_rows_test.ts), and a
 * whole f16 model compiles too many pipelines for the suite's time on a software adapter.
 */
import { gpuDevice, noGpu } from "../backend/webgpu/gpu.ts";
import { runMixedTrainingCases } from "./mixed_training_cases.ts";

Deno.test({
  name: "mixed-batch training on WebGPU: each adapter's gradient from its own rows only, f32",
  ignore: noGpu,
  fn: (t) => runMixedTrainingCases(gpuDevice(), "f32", 1e-4, t),
});
