/**
 * The jax-js side of the LoRA benchmark: the same LoRA linear forward + backward (dx, dA, dB) as ours,
 * written the way a jax-js user would — `jit(grad(...))` over (x, A, B) with W, b and dy closed over.
 * Used only by bench/; jax-js is a devDependency.
 */
import { blockUntilReady, defaultDevice, grad, init, jit, numpy as np } from "@jax-js/jax";

/** A prepared jax-js LoRA step for one shape; `run(n)` queues n steps and waits once. */
export interface JaxLoraStep {
  device: string;
  run(steps: number): Promise<void>;
  dispose(): void;
}

function randomArray(n: number, seed: number, scale: number): Float32Array<ArrayBuffer> {
  let s = seed >>> 0;
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return a;
}

/** Builds the jax-js LoRA step for M tokens, D = in = out features, rank r on jax-js's WebGPU device. */
export async function jaxLoraStep(M: number, D: number, r: number): Promise<JaxLoraStep> {
  const devices = await init();
  if (!devices.includes("webgpu")) throw new Error(`jax-js: no webgpu device (have ${devices.join(", ")})`);
  defaultDevice("webgpu");
  const W = np.array(randomArray(D * D, 1, 1 / Math.sqrt(D))).reshape([D, D]);
  const b = np.array(randomArray(D, 2, 0.1));
  const dy = np.array(randomArray(M * D, 3, 1)).reshape([M, D]);
  const scale = 2;
  // loss = <y, dy>, so its gradient with respect to (x, A, B) is the VJP of y with cotangent dy.
  const loss = (x: np.Array, A: np.Array, B: np.Array) => {
    const base = np.matmul(x.ref, W.ref.transpose()).add(b.ref);
    const lora = np.matmul(np.matmul(x, A.transpose()), B.transpose()).mul(scale);
    return base.add(lora).mul(dy.ref).sum();
  };
  const step = jit(grad(loss, { argnums: [0, 1, 2] }));
  const x = np.array(randomArray(M * D, 4, 1)).reshape([M, D]);
  const A = np.array(randomArray(r * D, 5, 1 / Math.sqrt(D))).reshape([r, D]);
  const B = np.array(randomArray(D * r, 6, 0.1)).reshape([D, r]);
  return {
    device: "webgpu",
    async run(steps: number) {
      // jax-js is lazy: an array disposed before it was realized is never computed. Disposing each step's
      // gradients before the next step (as an earlier version did) ran only the last of `steps` steps, so
      // every step's results stay alive until the one await.
      const results: np.Array[][] = [];
      for (let i = 0; i < steps; i++) results.push(step(x.ref, A.ref, B.ref) as np.Array[]);
      await blockUntilReady(results);
      for (const r of results) r.forEach((t) => t.dispose());
    },
    dispose() {
      for (const t of [W, b, dy, x, A, B]) t.dispose();
    },
  };
}
