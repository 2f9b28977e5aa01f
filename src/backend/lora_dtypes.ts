/**
 * The dtype rule of the fused LoRA ops, shared by both backends: x, the weight, the bias and dy share the
 * base dtype; lora_A and lora_B share the adapter dtype, which may differ (f32 adapters over an f16 base:
 * mixed precision, every product accumulated in f32 and dA / dB returned in the adapter dtype).
 * @module
 */
import { DTypeError } from "../core/errors.ts";
import type { LoraBackwardArgs, LoraForwardArgs } from "./backend.ts";

/** Throws a DTypeError naming `op` when lora_A and lora_B have different dtypes. */
export function checkLoraDTypes(op: string, args: LoraForwardArgs | LoraBackwardArgs): void {
  if (args.a.dtype !== args.b.dtype) {
    throw new DTypeError(`${op}: lora_A is ${args.a.dtype} but lora_B is ${args.b.dtype}`);
  }
}
