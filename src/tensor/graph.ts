/**
 * Reverse-mode autograd. Each op result that needs a gradient records a {@link GradNode}: its inputs and
 * a closure mapping the output's gradient to the inputs' gradients. `backward` walks the graph once in
 * reverse topological order, summing the gradients of tensors used by several ops, and accumulates into
 * the `.grad` of leaves like PyTorch.
 *
 * This module sits below the Tensor class (tensor.ts imports it, never the other way): it sees tensors
 * only through {@link GraphTensor}, the few members the graph walk and the memory scopes use.
 * @module
 */
import { AutogradError } from "../core/errors.ts";

/**
 * What the graph needs of a tensor. `Tensor` satisfies it; naming the members here instead of importing
 * the class keeps the imports one-way (tensor.ts imports graph.ts).
 */
export interface GraphTensor {
  /** Dimensions, row-major. */
  readonly shape: readonly number[];
  /** Whether backward computes a gradient for this tensor. */
  requiresGrad: boolean;
  /** The accumulated gradient of a leaf. */
  grad: this | null;
  /** How this tensor was computed; null for leaves. */
  _node: GradNode<this> | null;
  /** Survives {@link tidy} scopes. */
  _retained: boolean;
  /** Frees the values now. */
  dispose(): void;
  /** Replaces the values in place by those of `src`, taking over its storage. */
  _assign(src: this): void;
}

/** How a tensor was computed, for backward. */
export interface GradNode<T = GraphTensor> {
  /** Op name, for error messages and debugging. */
  readonly op: string;
  readonly inputs: readonly T[];
  /**
   * Maps d(loss)/d(output) to d(loss)/d(input) for each input (null where no gradient flows). A method
   * signature: its parameter is compared both ways, so a node of `Tensor`s is a node of GraphTensors.
   */
  backward(grad: T): (T | null)[];
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
function topoOrder<T extends GraphTensor>(root: T): T[] {
  const order: T[] = [];
  const seen = new Set<T>();
  // Iterative DFS: model graphs are deep enough to overflow the call stack.
  const stack: [T, number][] = [[root, 0]];
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

const scopes: Set<GraphTensor>[] = [];

/** @internal called for every new tensor: records it in the innermost open scope. */
export function trackTensor(t: GraphTensor): void {
  if (scopes.length > 0) scopes[scopes.length - 1].add(t);
}

/**
 * Adds to `out` the tensors of `scope` inside a returned value (a tensor, or arrays / plain objects
 * holding them). Membership in the scope is what marks an object as one of its tensors, so no class
 * check is needed; a tensor is not a plain object, so the walk never looks inside one.
 */
function collectScoped(
  value: unknown,
  scope: ReadonlySet<GraphTensor>,
  out: Set<GraphTensor>,
  depth = 0,
): void {
  if (depth > 8 || value === null || typeof value !== "object") return;
  if (scope.has(value as GraphTensor)) {
    out.add(value as GraphTensor);
    return;
  }
  const items = Array.isArray(value)
    ? value
    : Object.getPrototypeOf(value) === Object.prototype
    ? Object.values(value)
    : [];
  for (const v of items) collectScoped(v, scope, out, depth + 1);
}

/**
 * Runs `fn` and frees every tensor it created except those in its result (a Tensor, or arrays /
 * plain objects of them), those marked with {@link keep}, and gradients left on leaves by backward.
 * `fn` must be synchronous: work after an await would escape the scope.
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<GraphTensor>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (err) {
    scopes.pop();
    // A scope that threw frees what it made too (as tf.tidy does): a step refused midway, by a memory
    // limit say, must leave the device as it found it so the next step can run.
    const outer = scopes[scopes.length - 1];
    for (const t of scope) {
      if (t._retained) outer?.add(t);
      else t.dispose();
    }
    throw err;
  }
  scopes.pop();
  if (result instanceof Promise) {
    throw new AutogradError("tidy: the function returned a Promise; tidy scopes must be synchronous");
  }
  const survivors = new Set<GraphTensor>();
  collectScoped(result, scope, survivors);
  const outer = scopes[scopes.length - 1];
  for (const t of scope) {
    if (survivors.has(t) || t._retained) outer?.add(t);
    else t.dispose();
  }
  return result;
}

/** Exempts `t` from every enclosing {@link tidy} scope (e.g. optimizer state); returns it. */
export function keep<T extends GraphTensor>(t: T): T {
  t._retained = true;
  return t;
}

/**
 * Frees every intermediate tensor of the graph that produced `root` (not leaves, not `root` itself,
 * not tensors in `except`): activations a training step no longer needs once backward has run.
 */
export function disposeGraph<T extends GraphTensor>(root: T, except: T[] = []): void {
  const spare = new Set<T>([root, ...except]);
  const seen = new Set<T>();
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
export interface BackwardOps<T extends GraphTensor> {
  /** a + b (same shape). */
  add(a: T, b: T): T;
  /** A copy of the values, outside the graph. */
  copy(a: T): T;
}

/**
 * Back-propagates `grad` (d loss / d root) through the graph that produced `root`. Leaves accumulate
 * into `.grad` in place (the tensor object a caller holds keeps its identity, like PyTorch); every
 * temporary made on the way is freed before returning.
 *
 * Temporaries are freed as soon as nothing can read them any more, not at the end: what a node's
 * backward made besides the gradients it returned right after it returns, and each gradient once the
 * node it belongs to has run (or once it was summed into another). So the backward's peak memory is the
 * forward's saved tensors plus about one node's working set, as in PyTorch, instead of every gradient of
 * the whole graph at once.
 */
export function runBackward<T extends GraphTensor>(root: T, grad: T, ops: BackwardOps<T>): void {
  const order = topoOrder(root);
  const grads = new Map<T, T>([[root, grad]]);
  // How many entries of `grads` hold each gradient tensor (one tensor may be the gradient of several
  // inputs, e.g. when a node passes its gradient through to two of them).
  const refs = new Map<T, number>([[grad, 1]]);
  const claimed = new Set<T>();
  const scope = new Set<GraphTensor>();
  const prev = gradEnabled;
  gradEnabled = false;
  scopes.push(scope);
  /** Frees `t` if it is this backward's temporary that no gradient entry and no leaf holds. */
  const release = (t: T) => {
    if ((refs.get(t) ?? 0) > 0 || claimed.has(t) || t._retained || !scope.has(t)) return;
    scope.delete(t);
    t.dispose();
  };
  const unref = (t: T) => {
    const n = (refs.get(t) ?? 0) - 1;
    if (n > 0) refs.set(t, n);
    else refs.delete(t);
  };
  try {
    for (let i = order.length - 1; i >= 0; i--) {
      const t = order[i];
      const g = grads.get(t);
      if (g === undefined) continue;
      grads.delete(t);
      unref(g);
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
        release(g);
        continue;
      }
      // The node's backward runs in a scope of its own: what it makes and does not return is freed now.
      const nodeScope = new Set<GraphTensor>();
      scopes.push(nodeScope);
      let inGrads: (T | null)[];
      try {
        inGrads = t._node.backward(g);
      } catch (err) {
        // A node's backward that failed midway (an op past the memory limit) frees what it made so far.
        for (const x of nodeScope) if (!x._retained) x.dispose();
        throw err;
      } finally {
        scopes.pop();
      }
      const returned = new Set<GraphTensor>(inGrads.filter((x): x is T => x !== null && x !== undefined));
      for (const x of nodeScope) {
        if (returned.has(x)) scope.add(x);
        else if (!x._retained) x.dispose();
      }
      t._node.inputs.forEach((inp, j) => {
        const ig = inGrads[j];
        if (ig === null || ig === undefined || !inp.requiresGrad) return;
        const have = grads.get(inp);
        if (have === undefined) {
          grads.set(inp, ig);
          refs.set(ig, (refs.get(ig) ?? 0) + 1);
          return;
        }
        const sum = ops.add(have, ig);
        grads.set(inp, sum);
        refs.set(sum, (refs.get(sum) ?? 0) + 1);
        unref(have);
        release(have);
      });
      // Gradients computed for inputs that take none, and the node's own gradient, once unused.
      for (const x of returned) release(x as T);
      release(g);
    }
  } finally {
    gradEnabled = prev;
    scopes.pop();
    for (const t of scope) if (!t._retained) t.dispose();
  }
}
