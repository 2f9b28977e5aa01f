/** PEFT's own API against cases made with PEFT 0.21 itself, on the CPU reference (relative error ≤ 1e-5). */
import { cpuDevice } from "../../mod.ts";
import { runAllCases } from "./peft_cases.ts";

Deno.test("PEFT reference cases on the CPU: each adapter, disabled, mixed rows, weighted cat / linear", async (t) => {
  await runAllCases(cpuDevice(), 1e-5, t);
});
