/**
 * The pipeline cache: one compute pipeline per kernel record × specialisation (element types, flags,
 * tile sizes), compiled on first use from the record's template, its includes and the `struct Params`
 * generated from its parameter layout; one bind-group layout per record, from its bindings.
 * @module
 */
import { WGSL_SOURCES } from "./wgsl_sources.ts";
import { expandTemplate, type TemplateParams } from "./template.ts";
import { type CompiledKernel, GPU_FLAGS } from "./runtime.ts";
import { type KernelTemplate, paramsWgsl } from "../kernels/record.ts";
import { ConfigError } from "../../core/errors.ts";

/** Invocations per workgroup of the element-wise and row kernels. */
export const WORKGROUP_SIZE = 256;

/** The text of `wgsl/<name>.wgsl` (embedded by scripts/gen_wgsl.ts). */
function source(name: string, record: string): string {
  const text = WGSL_SOURCES[name];
  if (text === undefined) {
    throw new ConfigError(`kernel ${record}: no template wgsl/${name}.wgsl (run scripts/gen_wgsl.ts)`);
  }
  return text;
}

/** The WGSL text of a kernel specialisation: common helpers, the uniform block, includes, template. */
export function kernelSource(record: KernelTemplate, params: TemplateParams): string {
  const parts = ["common", ...(record.includes ?? []), record.template].map((name) =>
    expandTemplate(source(name, record.name), params, `wgsl/${name}.wgsl`)
  );
  const body = [parts[0], paramsWgsl(record.params), ...parts.slice(1)].join("\n");
  return usesF16(body) ? `enable f16;\n\n${body}` : body;
}

/**
 * Whether WGSL code names the f16 type (comments aside), and so needs `enable f16;`, which only adapters
 * with shader-f16 accept. Deciding by the code rather than by a parameter valued "f16": widen_half's
 * FORMAT "f16" decodes half words with integer arithmetic alone, and failed to compile on Dawn without
 * shader-f16 (every F16 checkpoint loaded into f32 there) while it had the directive.
 */
export function usesF16(code: string): boolean {
  return /\bf16\b/.test(code.replace(/\/\/.*$/gm, ""));
}

/**
 * One level of the lookup tree of a record's pipelines: the specialisation's values in their key order
 * lead to the pipeline, so a lookup walks a few Maps instead of serialising the specialisation.
 */
interface SpecNode {
  /** The next level by the next key's name, then by its value (specialisations may differ in keys). */
  next: Map<string, Map<unknown, SpecNode>>;
  kernel: CompiledKernel | null;
}

const newNode = (): SpecNode => ({ next: new Map(), kernel: null });

/** Compiles pipelines on first use and keeps them. */
export class PipelineCache {
  readonly #device: GPUDevice;
  readonly #kernels = new Map<string, CompiledKernel>();
  readonly #tree = new Map<KernelTemplate, SpecNode>();
  readonly #layouts = new Map<string, GPUBindGroupLayout>();
  readonly #onError: (message: string) => void;

  /** @param onError receives compile and validation errors of new pipelines (they surface later). */
  constructor(device: GPUDevice, onError: (message: string) => void) {
    this.#device = device;
    this.#onError = onError;
  }

  /** The pipeline of `record` specialised with `params`. */
  get(record: KernelTemplate, params: TemplateParams): CompiledKernel {
    let node: SpecNode | undefined = this.#tree.get(record);
    if (node === undefined) {
      node = newNode();
      this.#tree.set(record, node);
    }
    for (const key in params) {
      let values: Map<unknown, SpecNode> | undefined = node.next.get(key);
      if (values === undefined) {
        values = new Map();
        node.next.set(key, values);
      }
      const value = params[key];
      let next: SpecNode | undefined = values.get(value);
      if (next === undefined) {
        next = newNode();
        values.set(value, next);
      }
      node = next;
    }
    return node.kernel ??= this.#byText(record, params);
  }

  /** The lookup by the specialisation's text (first use of a specialisation in a key order). */
  #byText(record: KernelTemplate, params: TemplateParams): CompiledKernel {
    const key = `${record.name}|${JSON.stringify(params)}`;
    let k = this.#kernels.get(key);
    if (k === undefined) {
      k = this.#compile(record, params);
      this.#kernels.set(key, k);
    }
    return k;
  }

  /** Number of distinct pipelines compiled so far. */
  get size(): number {
    return this.#kernels.size;
  }

  /** The keys (record name | specialisation) of the pipelines compiled so far, for tests of the cache. */
  keys(): string[] {
    return [...this.#kernels.keys()];
  }

  #layout(record: KernelTemplate): GPUBindGroupLayout {
    let layout = this.#layouts.get(record.name);
    if (layout === undefined) {
      const entries: GPUBindGroupLayoutEntry[] = [
        // The uniform slot of each dispatch is a dynamic offset, so bind groups do not depend on it.
        {
          binding: 0,
          visibility: GPU_FLAGS.STAGE_COMPUTE,
          buffer: { type: "uniform", hasDynamicOffset: true },
        },
        ...record.bindings.map((b, i): GPUBindGroupLayoutEntry => ({
          binding: i + 1,
          visibility: GPU_FLAGS.STAGE_COMPUTE,
          buffer: { type: b.access === "read" ? "read-only-storage" : "storage" },
        })),
      ];
      layout = this.#device.createBindGroupLayout({ label: record.name, entries });
      this.#layouts.set(record.name, layout);
    }
    return layout;
  }

  #compile(record: KernelTemplate, params: TemplateParams): CompiledKernel {
    const code = kernelSource(record, params);
    const label = `${record.name} ${JSON.stringify(params)}`;
    const layout = this.#layout(record);
    this.#device.pushErrorScope("validation");
    const module = this.#device.createShaderModule({ label, code });
    const pipeline = this.#device.createComputePipeline({
      label,
      layout: this.#device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: "main" },
    });
    this.#device.popErrorScope().then(
      (e) => e && this.#onError(`kernel ${label} failed to build: ${e.message}`),
      () => {}, // the device was lost meanwhile; that is reported on its own
    );
    return { name: record.name, pipeline, layout };
  }
}
