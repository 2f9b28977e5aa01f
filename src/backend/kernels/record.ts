/**
 * The kernel registry's record type. One record per GPU kernel holds everything about it that is not the
 * WGSL body: which template (`wgsl/<template>.wgsl`), which shared WGSL it includes, its storage bindings,
 * its uniform parameter layout (declared once: the WGSL `struct Params` is generated from it), how a call
 * specialises the template, its dispatch geometry and its CPU reference. Both backends run any record
 * through `Backend.run`: the CPU calls {@link KernelRecord.reference}, WebGPU compiles the template and
 * dispatches it. Adding a kernel is one record file here plus one `.wgsl` file (docs/DESIGN.md).
 *
 * Records import nothing of the backends, so every layer above may hold them.
 * @module
 */
import type { DType, HostArray } from "../../core/dtype.ts";
import { f32Bits } from "../../core/dtype.ts";
import { ConfigError, ShapeError } from "../../core/errors.ts";

/** A value a template is specialised on: a type name or flag string, an integer, or a boolean. */
export type SpecValue = string | number | boolean;

/** Template constants of one specialisation (element types, flags, tile sizes). */
export type Specialisation = Readonly<Record<string, SpecValue>>;

/**
 * One field of a uniform parameter block: a 32-bit unsigned integer, a 32-bit float, or an array of
 * `vec4<u32>` (`count` of them, 16-byte aligned as WGSL lays uniform arrays out).
 */
export type ParamField =
  | { readonly name: string; readonly type: "u32" | "f32" }
  | { readonly name: string; readonly type: "vec4u"; readonly count: number };

/** A uniform block's fields in WGSL order. */
export type ParamLayout = readonly ParamField[];

/** Values of a uniform block by field name (arrays are zero-padded to the field's length). */
export type ParamValues = Readonly<Record<string, number | readonly number[]>>;

/** How a kernel uses one storage binding (binding 0 is always the uniform block `p`). */
export interface BindingSpec {
  /** The WGSL variable's name. */
  readonly name: string;
  readonly access: "read" | "write";
}

/** A dispatch's shape: one invocation per element (`elements`) or one workgroup per row (`rows`). */
export type Geometry = { readonly elements: number } | { readonly rows: number };

/** An output a call produces: its element count and dtype, and words naming it for size-limit errors. */
export interface OutputSpec {
  readonly size: number;
  readonly dtype: DType;
  readonly what: string;
}

/** Host integer arrays a kernel reads (ids, index lists): uploaded as scratch buffers on the GPU. */
export type HostWords = Int32Array | Uint32Array;

/**
 * What a GPU template needs from its record, shared by every kernel, single-dispatch or not: the GEMM
 * templates are dispatched by the GEMM planner (webgpu/gemm.ts) and carry only this part.
 */
export interface KernelTemplate {
  /** Pipeline-cache key and label; unique among records. */
  readonly name: string;
  /** `wgsl/<template>.wgsl`, e.g. "unary" or "gemm/tiled". */
  readonly template: string;
  /** Shared WGSL (`wgsl/<include>.wgsl`) placed after `common` and before the template. */
  readonly includes?: readonly string[];
  /** Storage bindings 1, 2, ... in order. */
  readonly bindings: readonly BindingSpec[];
  /** The uniform block; generated into WGSL as `struct Params` bound at 0 as `p`. */
  readonly params: ParamLayout;
}

/**
 * A single-dispatch kernel: the template part plus what a call of it means.
 * @typeParam A the call's arguments (sizes, flags, scalars, host index lists)
 */
export interface KernelRecord<A> extends KernelTemplate {
  /** Throws a ShapeError (or DTypeError) naming the op when `inputs` and `args` disagree. */
  check?(inputs: readonly { size: number; dtype: DType }[], args: A): void;
  /** The outputs (the storage bindings after the inputs and scratch words). */
  outputs(inputs: readonly { size: number; dtype: DType }[], args: A): readonly OutputSpec[];
  /** The template constants of this call (WG is added by the backend). */
  specialise(inputs: readonly { dtype: DType }[], args: A): Specialisation;
  /** The uniform block's values (`outputs` as {@link outputs} gave them). */
  uniforms(args: A, outputs: readonly OutputSpec[]): ParamValues;
  /** Host integer arrays bound after the storage inputs (ids, index lists). */
  scratch?(args: A): readonly HostWords[];
  /** How many invocations or workgroups the dispatch needs. */
  geometry(args: A, outputs: readonly OutputSpec[]): Geometry;
  /**
   * The CPU reference: outputs from the inputs' values, every sum in f64; the backend rounds each
   * output once to its dtype.
   */
  reference(inputs: readonly HostArray[], args: A, outputs: readonly OutputSpec[]): HostArray[];
}

/** Bytes of one field and its alignment in a uniform block. */
function fieldShape(f: ParamField): { bytes: number; align: number } {
  return f.type === "vec4u" ? { bytes: 16 * f.count, align: 16 } : { bytes: 4, align: 4 };
}

/** The WGSL declaration of a layout: `struct Params { ... }` and its binding as `p`. */
export function paramsWgsl(layout: ParamLayout): string {
  const fields = layout.map((f) =>
    `  ${f.name}: ${f.type === "vec4u" ? `array<vec4<u32>, ${f.count}>` : f.type},`
  );
  // WGSL has no empty structs; a kernel without parameters still gets a block (never read).
  if (fields.length === 0) fields.push("  unused: u32,");
  return [
    "// Generated from the kernel record's parameter layout (src/backend/kernels/).",
    "struct Params {",
    ...fields,
    "}",
    "",
    "@group(0) @binding(0) var<uniform> p: Params;",
  ].join("\n");
}

/** Words of a uniform block laid out as WGSL does (fields aligned, floats as their bit patterns). */
export function packParams(layout: ParamLayout, values: ParamValues, op: string): number[] {
  const words: number[] = [];
  for (const f of layout) {
    const { bytes, align } = fieldShape(f);
    while ((words.length * 4) % align !== 0) words.push(0);
    const v = values[f.name];
    if (v === undefined) throw new ConfigError(`${op}: parameter ${f.name} has no value`);
    if (f.type === "vec4u") {
      const list = typeof v === "number" ? [v] : v;
      if (list.length > bytes / 4) {
        throw new ConfigError(`${op}: parameter ${f.name} has ${list.length} values, room for ${bytes / 4}`);
      }
      for (let i = 0; i < bytes / 4; i++) words.push((list[i] ?? 0) >>> 0);
    } else {
      if (typeof v !== "number") throw new ConfigError(`${op}: parameter ${f.name} must be one number`);
      words.push(f.type === "f32" ? f32Bits(v) : v >>> 0);
    }
  }
  for (const name of Object.keys(values)) {
    if (!layout.some((f) => f.name === name)) {
      throw new ConfigError(`${op}: parameter ${name} is not in the layout of ${layout.map((f) => f.name)}`);
    }
  }
  return words;
}

/** Every `p.<field>` a WGSL text reads, for checking templates against their layouts. */
export function paramsRead(wgsl: string): Set<string> {
  return new Set([...wgsl.matchAll(/\bp\.([A-Za-z_]\w*)/g)].map((m) => m[1]));
}

/** −Infinity as a parameter, for max-reductions' start: WGSL rejects constant infinities in shaders. */
export const NEG_INF_FIELD: ParamField = { name: "neg_inf", type: "f32" };

/** Largest rank the broadcasting and permute kernels take (after merging contiguous axes). */
export const MAX_RANK = 8;

/** Throws a ShapeError naming `op` when a storage of `size` elements is not `expected` long. */
export function expectSize(size: number, expected: number, op: string, what: string): void {
  if (size !== expected) throw new ShapeError(`${op}: ${what} has ${size} elements, expected ${expected}`);
}
