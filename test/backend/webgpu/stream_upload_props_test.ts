/**
 * The WebGPU backend's streamed uploads (beginUpload, used by the checkpoint loader): bytes written in
 * pieces of any whole-word sizes land bit for bit, and BF16 / F16 words widened on the device
 * (widen_half) equal the CPU reference's decoding, NaN payloads, infinities and subnormals included.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { DeviceError, ShapeError } from "../../../mod.ts";
import type { UploadFormat } from "../../../src/backend/backend.ts";
import { WIDEN_HALF } from "../../../src/backend/kernels/widen_half.ts";
import { cpuDevice } from "../../../mod.ts";
import { gpuTest } from "./gpu.ts";

/** Random bytes (every 16-bit pattern possible, so NaNs, infinities and subnormals come up). */
function randomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Piece boundaries: word multiples, the last piece ending anywhere. */
function cuts(bytes: number, seed: number): number[] {
  const out = [0];
  let x = seed >>> 0 || 7;
  while (out[out.length - 1] < bytes) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const step = 4 * (1 + (x % 9));
    out.push(Math.min(bytes, out[out.length - 1] + step));
  }
  return out;
}

/** The CPU's widening of the same words (the kernel record's reference). */
function referenceWiden(raw: Uint8Array, n: number, format: "f16" | "bf16"): Uint32Array {
  const words = new Float32Array(Math.ceil(n / 2));
  new Uint8Array(words.buffer).set(raw);
  const [out] = WIDEN_HALF.reference([words], { format, n }, [{ size: n, dtype: "f32", what: "" }]);
  return new Uint32Array((out as Float32Array).buffer, 0, n);
}

async function readBits(dev: { backend: { read(s: unknown): Promise<unknown> } }, s: unknown, n: number) {
  const got = (await dev.backend.read(s)) as Float32Array;
  return new Uint32Array(got.buffer, got.byteOffset, n);
}

gpuTest("beginUpload: f32 and f16 bytes written in pieces land bit for bit", async (dev) => {
  const be = dev.backend;
  const formats: ("f32" | "f16")[] = dev.supportsDType("f16") ? ["f32", "f16"] : ["f32"];
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: 3000 }),
      fc.integer(),
      fc.constantFrom(...formats),
      async (n, seed, format) => {
        const es = format === "f32" ? 4 : 2;
        const bytes = randomBytes(n * es, seed);
        const up = be.beginUpload!(n, format, format)!;
        const c = cuts(bytes.length, seed);
        for (let i = 0; i + 1 < c.length; i++) up.write(bytes.subarray(c[i], c[i + 1]), c[i]);
        const s = up.finish();
        if (format === "f32") {
          assert.deepEqual(await readBits(dev, s, n), new Uint32Array(bytes.slice().buffer));
        } else {
          // f16 reads back widened: compare with the CPU's widening of the same bits.
          const want = referenceWiden(bytes, n, "f16");
          const got = await readBits(dev, s, n);
          assert.deepEqual(canonicalNaN(got), canonicalNaN(want));
        }
        be.free(s);
      },
    ),
    { numRuns: 25 },
  );
});

/** f16 storage read back through the host may quieten NaN payloads: compare NaNs as one class. */
function canonicalNaN(bits: Uint32Array): Uint32Array {
  return bits.map((b) => ((b & 0x7f800000) === 0x7f800000 && (b & 0x7fffff) !== 0 ? 0x7fc00000 : b));
}

gpuTest(
  "beginUpload: BF16 and F16 words for an f32 tensor are widened on the device bit for bit",
  async (dev) => {
    const be = dev.backend;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 3001 }),
        fc.integer(),
        fc.constantFrom<"f16" | "bf16">("f16", "bf16"),
        async (n, seed, format) => {
          const bytes = randomBytes(n * 2, seed);
          const before = be.memory().buffers;
          const up = be.beginUpload!(n, "f32", format)!;
          const c = cuts(bytes.length, seed);
          for (let i = 0; i + 1 < c.length; i++) up.write(bytes.subarray(c[i], c[i + 1]), c[i]);
          const s = up.finish();
          assert.equal(be.memory().buffers, before + 1, "the raw words are freed once widened");
          assert.deepEqual(await readBits(dev, s, n), referenceWiden(bytes, n, format));
          be.free(s);
        },
      ),
      { numRuns: 30 },
    );
  },
);

gpuTest("widen_half through run() equals its CPU reference (odd sizes, both formats)", async (dev) => {
  const cpu = cpuDevice().backend;
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 2049 }),
      fc.integer(),
      fc.constantFrom<"f16" | "bf16">("f16", "bf16"),
      async (n, seed, format) => {
        const words = new Float32Array(new Uint8Array(randomBytes(Math.ceil(n / 2) * 4, seed)).buffer);
        const up = dev.backend.beginUpload!(words.length, "f32", "f32")!;
        up.write(new Uint8Array(words.buffer), 0);
        const raw = up.finish();
        const [g] = dev.backend.run(WIDEN_HALF, [raw], { format, n });
        const [c] = cpu.run(WIDEN_HALF, [cpu.upload(words, "f32")], { format, n });
        const want = new Uint32Array((cpu.readSync(c) as Float32Array).buffer);
        assert.deepEqual(await readBits(dev, g, n), want);
        dev.backend.free(raw);
        dev.backend.free(g);
      },
    ),
    { numRuns: 20 },
  );
});

gpuTest("beginUpload: misplaced pieces are ShapeErrors; writes after finish are DeviceErrors", (dev) => {
  const be = dev.backend;
  const up = be.beginUpload!(5, "f32", "bf16")!;
  assert.throws(() => up.write(new Uint8Array(4), 2), ShapeError); // not at a word
  assert.throws(() => up.write(new Uint8Array(12), 0), ShapeError); // past the 10 bytes
  assert.throws(() => up.write(new Uint8Array(6), 0), ShapeError); // ends inside a word, not the last
  up.write(new Uint8Array(10), 0);
  const s = up.finish();
  assert.throws(() => up.write(new Uint8Array(4), 0), DeviceError);
  up.abort();
  be.free(s);
  assert.equal(be.beginUpload!(4, "f32", "f64" as UploadFormat), null, "other conversions are the host's");
});
