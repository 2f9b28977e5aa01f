"""PyTorch's side of bench/lora_bench.ts --full: one LoRA linear's forward + backward (x and the adapter's
A and B get gradients, the base weight is frozen), the base linear alone, and the square GEMM, f32 with
TF32 off (what our f32 kernels compute), timed with CUDA events after a warm-up; medians of several
repetitions of many steps. Prints one JSON line per figure.

Usage (on the GPU machine): python3 bench/torch_lora_linear.py [--reps 5] [--dtype float32|float16]
"""
import argparse
import json

import torch

SHAPES = [(8192, 4096, 16), (2048, 2048, 8), (512, 4096, 16)]


def timed(step, steps, reps):
    """Median milliseconds per call of `step` over `reps` runs of `steps` calls, after a warm-up."""
    for _ in range(max(3, steps // 4)):
        step()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / steps)
    samples.sort()
    return samples[len(samples) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dt = getattr(torch, args.dtype)
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    for m, d, r in SHAPES:
        x = torch.randn(m, d, device=dev, dtype=dt, generator=g, requires_grad=True)
        dy = torch.randn(m, d, device=dev, dtype=dt, generator=g)
        w = torch.randn(d, d, device=dev, dtype=dt, generator=g) / d**0.5
        a = (torch.randn(r, d, device=dev, dtype=dt, generator=g) / d**0.5).requires_grad_()
        b = (0.1 * torch.randn(d, r, device=dev, dtype=dt, generator=g)).requires_grad_()
        scale = 2.0

        def lora_step():
            y = x @ w.t() + scale * ((x @ a.t()) @ b.t())
            y.backward(dy)
            x.grad = a.grad = b.grad = None

        def base_step():
            y = x @ w.t()
            y.backward(dy)
            x.grad = None

        steps = max(10, int(250 / max(0.05, 2 * m * d * d * 2 / 30e12 * 1e3)))
        for what, step in (("lora forward+backward", lora_step), ("base linear forward+backward", base_step)):
            ms = timed(step, steps, args.reps)
            print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "dtype": args.dtype,
                              "shape": [m, d, r], "measure": what, "ms": round(ms, 4)}))
    n = 4096
    p, q = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
    ms = timed(lambda: p @ q.t(), 50, args.reps)
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "dtype": args.dtype, "shape": [n, n, n],
                      "measure": "GEMM 4096^3", "ms": round(ms, 4), "tflops": round(2 * n**3 / ms / 1e9, 2)}))


if __name__ == "__main__":
    main()
