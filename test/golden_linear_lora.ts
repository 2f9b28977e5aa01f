/**
 * The single-layer PyTorch reference cases of `llama-tiny-lora/linear_lora.safetensors`, shared by the
 * CPU and the WebGPU tests: each case through one LoRA path on one device, returning relative errors.
 */
import { type Device, Linear, LinearLoRA, patchLinearModule, tensor } from "../mod.ts";
import { loadFixture, relErr } from "./helpers.ts";

const golden = loadFixture("llama-tiny-lora/linear_lora.safetensors");

/** Case names in the fixture ("case0", ...). */
export const linearLoraCases: string[] = [...new Set([...golden.keys()].map((k) => k.split(".")[0]))].sort();

/** The three ways to build a LoRA layer that must agree with the reference. */
export const LINEAR_LORA_PATHS = ["LinearLoRA", "patch fused", "patch composed"] as const;
/** One of {@link LINEAR_LORA_PATHS}. */
export type LinearLoraPath = typeof LINEAR_LORA_PATHS[number];

/** Relative errors of y, dx, dA and dB of case `name` through `path` on `device`. */
export async function runLinearLoraCase(
  name: string,
  path: LinearLoraPath,
  device: Device,
): Promise<Record<"y" | "dx" | "dA" | "dB", number>> {
  const p = (k: string) => golden.get(`${name}.${k}`)!;
  const W = p("W"), A = p("A"), B = p("B"), x = p("x"), dy = p("dy");
  const hasBias = golden.has(`${name}.b`);
  const [outF, inF] = W.shape;
  const rank = A.shape[0];
  const scale = p("scale").data[0];
  const base = new Linear(inF, outF, { bias: hasBias, device });
  base.loadStateDict({ weight: W, ...(hasBias ? { bias: p("b") } : {}) });
  const opts = { dim: rank, alpha: scale * rank, useFused: path !== "patch composed" };
  const layer = path === "LinearLoRA" ? new LinearLoRA(base, opts) : patchLinearModule(base, opts);
  layer.lora_A.loadStateDict({ weight: A });
  layer.lora_B.loadStateDict({ weight: B });
  const xt = tensor(x.data, x.shape, { device, requiresGrad: true });
  const y = layer.forward(xt);
  y.backward(tensor(dy.data, dy.shape, { device }));
  return {
    y: relErr(await y.data(), p("y").data),
    dx: relErr(await xt.grad!.data(), p("dx").data),
    dA: relErr(await layer.lora_A.weight.grad!.data(), p("dA").data),
    dB: relErr(await layer.lora_B.weight.grad!.data(), p("dB").data),
  };
}
