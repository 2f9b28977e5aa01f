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

// ---------------------------------------------------------------------------------------------------
// Memory scopes. JS has no destructors and the GC does not see device memory, so tensors made in a
// scope and not kept are freed when it ends. Backward runs in its own scope: every temporary it makes
// is freed, only the gradients it leaves on leaves survive.

const scopes: Set<Tensor>[] = [];

/** @internal called for every new tensor: records it in the innermost open scope. */
export function trackTensor(t: Tensor): void {
  if (scopes.length > 0) scopes[scopes.length - 1].add(t);
}

/** Tensors inside a returned value (a Tensor, or arrays / plain objects holding them). */
function collectTensors(
  value: unknown,
  out: Set<Tensor>,
  isTensor: (v: unknown) => v is Tensor,
  depth = 0,
): void {
  if (depth > 8 || value === null || typeof value !== "object") return;
  if (isTensor(value)) {
    out.add(value);
    return;
  }
  const items = Array.isArray(value)
    ? value
    : Object.getPrototypeOf(value) === Object.prototype
    ? Object.values(value)
    : [];
  for (const v of items) collectTensors(v, out, isTensor, depth + 1);
}

let isTensorCheck: (v: unknown) => v is Tensor = (_v): _v is Tensor => false;

/** @internal lets this module recognise tensors without importing the class (avoids a cycle). */
export function registerTensorCheck(check: (v: unknown) => v is Tensor): void {
  isTensorCheck = check;
}

/**
 * Runs `fn` and frees every tensor it created except those in its result (a Tensor, or arrays /
 * plain objects of them), those marked with {@link keep}, and gradients left on leaves by backward.
 * `fn` must be synchronous: work after an await would escape the scope.
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<Tensor>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } finally {
    scopes.pop();
  }
  if (result instanceof Promise) {
    throw new Error("tidy: the function returned a Promise; tidy scopes must be synchronous");
  }
  const survivors = new Set<Tensor>();
  collectTensors(result, survivors, isTensorCheck);
  const outer = scopes[scopes.length - 1];
  for (const t of scope) {
    if (survivors.has(t) || t._retained) outer?.add(t);
    else t.dispose();
  }
  return result;
}

/** Exempts `t` from every enclosing {@link tidy} scope (e.g. optimizer state); returns it. */
export function keep<T extends Tensor>(t: T): T {
  t._retained = true;
  return t;
}

/**
 * Frees every intermediate tensor of the graph that produced `root` (not leaves, not `root` itself,
 * not tensors in `except`): activations a training step no longer needs once backward has run.
 */
export function disposeGraph(root: Tensor, except: Tensor[] = []): void {
  const spare = new Set<Tensor>([root, ...except]);
  const seen = new Set<Tensor>();
  const stack = [root];
  while (stack.length > 0) {
    const t = stack.pop()!;
    const node = t._node;
    if (node === null) continue;
    for (const inp of node.inputs) {
      if (!seen.has(inp)) {
        seen.add(inp);
        stack.push(inp);
      }
    }
    if (!spare.has(t)) t.dispose();
    else t._node = null;
  }
}

/** The two tensor ops backward needs, passed in to keep this module free of op imports. */
export interface BackwardOps {
  add(a: Tensor, b: Tensor): Tensor;
  copy(a: Tensor): Tensor;
}

/**
 * Back-propagates `grad` (d loss / d root) through the graph that produced `root`. Leaves accumulate
 * into `.grad` in place (the tensor object a caller holds keeps its identity, like PyTorch); every
 * temporary made on the way is freed before returning.
 */
export function runBackward(root: Tensor, grad: Tensor, ops: BackwardOps): void {
  const order = topoOrder(root);
  const grads = new Map<Tensor, Tensor>([[root, grad]]);
  const claimed = new Set<Tensor>();
  const scope = new Set<Tensor>();
  const prev = gradEnabled;
  gradEnabled = false;
  scopes.push(scope);
  try {
    for (let i = order.length - 1; i >= 0; i--) {
      const t = order[i];
      const g = grads.get(t);
      if (g === undefined) continue;
      grads.delete(t);
      if (t._node === null) {
        if (t.grad === null) {
          // A gradient the caller passed in, or one already given to another leaf, is copied so that
          // later in-place accumulation never changes a tensor someone else holds.
          const own = scope.has(g) && !claimed.has(g) ? g : ops.copy(g);
          claimed.add(own);
          own._retained = true;
          t.grad = own;
        } else {
          t.grad._assign(ops.add(t.grad, g));
        }
        continue;
      }
      const inGrads = t._node.backward(g);
      t._node.inputs.forEach((inp, j) => {
        const ig = inGrads[j];
        if (ig === null || ig === undefined || !inp.requiresGrad) return;
        const have = grads.get(inp);
        grads.set(inp, have === undefined ? ig : ops.add(have, ig));
      });
    }
  } finally {
    gradEnabled = prev;
    scopes.pop();
    for (const t of scope) if (!t._retained) t.dispose();
  }
}
