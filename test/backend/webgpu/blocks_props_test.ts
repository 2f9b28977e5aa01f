/**
 * Tensors split into row blocks (src/backend/webgpu/blocks.ts) on WebGPU, with the library's binding
 * limit lowered so small tensors split into 2-5 blocks: a streamed upload, then read, gatherRows, unpack
 * across block edges, scatterAddRows into a split table, add of two split tables and pack into one, each
 * equal to the CPU reference on the unsplit values; free returns every block; other ops refuse a split
 * tensor with a DeviceError naming the op.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { cpuDevice, DeviceError } from "../../../mod.ts";
import type { Backend, Storage } from "../../../src/backend/backend.ts";
import type { GpuStorage } from "../../../src/backend/webgpu/backend.ts";
import { numberToF16Bits } from "../../../src/core/half.ts";
import { type FloatType, floatTypes, values } from "./compare.ts";
import { gpu, gpuTest } from "./gpu.ts";
import { withBindingLimit } from "./binding_limit.ts";

/** The values' bytes in `dtype`'s encoding. */
function encoded(v: Float32Array, dtype: FloatType): Uint8Array {
  if (dtype === "f32") return new Uint8Array(v.buffer.slice(0));
  return new Uint8Array(Uint16Array.from(v, numberToF16Bits).buffer);
}

/** Uploads in pieces of `piece` bytes (a word multiple) through beginUpload, rows of `dim` kept whole. */
function streamUp(be: Backend, v: Float32Array, dtype: FloatType, dim: number, piece: number): Storage {
  const bytes = encoded(v, dtype);
  const up = be.beginUpload!(v.length, dtype, dtype, dim)!;
  for (let o = 0; o < bytes.length; o += piece) {
    up.write(bytes.subarray(o, Math.min(bytes.length, o + piece)), o);
  }
  return up.finish();
}

const f = gpu === null ? fc.constant<FloatType>("f32") : floatTypes(gpu);

gpuTest(
  "split tables: upload, read, gather, unpack, scatter-add, add and pack equal the CPU",
  async (dev) => {
    const be = dev.backend, cpu = cpuDevice().backend;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 40, max: 80 }),
        fc.integer({ min: 6, max: 33 }),
        fc.integer({ min: 2, max: 5 }),
        fc.integer({ min: 0, max: 1e9 }),
        f,
        async (rows, dim, k, seed, dtype) => {
          const es = dtype === "f32" ? 4 : 2;
          // Room for the scratch words every kernel here uploads (ids, compressed rows) at the least.
          const limit = Math.max(400, Math.ceil((rows * dim * es) / k / 4) * 4);
          await withBindingLimit(dev, limit, async () => {
            const before = be.memory();
            const v = values(rows * dim, seed, dtype);
            const table = streamUp(be, v, dtype, dim, 4 * (1 + (seed % 37)));
            const blocks = (table as GpuStorage).blocks;
            assert.ok(blocks !== null && blocks.length >= 2, `split into ${blocks?.length} blocks`);
            assert.ok(blocks.every((b) => b.size % dim === 0), "blocks hold whole rows");
            const ref = cpu.upload(v, dtype);
            assert.deepEqual(await be.read(table), cpu.readSync(ref));

            // Outputs stay within one buffer: a fifth of the rows (a block holds at least that many).
            const ids = Int32Array.from({ length: Math.floor(rows / 5) }, (_, i) => (seed + i * 7919) % rows);
            assert.deepEqual(
              await readFree(be, be.gatherRows(table, ids, dim)),
              cpu.readSync(cpu.gatherRows(ref, ids, dim)),
            );

            // Segments across block edges (even offsets and lengths for 2-byte elements, as copies need).
            const at = 2 * Math.floor(((seed % 1000) / 1000) * (rows * dim / 2 - 1));
            const len = 2 * Math.max(1, Math.floor(Math.min(rows * dim - at, limit / es) / 2));
            const [seg] = be.unpack(table, [at], [len]);
            assert.deepEqual(await readFree(be, seg), cpu.readSync(cpu.unpack(ref, [at], [len])[0]));

            const src = values(ids.length * dim, seed + 1, dtype);
            const srcUp = be.upload(src, dtype);
            const scatterIds = ids.map((id, i) => (i % 5 === 4 ? -1 : id));
            const g1 = be.scatterAddRows(srcUp, scatterIds, rows, dim);
            const c1 = cpu.scatterAddRows(cpu.upload(src, dtype), scatterIds, rows, dim);
            assert.ok((g1 as GpuStorage).blocks !== null, "a gradient larger than a binding is split too");
            assert.deepEqual(await be.read(g1), cpu.readSync(c1));
            const sum = be.binary("add", g1, [rows * dim], table, [rows * dim], [rows * dim]);
            assert.deepEqual(
              await readFree(be, sum),
              cpu.readSync(cpu.binary("add", c1, [rows * dim], ref, [rows * dim], [rows * dim])),
            );

            // Packing row chunks (each within a buffer, their edges not the blocks') into one split table,
            // as the fused loss packs its weight gradient from vocabulary chunks.
            const chunk = dim * 2 * (Math.floor(rows / k / 4) + 1); // even: 2-byte offsets on whole words
            const starts: number[] = [];
            for (let o = 0; o < rows * dim; o += chunk) starts.push(o);
            const sizes = starts.map((o) => Math.min(chunk, rows * dim - o));
            const parts = be.unpack(table, starts, sizes), cparts = cpu.unpack(ref, starts, sizes);
            const packed = be.pack(parts, starts, rows * dim, dtype, dim);
            const cpacked = cpu.pack(cparts, starts, rows * dim, dtype);
            assert.ok((packed as GpuStorage).blocks !== null);
            assert.deepEqual(await readFree(be, packed), cpu.readSync(cpacked));
            for (const p of parts) be.free(p);

            assert.throws(
              () => be.affine(table, 2, 0),
              (e) => e instanceof DeviceError && /split across/.test(e.message),
            );
            for (const s of [table, g1, srcUp]) {
              be.free(s);
            }
            be.free(table); // idempotent
            assert.deepEqual(be.memory(), before);
          });
        },
      ),
      { numRuns: 25 },
    );
  },
);

async function readFree(be: Backend, s: Storage) {
  const v = await be.read(s);
  be.free(s);
  return v;
}

gpuTest("split tables: BF16 words widened into blocks equal the CPU's decoding", async (dev) => {
  const be = dev.backend;
  await withBindingLimit(dev, 1024, async () => {
    const rows = 37, dim = 13;
    const words = Uint16Array.from(
      { length: rows * dim },
      (_, i) => (0x3f80 + ((i * 2654435761) >>> 20)) & 0xffff,
    );
    const up = be.beginUpload!(rows * dim, "f32", "bf16", dim)!;
    const bytes = new Uint8Array(words.buffer);
    for (let o = 0; o < bytes.length; o += 100) {
      up.write(bytes.subarray(o, Math.min(bytes.length, o + 100)), o);
    }
    const s = up.finish();
    assert.ok((s as GpuStorage).blocks!.length >= 2);
    // bf16 is the top half of an f32: widening is a shift.
    assert.deepEqual(await be.read(s), new Float32Array(Uint32Array.from(words, (w) => w << 16).buffer));
    be.free(s);
  });
});
