/**
 * How tensors print: String(t), Deno.inspect and Node's util.inspect show values (CPU tensors), shape,
 * dtype, device and requiresGrad; large tensors are summarised; disposed and meta tensors say so.
 */
import assert from "node:assert/strict";
import { inspect } from "node:util";
import fc from "fast-check";
import { cpuDevice, randn, Tensor, tensor, zeros } from "../../mod.ts";
import { formatValues } from "../../src/tensor/format.ts";

const CPU = String(cpuDevice());

Deno.test("String(t) of a small CPU tensor shows its values as nested rows, then shape, dtype, device, requiresGrad", () => {
  const t = tensor([1, 2, 3, 4, 5, 6], [2, 3], { requiresGrad: true });
  assert.equal(
    String(t),
    `Tensor([[1, 2, 3],\n        [4, 5, 6]], shape=[2, 3], dtype=f32, device=${CPU}, requiresGrad=true)`,
  );
});

Deno.test("fractional values print with four decimals, padded to one column width", () => {
  assert.equal(
    tensor([0.5, -1.25, 10]).toString(),
    `Tensor([ 0.5000, -1.2500, 10.0000], shape=[3], dtype=f32, device=${CPU}, requiresGrad=false)`,
  );
});

Deno.test("very small or very large magnitudes switch to exponent notation; NaN and Infinity print by name", () => {
  const s = tensor([1e-6, 2e5, NaN, -Infinity], [4], { dtype: "f64" }).toString();
  assert.match(s, /^Tensor\(\[1\.0000e-6, 2\.0000e\+5,\s+NaN, -Infinity\], shape=\[4\], dtype=f64/);
});

Deno.test("a 0-d tensor prints its value bare, an empty one as []", () => {
  assert.equal(
    String(tensor([2.5], [])),
    `Tensor(2.5000, shape=[], dtype=f32, device=${CPU}, requiresGrad=false)`,
  );
  assert.equal(
    String(zeros([0, 3])),
    `Tensor([], shape=[0, 3], dtype=f32, device=${CPU}, requiresGrad=false)`,
  );
});

Deno.test("3-d tensors separate their matrices by a blank line, each row indented under the first", () => {
  const s = String(tensor([1, 2, 3, 4, 5, 6, 7, 8], [2, 2, 2]));
  assert.equal(
    s.split(", shape=")[0],
    "Tensor([[[1, 2],\n         [3, 4]],\n\n        [[5, 6],\n         [7, 8]]]",
  );
});

Deno.test("past 1000 elements the values are summarised: three entries at each end of every axis", () => {
  const t = randn([40, 50], { seed: 3 });
  const body = String(t).split(", shape=")[0];
  const lines = body.split("\n");
  assert.equal(lines.length, 7); // 3 rows, "...", 3 rows
  assert.equal(lines[3].trim(), "...,");
  const first = t.dataSync()[0];
  assert.ok(lines[0].startsWith(`Tensor([[${first.toFixed(4).padStart(7)}`), lines[0]);
  assert.equal(lines[0].split(",").length, 7 + 1); // 3 values, "...", 3 values, and the row's trailing comma
  // 1000 elements exactly are all shown
  assert.ok(!String(zeros([10, 100])).includes("..."));
});

Deno.test("rows wider than 80 characters wrap, continuing under their first entry", () => {
  const body = String(tensor(Array.from({ length: 30 }, (_, i) => i))).split(", shape=")[0];
  const lines = body.split("\n");
  assert.equal(lines.length, 2);
  assert.ok(lines.every((l) => l.length <= 80), body);
  assert.equal(lines[0].indexOf(" 0,"), "Tensor([".length); // entries are padded to two columns
  assert.equal(lines[1].indexOf("18,"), "Tensor([".length); // the continuation starts under the first entry
  assert.ok(lines[0].endsWith(","));
});

Deno.test("disposed and meta tensors say so instead of showing values", () => {
  const t = tensor([1, 2]);
  t.dispose();
  assert.equal(String(t), `Tensor(disposed, shape=[2], dtype=f32, device=${CPU}, requiresGrad=false)`);
  const m = Tensor._meta([3, 4], "f32", cpuDevice());
  assert.equal(String(m), `Tensor(meta, shape=[3, 4], dtype=f32, device=${CPU}, requiresGrad=false)`);
});

Deno.test("Deno.inspect and Node's util.inspect (console.log in each) show the same text as String(t)", () => {
  const t = tensor([1, 2, 3, 4], [2, 2]);
  assert.equal(Deno.inspect(t), String(t));
  assert.equal(inspect(t), String(t));
  assert.ok(Deno.inspect({ weight: t }).includes("Tensor([[1, 2],"), Deno.inspect({ weight: t }));
});

Deno.test("property: the printed integer values are the tensor's values in row-major order (rank 1-3)", () => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 1, max: 7 }), { minLength: 1, maxLength: 3 }),
      fc.integer({ min: 0, max: 1000 }),
      (shape, seed) => {
        const n = shape.reduce((a, b) => a * b, 1);
        const values = Array.from({ length: n }, (_, i) => ((i * 7919 + seed) % 201) - 100);
        const printed = formatValues(values, shape, 7).replace(/[\[\]\s]/g, "").split(",").map(Number);
        assert.deepEqual(printed, values);
      },
    ),
  );
});
