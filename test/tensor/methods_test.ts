/**
 * Tensor's op methods, installed on the prototype by src/tensor/methods.ts (the class cannot import the
 * ops that import it): importing the layer's entry gives every method, each equal to its functional op.
 */
import assert from "node:assert/strict";
import * as ops from "../../src/tensor/mod.ts";
import { tensor } from "../../src/tensor/mod.ts";
import { AutogradError, ConfigError } from "../../src/core/errors.ts";
import type { TensorMethodName } from "../../src/tensor/mod.ts";

// Every name of TensorMethodName: a name missing here fails the type check through `satisfies`.
const NAMES = {
  backward: 0,
  detach: 0,
  add: 0,
  sub: 0,
  mul: 0,
  div: 0,
  matmul: 0,
  scale: 0,
  sum: 0,
  mean: 0,
  reshape: 0,
  transpose: 0,
  softmax: 0,
  logSoftmax: 0,
  silu: 0,
  relu: 0,
  cast: 0,
} satisfies Record<TensorMethodName, 0>;

Deno.test("the entry installs every declared method on Tensor.prototype, not enumerable", () => {
  for (const name of Object.keys(NAMES)) {
    const d = Object.getOwnPropertyDescriptor(ops.Tensor.prototype, name);
    assert.equal(typeof d?.value, "function", `Tensor.prototype.${name}`);
    assert.equal(d!.enumerable, false, `${name} is enumerable`);
  }
});

Deno.test("method forms give the functional ops' values", async () => {
  const a = tensor([1, -2, 3, 0.5, 4, -1], [2, 3]);
  const b = tensor([0.5, 1, -1, 2, 3, -0.25], [2, 3]);
  const pairs: [string, ops.Tensor, ops.Tensor][] = [
    ["add", a.add(b), ops.add(a, b)],
    ["sub", a.sub(2), ops.sub(a, 2)],
    ["mul", a.mul(b), ops.mul(a, b)],
    ["div", a.div(b), ops.div(a, b)],
    ["matmul", a.matmul(b.transpose(0, 1)), ops.matmul(a, ops.transpose(b, 0, 1))],
    ["scale", a.scale(3), ops.scale(a, 3)],
    ["sum", a.sum(1, true), ops.sum(a, 1, true)],
    ["mean", a.mean(), ops.mean(a)],
    ["reshape", a.reshape([3, 2]), ops.reshape(a, [3, 2])],
    ["softmax", a.softmax(0), ops.softmax(a, 0)],
    ["logSoftmax", a.logSoftmax(), ops.logSoftmax(a)],
    ["silu", a.silu(), ops.silu(a)],
    ["relu", a.relu(), ops.relu(a)],
    ["cast", a.cast("f64"), ops.cast(a, "f64")],
    ["detach", a.detach(), ops.detach(a)],
  ];
  for (const [name, method, fn] of pairs) {
    assert.deepEqual(method.shape, fn.shape, name);
    assert.deepEqual(await method.data(), await fn.data(), name);
  }
});

Deno.test("backward from a tensor that needs no gradient is an AutogradError (a ConfigError)", () => {
  const x = tensor([1, 2]);
  assert.throws(() => x.sum().backward(), AutogradError);
  assert.throws(() => x.sum().backward(), ConfigError);
});
