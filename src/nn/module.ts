/**
 * `Module`: PyTorch's naming and registration rules in JS. A module's children are its own properties
 * holding a Module (or an array of Modules, named by index), and its parameters are its own properties
 * holding a Tensor, all in assignment order. Names are dotted paths exactly as PyTorch prints them.
 * @module
 */
import { allocating, Tensor } from "../tensor/mod.ts";
import type { Device } from "../backend/device.ts";
import { ConfigError, DeviceError, ShapeError } from "../core/errors.ts";

/** A value accepted by {@link Module.loadStateDict}: a tensor, or raw row-major values with a shape. */
export type StateValue = Tensor | { shape: readonly number[]; data: ArrayLike<number> };

/** Base class of layers and models. */
export class Module {
  /**
   * Children and parameters are plain properties (`m.q_proj = new Linear(8, 8)`), as in PyTorch, so a
   * bare Module accepts any property name.
   */
  // deno-lint-ignore no-explicit-any
  [name: string]: any;
  /** Training mode (dropout active); set with {@link train} / {@link eval}. */
  training = true;
  #buffers = new Map<string, { tensor: Tensor; persistent: boolean }>();

  /** Registers a tensor that is state but not a parameter; non-persistent ones stay out of stateDict. */
  registerBuffer(name: string, tensor: Tensor, persistent = true): void {
    this.#buffers.set(name, { tensor, persistent });
  }

  /** A registered buffer by name. */
  buffer(name: string): Tensor | undefined {
    return this.#buffers.get(name)?.tensor;
  }

  /** Direct children in assignment order, arrays expanded as `name.i`. */
  namedChildren(): [string, Module][] {
    const out: [string, Module][] = [];
    for (const [key, value] of Object.entries(this)) {
      if (value instanceof Module) out.push([key, value]);
      else if (Array.isArray(value) && value.length > 0 && value.every((v) => v instanceof Module)) {
        value.forEach((m, i) => out.push([`${key}.${i}`, m]));
      }
    }
    return out;
  }

  /** Every module of the tree with its dotted path, this one first as "" (like PyTorch). */
  namedModules(prefix = ""): [string, Module][] {
    const out: [string, Module][] = [[prefix, this]];
    const seen = new Set<Module>([this]);
    const walk = (m: Module, p: string) => {
      for (const [name, child] of m.namedChildren()) {
        if (seen.has(child)) continue; // shared submodules are listed once, like PyTorch
        seen.add(child);
        const full = p === "" ? name : `${p}.${name}`;
        out.push([full, child]);
        walk(child, full);
      }
    };
    walk(this, prefix);
    return out;
  }

  /** This module's own parameters (not its children's). */
  ownParameters(): [string, Tensor][] {
    return Object.entries(this).filter((e): e is [string, Tensor] => e[1] instanceof Tensor);
  }

  /** All parameters with dotted names, frozen ones included, in registration order; shared ones once. */
  namedParameters(): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    const seen = new Set<Tensor>();
    for (const [prefix, m] of this.namedModules()) {
      for (const [name, t] of m.ownParameters()) {
        if (seen.has(t)) continue;
        seen.add(t);
        out.push([prefix === "" ? name : `${prefix}.${name}`, t]);
      }
    }
    return out;
  }

  /** All parameters, frozen ones included (check `requiresGrad`). */
  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  /** Parameters that require grad. */
  trainableParameters(): Tensor[] {
    return this.parameters().filter((t) => t.requiresGrad);
  }

  /** Parameters and persistent buffers by dotted name. */
  stateDict(): Record<string, Tensor> {
    const out: Record<string, Tensor> = Object.create(null);
    for (const [prefix, m] of this.namedModules()) {
      const join = (n: string) => (prefix === "" ? n : `${prefix}.${n}`);
      for (const [name, t] of m.ownParameters()) out[join(name)] ??= t;
      for (const [name, b] of m.#buffers) if (b.persistent) out[join(name)] ??= b.tensor;
    }
    return out;
  }

  /**
   * Copies values into the existing tensors in place (identity and requiresGrad kept).
   * With `strict` (default), missing keys, unexpected keys and shape mismatches are errors.
   */
  loadStateDict(
    sd: Record<string, StateValue>,
    opts: { strict?: boolean } = {},
  ): { missing: string[]; unexpected: string[] } {
    const strict = opts.strict ?? true;
    const own = this.stateDict();
    const missing = Object.keys(own).filter((k) => !Object.hasOwn(sd, k));
    const unexpected = Object.keys(sd).filter((k) => !(k in own));
    if (strict && (missing.length > 0 || unexpected.length > 0)) {
      const list = (xs: string[]) => xs.slice(0, 8).join(", ") + (xs.length > 8 ? `, … (${xs.length})` : "");
      throw new ShapeError(
        `loadStateDict: ${missing.length ? `missing keys: ${list(missing)}` : ""}` +
          `${missing.length && unexpected.length ? "; " : ""}${
            unexpected.length ? `unexpected keys: ${list(unexpected)}` : ""
          }`,
      );
    }
    // Validate every shape before copying anything, so a bad dict changes nothing.
    const todo: [Tensor, StateValue, string][] = [];
    for (const [key, target] of Object.entries(own)) {
      if (!Object.hasOwn(sd, key)) continue;
      const src = sd[key];
      const shape = src.shape;
      if (shape.length !== target.shape.length || shape.some((d, i) => d !== target.shape[i])) {
        throw new ShapeError(
          `loadStateDict: ${key} has shape [${shape}] but the module expects [${target.shape}]`,
        );
      }
      if (!(src instanceof Tensor) && src.data.length !== target.size) {
        throw new ShapeError(`loadStateDict: ${key} has ${src.data.length} values for shape [${shape}]`);
      }
      if (src instanceof Tensor) checkReadable(src, target, key);
      todo.push([target, src, key]);
    }
    for (const [target, src, key] of todo) copyInto(target, src, key);
    return { missing, unexpected };
  }

  /** Moves every parameter and buffer to `device` in place; returns this. */
  async to(device: Device): Promise<this> {
    const tensors = new Set<Tensor>(this.parameters());
    for (const [, m] of this.namedModules()) for (const [, b] of m.#buffers) tensors.add(b.tensor);
    for (const t of tensors) {
      if (t.device === device || t.isMeta) continue;
      device.checkDType(t.dtype, "Module.to");
      const values = await t.data();
      t._replaceStorage(
        allocating("Module.to", t.shape, t.dtype, () => device.backend.upload(values, t.dtype)),
        device,
      );
    }
    return this;
  }

  /** Training mode on (recursively); returns this. */
  train(mode = true): this {
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }

  /** Evaluation mode (dropout off); returns this. */
  eval(): this {
    return this.train(false);
  }

  /** Sets requiresGrad on every parameter; returns this. */
  requiresGrad_(flag: boolean): this {
    for (const p of this.parameters()) p.requiresGrad = flag;
    return this;
  }

  /**
   * This module's own settings as PyTorch's `extra_repr` shows them (`in_features=64, out_features=32,
   * bias=True` for a Linear); "" when it has none. Layers override it; {@link toString} prints it.
   */
  extraRepr(): string {
    return "";
  }

  /**
   * PyTorch's `print(model)`: the class name, {@link extraRepr}, and every child as `(name): ...` indented
   * below it, arrays of modules as a `ModuleList` whose runs of identical children are folded into
   * `(0-3): 4 x Child(...)` as PyTorch folds them.
   */
  toString(): string {
    return moduleRepr(this);
  }

  /** What Deno's console.log and Deno.inspect show: {@link toString}. */
  [Symbol.for("Deno.customInspect")](): string {
    return this.toString();
  }

  /** What Node's (and Bun's) console.log and util.inspect show: {@link toString}. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }

  /** The computation; subclasses override it (calling it on one that does not is a ConfigError). */
  forward(..._args: unknown[]): unknown {
    throw new ConfigError(
      `${this.constructor.name}.forward is not implemented: a Module subclass defines forward(...)`,
    );
  }
}

/**
 * A number as Python's `repr` writes a float, so layer settings print as PyTorch prints them: `1.0`,
 * `0.5`, `1e-06` (exponent form below 1e-4 and from 1e16 up, two exponent digits at least).
 */
export function reprFloat(x: number): string {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? "nan" : x > 0 ? "inf" : "-inf";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const exponent = Math.floor(Math.log10(Math.abs(x)));
  if (exponent < -4 || exponent >= 16) {
    const [mantissa, e] = x.toExponential().split("e");
    return `${mantissa}e${e[0]}${e.slice(1).padStart(2, "0")}`;
  }
  const s = String(x);
  return Number.isInteger(x) ? `${s}.0` : s;
}

/** PyTorch's `_addindent`: every line but the first shifted right by `spaces`. */
function indentTail(text: string, spaces: number): string {
  return text.split("\n").join("\n" + " ".repeat(spaces));
}

/** The class name a module prints under (a bare `new Module()` prints as `Module`). */
function moduleName(m: Module): string {
  return m.constructor?.name || "Module";
}

/** PyTorch's ModuleList repr: consecutive equal children folded into `(i-j): n x Child`. */
function moduleListRepr(items: readonly Module[]): string {
  const reprs = items.map(moduleRepr);
  const lines: string[] = [];
  for (let i = 0; i < reprs.length;) {
    let j = i;
    while (j + 1 < reprs.length && reprs[j + 1] === reprs[i]) j++;
    const label = j === i ? `(${i})` : `(${i}-${j}): ${j - i + 1} x`;
    lines.push(`${label}${j === i ? ":" : ""} ${indentTail(reprs[i], 2)}`);
    i = j + 1;
  }
  return `ModuleList(\n  ${lines.join("\n  ")}\n)`;
}

/** The printed tree of `m` (see {@link Module.toString}). */
function moduleRepr(m: Module): string {
  const extra = m.extraRepr();
  const extraLines = extra === "" ? [] : extra.split("\n");
  const childLines: string[] = [];
  for (const [key, value] of Object.entries(m)) {
    if (value instanceof Module) childLines.push(`(${key}): ${indentTail(moduleRepr(value), 2)}`);
    else if (Array.isArray(value) && value.length > 0 && value.every((v) => v instanceof Module)) {
      childLines.push(`(${key}): ${indentTail(moduleListRepr(value), 2)}`);
    }
  }
  const lines = [...extraLines, ...childLines];
  if (lines.length === 0) return `${moduleName(m)}()`;
  if (extraLines.length === 1 && childLines.length === 0) return `${moduleName(m)}(${extraLines[0]})`;
  return `${moduleName(m)}(\n  ${lines.join("\n  ")}\n)`;
}

/**
 * Throws unless copyInto can read `src` into `target`: a disposed source, or one on another device that
 * is not the CPU, must fail validation rather than halfway through the copies.
 */
function checkReadable(src: Tensor, target: Tensor, key: string): void {
  src.storage(`loadStateDict(${key})`);
  if (src.device !== target.device && src.device.kind !== "cpu") {
    const sameName = String(src.device) === String(target.device)
      ? " (a different device of the same name)"
      : "";
    throw new DeviceError(
      `loadStateDict: ${key} lives on ${src.device} but the module is on ${target.device}${sameName}; ` +
        `move it first`,
    );
  }
}

function copyInto(target: Tensor, src: StateValue, key: string): void {
  const be = target.device.backend;
  if (src instanceof Tensor) {
    if (src.device === target.device) {
      const s = src.storage(`loadStateDict(${key})`);
      target._replaceStorage(src.dtype === target.dtype ? be.affine(s, 1, 0) : be.cast(s, target.dtype));
      return;
    }
    target._replaceStorage(be.upload(src.dataSync(), target.dtype));
    return;
  }
  target._replaceStorage(be.upload(src.data, target.dtype));
}
