/**
 * `causalAttention`: softmax(q kᵀ · scale + causal/padding/window mask) · v as one memory-efficient op
 * (src/backend/kernels/attention.ts: tiled FlashAttention-2-style kernels for head widths up to 128, one
 * workgroup per row above). The forward keeps only its output and a log-sum-exp per query row;
 * nothing [seq, keys]-sized is built, kept or uploaded, and grouped key/value heads are read in place.
 * @module
 */
import {
  ATTENTION_BACKWARD_KV,
  ATTENTION_BACKWARD_KV_ROWS,
  ATTENTION_BACKWARD_Q,
  ATTENTION_BACKWARD_Q_ROWS,
  ATTENTION_FORWARD,
  ATTENTION_FORWARD_ROWS,
  type AttentionArgs,
  statsDType,
  TILED_MAX_DIM,
} from "../backend/kernels/attention.ts";
import { ConfigError, DeviceError, DTypeError, ShapeError } from "../core/errors.ts";
import { fromStorage, Tensor } from "./tensor.ts";
import { deviceMismatch } from "./ops.ts";

/** Options of {@link causalAttention}. */
export interface CausalAttentionOptions {
  /**
   * Padding mask [batch, keys]: 1 for real tokens, 0 for padding (transformers' `attention_mask`),
   * as flat row-major values. Default: every key is real.
   */
  keyMask?: Int32Array | null;
  /** Sliding window: each query sees at most the last `window` positions, itself included. 0 = no limit. */
  window?: number;
  /** Multiplier of q · k; default dim^−½. */
  scale?: number;
}

/**
 * Causal attention of q [batch, heads, seq, dim] over k, v [batch, kvHeads, keys, dim] → [batch, heads,
 * seq, dim]. `heads` must be a multiple of `kvHeads` (grouped-query attention: query head h uses
 * key/value head ⌊h / (heads / kvHeads)⌋). Query i sits at position keys − seq + i, so a call with a
 * key/value cache (keys > seq) attends to the cached positions too. A query row that sees no key at all
 * gets transformers' eager result (uniform weights over all keys). Differentiable in q, k and v.
 */
export function causalAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: CausalAttentionOptions = {},
): Tensor {
  const op = "causalAttention";
  for (const [what, t] of [["q", q], ["k", k], ["v", v]] as const) {
    if (!(t instanceof Tensor)) throw new ShapeError(`${op}: ${what} must be a Tensor, got ${typeof t}`);
    if (t.ndim !== 4) throw new ShapeError(`${op}: ${what} must be 4-d, got [${t.shape}]`);
  }
  if (k.device !== q.device || v.device !== q.device) {
    throw deviceMismatch(op, [q.device, k.device, v.device]);
  }
  if (k.dtype !== q.dtype || v.dtype !== q.dtype) {
    throw new DTypeError(`${op}: q, k and v have different dtypes: ${q.dtype}, ${k.dtype}, ${v.dtype}`);
  }
  const [batch, heads, seq, dim] = q.shape;
  const [kb, kvHeads, keys, kd] = k.shape;
  const kvShape = `k [${k.shape}], v [${v.shape}]`;
  if (kb !== batch || kd !== dim || v.shape.some((n, i) => n !== k.shape[i])) {
    throw new ShapeError(`${op}: q [${q.shape}] does not fit ${kvShape} ([batch, kvHeads, keys, dim])`);
  }
  if (kvHeads === 0 || heads % kvHeads !== 0) {
    throw new ShapeError(`${op}: q has ${heads} heads, not a multiple of the ${kvHeads} of ${kvShape}`);
  }
  if (keys < seq) throw new ShapeError(`${op}: ${keys} keys for ${seq} queries (keys must be >= seq)`);
  const window = opts.window ?? 0;
  if (!Number.isInteger(window) || window < 0) {
    throw new ConfigError(`${op}: window must be a whole number (0 = none), got ${window}`);
  }
  const scale = opts.scale ?? 1 / Math.sqrt(dim);
  if (!Number.isFinite(scale)) throw new ConfigError(`${op}: scale must be a finite number, got ${scale}`);
  const keyMask = opts.keyMask ?? null;
  if (keyMask !== null) {
    if (!(keyMask instanceof Int32Array) || keyMask.length !== batch * keys) {
      throw new ShapeError(
        `${op}: keyMask must be an Int32Array of [batch, keys] = [${batch}, ${keys}] values, got ` +
          `${keyMask instanceof Int32Array ? keyMask.length : typeof keyMask}`,
      );
    }
  }
  if (q.device.kind === "webgpu" && dim > 1024) {
    throw new DeviceError(`${op}: head dim ${dim} is above the 1024 the WebGPU kernels take`);
  }
  const device = q.device;
  device.checkAlive(op);
  const be = device.backend;
  const args: AttentionArgs = { batch, heads, kvHeads, seq, keys, dim, scale, window, keyMask };
  // The tiled kernels hold whole head rows in registers; wider heads take the one-row-per-workgroup ones.
  const tiled = dim <= TILED_MAX_DIM;
  const forward = tiled ? ATTENTION_FORWARD : ATTENTION_FORWARD_ROWS;
  const backwardQ = tiled ? ATTENTION_BACKWARD_Q : ATTENTION_BACKWARD_Q_ROWS;
  const backwardKV = tiled ? ATTENTION_BACKWARD_KV : ATTENTION_BACKWARD_KV_ROWS;
  const [os, ls] = be.run(forward, [q.storage(op), k.storage(op), v.storage(op)], args);
  // The log-sum-exp lives as long as the output's graph: it is a constant input of the node (no
  // gradient flows to it), so graph disposal and tidy scopes treat it like the saved tensors of any op.
  const lse = fromStorage(ls, [batch, heads, seq], statsDType(q.dtype), device);
  const out: Tensor = fromStorage(os, q.shape, q.dtype, device, {
    op,
    inputs: [q, k, v, lse],
    backward: (g) => {
      const gs = g.storage(op);
      const [dq, delta] = be.run(backwardQ, [
        q.storage(op),
        k.storage(op),
        v.storage(op),
        out.storage(op),
        gs,
        lse.storage(op),
      ], args);
      const [dk, dv] = be.run(backwardKV, [
        q.storage(op),
        k.storage(op),
        v.storage(op),
        gs,
        lse.storage(op),
        delta,
      ], args);
      be.free(delta);
      return [
        fromStorage(dq, q.shape, q.dtype, device),
        fromStorage(dk, k.shape, k.dtype, device),
        fromStorage(dv, v.shape, v.dtype, device),
        null,
      ];
    },
  });
  if (!out.requiresGrad) lse.dispose();
  return out;
}
