/**
 * Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_: every gradient is scaled by
 * min(1, maxNorm / (total + 1e-6)). Fused and on the device: the gradients of each dtype are packed into
 * one array (buffer copies), one `sum_squares` kernel reduces each array, one `clip_coef` kernel sums the
 * partials into the norm and the factor, and one `scale_by` kernel per dtype scales the packed gradients
 * by that factor, read on the device (src/backend/kernels/grad_norm.ts). Nothing is read back, so there
 * is no wait per step: the norm comes back as a 0-d tensor to read whenever convenient.
 * @module
 */
import { fromStorage, type Tensor } from "../tensor/mod.ts";
import type { Storage } from "../backend/backend.ts";
import type { DType } from "../core/dtype.ts";
import { CLIP_COEF, SCALE_BY, SUM_SQUARES } from "../backend/kernels/grad_norm.ts";
import { packAlignment } from "../backend/packing.ts";
import { ConfigError, DeviceError } from "../core/errors.ts";

/** Element offsets of consecutive segments of `sizes`, each aligned for word copies; and the total. */
function packLayout(sizes: readonly number[], dtype: DType): { offsets: number[]; total: number } {
  const align = packAlignment(dtype);
  const offsets: number[] = [];
  let total = 0;
  for (const n of sizes) {
    const o = Math.ceil(total / align) * align;
    offsets.push(o);
    total = o + n;
  }
  return { offsets, total };
}

/**
 * Scales the gradients of `params` in place so their joint L2 norm is at most `maxNorm`; returns the
 * norm before clipping as a 0-d f32 tensor (null when no parameter has a gradient). Parameters without a
 * gradient are skipped. Every gradient must be on one device.
 */
export function clipGradNorm(params: Iterable<Tensor>, maxNorm: number): Tensor | null {
  if (typeof maxNorm !== "number" || !(maxNorm > 0)) {
    throw new ConfigError(`clipGradNorm: maxNorm must be a positive number, got ${maxNorm}`);
  }
  const grads = [...params].flatMap((p) => p.grad === null ? [] : [p.grad]);
  if (grads.length === 0) return null;
  const device = grads[0].device;
  grads.forEach((g, i) => {
    if (g.device !== device) {
      throw new DeviceError(
        `clipGradNorm: gradient ${i} [${g.shape}] is on ${g.device.name}, gradient 0 on ${device.name}`,
      );
    }
    g.storage("clipGradNorm");
  });
  const be = device.backend;
  const dtypes = [...new Set(grads.map((g) => g.dtype))];
  // One packed array per dtype; the norm is taken over all of them together.
  const packs = dtypes.map((dtype) => {
    const members = grads.filter((g) => g.dtype === dtype);
    const layout = packLayout(members.map((g) => g.size), dtype);
    const packed = be.pack(members.map((g) => g.storage()), layout.offsets, layout.total, dtype);
    return { dtype, members, ...layout, packed };
  });
  const partials = packs.map((k) => be.run(SUM_SQUARES, [k.packed], { n: k.total })[0]);
  let all: Storage = partials[0];
  if (partials.length > 1) {
    const layout = packLayout(partials.map((s) => s.size), "f32");
    all = be.pack(partials, layout.offsets, layout.total, "f32");
    for (const s of partials) be.free(s);
  }
  const [total, coef] = be.run(CLIP_COEF, [all], { n: all.size, maxNorm });
  be.free(all);
  for (const k of packs) {
    const [scaled] = be.run(SCALE_BY, [k.packed, coef], { n: k.total });
    be.free(k.packed);
    const outs = be.unpack(scaled, k.offsets, k.members.map((g) => g.size));
    be.free(scaled);
    // Gradients change in place (same tensor objects, as torch's clip_grad_norm_).
    k.members.forEach((g, i) => g._replaceStorage(outs[i]));
  }
  be.free(coef);
  return fromStorage(total, [], "f32", device);
}
