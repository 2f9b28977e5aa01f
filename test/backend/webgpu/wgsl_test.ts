/**
 * The WGSL sources: the template preprocessor, the embedded copy and its staleness check, every kernel
 * specialisation compiling, and the WGSL dropout hash being bit-identical to the TypeScript one.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { evaluate, expandTemplate, TemplateError } from "../../../src/backend/webgpu/template.ts";
import { kernelSource, usesF16 } from "../../../src/backend/webgpu/pipelines.ts";
import { gemmSpecialisation, SCHEDULE_TEMPLATE } from "../../../src/backend/webgpu/gemm.ts";
import { GEMM_DIRECT_PAIR } from "../../../src/backend/kernels/gemm.ts";
import { DIRECT_PROFILE, laneTile, TILED_PROFILE } from "../../../src/backend/webgpu/gemm_plan.ts";
import {
  type KernelRecord,
  type KernelTemplate,
  MAX_RANK,
  packParams,
  type ParamLayout,
  paramsRead,
} from "../../../src/backend/kernels/record.ts";
import { WGSL_SOURCES } from "../../../src/backend/webgpu/wgsl_sources.ts";
import { readSources, renderSources } from "../../../scripts/gen_wgsl.ts";
import { dropoutHash } from "../../../src/core/random.ts";
import type { WebGpuBackend } from "../../../src/backend/webgpu/backend.ts";
import type { TemplateParams } from "../../../src/backend/webgpu/template.ts";
import { gpuTest } from "./gpu.ts";

const ROOT = new URL("../../../", import.meta.url);

Deno.test("template: ${} substitutes names and integer arithmetic", () => {
  const out = expandTemplate("array<${T}, ${BK * BM / 4}> ${N - 1}u ${-N % 3}", {
    T: "f16",
    BK: 16,
    BM: 64,
    N: 5,
  });
  assert.equal(out, "array<f16, 256> 4u -2");
});

Deno.test("template: //#if, //#elif, //#else pick one branch; //#for unrolls with the loop variable", () => {
  const src = [
    '//#if OP == "sum"',
    "a",
    '//#elif OP == "max" && FAST',
    "b",
    "//#else",
    "c",
    "//#end",
    "//#for i in 0..2",
    "//#for j in i..2",
    "v${i}${j}",
    "//#end",
    "//#end",
  ].join("\n");
  assert.equal(expandTemplate(src, { OP: "sum", FAST: false }), "a\nv00\nv01\nv11");
  assert.equal(expandTemplate(src, { OP: "max", FAST: true }), "b\nv00\nv01\nv11");
  assert.equal(expandTemplate(src, { OP: "max", FAST: false }), "c\nv00\nv01\nv11");
});

Deno.test("template: precedence and comparison follow the usual rules", () => {
  assert.equal(evaluate("1 + 2 * 3", {}), 7);
  assert.equal(evaluate("(1 + 2) * 3", {}), 9);
  assert.equal(evaluate("2 < 3 && !(1 == 2)", {}), true);
  assert.equal(evaluate("7 / 2", {}), 3);
});

Deno.test("template: unknown names, bad expressions and unbalanced directives are TemplateErrors", () => {
  assert.throws(
    () => expandTemplate("${NOPE}", {}),
    (e) => e instanceof TemplateError && /unknown name NOPE/.test(e.message),
  );
  assert.throws(() => expandTemplate("${1 +}", {}), TemplateError);
  assert.throws(
    () => expandTemplate("//#if true\nx", {}),
    (e) => e instanceof TemplateError && /no \/\/#end/.test(e.message),
  );
  assert.throws(() => expandTemplate("//#end", {}), TemplateError);
  assert.throws(() => expandTemplate("//#for i 0..2\n//#end", {}), TemplateError);
  assert.throws(() => expandTemplate("${4 / 0}", {}), /division by zero/);
});

Deno.test("wgsl_sources.ts is the current rendering of the files under wgsl/", async () => {
  const text = await Deno.readTextFile(new URL("src/backend/webgpu/wgsl_sources.ts", ROOT));
  assert.equal(text, renderSources(await readSources()), "stale: run `deno task gen:wgsl`");
});

/**
 * Every kernel record of src/backend/kernels/, found by importing each file there and keeping the exports
 * shaped like a record: the registry has no index file, so a new kernel is its record and its template.
 */
async function allRecords(): Promise<Map<string, KernelTemplate>> {
  const dir = new URL("src/backend/kernels/", ROOT);
  const records = new Map<string, KernelTemplate>();
  for await (const e of Deno.readDir(dir)) {
    if (!e.isFile || !e.name.endsWith(".ts")) continue;
    const mod = await import(new URL(e.name, dir).href);
    for (const v of Object.values(mod)) {
      const r = v as KernelTemplate;
      if (
        typeof r === "object" && r !== null && typeof r.template === "string" && Array.isArray(r.bindings)
      ) {
        assert.ok(!records.has(r.name) || records.get(r.name) === r, `two records named ${r.name}`);
        records.set(r.name, r);
      }
    }
  }
  return records;
}

Deno.test("every WGSL file is common, a record's template or a record's include; every one named exists", async () => {
  const records = [...(await allRecords()).values()];
  const named = new Set(["common", ...records.flatMap((r) => [r.template, ...(r.includes ?? [])])]);
  assert.deepEqual(Object.keys(WGSL_SOURCES).sort(), [...named].sort());
});

Deno.test("each record's parameter layout names every p.<field> its WGSL reads, and nothing it does not", async () => {
  for (const r of (await allRecords()).values()) {
    const text = [r.template, ...(r.includes ?? [])].map((n) => WGSL_SOURCES[n]).join("\n");
    assert.ok(!/struct Params/.test(text), `${r.name}: struct Params is generated, not written in WGSL`);
    const read = [...paramsRead(text)].sort();
    assert.deepEqual(read, r.params.map((f) => f.name).sort(), `${r.name}: fields read vs layout`);
  }
});

Deno.test("each record's bindings match its WGSL declarations: index, name and access", async () => {
  for (const r of (await allRecords()).values()) {
    const text = [r.template, ...(r.includes ?? [])].map((n) => WGSL_SOURCES[n]).join("\n");
    const declared = new Map<number, string>();
    for (const m of text.matchAll(/@binding\((\d+)\) var<storage, (read|read_write)> (\w+)/g)) {
      const entry = `${m[3]} ${m[2] === "read" ? "read" : "write"}`;
      const index = Number(m[1]);
      // Alternative declarations of one binding (vec4 or scalar) must agree on name and access.
      assert.ok(
        !declared.has(index) || declared.get(index) === entry,
        `${r.name}: binding ${index} declared twice`,
      );
      declared.set(index, entry);
    }
    assert.deepEqual(
      [...declared.entries()].sort((a, b) => a[0] - b[0]),
      r.bindings.map((b, i) => [i + 1, `${b.name} ${b.access}`]),
      r.name,
    );
  }
});

Deno.test("packParams lays fields out as WGSL does: vec4 arrays 16-byte aligned, floats as bits", () => {
  const layout: ParamLayout = [
    { name: "n", type: "u32" },
    { name: "x", type: "f32" },
    { name: "v", type: "vec4u", count: 2 },
    { name: "y", type: "f32" },
  ];
  const words = packParams(layout, { n: 7, x: 1, v: [1, 2, 3], y: -2 }, "test");
  assert.deepEqual(words, [7, 0x3f800000, 0, 0, 1, 2, 3, 0, 0, 0, 0, 0, 0xc0000000]);
  assert.throws(() => packParams(layout, { n: 1, x: 1, v: [] }, "test"), /parameter y has no value/);
  assert.throws(
    () => packParams(layout, { n: 1, x: 1, v: [], y: 0, z: 1 }, "test"),
    /z is not in the layout/,
  );
  assert.throws(
    () => packParams(layout, { n: 1, x: 1, v: [1, 2, 3, 4, 5, 6, 7, 8, 9], y: 0 }, "test"),
    /room for 8/,
  );
});

Deno.test("gen_wgsl.ts --check exits 1 on a stale copy and 0 once regenerated", async () => {
  // A scratch copy of the layout the script expects, so the real tree is never touched.
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/scripts`);
    await Deno.mkdir(`${dir}/wgsl`);
    await Deno.mkdir(`${dir}/src/backend/webgpu`, { recursive: true });
    await Deno.copyFile(new URL("scripts/gen_wgsl.ts", ROOT), `${dir}/scripts/gen_wgsl.ts`);
    await Deno.writeTextFile(`${dir}/wgsl/a.wgsl`, "fn a() {}\n");
    await Deno.writeTextFile(`${dir}/src/backend/webgpu/wgsl_sources.ts`, "// old\n");
    const run = (...args: string[]) =>
      new Deno.Command(Deno.execPath(), { args: ["run", "-A", `${dir}/scripts/gen_wgsl.ts`, ...args] })
        .output();
    assert.equal((await run("--check")).code, 1);
    assert.equal((await run()).code, 0);
    assert.equal((await run("--check")).code, 0);
    await Deno.writeTextFile(`${dir}/wgsl/a.wgsl`, "fn a() { }\n");
    assert.equal((await run("--check")).code, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Every specialisation the backend can ask for, per storage type. */
function specialisations(
  t: "f32" | "f16",
  records: ReadonlyMap<string, KernelTemplate>,
): [KernelTemplate, TemplateParams][] {
  const out: [KernelTemplate, TemplateParams][] = [];
  const named = (name: string) => records.get(name)!;
  const base = { WG: 256, T: t };
  for (
    const k of [
      "fill",
      "affine",
      "dropout_mask",
      "gather_rows",
      "scatter_add_rows",
      "pick",
      "unpick",
      "adamw",
      "sum_squares",
      "scale_by",
    ] as const
  ) {
    out.push([named(k), base]);
  }
  // The reduces' lane layouts (splitReduceLayout): direct, and staged for 16 and 64 slices.
  for (const [G, CH] of [[1, 8], [8, 2], [8, 8]]) {
    for (const k of ["splitk_reduce", "splitk_reduce_bias"]) out.push([named(k), { ...base, G, CH }]);
  }
  for (const S of ["f32", "f16"]) out.push([named("cast"), { ...base, S }]);
  out.push([named("clip_coef"), { WG: 256 }]);
  for (
    const OP of [
      "neg",
      "exp",
      "log",
      "sqrt",
      "rsqrt",
      "sigmoid",
      "silu",
      "siluGrad",
      "relu",
      "step",
      "square",
      "recip",
      "abs",
      "sin",
      "cos",
    ]
  ) {
    out.push([named("unary"), { ...base, OP }]);
  }
  for (const OP of ["add", "sub", "mul", "div", "max", "gt"]) {
    out.push([named("binary"), { ...base, OP, MAX_RANK }]);
  }
  out.push([named("permute"), { ...base, MAX_RANK }]);
  // Decoding (src/models/decode.ts): token choice, GEMVs for 1-8 rows, the fused norm, decode attention.
  for (const k of ["sample_token", "gather_ids", "add_rms_norm", "argmax_partial"] as const) {
    out.push([named(k), base]);
  }
  for (const PAIRS of [false, true]) out.push([named("argmax"), { ...base, PAIRS }]);
  for (const [D, VEC] of [[6, false], [64, true], [80, true]] as const) {
    out.push([named("decode_attention"), { ...base, D, VEC }]);
  }
  // The fused decoder pieces (src/tensor/fused_layers.ts): RMSNorm, SiLU × up, RoPE forward and backward.
  out.push([named("rms_norm"), base], [named("silu_mul"), base], [named("silu_mul_backward"), base]);
  for (const k of ["rms_norm_backward", "rms_norm_weight_grad"]) out.push([named(k), { ...base, L: "f32" }]);
  for (const BACKWARD of [false, true]) out.push([named("rope"), { ...base, BACKWARD }]);
  for (
    const [M, VEC, LANES, F] of [[1, false, 32, false], [8, true, 256, true], [3, true, 64, false]] as const
  ) {
    out.push(
      [named("gemv"), { ...base, M, VEC, LANES, RES: F, LORA: !F }],
      [named("gemv_glu"), { ...base, M, VEC, LANES, NORM: F, LORA: !F }],
      [named("gemv_norm"), { ...base, M, VEC, LANES, BIAS: F, LORA: !F, NORM: !F }],
      [named("gemv_quant"), { ...base, M, LANES, RES: F, QUANT: F ? "nf4" : "int8" }],
    );
  }
  for (const OP of ["sum", "max"]) {
    out.push([named("reduce_rows"), { ...base, OP }], [named("reduce_cols"), { ...base, OP }]);
  }
  for (const LOG of [false, true]) out.push([named("softmax"), { ...base, LOG }]);
  // Attention: the head width sizes workgroup arrays and the tiled kernels' register tiles, so odd ones and
  // the common ones; the tiled kernels through their records' own specialisations (tiles, chunk counts).
  for (const D of [3, 64, 128]) {
    for (const k of ["attention_forward_rows", "attention_backward_q_rows", "attention_backward_kv_rows"]) {
      out.push([named(k), { ...base, L: "f32", D }]);
    }
  }
  for (const dim of [1, 3, 7, 64, 65, 128]) {
    const a = { batch: 1, heads: 1, kvHeads: 1, seq: 1, keys: 1, dim, scale: 1, window: 0, keyMask: null };
    for (const k of ["attention_forward", "attention_backward_q", "attention_backward_kv"]) {
      const r = named(k) as KernelRecord<typeof a>;
      out.push([r, { ...base, ...r.specialise([{ dtype: t }], a) }]);
    }
  }
  for (const FIRST of [false, true]) out.push([named("cross_entropy_online"), { ...base, L: "f32", FIRST }]);
  out.push([named("cross_entropy_grad"), { ...base, L: "f32" }], [named("cross_entropy_finish"), {
    WG: 256,
    L: "f32",
  }]);
  for (const FORMAT of ["bf16", "f16"]) out.push([named("widen_half"), { WG: 256, FORMAT }]);
  // The mixed-batch LoRA: adapters of either type over this one, at one and at several 8-rank rounds.
  for (const TA of ["f32", t]) {
    for (const R of [8, 64, 1024]) {
      const L = Math.max(1, Math.min(32, 256 / R));
      out.push([named("lora_rows"), { ...base, TA, R, L, HALF_L: L >> 1 }]);
      for (const DX of [false, true]) {
        out.push([named("lora_rows_back"), { ...base, TA, R, L, HALF_L: L >> 1, DX }]);
      }
    }
    out.push([named("lora_rows_grad"), { ...base, TA }]);
  }
  // Quantized frozen weights: packing from and dequantizing to each type, and the GEMMs that read them as B
  // (forward: transposed, with the LoRA phase and bias; input gradient: plain, with the LoRA phase).
  for (const QUANT of ["nf4", "int8"] as const) {
    for (const k of ["quant_scales", "quant_pack", "dequantize"]) out.push([named(k), { ...base, QUANT }]);
    for (const { schedule, tiles } of [TILED_PROFILE, DIRECT_PROFILE]) {
      for (const transB of [false, true]) {
        for (const vec of [false, true]) {
          const lora = { vecP: vec, vecQ: vec, mask: true };
          const flags = {
            aType: t,
            bType: t,
            cType: t,
            transA: false,
            transB,
            vecA: vec,
            vecB: vec,
            vecC: vec,
            maskA: false,
            maskB: false,
            lora,
            bias: transB,
            quantB: QUANT,
          };
          // The forward kernel with its LoRA phase, the input-gradient one without (the flags do not interact).
          const flagsHere = transB ? flags : { ...flags, lora: null };
          out.push([SCHEDULE_TEMPLATE[schedule], gemmSpecialisation(flagsHere, tiles[tiles.length - 1])]);
        }
      }
    }
  }
  // GEMMs: on the smallest tile of each schedule every layout, vec4 access everywhere or nowhere, each mask
  // and output type, and the LoRA output kernel with and without output mask and bias; on every other tile
  // (the flags do not interact with the tile) a plain and a LoRA kernel.
  for (const { schedule, tiles } of [TILED_PROFILE, DIRECT_PROFILE]) {
    const kernel = SCHEDULE_TEMPLATE[schedule];
    const smallest = tiles[tiles.length - 1];
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        for (const vec of [false, true]) {
          const common = { aType: t, bType: t, transA, transB, vecA: vec, vecB: vec, vecC: vec };
          for (const [maskA, maskB] of [[false, false], [true, false], [false, true]]) {
            for (const cType of [t, "f32"] as const) {
              const flags = { ...common, cType, maskA, maskB, lora: null, bias: false };
              out.push([kernel, gemmSpecialisation(flags, smallest)]);
            }
          }
          if (transA) continue;
          for (const mask of [false, true]) {
            for (const bias of [false, true]) {
              const lora = { vecP: vec, vecQ: vec, mask };
              const flags = { ...common, cType: t, maskA: false, maskB: false, lora, bias };
              out.push([kernel, gemmSpecialisation(flags, smallest)]);
            }
          }
        }
      }
    }
    for (const tile of tiles.slice(0, -1)) {
      const plain = { aType: t, bType: t, cType: t, transA: false, transB: false, vecA: true, vecB: true };
      const flags = { ...plain, vecC: true, maskA: true, maskB: false, lora: null, bias: false };
      out.push([kernel, gemmSpecialisation(flags, tile)]);
      const lora = { vecP: false, vecQ: false, mask: true };
      out.push([
        kernel,
        gemmSpecialisation({ ...flags, transB: true, vecB: false, maskA: false, lora }, tile),
      ]);
      // Mixed precision: f32 adapters (the LoRA phase's Q) over an f16 base.
      const mixed = { vecP: true, vecQ: true, mask: false, qType: "f32" as const };
      out.push([kernel, gemmSpecialisation({ ...flags, maskA: false, lora: mixed }, tile)]);
    }
  }
  // The direct template with k lanes (the rank-wide products of tuned tables on hardware GPUs): each layout
  // (lanes the fast index with A stored [m, k], the slow one with A stored [k, m]), vec4 or not, masked A.
  for (const tile of [laneTile(4, 8, 32), laneTile(16, 4, 16)]) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        for (const vec of [false, true]) {
          const flags = {
            aType: t,
            bType: t,
            cType: "f32" as const,
            transA,
            transB,
            vecA: vec,
            vecB: vec,
            vecC: vec,
            maskA: vec,
            maskB: false,
            lora: null,
            bias: false,
          };
          out.push([SCHEDULE_TEMPLATE.direct, gemmSpecialisation(flags, tile)]);
          // The pair dispatch (recordGemmPair): the same layouts, B masked or not, an f32 A (g and t).
          const pairFlags = { ...flags, aType: "f32" as const, cType: t, maskA: false, maskB: vec };
          out.push([
            GEMM_DIRECT_PAIR,
            { ...gemmSpecialisation(pairFlags, tile), PAIR: true },
          ]);
        }
      }
    }
  }
  return out;
}

gpuTest("every kernel specialisation compiles without errors (f32 and f16)", async (dev) => {
  const device = (dev.backend as WebGpuBackend).gpuDevice;
  const types = dev.supportsDType("f16") ? (["f32", "f16"] as const) : (["f32"] as const);
  const records = await allRecords();
  for (const t of types) {
    for (const [record, params] of specialisations(t, records)) {
      const code = kernelSource(record, params);
      // Without shader-f16 (Dawn on SwiftShader or the H200) only code that names no f16 can compile.
      if (!dev.supportsDType("f16") && usesF16(code)) continue;
      const module = device.createShaderModule({ code });
      const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === "error");
      assert.deepEqual(errors.map((e) => e.message), [], `${record.name} ${JSON.stringify(params)}`);
    }
  }
});

gpuTest("the WGSL dropout hash is bit-identical to dropoutHash, indices above 2^31 included", async (dev) => {
  const device = (dev.backend as WebGpuBackend).gpuDevice;
  const code = `${WGSL_SOURCES.common}
@group(0) @binding(0) var<storage, read> pairs: array<vec2<u32>>;
@group(0) @binding(1) var<storage, read_write> hashes: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  if (g.x < arrayLength(&hashes)) { hashes[g.x] = dropout_hash(pairs[g.x].x, pairs[g.x].y); }
}`;
  const pipeline = device.createComputePipeline({
    layout: "auto",
    compute: { module: device.createShaderModule({ code }), entryPoint: "main" },
  });
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 0xffffffff })), {
        minLength: 1,
        maxLength: 500,
      }),
      async (list) => {
        const pairs = new Uint32Array(list.flat());
        const inBuf = device.createBuffer({
          size: pairs.byteLength,
          usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
        });
        const outBuf = device.createBuffer({
          size: list.length * 4,
          usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
        });
        const readBuf = device.createBuffer({
          size: list.length * 4,
          usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
        });
        device.queue.writeBuffer(inBuf, 0, pairs);
        const enc = device.createCommandEncoder();
        const pass = enc.beginComputePass();
        pass.setPipeline(pipeline);
        pass.setBindGroup(
          0,
          device.createBindGroup({
            layout: pipeline.getBindGroupLayout(0),
            entries: [{ binding: 0, resource: { buffer: inBuf } }, {
              binding: 1,
              resource: { buffer: outBuf },
            }],
          }),
        );
        pass.dispatchWorkgroups(Math.ceil(list.length / 64));
        pass.end();
        enc.copyBufferToBuffer(outBuf, 0, readBuf, 0, list.length * 4);
        device.queue.submit([enc.finish()]);
        await readBuf.mapAsync(GPUMapMode.READ);
        const got = Array.from(new Uint32Array(readBuf.getMappedRange()));
        readBuf.unmap();
        for (const b of [inBuf, outBuf, readBuf]) b.destroy();
        assert.deepEqual(got, list.map(([seed, index]) => dropoutHash(seed, index)));
      },
    ),
    { numRuns: 10 },
  );
});

Deno.test("enable f16 goes only into code that names f16: widen_half's F16 format decodes with integers alone", async () => {
  const records = await allRecords();
  const widen = [...records.values()].find((r) => r.name === "widen_half");
  assert.ok(widen !== undefined);
  for (const format of ["f16", "bf16"]) {
    const code = kernelSource(widen, { WG: 256, FORMAT: format });
    assert.ok(!code.startsWith("enable f16"), `widen_half ${format} must compile without shader-f16`);
  }
  const cast = [...records.values()].find((r) => r.name === "cast");
  assert.ok(cast !== undefined);
  assert.ok(kernelSource(cast, { WG: 256, T: "f32", S: "f16" }).startsWith("enable f16;"));
  assert.equal(usesF16("// f16 in a comment only\nlet x: f32 = 1.0;"), false);
  assert.equal(usesF16("let widen_f16_words = 1u;"), false);
  assert.equal(usesF16("var<storage> y: array<vec4<f16>>;"), true);
});
