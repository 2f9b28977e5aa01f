/** PeftModel.hotswapAdapter on the CPU reference (cases in hotswap_cases.ts). */
import { cpuDevice } from "../../mod.ts";
import { runHotswapCases } from "./hotswap_cases.ts";

Deno.test("hotswapAdapter on the CPU: same tensors and bytes, outputs of a fresh load, shape errors change nothing", (t) =>
  runHotswapCases(cpuDevice(), 1e-6, t));
