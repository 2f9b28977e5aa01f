/**
 * The fused linear + cross-entropy loss at a model's shapes: milliseconds per forward + backward (d hidden
 * and, with --weight-grad, d weight) for tiles of the default shape against the token-only chunks of
 * before (rows = 2²² / vocab, every class at once), in the same run.
 *
 * Usage: deno run -A bench/loss_bench.ts [--tokens 2048] [--hidden 2048] [--vocab 128256] [--reps 5]
 *          [--device webgpu|cpu] [--weight-grad]
 * Prints one JSON line per variant ({"kind": "loss", ...}).
 * @module
 */
import { cpuDevice, full, linearCrossEntropy, randn, webgpuDevice } from "../mod.ts";
import { lossTile } from "../src/tensor/mod.ts";

function arg(name: string, fallback: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : fallback;
}

const N = Number(arg("tokens", "2048")),
  H = Number(arg("hidden", "2048")),
  V = Number(arg("vocab", "128256"));
const reps = Number(arg("reps", "5"));
const weightGrad = Deno.args.includes("--weight-grad");
const device = arg("device", "webgpu") === "cpu" ? cpuDevice() : await webgpuDevice();
const h = randn([N, H], { device, seed: 1, requiresGrad: true });
// The weight is filled on the device: drawing a vocabulary-sized table on the host takes seconds, and the
// kernels' time does not depend on the values.
const w = full([V, H], 0.01, { device, requiresGrad: weightGrad });
const targets = Array.from({ length: N }, (_, i) => (i * 7919) % V);
const variants: [string, { chunkElements?: number; vocabChunk?: number }][] = [
  ["tiles (default)", {}],
  ["token chunks only (before)", { chunkElements: 1 << 22, vocabChunk: V }],
];
for (const [name, opts] of variants) {
  const tile = lossTile(N, V, opts.chunkElements ?? 1 << 23, opts.vocabChunk);
  const times: number[] = [];
  for (let r = 0; r < reps + 1; r++) {
    await device.backend.sync();
    const t0 = performance.now();
    const loss = linearCrossEntropy(h, w, targets, opts);
    loss.backward();
    await h.grad!.data();
    if (r > 0) times.push(performance.now() - t0);
    h.grad!.dispose();
    h.grad = null;
    if (w.grad) {
      w.grad.dispose();
      w.grad = null;
    }
    loss.dispose();
  }
  times.sort((a, b) => a - b);
  console.log(JSON.stringify({
    kind: "loss",
    variant: name,
    device: device.backend.description,
    tokens: N,
    hidden: H,
    vocab: V,
    tile,
    weight_grad: weightGrad,
    median_ms: +times[times.length >> 1].toFixed(1),
    min_ms: +times[0].toFixed(1),
  }));
}
