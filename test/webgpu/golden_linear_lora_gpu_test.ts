/** The single-layer PyTorch reference cases on WebGPU, through every LoRA path, at relative error ≤ 1e-4. */
import assert from "node:assert/strict";
import { type Device, Linear, LinearLoRA, patchLinearModule, tensor } from "../../mod.ts";
import { loadFixture, relErr } from "../helpers.ts";
import { gpu, gpuTest } from "./gpu.ts";
import { note, printWorst } from "./compare.ts";

const golden = loadFixture("llama-tiny-lora/linear_lora.safetensors");
const cases = [...new Set([...golden.keys()].map((k) => k.split(".")[0]))].sort();

type Path = "LinearLoRA" | "patch fused" | "patch composed";

/** Relative errors of y, dx, dA and dB of one case through one path on `device`. */
async function runGoldenCase(name: string, path: Path, device: Device): Promise<Record<string, number>> {
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

Deno.test("golden linear_lora fixture holds the three cases", () => {
  assert.deepEqual(cases, ["case0", "case1", "case2"]);
});

for (const c of cases) {
  for (const path of ["LinearLoRA", "patch fused", "patch composed"] as Path[]) {
    gpuTest(`golden linear_lora ${c} via ${path} on WebGPU: y, dx, dA, dB within 1e-4`, async (device) => {
      const errs = await runGoldenCase(c, path, device);
      for (const [k, e] of Object.entries(errs)) {
        note(`golden linear_lora ${k}`, e);
        assert.ok(e <= 1e-4, `${c} ${path} ${k}: relative error ${e}`);
      }
    });
  }
}

Deno.test({
  name: "golden linear_lora errors summary",
  ignore: gpu === null,
  fn: () => printWorst("golden linear_lora"),
});
