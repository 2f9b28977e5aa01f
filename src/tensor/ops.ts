/**
 * Functional ops with their gradients. Each op validates its operands (naming itself and the shapes in
 * errors), calls one or a few backend primitives, and records how to differentiate. Backward closures run
 * with grad recording off, so they may freely use the public ops.
 * @module
 */
import type { Backend, BinaryOp, Storage, UnaryOp } from "../backend/backend.ts";
import type { Device } from "../backend/device.ts";
import type { DType } from "../core/dtype.ts";
import { fromStorage, full, shapeSize, Tensor } from "./tensor.ts";
import { ConfigError, DeviceError, DTypeError, ShapeError } from "../core/errors.ts";
import { nextSeed } from "../core/random.ts";

// ---------------------------------------------------------------------------------------------------
// Validation helpers

function checkTensor(t: unknown, op: string, what: string): asserts t is Tensor {
  if (!(t instanceof Tensor)) throw new ShapeError(`${op}: ${what} must be a Tensor, got ${typeof t}`);
}

/**
 * @internal the DeviceError for operands of `op` on several devices, naming each. Two `webgpuDevice()`
 * calls on one adapter give devices that print alike, so the message says when distinct devices share a
 * name rather than listing what looks like one device twice.
 */
export function deviceMismatch(op: string, devices: readonly Device[]): DeviceError {
  const distinct = [...new Set(devices)];
  const names = distinct.map(String);
  const sameName = new Set(names).size < names.length
    ? " (distinct devices with the same name: every webgpuDevice() call opens a new device)"
    : "";
  return new DeviceError(
    `${op}: operands on different devices: ${names.join(" and ")}${sameName}; move tensors with ` +
      `await t.to(device) or the model with await model.to(device)`,
  );
}

/** Checks operands share a device and dtype; returns them. */
function common(op: string, ...ts: Tensor[]): { device: Device; dtype: DType; be: Backend } {
  const [first] = ts;
  for (const t of ts) {
    if (t.device !== first.device) throw deviceMismatch(op, ts.map((x) => x.device));
    if (t.dtype !== first.dtype) {
      throw new DTypeError(`${op}: operands have different dtypes: ${ts.map((x) => x.dtype).join(", ")}`);
    }
  }
  first.device.checkAlive(op);
  return { device: first.device, dtype: first.dtype, be: first.device.backend };
}

/** Normalises a possibly negative axis. */
export function normAxis(dim: number, rank: number, op: string): number {
  if (!Number.isInteger(dim) || dim < -rank || dim >= Math.max(rank, 1)) {
    throw new ShapeError(`${op}: dim ${dim} is out of range for a tensor of rank ${rank}`);
  }
  return dim < 0 ? dim + rank : dim;
}

/** NumPy broadcasting of two shapes. */
export function broadcastShapes(a: readonly number[], b: readonly number[], op: string): number[] {
  const rank = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1, db = b[b.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new ShapeError(`${op}: shapes [${a}] and [${b}] do not broadcast (dim ${i}: ${da} vs ${db})`);
    }
    out.push(da === 1 ? db : da);
  }
  return out;
}

const sameShape = (a: readonly number[], b: readonly number[]) =>
  a.length === b.length && a.every((d, i) => d === b[i]);

/** A 0-d tensor with value `v` matching `like`'s device and dtype. */
function scalarLike(v: number, like: Tensor): Tensor {
  return full([], v, { device: like.device, dtype: like.dtype });
}

/** Sums a broadcast gradient back down to `shape`. */
export function sumToShape(g: Tensor, shape: readonly number[]): Tensor {
  if (sameShape(g.shape, shape)) return g;
  const lead = g.shape.length - shape.length;
  const dims: number[] = [];
  for (let i = 0; i < g.shape.length; i++) {
    if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) dims.push(i);
  }
  return reshape(sum(g, dims, true), shape);
}

// ---------------------------------------------------------------------------------------------------
// Element-wise

function binaryOp(
  op: BinaryOp,
  name: string,
  a: Tensor | number,
  b: Tensor | number,
  grads: (g: Tensor, a: Tensor, b: Tensor, out: Tensor) => [Tensor | null, Tensor | null],
): Tensor {
  if (typeof a === "number" && typeof b === "number") {
    throw new ShapeError(`${name}: at least one operand must be a Tensor`);
  }
  const ta = typeof a === "number" ? scalarLike(a, b as Tensor) : a;
  const tb = typeof b === "number" ? scalarLike(b, ta) : b;
  checkTensor(ta, name, "first operand");
  checkTensor(tb, name, "second operand");
  const { device, dtype, be } = common(name, ta, tb);
  const shape = broadcastShapes(ta.shape, tb.shape, name);
  const storage = be.binary(op, ta.storage(name), ta.shape, tb.storage(name), tb.shape, shape);
  const out: Tensor = fromStorage(storage, shape, dtype, device, {
    op: name,
    inputs: [ta, tb],
    backward: (g) => {
      const [ga, gb] = grads(g, ta, tb, out);
      return [
        ga && ta.requiresGrad ? sumToShape(ga, ta.shape) : null,
        gb && tb.requiresGrad ? sumToShape(gb, tb.shape) : null,
      ];
    },
  });
  return out;
}

/** a + b with broadcasting. */
export function add(a: Tensor | number, b: Tensor | number): Tensor {
  return binaryOp("add", "add", a, b, (g) => [g, g]);
}

/** a − b with broadcasting. */
export function sub(a: Tensor | number, b: Tensor | number): Tensor {
  return binaryOp("sub", "sub", a, b, (g, _a, tb) => [g, tb.requiresGrad ? neg(g) : null]);
}

/** a · b element-wise with broadcasting. */
export function mul(a: Tensor | number, b: Tensor | number): Tensor {
  return binaryOp("mul", "mul", a, b, (g, ta, tb) => [
    ta.requiresGrad ? mul(g, tb) : null,
    tb.requiresGrad ? mul(g, ta) : null,
  ]);
}

/** a / b element-wise with broadcasting. */
export function div(a: Tensor | number, b: Tensor | number): Tensor {
  return binaryOp("div", "div", a, b, (g, ta, tb, out) => [
    ta.requiresGrad ? div(g, tb) : null,
    tb.requiresGrad ? neg(div(mul(g, out), tb)) : null,
  ]);
}

/** Element-wise maximum with broadcasting (gradient to `a` where a ≥ b, else to `b`). */
export function maximum(a: Tensor | number, b: Tensor | number): Tensor {
  return binaryOp("max", "maximum", a, b, (g, ta, tb) => {
    const aWins = sub(1, binaryNoGrad("gt", tb, ta)); // 1 where a ≥ b: ties go to a, as the kernels do
    return [mul(g, aWins), mul(g, sub(1, aWins))];
  });
}

function binaryNoGrad(op: BinaryOp, a: Tensor, b: Tensor): Tensor {
  const { device, dtype, be } = common(op, a, b);
  const shape = broadcastShapes(a.shape, b.shape, op);
  return fromStorage(
    be.binary(op, a.storage(op), a.shape, b.storage(op), b.shape, shape),
    shape,
    dtype,
    device,
  );
}

function unaryOp(op: UnaryOp, x: Tensor, grad: ((g: Tensor, x: Tensor, y: Tensor) => Tensor) | null): Tensor {
  checkTensor(x, op, "input");
  const { device, dtype, be } = common(op, x);
  const node = grad === null ? undefined : { op, inputs: [x], backward: (g: Tensor) => [grad(g, x, y)] };
  const y: Tensor = fromStorage(be.unary(op, x.storage(op)), x.shape, dtype, device, node);
  return y;
}

/** −x. */
export const neg = (x: Tensor): Tensor => unaryOp("neg", x, (g) => neg(g));
/** eˣ. */
export const exp = (x: Tensor): Tensor => unaryOp("exp", x, (g, _x, y) => mul(g, y));
/** Natural log. */
export const log = (x: Tensor): Tensor => unaryOp("log", x, (g, x) => div(g, x));
/** √x. */
export const sqrt = (x: Tensor): Tensor => unaryOp("sqrt", x, (g, _x, y) => div(scale(g, 0.5), y));
/** 1/√x. */
export const rsqrt = (x: Tensor): Tensor =>
  unaryOp("rsqrt", x, (g, _x, y) => mul(g, scale(mul(y, mul(y, y)), -0.5)));
/** Logistic sigmoid. */
// σ'(x) = σ(x)·σ(−x): unlike σ(1 − σ), no cancellation where σ(x) rounds near 1.
export const sigmoid = (x: Tensor): Tensor =>
  unaryOp("sigmoid", x, (g, x, y) => mul(g, mul(y, unaryOp("sigmoid", neg(x), null))));
/** x · sigmoid(x) (SiLU / swish). */
export const silu = (x: Tensor): Tensor => unaryOp("silu", x, (g, x) => mul(g, unaryOp("siluGrad", x, null)));
/** max(x, 0). */
export const relu = (x: Tensor): Tensor => unaryOp("relu", x, (g, x) => mul(g, unaryOp("step", x, null)));
/** x². */
export const square = (x: Tensor): Tensor => unaryOp("square", x, (g, x) => mul(g, scale(x, 2)));
/** Element-wise sine. */
export const sin = (x: Tensor): Tensor => unaryOp("sin", x, (g, x) => mul(g, unaryOp("cos", x, null)));
/** Element-wise cosine. */
export const cos = (x: Tensor): Tensor => unaryOp("cos", x, (g, x) => neg(mul(g, unaryOp("sin", x, null))));

/** x · s for a number s. */
export function scale(x: Tensor, s: number): Tensor {
  checkTensor(x, "scale", "input");
  if (typeof s !== "number") throw new ShapeError(`scale: factor must be a number, got ${typeof s}`);
  const { device, dtype, be } = common("scale", x);
  return fromStorage(be.affine(x.storage("scale"), s, 0), x.shape, dtype, device, {
    op: "scale",
    inputs: [x],
    backward: (g) => [scale(g, s)],
  });
}

/** Converts to another dtype (gradient converted back). */
export function cast(x: Tensor, dtype: DType): Tensor {
  checkTensor(x, "cast", "input");
  if (x.dtype === dtype) return x;
  x.device.checkDType(dtype, "cast");
  const { device, be } = common("cast", x);
  return fromStorage(be.cast(x.storage("cast"), dtype), x.shape, dtype, device, {
    op: "cast",
    inputs: [x],
    backward: (g) => [cast(g, x.dtype)],
  });
}

/** The same values as a new leaf without gradient tracking (a copy). */
export function detach(x: Tensor): Tensor {
  const { device, dtype, be } = common("detach", x);
  return fromStorage(be.affine(x.storage("detach"), 1, 0), x.shape, dtype, device);
}

// ---------------------------------------------------------------------------------------------------
// Reductions

function normDims(dim: number | number[] | undefined, rank: number, op: string): number[] {
  if (dim === undefined) return [...Array(rank).keys()];
  const dims = (Array.isArray(dim) ? dim : [dim]).map((d) => normAxis(d, rank, op));
  if (new Set(dims).size !== dims.length) {
    throw new ShapeError(`${op}: repeated dim in ${JSON.stringify(dim)}`);
  }
  return dims.sort((a, b) => a - b);
}

/** Sum over `dim` (a number, a list, or all dims when omitted). */
export function sum(x: Tensor, dim?: number | number[], keepDim = false): Tensor {
  checkTensor(x, "sum", "input");
  const { device, dtype, be } = common("sum", x);
  const dims = normDims(dim, x.ndim, "sum");
  const keptShape = x.shape.map((d, i) => (dims.includes(i) ? 1 : d));
  let storage = x.storage("sum");
  const cur = [...x.shape];
  for (const d of [...dims].reverse()) {
    const outer = shapeSize(cur.slice(0, d)), inner = shapeSize(cur.slice(d + 1));
    const next = be.sumAxis(storage, outer, cur[d], inner);
    if (storage !== x.storage("sum")) be.free(storage);
    storage = next;
    cur[d] = 1;
  }
  if (dims.length === 0) storage = be.affine(storage, 1, 0);
  const outShape = keepDim ? keptShape : x.shape.filter((_, i) => !dims.includes(i));
  return fromStorage(storage, outShape, dtype, device, {
    op: "sum",
    inputs: [x],
    backward: (g) => [broadcastTo(reshape(g, keptShape), x.shape)],
  });
}

/** Mean over `dim` (a number, a list, or all dims when omitted). */
export function mean(x: Tensor, dim?: number | number[], keepDim = false): Tensor {
  checkTensor(x, "mean", "input");
  const dims = normDims(dim, x.ndim, "mean");
  const n = dims.reduce((p, d) => p * x.shape[d], 1);
  return scale(sum(x, dims, keepDim), 1 / n);
}

/** Repeats `x` along broadcast axes to `shape`. */
export function broadcastTo(x: Tensor, shape: readonly number[]): Tensor {
  if (sameShape(x.shape, shape)) return x;
  const target = broadcastShapes(x.shape, shape, "broadcastTo");
  if (!sameShape(target, shape)) {
    throw new ShapeError(`broadcastTo: cannot broadcast [${x.shape}] to [${shape}]`);
  }
  const zero = scalarLike(0, x);
  const { device, dtype, be } = common("broadcastTo", x);
  const storage = be.binary("add", x.storage("broadcastTo"), x.shape, zero.storage(), [], shape);
  zero.dispose();
  return fromStorage(storage, shape, dtype, device, {
    op: "broadcastTo",
    inputs: [x],
    backward: (g) => [sumToShape(g, x.shape)],
  });
}

// ---------------------------------------------------------------------------------------------------
// Shape ops

/** Same values, new shape (one entry may be −1). */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  checkTensor(x, "reshape", "input");
  const s = [...shape];
  const free = s.indexOf(-1);
  if (free >= 0) {
    const rest = shapeSize(s.filter((_, i) => i !== free));
    if (rest === 0 || x.size % rest !== 0) {
      throw new ShapeError(`reshape: cannot reshape [${x.shape}] to [${shape}]`);
    }
    s[free] = x.size / rest;
  }
  if (s.some((d) => !Number.isInteger(d) || d < 0) || shapeSize(s) !== x.size) {
    throw new ShapeError(`reshape: cannot reshape [${x.shape}] (${x.size} elements) to [${shape}]`);
  }
  if (sameShape(s, x.shape)) return x;
  const { device, dtype } = common("reshape", x);
  return fromStorage(copiedStorage(x, "reshape"), s, dtype, device, {
    op: "reshape",
    inputs: [x],
    backward: (g) => [reshape(g, x.shape)],
  });
}

/** A new storage holding a copy of x's values (a reshape copies, so each tensor owns its storage). */
function copiedStorage(x: Tensor, op: string): Storage {
  return x.device.backend.affine(x.storage(op), 1, 0);
}

/** Permutes axes: output axis i is input axis perm[i]. */
export function permute(x: Tensor, perm: readonly number[]): Tensor {
  checkTensor(x, "permute", "input");
  const p = perm.map((d) => normAxis(d, x.ndim, "permute"));
  if (p.length !== x.ndim || new Set(p).size !== p.length) {
    throw new ShapeError(`permute: [${perm}] is not a permutation of the ${x.ndim} axes of [${x.shape}]`);
  }
  if (p.every((d, i) => d === i)) return x;
  const { device, dtype, be } = common("permute", x);
  const inverse = new Array<number>(p.length);
  p.forEach((d, i) => (inverse[d] = i));
  return fromStorage(be.permute(x.storage("permute"), x.shape, p), p.map((d) => x.shape[d]), dtype, device, {
    op: "permute",
    inputs: [x],
    backward: (g) => [permute(g, inverse)],
  });
}

/** Swaps two axes. */
export function transpose(x: Tensor, dim0: number, dim1: number): Tensor {
  checkTensor(x, "transpose", "input");
  const a = normAxis(dim0, x.ndim, "transpose"), b = normAxis(dim1, x.ndim, "transpose");
  const perm = [...x.shape.keys()];
  perm[a] = b;
  perm[b] = a;
  return permute(x, perm);
}

/** `x` with axis `d` moved to the front: rows of `d`, each the contiguous rest of the tensor. */
function axisToFront(x: Tensor, d: number): Tensor {
  return d === 0 ? x : permute(x, [d, ...[...x.shape.keys()].filter((i) => i !== d)]);
}

/** Inverse of {@link axisToFront}: moves the front axis back to position `d`. */
function frontToAxis(x: Tensor, d: number): Tensor {
  if (d === 0) return x;
  const perm = [...x.shape.keys()].slice(1);
  perm.splice(d, 0, 0);
  return permute(x, perm);
}

/** start, start + 1, ..., start + n − 1. */
function rangeIds(start: number, n: number): Int32Array {
  return Int32Array.from({ length: n }, (_, i) => start + i);
}

/**
 * Concatenates along `dim`. Each part is placed as a block of rows (the axis moved to the front) with
 * one scatter, so the cost is linear in the output size; values are copied exactly (Inf and NaN too;
 * a −0 comes out as +0, being added to the zeros around it).
 */
export function concat(ts: Tensor[], dim: number): Tensor {
  if (ts.length === 0) throw new ShapeError(`concat: no tensors given`);
  ts.forEach((t, i) => checkTensor(t, "concat", `tensor ${i}`));
  const d = normAxis(dim, ts[0].ndim, "concat");
  for (const t of ts) {
    if (t.ndim !== ts[0].ndim || t.shape.some((s, i) => i !== d && s !== ts[0].shape[i])) {
      throw new ShapeError(`concat: shapes ${ts.map((x) => `[${x.shape}]`).join(", ")} differ off dim ${d}`);
    }
  }
  const moved = ts.map((t) => axisToFront(t, d));
  const { device, dtype, be } = common("concat", ...moved);
  const rest = moved[0].shape.slice(1);
  const rowSize = shapeSize(rest);
  const total = ts.reduce((p, t) => p + t.shape[d], 0);
  const ids: Int32Array[] = [];
  let storage: Storage | null = null;
  let offset = 0;
  for (const m of moved) {
    ids.push(rangeIds(offset, m.shape[0]));
    const placed = be.scatterAddRows(m.storage("concat"), ids[ids.length - 1], total, rowSize);
    if (storage === null) storage = placed;
    else {
      const sumOf: Storage = be.binary("add", storage, [total, rowSize], placed, [total, rowSize], [
        total,
        rowSize,
      ]);
      be.free(storage);
      be.free(placed);
      storage = sumOf;
    }
    offset += m.shape[0];
  }
  const joined = fromStorage(storage!, [total, ...rest], dtype, device, {
    op: "concat",
    inputs: moved,
    backward: (g) =>
      moved.map((m, i) =>
        m.requiresGrad
          ? fromStorage(be.gatherRows(g.storage("concat"), ids[i], rowSize), m.shape, dtype, device)
          : null
      ),
  });
  return frontToAxis(joined, d);
}

/** Slices `x` along `dim` to [start, end) with one row gather (linear cost, exact copy). */
export function slice(x: Tensor, dim: number, start: number, end: number): Tensor {
  checkTensor(x, "slice", "input");
  const d = normAxis(dim, x.ndim, "slice");
  const n = x.shape[d];
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > n || start > end) {
    throw new ShapeError(`slice: range [${start}, ${end}) is out of bounds for dim ${d} of [${x.shape}]`);
  }
  const moved = axisToFront(x, d);
  const { device, dtype, be } = common("slice", moved);
  const rest = moved.shape.slice(1);
  const rowSize = shapeSize(rest);
  const ids = rangeIds(start, end - start);
  const part = fromStorage(
    be.gatherRows(moved.storage("slice"), ids, rowSize),
    [end - start, ...rest],
    dtype,
    device,
    {
      op: "slice",
      inputs: [moved],
      backward: (
        g,
      ) => [fromStorage(be.scatterAddRows(g.storage("slice"), ids, n, rowSize), moved.shape, dtype, device)],
    },
  );
  return frontToAxis(part, d);
}

// ---------------------------------------------------------------------------------------------------
// Matrix products

interface MatmulPlan {
  batchShape: number[];
  batch: number;
  aBatch: number;
  bBatch: number;
}

function planBatch(
  a: Tensor,
  b: Tensor,
  aRows: number,
  bRows: number,
): MatmulPlan & { a: Tensor; b: Tensor } {
  const ab = a.shape.slice(0, -2), bb = b.shape.slice(0, -2);
  const batchShape = broadcastShapes(ab, bb, "matmul");
  const batch = shapeSize(batchShape);
  let aa = a, bx = b;
  // Broadcasting only part of the batch dims needs a materialised copy; all-or-nothing is free.
  if (shapeSize(ab) !== 1 && !sameShape(ab, batchShape)) {
    aa = broadcastTo(a, [...batchShape, ...a.shape.slice(-2)]);
  }
  if (shapeSize(bb) !== 1 && !sameShape(bb, batchShape)) {
    bx = broadcastTo(b, [...batchShape, ...b.shape.slice(-2)]);
  }
  void aRows;
  void bRows;
  return {
    batchShape,
    batch,
    aBatch: shapeSize(aa.shape.slice(0, -2)) === 1 ? 1 : batch,
    bBatch: shapeSize(bx.shape.slice(0, -2)) === 1 ? 1 : batch,
    a: aa,
    b: bx,
  };
}

/** Matrix product, batched and broadcast over leading dims: [..., m, k] · [..., k, n] → [..., m, n]. */
export function matmul(a: Tensor, b: Tensor): Tensor {
  checkTensor(a, "matmul", "first operand");
  checkTensor(b, "matmul", "second operand");
  if (a.ndim < 2 || b.ndim < 2) {
    throw new ShapeError(`matmul: operands need at least 2 dims, got [${a.shape}] and [${b.shape}]`);
  }
  const m = a.shape[a.ndim - 2], k = a.shape[a.ndim - 1], k2 = b.shape[b.ndim - 2], n = b.shape[b.ndim - 1];
  if (k !== k2) {
    throw new ShapeError(`matmul: inner dims differ: [${a.shape}] · [${b.shape}] (${k} vs ${k2})`);
  }
  const { device, dtype, be } = common("matmul", a, b);
  const plan = planBatch(a, b, m, k2);
  const storage = be.matmul(plan.a.storage("matmul"), plan.b.storage("matmul"), {
    batch: plan.batch,
    aBatch: plan.aBatch,
    bBatch: plan.bBatch,
    m,
    k,
    n,
    transA: false,
    transB: false,
  });
  const outShape = [...plan.batchShape, m, n];
  return fromStorage(storage, outShape, dtype, device, {
    op: "matmul",
    inputs: [a, b],
    backward: (g) => {
      let ga: Tensor | null = null, gb: Tensor | null = null;
      if (a.requiresGrad) {
        // dA = dC · Bᵀ, then summed over the batch dims A was broadcast along.
        const s = be.matmul(g.storage(), plan.b.storage(), {
          batch: plan.batch,
          aBatch: plan.batch,
          bBatch: plan.bBatch,
          m,
          k: n,
          n: k,
          transA: false,
          transB: true,
        });
        ga = sumToShape(fromStorage(s, [...plan.batchShape, m, k], dtype, device), a.shape);
      }
      if (b.requiresGrad) {
        // dB = Aᵀ · dC.
        const s = be.matmul(plan.a.storage(), g.storage(), {
          batch: plan.batch,
          aBatch: plan.aBatch,
          bBatch: plan.batch,
          m: k,
          k: m,
          n,
          transA: true,
          transB: false,
        });
        gb = sumToShape(fromStorage(s, [...plan.batchShape, k, n], dtype, device), b.shape);
      }
      return [ga, gb];
    },
  });
}

/** y = x Wᵀ + b for x [..., in], weight [out, in], bias [out]. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  checkTensor(x, "linear", "input");
  checkTensor(weight, "linear", "weight");
  if (weight.ndim !== 2) throw new ShapeError(`linear: weight must be [out, in], got [${weight.shape}]`);
  const [outF, inF] = weight.shape;
  if (x.ndim < 1 || x.shape[x.ndim - 1] !== inF) {
    throw new ShapeError(
      `linear: input [${x.shape}] does not end in in_features ${inF} of weight [${weight.shape}]`,
    );
  }
  if (bias && (bias.ndim !== 1 || bias.shape[0] !== outF)) {
    throw new ShapeError(`linear: bias [${bias.shape}] does not match out_features ${outF}`);
  }
  const { device, dtype, be } = bias ? common("linear", x, weight, bias) : common("linear", x, weight);
  const M = x.size / inF;
  const mm = { batch: 1, aBatch: 1, bBatch: 1 };
  // The bias goes into the GEMM's epilogue: one pass over the output instead of two.
  const storage = be.matmul(x.storage("linear"), weight.storage("linear"), {
    ...mm,
    m: M,
    k: inF,
    n: outF,
    transA: false,
    transB: true,
  }, bias ? bias.storage("linear") : null);
  const inputs = bias ? [x, weight, bias] : [x, weight];
  return fromStorage(storage, [...x.shape.slice(0, -1), outF], dtype, device, {
    op: "linear",
    inputs,
    backward: (g) => {
      const gs = g.storage();
      const dx = x.requiresGrad
        ? fromStorage(
          be.matmul(gs, weight.storage(), { ...mm, m: M, k: outF, n: inF, transA: false, transB: false }),
          x.shape,
          dtype,
          device,
        )
        : null;
      const dw = weight.requiresGrad
        ? fromStorage(
          be.matmul(gs, x.storage(), { ...mm, m: outF, k: M, n: inF, transA: true, transB: false }),
          weight.shape,
          dtype,
          device,
        )
        : null;
      const db = bias?.requiresGrad ? fromStorage(be.sumAxis(gs, 1, M, outF), [outF], dtype, device) : null;
      return bias ? [dx, dw, db] : [dx, dw];
    },
  });
}

// ---------------------------------------------------------------------------------------------------
// Normalisation and losses

function lastAxisOp(x: Tensor, dim: number, op: string, f: (x: Tensor) => Tensor): Tensor {
  checkTensor(x, op, "input");
  const d = normAxis(dim, x.ndim, op);
  if (d === x.ndim - 1) return f(x);
  return transpose(f(transpose(x, d, -1)), d, -1);
}

function softmaxLast(x: Tensor, log: boolean): Tensor {
  const op = log ? "logSoftmax" : "softmax";
  const { device, dtype, be } = common(op, x);
  const n = x.shape[x.ndim - 1] ?? 1;
  const y: Tensor = fromStorage(
    be.softmax(x.storage(op), x.size / Math.max(n, 1), n, log),
    x.shape,
    dtype,
    device,
    {
      op,
      inputs: [x],
      backward: (g) =>
        log
          ? [sub(g, mul(exp(y), sum(g, -1, true)))] // d logsoftmax: g − softmax · Σg
          : [mul(y, sub(g, sum(mul(g, y), -1, true)))], // d softmax: y ⊙ (g − Σ g⊙y)
    },
  );
  return y;
}

/** Softmax along `dim`. */
export function softmax(x: Tensor, dim = -1): Tensor {
  return lastAxisOp(x, dim, "softmax", (t) => softmaxLast(t, false));
}

/** Log-softmax along `dim`. */
export function logSoftmax(x: Tensor, dim = -1): Tensor {
  return lastAxisOp(x, dim, "logSoftmax", (t) => softmaxLast(t, true));
}

/** RMS normalisation over the last axis: x / sqrt(mean(x²) + eps) · weight. */
export function rmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor {
  checkTensor(x, "rmsNorm", "input");
  checkTensor(weight, "rmsNorm", "weight");
  const d = x.shape[x.ndim - 1];
  if (weight.ndim !== 1 || weight.shape[0] !== d) {
    throw new ShapeError(
      `rmsNorm: weight [${weight.shape}] does not match the last dim of input [${x.shape}]`,
    );
  }
  if (!(eps >= 0)) throw new ConfigError(`rmsNorm: eps must be a non-negative number, got ${eps}`);
  common("rmsNorm", x, weight); // device and dtype errors name rmsNorm, not the op inside that meets them
  const inv = rsqrt(add(mean(square(x), -1, true), eps));
  return mul(mul(x, inv), weight);
}

/** Integer indices with a shape: from number[][], number[], Int32Array + shape, or a Tensor of integers. */
export type IndexInput =
  | number[]
  | number[][]
  | Int32Array
  | { data: ArrayLike<number>; shape: readonly number[] };

/**
 * Flattens index input to Int32Array + shape, checking integrality; errors name `op` and `what` (the
 * argument, e.g. "inputIds"). The one reader of integer input: embedding ids, token ids, masks, labels.
 */
export function toIndices(
  ids: IndexInput | Tensor,
  op: string,
  what = "indices",
): { data: Int32Array; shape: number[] } {
  let values: ArrayLike<number>;
  let shape: number[];
  if (ids instanceof Tensor) {
    if (ids.device.kind !== "cpu") throw new DeviceError(`${op}: ${what} tensors must live on the CPU`);
    values = ids.dataSync();
    shape = [...ids.shape];
  } else if (ids instanceof Int32Array) {
    values = ids;
    shape = [ids.length];
  } else if (Array.isArray(ids)) {
    if (ids.length > 0 && Array.isArray(ids[0])) {
      const rows = ids as number[][];
      const w = rows[0].length;
      if (rows.some((r) => !Array.isArray(r) || r.length !== w)) {
        throw new ShapeError(
          `${op}: ${what} rows have different lengths (${rows.map((r) => r.length).join(", ")}); ` +
            `pad them to one length`,
        );
      }
      values = rows.flat();
      shape = [rows.length, w];
    } else {
      values = ids as number[];
      shape = [ids.length];
    }
  } else if (ids && typeof ids === "object" && "data" in ids && "shape" in ids) {
    values = ids.data;
    shape = [...ids.shape];
    if (shapeSize(shape) !== values.length) {
      throw new ShapeError(`${op}: ${values.length} ${what} do not fill shape [${shape}]`);
    }
  } else {
    throw new ShapeError(`${op}: ${what} must be number[][], number[], Int32Array or { data, shape }`);
  }
  const data = new Int32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = Number(values[i]);
    if (!Number.isInteger(v)) {
      throw new ShapeError(`${op}: ${what} value ${values[i]} at position ${i} is not an integer`);
    }
    data[i] = v;
  }
  return { data, shape };
}

/** Rows of `weight` [num, dim] selected by integer `ids` → [...ids.shape, dim]. */
export function embedding(ids: IndexInput | Tensor, weight: Tensor): Tensor {
  checkTensor(weight, "embedding", "weight");
  if (weight.ndim !== 2) throw new ShapeError(`embedding: weight must be [num, dim], got [${weight.shape}]`);
  const { data, shape } = toIndices(ids, "embedding");
  const [num, dim] = weight.shape;
  for (let i = 0; i < data.length; i++) {
    if (data[i] < 0 || data[i] >= num) {
      throw new ShapeError(`embedding: index ${data[i]} is out of range for a table of ${num} rows`);
    }
  }
  const { device, dtype, be } = common("embedding", weight);
  return fromStorage(be.gatherRows(weight.storage("embedding"), data, dim), [...shape, dim], dtype, device, {
    op: "embedding",
    inputs: [weight],
    backward: (
      g,
    ) => [fromStorage(be.scatterAddRows(g.storage(), data, num, dim), weight.shape, dtype, device)],
  });
}

/** Picks x[i, idx[i]] from [rows, n] (0 where idx[i] < 0), differentiably. */
export function pick(x: Tensor, idx: Int32Array): Tensor {
  const { device, dtype, be } = common("pick", x);
  const n = x.shape[1];
  return fromStorage(be.pick(x.storage("pick"), idx, n), [idx.length], dtype, device, {
    op: "pick",
    inputs: [x],
    backward: (g) => [fromStorage(be.unpick(g.storage(), idx, n), x.shape, dtype, device)],
  });
}

/** Mean cross-entropy of logits [N, C] against class indices, skipping `ignoreIndex`. */
export function crossEntropy(
  logits: Tensor,
  targets: number[] | Int32Array,
  opts: { ignoreIndex?: number } = {},
): Tensor {
  checkTensor(logits, "crossEntropy", "logits");
  const ignoreIndex = opts.ignoreIndex ?? -100;
  if (logits.ndim !== 2) throw new ShapeError(`crossEntropy: logits must be [N, C], got [${logits.shape}]`);
  const [N, C] = logits.shape;
  if (targets.length !== N) {
    throw new ShapeError(`crossEntropy: ${targets.length} targets for logits [${logits.shape}] (need ${N})`);
  }
  const idx = new Int32Array(N);
  let count = 0;
  for (let i = 0; i < N; i++) {
    const t = targets[i];
    if (t === ignoreIndex) {
      idx[i] = -1;
      continue;
    }
    if (!Number.isInteger(t) || t < 0 || t >= C) {
      throw new ShapeError(`crossEntropy: target ${t} at row ${i} is out of range for ${C} classes`);
    }
    idx[i] = t;
    count++;
  }
  // Like torch: the mean over zero targets is NaN.
  return scale(sum(pick(logSoftmax(logits, -1), idx)), count === 0 ? NaN : -1 / count);
}

/** Inverted dropout: zeroes elements with probability p and scales the rest by 1/(1−p). */
export function dropout(x: Tensor, p: number, opts: { seed?: number; training?: boolean } = {}): Tensor {
  checkTensor(x, "dropout", "input");
  if (typeof p !== "number" || !(p >= 0 && p < 1)) {
    throw new ConfigError(`dropout: p must be in [0, 1), got ${p}`);
  }
  if (opts.training === false || p === 0) return x;
  const seed = opts.seed ?? nextSeed();
  const mask = dropoutMask(x, p, seed);
  return mul(x, mask);
}

/** The multiplier mask `dropout` applies for (p, seed), as a constant tensor like `x`. */
export function dropoutMask(x: Tensor, p: number, seed: number): Tensor {
  const { device, dtype, be } = common("dropout", x);
  return fromStorage(be.dropoutMask(x.size, p, seed >>> 0, dtype), x.shape, dtype, device);
}
