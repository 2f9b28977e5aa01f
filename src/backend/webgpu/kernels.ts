/**
 * The kernel table (which template, which bindings) and the pipeline cache: one compute pipeline per
 * kernel × specialisation (element types, flags, tile sizes), compiled on first use.
 * @module
 */
import { WGSL_SOURCES } from "./wgsl_sources.ts";
import { expandTemplate, type TemplateParams } from "./template.ts";
import { GPU_FLAGS } from "./runtime.ts";

/** How a kernel uses a storage binding. Binding 0 is always the uniform parameter block. */
export type BindingKind = "read" | "write";

/** Templates and their storage bindings (1, 2, ... in order). */
export const KERNELS = {
  fill: ["write"],
  cast: ["read", "write"],
  unary: ["read", "write"],
  affine: ["read", "write"],
  binary: ["read", "read", "write"],
  permute: ["read", "write"],
  reduce_rows: ["read", "write"],
  reduce_cols: ["read", "write"],
  softmax: ["read", "write"],
  // The two GEMM schedules (gemm_plan.ts): A, B, LoRA P, LoRA Q, bias, C; unused ones bind a dummy.
  matmul: ["read", "read", "read", "read", "read", "write"],
  matmul_direct: ["read", "read", "read", "read", "read", "write"],
  splitk_reduce: ["read", "write"],
  gather_rows: ["read", "read", "write"],
  scatter_add_rows: ["read", "read", "write"],
  pick: ["read", "read", "write"],
  unpick: ["read", "read", "write"],
  dropout_mask: ["write"],
} as const satisfies Record<string, readonly BindingKind[]>;

/** Name of a kernel template in `wgsl/`. */
export type KernelName = keyof typeof KERNELS;

/** Invocations per workgroup of the element-wise and row kernels. */
export const WORKGROUP_SIZE = 256;

/** Largest rank the broadcasting and permute kernels take (after merging contiguous axes). */
export const MAX_RANK = 8;

/** A compiled kernel: its pipeline and the layout its bind groups use. */
export interface Kernel {
  readonly name: KernelName;
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
}

/** The WGSL text of a kernel specialisation: common helpers + template, expanded. */
export function kernelSource(name: KernelName, params: TemplateParams): string {
  const common = expandTemplate(WGSL_SOURCES.common, params, "wgsl/common.wgsl");
  const body = `${common}\n${expandTemplate(WGSL_SOURCES[name], params, `wgsl/${name}.wgsl`)}`;
  const needsF16 = Object.values(params).includes("f16");
  return needsF16 ? `enable f16;\n\n${body}` : body;
}

/** Compiles pipelines on first use and keeps them. */
export class PipelineCache {
  readonly #device: GPUDevice;
  readonly #kernels = new Map<string, Kernel>();
  readonly #layouts = new Map<KernelName, GPUBindGroupLayout>();
  readonly #onError: (message: string) => void;

  /** @param onError receives compile and validation errors of new pipelines (they surface later). */
  constructor(device: GPUDevice, onError: (message: string) => void) {
    this.#device = device;
    this.#onError = onError;
  }

  /** The pipeline of `name` specialised with `params`. */
  get(name: KernelName, params: TemplateParams): Kernel {
    const key = `${name}|${JSON.stringify(params)}`;
    let k = this.#kernels.get(key);
    if (k === undefined) {
      k = this.#compile(name, params);
      this.#kernels.set(key, k);
    }
    return k;
  }

  /** Number of distinct pipelines compiled so far. */
  get size(): number {
    return this.#kernels.size;
  }

  #layout(name: KernelName): GPUBindGroupLayout {
    let layout = this.#layouts.get(name);
    if (layout === undefined) {
      const entries: GPUBindGroupLayoutEntry[] = [
        { binding: 0, visibility: GPU_FLAGS.STAGE_COMPUTE, buffer: { type: "uniform" } },
        ...KERNELS[name].map((kind, i): GPUBindGroupLayoutEntry => ({
          binding: i + 1,
          visibility: GPU_FLAGS.STAGE_COMPUTE,
          buffer: { type: kind === "read" ? "read-only-storage" : "storage" },
        })),
      ];
      layout = this.#device.createBindGroupLayout({ label: name, entries });
      this.#layouts.set(name, layout);
    }
    return layout;
  }

  #compile(name: KernelName, params: TemplateParams): Kernel {
    const code = kernelSource(name, params);
    const label = `${name} ${JSON.stringify(params)}`;
    const layout = this.#layout(name);
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
    return { name, pipeline, layout };
  }
}
