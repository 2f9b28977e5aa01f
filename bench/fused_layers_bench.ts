/**
 * The fused decoder pieces (src/tensor/fused_layers.ts) against their composed twins at a model's shapes:
 * RMSNorm over the hidden size, SiLU(gate) · up over the intermediate size, and RoPE on the query
 * projection (the twin is the head permute, then the rotate-half composition). Each case runs forward +
 * backward (the gradient given, so nothing else is timed) many times back to back with one wait at the
 * end; prints ms per forward + backward (median of the repetitions) and the dispatches of one, counted
 * by `profile`.
 *
 * Usage: deno run -A bench/fused_layers_bench.ts [--tokens 4096] [--hidden 576] [--intermediate 1536]
 *          [--heads 9] [--head-dim 64] [--dtype f32|f16] [--reps 5] [--iters 50] [--quick] [--dawn]
 * Defaults: SmolLM2-135M at 8 x 512 tokens. --quick: tiny shapes for the software adapter.
 * @module
 */
import { permute, profile, reshape, type Tensor, tensor, tidy } from "../mod.ts";
import {
  fusedRmsNorm,
  leanRmsNorm,
  leanSiluMul,
  rotaryEmbedding,
  rotaryHeads,
  siluMul,
} from "../src/tensor/mod.ts";
import { Rng } from "../src/core/random.ts";
import { argValue, benchDevice, implementationName } from "./bench_device.ts";

const argv = Deno.args;
const quick = argv.includes("--quick");
const num = (name: string, full: number, small: number) =>
  Number(argValue(argv, name, String(quick ? small : full)));
const tokens = num("--tokens", 4096, 64), hidden = num("--hidden", 576, 48);
const inter = num("--intermediate", 1536, 128), heads = num("--heads", 9, 3), hd = num("--head-dim", 64, 16);
const reps = num("--reps", 5, 2), iters = num("--iters", 50, 3);
const dtype = argValue(argv, "--dtype", "f32") as "f32" | "f16";
const device = await benchDevice(argv);
const rng = new Rng(1);
const rand = (shape: number[], grad = false) =>
  tensor(Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal()), shape, {
    device,
    dtype,
    requiresGrad: grad,
  });

// RoPE tables for positions 0..tokens-1 (one sequence of `tokens`), rotate-half layout.
const cosv: number[] = [], sinv: number[] = [];
for (let t = 0; t < tokens; t++) {
  for (let i = 0; i < hd; i++) {
    const a = t * Math.pow(10000, -(2 * (i % (hd / 2))) / hd);
    cosv.push(Math.cos(a));
    sinv.push(Math.sin(a));
  }
}
const cos = tensor(cosv, [1, 1, tokens, hd], { device, dtype }),
  sin = tensor(sinv, [1, 1, tokens, hd], { device, dtype });
const rot = tensor(
  Array.from({ length: hd * hd }, (_, k) => {
    const r = Math.floor(k / hd), c = k % hd, h = hd / 2;
    return c < h ? (r === c + h ? -1 : 0) : (r === c - h ? 1 : 0);
  }),
  [hd, hd],
  { device, dtype },
);

const x = rand([tokens, hidden], true), w = rand([hidden]);
const gate = rand([tokens, inter], true), up = rand([tokens, inter], true);
const q = rand([1, tokens, heads * hd], true);
const gNorm = rand([tokens, hidden]), gMlp = rand([tokens, inter]), gRope = rand([1, heads, tokens, hd]);

const cases: [string, () => Tensor, Tensor, Tensor[]][] = [
  ["rmsNorm fused", () => fusedRmsNorm(x, w, 1e-5), gNorm, [x]],
  ["rmsNorm composed", () => leanRmsNorm(x, w, 1e-5), gNorm, [x]],
  ["siluMul fused", () => siluMul(gate, up), gMlp, [gate, up]],
  ["siluMul composed", () => leanSiluMul(gate, up), gMlp, [gate, up]],
  ["rope+permute fused", () => rotaryHeads(q, cos, sin, heads), gRope, [q]],
  [
    "rope+permute composed",
    () => rotaryEmbedding(permute(reshape(q, [1, tokens, heads, hd]), [0, 2, 1, 3]), cos, sin, rot),
    gRope,
    [q],
  ],
];

/** One forward + backward; the inputs' gradients are dropped afterwards. */
function once(f: () => Tensor, g: Tensor, inputs: Tensor[]): void {
  tidy(() => f().backward(g));
  for (const t of inputs) {
    t.grad?.dispose();
    t.grad = null;
  }
}

console.log(
  `fused_layers_bench on ${implementationName(argv)} ${device}: ${tokens} tokens, hidden ${hidden}, ` +
    `intermediate ${inter}, ${heads} heads x ${hd}, ${dtype}`,
);
for (const [name, f, g, inputs] of cases) {
  for (let i = 0; i < 3; i++) once(f, g, inputs);
  await device.sync();
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    for (let i = 0; i < iters; i++) once(f, g, inputs);
    await device.sync();
    times.push((performance.now() - t0) / iters);
  }
  times.sort((a, b) => a - b);
  const p = await profile(() => once(f, g, inputs), { device });
  const calls = p.rows.reduce((s, r) => s + r.calls, 0);
  const kernels = p.rows.map((r) => `${r.name} ${r.calls}`).join(", ");
  console.log(
    `${name.padEnd(22)} ${times[times.length >> 1].toFixed(3).padStart(8)} ms/fwd+bwd  ` +
      `GPU ${p.measuredMs.toFixed(3)} ms (${p.timing})  ${calls} dispatches: ${kernels}`,
  );
}
if (device.kind === "webgpu") device.destroy();
