/**
 * src/backend/shape.ts: broadcast and contiguous strides, axis collapsing (the address of every output
 * element is kept), and the matmul-argument constructor's defaults.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  broadcastStrides,
  collapseAxes,
  contiguousStrides,
  matmulArgs,
  shapeElements,
} from "../../src/backend/shape.ts";

/** Offset of flat output index i under `shape` and `strides`. */
function offset(i: number, shape: readonly number[], strides: readonly number[]): number {
  let at = 0;
  for (let d = shape.length - 1; d >= 0; d--) {
    at += (i % shape[d]) * strides[d];
    i = Math.floor(i / shape[d]);
  }
  return at;
}

Deno.test("contiguousStrides and broadcastStrides: row-major, 0 along broadcast axes", () => {
  assert.deepEqual(contiguousStrides([2, 3, 4]), [12, 4, 1]);
  assert.deepEqual(contiguousStrides([]), []);
  assert.deepEqual(broadcastStrides([3, 1], [2, 3, 4]), [0, 1, 0]);
  assert.deepEqual(broadcastStrides([4], [2, 3, 4]), [0, 0, 1]);
  assert.equal(shapeElements([]), 1);
});

Deno.test("collapseAxes keeps every output element's offsets and never grows the rank", () => {
  const shapeArb = fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 0, maxLength: 6 });
  fc.assert(
    fc.property(shapeArb, fc.array(fc.boolean(), { minLength: 6, maxLength: 6 }), (out, keep) => {
      // Operand shape: the output with some axes broadcast (extent 1).
      const operand = out.map((d, i) => (keep[i] ? d : 1));
      const strides = [broadcastStrides(operand, out), contiguousStrides(out)];
      const c = collapseAxes(out, strides);
      assert.ok(c.shape.length >= 1 && c.shape.length <= Math.max(1, out.length));
      assert.equal(shapeElements(c.shape), shapeElements(out));
      for (let i = 0; i < shapeElements(out); i++) {
        for (let j = 0; j < strides.length; j++) {
          assert.equal(offset(i, c.shape, c.strides[j]), offset(i, out, strides[j]));
        }
      }
    }),
  );
});

Deno.test("matmulArgs: unbatched and untransposed unless told; batches follow batch", () => {
  assert.deepEqual(matmulArgs(2, 3, 4), {
    batch: 1,
    aBatch: 1,
    bBatch: 1,
    m: 2,
    k: 3,
    n: 4,
    transA: false,
    transB: false,
  });
  const t = matmulArgs(2, 3, 4, { batch: 5, bBatch: 1, transB: true });
  assert.deepEqual([t.batch, t.aBatch, t.bBatch, t.transA, t.transB], [5, 5, 1, false, true]);
});
