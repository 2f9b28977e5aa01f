/**
 * Installs the method forms of the ops (declared on {@link Tensor} in tensor.ts) and `backward` on the
 * Tensor prototype. They live here, above both tensor.ts and ops.ts, because the class cannot import the
 * ops that import it. The folder's entry (mod.ts) imports this module, so every user of Tensor that
 * imports the folder through its entry gets the methods.
 * @module
 */
import type { DType } from "../core/dtype.ts";
import { AutogradError, ShapeError } from "../core/errors.ts";
import { runBackward } from "./graph.ts";
import * as ops from "./ops.ts";
import { ones, Tensor } from "./tensor.ts";

/** The members of Tensor that this module supplies (declared in tensor.ts's `interface Tensor`). */
export type TensorMethodName =
  | "backward"
  | "detach"
  | "add"
  | "sub"
  | "mul"
  | "div"
  | "matmul"
  | "scale"
  | "sum"
  | "mean"
  | "reshape"
  | "transpose"
  | "softmax"
  | "logSoftmax"
  | "silu"
  | "relu"
  | "cast";

// Typed against the declarations: a missing method or a drifted signature is a type error here.
const methods: {
  [K in TensorMethodName]: (this: Tensor, ...args: Parameters<Tensor[K]>) => ReturnType<Tensor[K]>;
} = {
  backward(this: Tensor, grad?: Tensor): void {
    if (!this.requiresGrad) {
      throw new AutogradError(`backward: tensor [${this.shape}] does not require grad (no graph to walk)`);
    }
    let g = grad;
    if (g === undefined) {
      if (this.size !== 1) {
        throw new ShapeError(`backward: tensor has shape [${this.shape}]; pass a gradient for non-scalars`);
      }
      g = ones(this.shape, { device: this.device, dtype: this.dtype });
    } else if (g.shape.join() !== this.shape.join()) {
      throw new ShapeError(`backward: gradient shape [${g.shape}] differs from tensor shape [${this.shape}]`);
    }
    runBackward<Tensor>(this, g, { add: ops.add, copy: ops.detach });
    if (grad === undefined) g.dispose();
  },
  detach(this: Tensor): Tensor {
    return ops.detach(this);
  },
  add(this: Tensor, o: Tensor | number): Tensor {
    return ops.add(this, o);
  },
  sub(this: Tensor, o: Tensor | number): Tensor {
    return ops.sub(this, o);
  },
  mul(this: Tensor, o: Tensor | number): Tensor {
    return ops.mul(this, o);
  },
  div(this: Tensor, o: Tensor | number): Tensor {
    return ops.div(this, o);
  },
  matmul(this: Tensor, o: Tensor): Tensor {
    return ops.matmul(this, o);
  },
  scale(this: Tensor, s: number): Tensor {
    return ops.scale(this, s);
  },
  sum(this: Tensor, dim?: number | number[], keepDim = false): Tensor {
    return ops.sum(this, dim, keepDim);
  },
  mean(this: Tensor, dim?: number | number[], keepDim = false): Tensor {
    return ops.mean(this, dim, keepDim);
  },
  reshape(this: Tensor, shape: readonly number[]): Tensor {
    return ops.reshape(this, shape);
  },
  transpose(this: Tensor, dim0: number, dim1: number): Tensor {
    return ops.transpose(this, dim0, dim1);
  },
  softmax(this: Tensor, dim = -1): Tensor {
    return ops.softmax(this, dim);
  },
  logSoftmax(this: Tensor, dim = -1): Tensor {
    return ops.logSoftmax(this, dim);
  },
  silu(this: Tensor): Tensor {
    return ops.silu(this);
  },
  relu(this: Tensor): Tensor {
    return ops.relu(this);
  },
  cast(this: Tensor, dtype: DType): Tensor {
    return ops.cast(this, dtype);
  },
};

// Non-enumerable like class methods, so they do not show up when a tensor is spread or inspected.
for (const [name, fn] of Object.entries(methods)) {
  Object.defineProperty(Tensor.prototype, name, { value: fn, writable: true, configurable: true });
}
