/**
 * Failure paths of the graph's scopes (src/tensor/graph.ts): a tidy scope that throws frees the tensors it
 * made, and a node's backward that throws midway frees what it had made, so an op refused by the memory
 * limit leaves the device's live bytes as before and the next step runs.
 */
import assert from "node:assert/strict";
import { Device, DeviceError, matmul, randn, sigmoid, sum, tidy } from "../../mod.ts";
import { createCpuBackend } from "../../src/backend/cpu/cpu_backend.ts";

const freshCpu = () => new Device(createCpuBackend(), "cpu", "CPU reference (graph_failure_test)");

Deno.test("tidy: a scope that throws frees the tensors it made; retained ones survive", () => {
  const device = freshCpu();
  const x = randn([16, 16], { device, seed: 1 });
  const live = device.memory().bytes;
  assert.throws(() =>
    tidy(() => {
      const a = matmul(x, x);
      sigmoid(a);
      throw new Error("boom");
    }), /boom/);
  assert.equal(device.memory().bytes, live);
  // A scope that throws because an op passed the limit: the ops before it are freed too.
  device.setMemoryLimit(live + 3 * 16 * 16 * 4);
  assert.throws(() => tidy(() => matmul(sigmoid(matmul(x, x)), matmul(x, x))), DeviceError);
  assert.equal(device.memory().bytes, live);
  device.setMemoryLimit(null);
  const ok = tidy(() => sum(matmul(x, x)));
  assert.equal(device.memory().bytes, live + 4);
  ok.dispose();
});

Deno.test("backward: a node's backward that throws midway frees what it made; the next backward runs", async () => {
  const device = freshCpu();
  const w = randn([32, 32], { device, seed: 2, requiresGrad: true });
  const x = randn([8, 32], { device, seed: 3 });
  const step = () =>
    tidy(() => {
      const loss = sum(sigmoid(matmul(sigmoid(matmul(x, w)), w)));
      loss.backward();
      return loss;
    });
  const expected = step();
  const grad = Array.from(await w.grad!.data());
  expected.dispose();
  w.grad!.dispose();
  w.grad = null;
  const live = device.memory().bytes;
  // Measure the step's peak, then every limit below it (in steps of one row): each failure, wherever in
  // the forward or the backward it comes, must leave the live bytes as they were.
  device.resetPeakMemory();
  step().dispose();
  const peak = device.memory().peakBytes;
  w.grad!.dispose();
  w.grad = null;
  let failures = 0;
  for (let limit = live; limit < peak; limit += 4 * 32) {
    device.setMemoryLimit(limit);
    try {
      step().dispose();
    } catch (e) {
      assert.ok(e instanceof DeviceError, `${e}`);
      failures++;
    }
    device.setMemoryLimit(null);
    (w.grad as { dispose(): void } | null)?.dispose(); // a leaf's gradient may have been set before the failing node ran
    w.grad = null;
    assert.equal(device.memory().bytes, live, `limit ${limit - live} bytes above live: all freed`);
  }
  assert.ok(failures > 0);
  step().dispose();
  assert.deepEqual(Array.from(await w.grad!.data()), grad);
});
