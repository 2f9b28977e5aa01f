/** Training several adapters in one mixed batch on the CPU reference (cases in mixed_training_cases.ts). */
import { cpuDevice } from "../../mod.ts";
import { runMixedTrainingCases } from "./mixed_training_cases.ts";

Deno.test("mixed-batch training on the CPU: each adapter's gradient from its own rows only", (t) =>
  runMixedTrainingCases(cpuDevice(), "f32", 1e-5, t));
