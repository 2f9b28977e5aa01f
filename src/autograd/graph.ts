/**
 * Reverse-mode autograd. Each op result that needs a gradient records a {@link GradNode}: its inputs and
 * a closure mapping the output's gradient to the inputs' gradients. `backward` walks the graph once in
 * reverse topological order, summing the gradients of tensors used by several ops, and accumulates into
 * the `.grad` of leaves like PyTorch.
 * @module
 */
import type { Tensor } from "../tensor/tensor.ts";

/** How a tensor was computed, for backward. */
export interface GradNode {
  /** Op name, for error messages and debugging. */
  readonly op: string;
  readonly inputs: readonly Tensor[];
  /** Maps d(loss)/d(output) to d(loss)/d(input) for each input (null where no gradient flows). */
  readonly backward: (grad: Tensor) => (Tensor | null)[];
}

let gradEnabled = true;

/** Whether ops currently record the graph. */
export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Runs `fn` without recording gradients (like `torch.no_grad()`); returns its result. */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    const r = fn();
    if (r instanceof Promise) {
      // An async body keeps grad off only until its first await; restore after it settles instead.
      return r.finally(() => (gradEnabled = prev)) as T;
    }
    gradEnabled = prev;
    return r;
  } catch (e) {
    gradEnabled = prev;
    throw e;
  }
}

/** Tensors reachable from `root` through nodes, inputs before users. */
function topoOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  // Iterative DFS: model graphs are deep enough to overflow the call stack.
  const stack: [Tensor, number][] = [[root, 0]];
  seen.add(root);
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    const [t, i] = top;
    const inputs = t._node?.inputs ?? [];
    if (i < inputs.length) {
      top[1]++;
      const inp = inputs[i];
      if (inp.requiresGrad && !seen.has(inp)) {
        seen.add(inp);
        stack.push([inp, 0]);
      }
    } else {
      order.push(t);
      stack.pop();
    }
  }
  return order;
}

/**
 * Back-propagates `grad` (d loss / d root) through the graph that produced `root`.
 * `add` sums two gradients; passed in to keep this module free of op imports.
 */
export function runBackward(root: Tensor, grad: Tensor, add: (a: Tensor, b: Tensor) => Tensor): void {
  const order = topoOrder(root);
  const grads = new Map<Tensor, Tensor>([[root, grad]]);
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    for (let i = order.length - 1; i >= 0; i--) {
      const t = order[i];
      const g = grads.get(t);
      if (g === undefined) continue;
      grads.delete(t);
      if (t._node === null) {
        t.grad = t.grad === null ? g : add(t.grad, g);
        continue;
      }
      const inGrads = t._node.backward(g);
      t._node.inputs.forEach((inp, j) => {
        const ig = inGrads[j];
        if (ig === null || ig === undefined || !inp.requiresGrad) return;
        const have = grads.get(inp);
        grads.set(inp, have === undefined ? ig : add(have, ig));
      });
    }
  } finally {
    gradEnabled = prev;
  }
}
