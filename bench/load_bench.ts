/**
 * Checkpoint loading benchmark: how long `AutoModelForCausalLM.fromPretrained` takes to bring a
 * transformers checkpoint onto a device, and where the time goes (the loader's own phase counters:
 * header parsing, reading the file, converting on the host, handing bytes to the device, and waiting for
 * the device to finish).
 *
 * Usage:
 *   deno run -A bench/load_bench.ts --ckpt DIR [--device webgpu|cpu] [--dtype f32|f16] [--repeat 2]
 *       [--binding-mb N (pretend a binding holds N MiB)] [--piece-mb 16] [--readers 6] [--sync-mb 0]   (read size; reads in flight; wait for the device
 *       every N MiB, 0: never)
 *   deno run -A bench/load_bench.ts --make DIR [--hidden 2048 --inter 8192 --layers 16 --heads 32
 *       --kv-heads 8 --vocab 128256] [--format F32|BF16|F16]
 *       (writes a random-weight Llama checkpoint at those shapes, Llama-3.2-1B's by default, streamed to
 *       disk: for machines without PyTorch)
 *
 * Prints one JSON line per load ({"kind": "load", ...}): total seconds, file bytes, GB/s, the phases and
 * the plain disk read of the same file (each weight file read once in 64 MiB pieces, nothing else), so
 * the load can be set against the disk's pace. The first load also warms the page cache.
 * @module
 */
import { AutoModelForCausalLM, cpuDevice, type DType, webgpuDevice } from "../mod.ts";
import type { GpuStorage, WebGpuBackend } from "../src/backend/webgpu/backend.ts";
import {
  _setPieceBytesForTesting,
  _setReadersForTesting,
  _setSyncEveryBytesForTesting,
  loadStats,
  resetLoadStats,
} from "../src/models/weights.ts";

function arg(name: string, fallback: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : fallback;
}

/** xorshift32 words shaped into small floats (|x| < 0.03), fast enough for gigabytes. */
function fillRandom(out: Float32Array, seed: number): number {
  let x = seed >>> 0 || 1;
  for (let i = 0; i < out.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = ((x >>> 0) / 4294967296 - 0.5) * 0.06;
  }
  return x;
}

/** Writes a random Llama checkpoint (config.json + model.safetensors) without holding it in memory. */
async function makeCheckpoint(dir: string): Promise<void> {
  const hidden = Number(arg("hidden", "2048"));
  const inter = Number(arg("inter", "8192"));
  const layers = Number(arg("layers", "16"));
  const heads = Number(arg("heads", "32"));
  const kvHeads = Number(arg("kv-heads", "8"));
  const vocab = Number(arg("vocab", "128256"));
  const format = arg("format", "F32");
  const es = format === "F32" ? 4 : 2;
  const headDim = hidden / heads;
  const shapes: [string, number[]][] = [["model.embed_tokens.weight", [vocab, hidden]]];
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    shapes.push(
      [`${p}.input_layernorm.weight`, [hidden]],
      [`${p}.mlp.down_proj.weight`, [hidden, inter]],
      [`${p}.mlp.gate_proj.weight`, [inter, hidden]],
      [`${p}.mlp.up_proj.weight`, [inter, hidden]],
      [`${p}.post_attention_layernorm.weight`, [hidden]],
      [`${p}.self_attn.k_proj.weight`, [kvHeads * headDim, hidden]],
      [`${p}.self_attn.o_proj.weight`, [hidden, heads * headDim]],
      [`${p}.self_attn.q_proj.weight`, [heads * headDim, hidden]],
      [`${p}.self_attn.v_proj.weight`, [kvHeads * headDim, hidden]],
    );
  }
  shapes.push(["model.norm.weight", [hidden]]);
  shapes.sort(([a], [b]) => (a < b ? -1 : 1));
  const parts: string[] = [`"__metadata__":{"format":"pt"}`];
  let offset = 0;
  for (const [name, shape] of shapes) {
    const bytes = shape.reduce((a, b) => a * b, 1) * es;
    parts.push(
      `"${name}":{"dtype":"${format}","shape":[${shape}],"data_offsets":[${offset},${offset + bytes}]}`,
    );
    offset += bytes;
  }
  let header = `{${parts.join(",")}}`;
  header += " ".repeat((8 - (header.length % 8)) % 8);
  await Deno.mkdir(dir, { recursive: true });
  const config = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: hidden,
    intermediate_size: inter,
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: headDim,
    vocab_size: vocab,
    tie_word_embeddings: true,
    rope_theta: 500000.0,
    max_position_embeddings: 131072,
    rms_norm_eps: 1e-5,
    hidden_act: "silu",
    attention_bias: false,
    mlp_bias: false,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: "float32",
  };
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config, null, 2) + "\n");
  const file = await Deno.open(`${dir}/model.safetensors`, { write: true, create: true, truncate: true });
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(header.length), true);
  await writeAll(file, len);
  await writeAll(file, new TextEncoder().encode(header));
  const piece = new Float32Array(1 << 22);
  let seed = 12345;
  for (const [, shape] of shapes) {
    let n = shape.reduce((a, b) => a * b, 1);
    while (n > 0) {
      const k = Math.min(n, piece.length);
      seed = fillRandom(piece.subarray(0, k), seed);
      let bytes: Uint8Array;
      if (es === 4) bytes = new Uint8Array(piece.buffer, 0, k * 4);
      else {
        // Top halves (bf16, truncated) or f16 bits; either is a valid random weight for timing.
        const words = new Uint32Array(piece.buffer, 0, k);
        const half = new Uint16Array(k);
        if (format === "BF16") { for (let i = 0; i < k; i++) half[i] = words[i] >>> 16; }
        else for (let i = 0; i < k; i++) half[i] = 0x2000 | (words[i] & 0x13ff); // small normal f16s
        bytes = new Uint8Array(half.buffer);
      }
      await writeAll(file, bytes);
      n -= k;
    }
  }
  file.close();
  console.log(
    JSON.stringify({ kind: "ckpt", dir, format, tensors: shapes.length, bytes: 8 + header.length + offset }),
  );
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await file.write(bytes.subarray(done));
}

/** Seconds to read the checkpoint's weight files once, 64 MiB at a time, doing nothing with the bytes. */
async function diskRead(dir: string): Promise<{ seconds: number; bytes: number }> {
  const names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".safetensors"));
  const buf = new Uint8Array(64 << 20);
  const t0 = performance.now();
  let bytes = 0;
  for (const n of names) {
    const f = await Deno.open(`${dir}/${n}`);
    for (;;) {
      const got = await f.read(buf);
      if (got === null) break;
      bytes += got;
    }
    f.close();
  }
  return { seconds: (performance.now() - t0) / 1000, bytes };
}

const make = arg("make", "");
if (make !== "") {
  await makeCheckpoint(make);
} else {
  const dir = arg("ckpt", "");
  if (dir === "") throw new Error("load_bench: --ckpt DIR (or --make DIR) is required");
  const deviceKind = arg("device", "webgpu");
  const dtype = arg("dtype", "f32") as DType;
  const repeat = Number(arg("repeat", "2"));
  const pieceMb = Number(arg("piece-mb", "16"));
  const syncMb = Number(arg("sync-mb", "0"));
  const readers = Number(arg("readers", "6"));
  _setPieceBytesForTesting(pieceMb * (1 << 20));
  _setReadersForTesting(readers);
  _setSyncEveryBytesForTesting(syncMb > 0 ? syncMb * (1 << 20) : null);
  const device = deviceKind === "cpu" ? cpuDevice() : await webgpuDevice();
  // --binding-mb N: the library sees a binding limit of N MiB (128: a browser's default), so tensors
  // larger than that load split into row blocks.
  const bindingMb = Number(arg("binding-mb", "0"));
  if (bindingMb > 0) {
    (device.backend as WebGpuBackend).rt.limits.maxStorageBufferBindingSize = bindingMb * (1 << 20);
  }
  // --no-disk: skip the plain read of the file (it costs a read of the whole checkpoint per run).
  const disk = Deno.args.includes("--no-disk") ? { seconds: NaN, bytes: 0 } : await diskRead(dir);
  for (let r = 0; r < repeat; r++) {
    resetLoadStats();
    const t0 = performance.now();
    const model = await AutoModelForCausalLM.fromPretrained(dir, { device, dtype });
    await device.backend.sync();
    const seconds = (performance.now() - t0) / 1000;
    const stats = loadStats();
    console.log(JSON.stringify({
      kind: "load",
      impl: "lora-webgpu",
      ckpt: dir,
      device: device.backend.description,
      dtype,
      piece_mb: pieceMb,
      readers,
      sync_mb: syncMb,
      run: r,
      seconds: +seconds.toFixed(3),
      bytes: stats.bytes,
      gb_per_s: +(stats.bytes / seconds / 1e9).toFixed(2),
      phases_s: Object.fromEntries(Object.entries(stats.phases).map(([k, v]) => [k, +(v / 1000).toFixed(3)])),
      tensors: stats.tensors,
      binding_mb: bindingMb > 0 ? bindingMb : null,
      embedding_blocks: deviceKind === "cpu"
        ? null
        : ((model.model.embed_tokens.weight.storage() as GpuStorage).blocks?.length ?? 1),
      disk_read_s: +disk.seconds.toFixed(3),
      disk_gb_per_s: +(disk.bytes / disk.seconds / 1e9).toFixed(2),
    }));
    for (const p of model.parameters()) p.dispose();
  }
}
