/**
 * The streaming checkpoint loader (src/models/weights.ts) on WebGPU: F32, F16 and BF16 files loaded in
 * pieces far smaller than a tensor (so every tensor spans many reads and the two staging buffers take
 * turns) give bit for bit the weights the whole-file reader decodes; a file cut short or a bad header is
 * a FormatError naming the file, and leaves no tensor behind on the device.
 */
import assert from "node:assert/strict";
import { cpuDevice, FormatError, LlamaForCausalLM } from "../../mod.ts";
import { type RawTensorEntry, readSafetensors, writeSafetensors } from "../../src/io/safetensors.ts";
import { _setPieceBytesForTesting } from "../../src/models/weights.ts";
import { _setFsForTesting, bytesRangeReader } from "../../src/io/fs.ts";
import { fixture } from "../helpers.ts";
import { gpuTest } from "../backend/webgpu/gpu.ts";
import { withTempDir } from "./tiny_model.ts";

const CONFIG = JSON.parse(new TextDecoder().decode(fixture("llama-tiny-lora/base/config.json")));
const WEIGHTS = fixture("llama-tiny-lora/base/model.safetensors");

/** The fixture re-encoded in `dtype` (values rounded by the writer). */
function asDType(dtype: string): Uint8Array {
  const out: Record<string, RawTensorEntry> = {};
  for (const [k, t] of readSafetensors(WEIGHTS).tensors) {
    out[k] = { dtype, shape: t.shape, data: t.data as Float32Array };
  }
  return writeSafetensors(out);
}

/** Bits of every parameter, by name. */
async function bitsOf(model: LlamaForCausalLM): Promise<Map<string, Uint32Array>> {
  const out = new Map<string, Uint32Array>();
  for (const [k, t] of Object.entries(model.stateDict())) {
    const v = (await t.data()) as Float32Array;
    out.set(k, new Uint32Array(v.buffer, v.byteOffset, v.length));
  }
  return out;
}

for (const dtype of ["F32", "F16", "BF16"]) {
  gpuTest(
    `fromPretrained streams ${dtype} in small pieces to exactly the values readSafetensors decodes`,
    async (dev) => {
      const bytes = asDType(dtype);
      const want = new Map<string, Uint32Array>();
      for (const [k, t] of readSafetensors(bytes).tensors) {
        const v = t.data as Float32Array;
        want.set(k, new Uint32Array(v.buffer, v.byteOffset, v.length));
      }
      // 40 bytes: not a divisor of most tensors, so last pieces are short; 8-byte multiple as required.
      for (const piece of [40, 1 << 20]) {
        _setPieceBytesForTesting(piece);
        try {
          await withTempDir(async (dir) => {
            await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(CONFIG));
            await Deno.writeFile(`${dir}/model.safetensors`, bytes);
            const model = await LlamaForCausalLM.fromPretrained(dir, { device: dev });
            const got = await bitsOf(model);
            for (const [k, w] of want) assert.deepEqual(got.get(k), w, `${k} (${dtype}, pieces of ${piece})`);
            for (const p of model.parameters()) p.dispose();
          });
        } finally {
          _setPieceBytesForTesting(null);
        }
      }
    },
  );
}

gpuTest(
  "fromPretrained to an f16 model: F32, F16 and BF16 files convert like the CPU loader's",
  async (dev) => {
    if (!dev.supportsDType("f16")) return; // no shader-f16 here: nothing to compare
    for (const dtype of ["F32", "F16", "BF16"]) {
      const bytes = asDType(dtype);
      _setPieceBytesForTesting(48);
      try {
        const gpuModel = await LlamaForCausalLM.fromPretrained({ config: CONFIG, weights: bytes }, {
          device: dev,
          dtype: "f16",
        });
        const cpuModel = await LlamaForCausalLM.fromPretrained({ config: CONFIG, weights: bytes }, {
          device: cpuDevice(),
          dtype: "f16",
        });
        const [got, want] = [await bitsOf(gpuModel), await bitsOf(cpuModel)];
        for (const [k, w] of want) assert.deepEqual(got.get(k), w, `${k} (${dtype} to f16)`);
        for (const p of gpuModel.parameters()) p.dispose();
      } finally {
        _setPieceBytesForTesting(null);
      }
    }
  },
);

gpuTest(
  "fromPretrained: a cut file or a failing read is an error; no weight stays on the device",
  async (dev) => {
    const be = dev.backend;
    let before = be.memory().bytes;
    await withTempDir(async (dir) => {
      await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(CONFIG));
      await Deno.writeFile(`${dir}/model.safetensors`, WEIGHTS.subarray(0, WEIGHTS.length - 6));
      await assert.rejects(
        () => LlamaForCausalLM.fromPretrained(dir, { device: dev }),
        (e: unknown) =>
          e instanceof FormatError && e.message.includes(`${dir}/model.safetensors`) &&
          /data_offsets .* run past the \d+-byte data section/.test(e.message),
      );
    });
    // Only the model's own small tables (made by its constructor) may stay: no weight was loaded.
    assert.ok(be.memory().bytes - before < 16384, "a header error leaves no weight");
    before = be.memory().bytes;
    // A disk that fails on the 1201st read: the embedding (1024 pieces of 64 bytes) and some norms are in.
    let reads = 0;
    _setFsForTesting({
      readFile: (p) => Deno.readFile(p),
      writeFile: (p, d) => Deno.writeFile(p, d),
      rename: (a, b) => Deno.rename(a, b),
      mkdirp: (p) => Deno.mkdir(p, { recursive: true }),
      remove: (p) => Deno.remove(p),
      kind: async (p) => {
        try {
          return (await Deno.stat(p)).isDirectory ? "dir" : "file";
        } catch {
          return null;
        }
      },
      openRead: async (p) => {
        const inner = bytesRangeReader(await Deno.readFile(p), p);
        return {
          size: inner.size,
          read: (into, at) =>
            ++reads > 1200 ? Promise.reject(new Error("the disk went away")) : inner.read(into, at),
          close: () => {},
        };
      },
    });
    _setPieceBytesForTesting(64);
    try {
      await withTempDir(async (dir) => {
        await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(CONFIG));
        await Deno.writeFile(`${dir}/model.safetensors`, WEIGHTS);
        await assert.rejects(
          () => LlamaForCausalLM.fromPretrained(dir, { device: dev }),
          /the disk went away/,
        );
      });
    } finally {
      _setPieceBytesForTesting(null);
      _setFsForTesting(null);
    }
    assert.ok(reads > 1200, "the load read until the failure");
    // The embedding alone (64 KiB) was complete before the failure; the tables take far less. (Garbage of
    // earlier tests reclaimed meanwhile only lowers the count.)
    assert.ok(be.memory().bytes - before < 16384, "the weights loaded before the failure were freed");
  },
);
