/**
 * Quickstart: adapt a frozen linear layer with LoRA so that it learns a low-rank change of its
 * weights. Runs on the CPU reference by default; `--device webgpu` uses a WebGPU adapter.
 * Usage: deno run -A examples/quickstart.ts [--device cpu|webgpu] [--steps N]
 */
import { cpuDevice, Linear, linear, mean, noGrad, patchLinearModule, randn, square, sub } from "../mod.ts";
import type { Device } from "../mod.ts";

const args = Deno.args;
const flag = (name: string, fallback: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const steps = Number(flag("--steps", "300"));
let device: Device = cpuDevice();
if (flag("--device", "cpu") === "webgpu") {
  const { webgpuDevice } = await import("../mod.ts") as unknown as { webgpuDevice?: () => Promise<Device> };
  if (!webgpuDevice) throw new Error("quickstart: this build has no WebGPU backend yet");
  device = await webgpuDevice();
}
console.log(`device: ${device}`);

const [inF, outF, rank, batch] = [32, 24, 4, 64];
const layer = new Linear(inF, outF, { device, seed: 1 });
// The target differs from the base by a rank-2 update, which a rank-4 adapter can represent.
const target = new Linear(inF, outF, { device, seed: 1 });
const u = randn([outF, 2], { device, seed: 2 }), v = randn([2, inF], { device, seed: 3 });
noGrad(() => target.weight._assign(target.weight.add(u.matmul(v).scale(0.2))));

const lora = patchLinearModule(layer, { dim: rank, alpha: 2 * rank, seed: 4 });
const params = [lora.lora_A.weight, lora.lora_B.weight];
const lr = 0.05;
for (let step = 0; step <= steps; step++) {
  const x = randn([batch, inF], { device, seed: 100 + step });
  const y = noGrad(() => linear(x, target.weight, target.bias));
  const loss = mean(square(sub(lora.forward(x), y)));
  for (const p of params) p.grad = null;
  loss.backward();
  noGrad(() => {
    for (const p of params) p._assign(sub(p, p.grad!.scale(lr)));
  });
  if (step % 50 === 0) {
    console.log(`step ${String(step).padStart(4)}  loss ${(await loss.item()).toFixed(6)}`);
  }
}
