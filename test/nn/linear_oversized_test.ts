/** An oversized Linear is a DeviceError naming the layer and shape before its initial values are drawn. */
import assert from "node:assert/strict";
import { cpuDevice, DeviceError, Linear } from "../../mod.ts";

Deno.test("Linear past the CPU device's memory limit is a DeviceError naming Linear, the shape and setMemoryLimit", () => {
  const device = cpuDevice();
  const before = device.memoryLimit;
  assert.notEqual(before, null, "the CPU device has a default limit");
  try {
    device.setMemoryLimit(device.memory().bytes + 1_000_000);
    assert.throws(
      () => new Linear(1000, 2000, { device }),
      (e: unknown) =>
        e instanceof DeviceError &&
        e.message.startsWith("Linear(1000, 2000): the weight [2000,1000] (f32) needs 8000000 bytes") &&
        e.message.includes("setMemoryLimit"),
    );
    new Linear(100, 200, { device }); // under the limit: fine
  } finally {
    device.setMemoryLimit(before);
  }
  // Past what the runtime can allocate at all (default limit kept): still ours, not a RangeError.
  assert.throws(() => new Linear(100_000, 100_000, { device }), DeviceError);
});
