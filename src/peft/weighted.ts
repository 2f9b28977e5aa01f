/**
 * The weight arithmetic of PEFT 0.21's `add_weighted_adapter` for one layer, "cat" and "linear", as its
 * source computes it (peft/tuners/lora/model.py: `add_weighted_adapter`,
 * `_generalized_task_arithmetic_weighted_adapter`; the config side is in peft_model.ts):
 * - "cat": A' rows = [A_1 · w_1 · s_1; A_2 · w_2 · s_2; ...], B' columns = [B_1, B_2, ...], the rest of
 *   A' and B' zero (the new rank is the sum of each adapter's largest rank, so a layer where an adapter has a
 *   smaller rank, or none, leaves zero rows);
 * - "linear": with c_i = w_i · s_i, A' = Σ sign(c_i) √|c_i| · A_i and B' = Σ √|c_i| · B_i (ranks equal).
 * s_i is adapter i's scale at this layer; adapters absent from the layer are skipped, as in PEFT.
 * @module
 */
import { add, cast, concat, noGrad, scale, type Tensor, zeros } from "../tensor/mod.ts";
import { ConfigError } from "../core/errors.ts";
import type { LoraAdapter } from "./lora_fields.ts";

/** The combinations implemented here. */
export type CombinationType = "cat" | "linear";

/**
 * Overwrites `target`'s A and B (already shaped for the new rank, on the layer's device) with the
 * combination of `sources` (null where an adapter does not target this layer) under `weights`.
 * @throws {ConfigError} when no source adapter is on this layer, or "linear" meets unequal shapes
 */
export function combineAdapters(
  target: LoraAdapter,
  sources: (LoraAdapter | null)[],
  weights: number[],
  combination: CombinationType,
  where: string,
): void {
  const present = sources.flatMap((a, i) => (a === null ? [] : [{ a, w: weights[i] }]));
  if (present.length === 0) throw new ConfigError(`${where}: none of the adapters is on this layer`);
  const A = target.lora_A.weight, B = target.lora_B.weight;
  const like = (t: Tensor) => (t.dtype === A.dtype ? t : cast(t, A.dtype));
  noGrad(() => {
    if (combination === "cat") {
      const rowsA = present.map(({ a, w }) => scale(scale(like(a.lora_A.weight), w), a.scale));
      const colsB = present.map(({ a }) => like(a.lora_B.weight));
      const rank = rowsA.reduce((s, t) => s + t.shape[0], 0);
      const pad = A.shape[0] - rank;
      if (pad < 0) throw new ConfigError(`${where}: the adapters' ranks add up to ${rank} > ${A.shape[0]}`);
      const opts = { device: A.device, dtype: A.dtype };
      if (pad > 0) {
        rowsA.push(zeros([pad, A.shape[1]], opts));
        colsB.push(zeros([B.shape[0], pad], opts));
      }
      A._assign(concat(rowsA, 0));
      B._assign(concat(colsB, 1));
      return;
    }
    for (const { a } of present) {
      const sa = a.lora_A.weight.shape, sb = a.lora_B.weight.shape;
      if (sa[0] !== A.shape[0] || sb[1] !== B.shape[1]) {
        throw new ConfigError(
          `${where}: "linear" needs equal ranks, got lora_A [${sa}] for a combined rank of ${A.shape[0]}`,
        );
      }
    }
    let sumA: Tensor | null = null, sumB: Tensor | null = null;
    for (const { a, w } of present) {
      const c = w * a.scale;
      const root = Math.sqrt(Math.abs(c));
      const termA = scale(like(a.lora_A.weight), c >= 0 ? root : -root);
      const termB = scale(like(a.lora_B.weight), root);
      sumA = sumA === null ? termA : add(sumA, termA);
      sumB = sumB === null ? termB : add(sumB, termB);
    }
    A._assign(sumA!);
    B._assign(sumB!);
  });
}
