/** The three single-layer reference cases (float64 PyTorch, stored f32) through every LoRA path. */
import assert from "node:assert/strict";
import { cpuDevice, Linear, LinearLoRA, patchLinearModule, tensor } from "../../mod.ts";
import type { Device } from "../../mod.ts";
import { loadFixture, relErr } from "../helpers.ts";

const golden = loadFixture("llama-tiny-lora/linear_lora.safetensors");
const get = (k: string) => golden.get(k)!;

type Path = "LinearLoRA" | "patch fused" | "patch composed";

/** Runs one case through one path on `device`; returns the worst relative error of y, dx, dA, dB. */
export async function runCase(c: number, path: Path, device: Device): Promise<Record<string, number>> {
  const p = (k: string) => get(`case${c}.${k}`);
  const W = p("W"), A = p("A"), B = p("B"), x = p("x"), dy = p("dy");
  const hasBias = golden.has(`case${c}.b`);
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

for (const c of [0, 1, 2]) {
  for (const path of ["LinearLoRA", "patch fused", "patch composed"] as Path[]) {
    Deno.test(`golden linear_lora case${c} via ${path} on the CPU: y, dx, dA, dB within 1e-5`, async () => {
      const errs = await runCase(c, path, cpuDevice());
      for (const [k, e] of Object.entries(errs)) {
        assert.ok(e <= 1e-5, `case${c} ${path} ${k}: relative error ${e}`);
      }
    });
  }
}
