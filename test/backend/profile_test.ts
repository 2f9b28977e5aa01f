/**
 * `profile()` (src/backend/profile.ts): rows per op on the CPU (host time) and per kernel on WebGPU (GPU
 * timestamps where the adapter has timestamp-query, as lavapipe does), sorted slowest first, counting
 * every call; results are the same with and without profiling; misuse is a ConfigError.
 */
import assert from "node:assert/strict";
import {
  ConfigError,
  cpuDevice,
  type Device,
  matmul,
  noGrad,
  profile,
  tensor,
  webgpuDevice,
} from "../../mod.ts";
import { noGpu } from "./webgpu/gpu.ts";
import type { WebGpuBackend } from "../../src/backend/webgpu/backend.ts";

async function workload(device: Device): Promise<number[]> {
  const a = tensor([1, 2, 3, 4, 5, 6], [2, 3], { device });
  const b = tensor([1, 2, 3, 4, 5, 6], [3, 2], { device });
  const out = noGrad(() => {
    let c = matmul(a, b);
    for (let i = 0; i < 3; i++) {
      const d = matmul(a, b);
      const e = c.add(d);
      c.dispose();
      d.dispose();
      c = e;
    }
    return c;
  });
  const v = Array.from(await out.data());
  a.dispose();
  b.dispose();
  out.dispose();
  return v;
}

function checkRows(p: Awaited<ReturnType<typeof profile>>): void {
  for (let i = 1; i < p.rows.length; i++) assert.ok(p.rows[i - 1].ms >= p.rows[i].ms, "sorted by time");
  for (const r of p.rows) assert.ok(r.calls >= 1 && r.ms >= 0 && Number.isFinite(r.ms), JSON.stringify(r));
  assert.ok(p.totalMs > 0);
  assert.ok(Math.abs(p.measuredMs - p.rows.reduce((s, r) => s + r.ms, 0)) < 1e-9);
  const text = p.toString();
  for (const r of p.rows) assert.ok(text.includes(r.name));
}

Deno.test("profile on the CPU: one row per op with its calls and host time", async () => {
  const device = cpuDevice();
  let values: number[] = [];
  const p = await profile(async () => {
    values = await workload(device);
  }, { device });
  assert.deepEqual(values, [88, 112, 196, 256]);
  assert.equal(p.timing, "host");
  const byName = new Map(p.rows.map((r) => [r.name, r]));
  assert.equal(byName.get("matmul")?.calls, 4);
  assert.equal(byName.get("binary")?.calls, 3);
  checkRows(p);
  // Outside a profile nothing is counted: a second profile sees only its own work.
  const q = await profile(() => {
    noGrad(() => matmul(tensor([1], [1, 1], { device }), tensor([2], [1, 1], { device })));
  }, { device });
  assert.equal(q.rows.find((r) => r.name === "matmul")?.calls, 1);
});

Deno.test({
  name: "profile on WebGPU: GPU timestamps per kernel, the same results as without profiling",
  ignore: noGpu,
  fn: async () => {
    const device = await webgpuDevice();
    try {
      const plain = await workload(device);
      let values: number[] = [];
      const p = await profile(async () => {
        values = await workload(device);
      }, { device });
      assert.deepEqual(values, plain);
      assert.deepEqual(values, [88, 112, 196, 256]);
      const timestamps = (device.backend as WebGpuBackend).gpuDevice.features.has("timestamp-query");
      assert.equal(p.timing, timestamps ? "gpu-timestamps" : "host");
      const binary = p.rows.find((r) => r.name === "binary");
      assert.equal(binary?.calls, 3);
      const gemmCalls = p.rows.filter((r) => r.name.startsWith("gemm")).reduce((s, r) => s + r.calls, 0);
      assert.ok(gemmCalls >= 4, `gemm dispatches ${gemmCalls}`);
      if (timestamps) assert.ok(p.measuredMs > 0, "timestamps measured some time");
      checkRows(p);
      // After the profile, dispatching goes back to one pass per batch and still computes the same.
      assert.deepEqual(await workload(device), plain);
      // A detailed profile splits the rows by shape: GEMM rows name m x n x k, others their grid.
      const d = await profile(() => workload(device), { device, detail: true });
      const gemmRows = d.rows.filter((r) => r.name.startsWith("gemm"));
      assert.ok(
        gemmRows.length > 0 && gemmRows.every((r) => /\d+x\d+x\d+/.test(r.name)),
        `${gemmRows.map((r) => r.name)}`,
      );
      assert.equal(gemmRows.reduce((s, r) => s + r.calls, 0), gemmCalls);
      assert.ok(d.rows.some((r) => r.name.startsWith("binary grid ")), `${d.rows.map((r) => r.name)}`);
      // The next plain profile is per kernel again.
      const again = await profile(() => workload(device), { device });
      assert.equal(again.rows.find((r) => r.name === "binary")?.calls, 3);
    } finally {
      device.destroy();
    }
  },
});

Deno.test("profile: nested profiles of one device and bad arguments are ConfigErrors", async () => {
  const device = cpuDevice();
  await assert.rejects(
    () => profile(() => profile(() => {}, { device }), { device }),
    ConfigError,
  );
  await assert.rejects(() => profile(42 as unknown as () => void, { device }), ConfigError);
  await assert.rejects(() => profile(() => {}, { device: "gpu" as unknown as Device }), ConfigError);
  await assert.rejects(() => profile(() => {}, { device, detail: "yes" as unknown as boolean }), ConfigError);
  await assert.rejects(
    () => profile(() => {}, { devise: device } as unknown as { device: Device }),
    ConfigError,
  );
  // A failing fn ends the profile: the next one starts cleanly.
  await assert.rejects(() =>
    profile(() => {
      throw new RangeError("boom");
    }, { device }), RangeError);
  const p = await profile(() => {}, { device });
  assert.deepEqual(p.rows, []);
});
