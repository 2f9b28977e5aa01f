/** randn / rand past the device's budget are DeviceErrors naming the call and shape, before any draw. */
import assert from "node:assert/strict";
import { cpuDevice, DeviceError, rand, randn } from "../../mod.ts";

Deno.test("randn and rand past the memory limit are DeviceErrors naming the call and the shape", () => {
  const device = cpuDevice();
  const before = device.memoryLimit;
  try {
    device.setMemoryLimit(device.memory().bytes + 100_000);
    assert.throws(
      () => randn([500, 500], { device }),
      (e: unknown) =>
        e instanceof DeviceError && /^randn: tensor \[500,500\] draws 250000 samples/.test(e.message),
    );
    assert.throws(() => rand([1000, 1000], { device }), /^DeviceError: rand: tensor \[1000,1000\]/);
    assert.deepEqual(randn([2, 3], { device, seed: 1 }).shape, [2, 3]);
  } finally {
    device.setMemoryLimit(before);
  }
  assert.throws(() => randn([60_000, 60_000], { device }), DeviceError);
});
