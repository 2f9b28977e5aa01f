/** The forward pass: masks, loss, grouped-query attention, KV cache, RoPE tables, dtypes and input errors. */
import assert from "node:assert/strict";
import {
  applyLoraToLinearModules,
  crossEntropy,
  KVCache,
  LlamaForCausalLM,
  noGrad,
  PeftConfig,
  ropeInverseFrequencies,
  ShapeError,
  tensor,
} from "../../mod.ts";
import { rotateHalfMatrix } from "../../src/models/rope.ts";
import { relErr } from "../helpers.ts";
import { tinyModel, tokenRows } from "./tiny_model.ts";

const V = 64;

/** Rows [from, to) of position range of one batch row of logits [batch, seq, V]. */
function rowSlice(
  l: Float32Array | Float64Array,
  seq: number,
  b: number,
  from: number,
  to: number,
): number[] {
  return Array.from(l.subarray((b * seq + from) * V, (b * seq + to) * V));
}

Deno.test("right padding: a padded shorter row's real positions equal running it alone", async () => {
  const model = tinyModel();
  const [long, short] = [tokenRows(1, 9, V, 1)[0], tokenRows(1, 5, V, 2)[0]];
  const batch = [long, [...short, 0, 0, 0, 0]];
  const attentionMask = [Array(9).fill(1), [1, 1, 1, 1, 1, 0, 0, 0, 0]];
  const both = await model.forward(batch, { attentionMask }).logits.data();
  const alone = await model.forward([short]).logits.data();
  const longAlone = await model.forward([long]).logits.data();
  assert.ok(relErr(rowSlice(both, 9, 1, 0, 5), rowSlice(alone, 5, 0, 0, 5)) <= 1e-6);
  assert.ok(relErr(rowSlice(both, 9, 0, 0, 9), rowSlice(longAlone, 9, 0, 0, 9)) <= 1e-6);
});

Deno.test("left padding: real positions match the row alone (RoPE is relative), padded rows stay finite", async () => {
  const model = tinyModel();
  const short = tokenRows(1, 5, V, 3)[0];
  const batch = [tokenRows(1, 8, V, 4)[0], [0, 0, 0, ...short]];
  const attentionMask = [Array(8).fill(1), [0, 0, 0, 1, 1, 1, 1, 1]];
  const both = await model.forward(batch, { attentionMask }).logits.data();
  assert.ok(both.every(Number.isFinite), "fully masked rows give finite values, not NaN");
  const alone = await model.forward([short]).logits.data();
  assert.ok(relErr(rowSlice(both, 8, 1, 3, 8), rowSlice(alone, 5, 0, 0, 5)) <= 1e-5);
  // With positions counted over real tokens (what generate passes) the match is tighter still.
  const positionIds = [[0, 1, 2, 3, 4, 5, 6, 7], [1, 1, 1, 0, 1, 2, 3, 4]];
  const withPos = await model.forward(batch, { attentionMask, positionIds }).logits.data();
  assert.ok(relErr(rowSlice(withPos, 8, 1, 3, 8), rowSlice(alone, 5, 0, 0, 5)) <= 1e-6);
});

Deno.test("an attention mask of all ones changes nothing", async () => {
  const model = tinyModel();
  const ids = tokenRows(2, 6);
  const a = await model.forward(ids).logits.data();
  const b = await model.forward(ids, { attentionMask: [Array(6).fill(1), Array(6).fill(1)] }).logits.data();
  assert.deepEqual(b, a);
});

Deno.test("loss is transformers' causal-LM loss: shifted labels, mean over labels that are not -100", async () => {
  const model = tinyModel();
  const ids = tokenRows(2, 6);
  const labels = ids.map((r) => [...r]);
  labels[0][3] = -100;
  labels[1][5] = -100;
  const { logits, loss } = model.forward(ids, { labels });
  const l = await logits.data();
  let total = 0, count = 0;
  for (let b = 0; b < 2; b++) {
    for (let i = 0; i < 5; i++) {
      const target = labels[b][i + 1];
      if (target === -100) continue;
      const row = rowSlice(l, 6, b, i, i + 1);
      const max = Math.max(...row);
      const lse = max + Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0));
      total += lse - row[target];
      count++;
    }
  }
  assert.equal(count, 8);
  assert.ok(Math.abs((await loss!.item()) - total / count) <= 1e-6 * (total / count));
});

Deno.test("loss with every label ignored is NaN, as in torch", async () => {
  const model = tinyModel();
  const { loss } = model.forward([[1, 2, 3]], { labels: [[-100, -100, -100]] });
  assert.ok(Number.isNaN(await loss!.item()));
});

Deno.test("grouped-query attention equals multi-head attention with each key/value head repeated", async () => {
  const gqa = tinyModel({ numKeyValueHeads: 2 });
  const mha = tinyModel({ numKeyValueHeads: 4 });
  const sd = gqa.stateDict();
  const d = 8;
  const repeat = async (w: (typeof sd)[string]) => {
    const v = await w.data();
    const out = new Float32Array(4 * d * 32);
    for (let h = 0; h < 4; h++) {
      out.set(v.subarray(Math.floor(h / 2) * d * 32, (Math.floor(h / 2) + 1) * d * 32), h * d * 32);
    }
    return { shape: [4 * d, 32], data: out };
  };
  const loaded: Record<string, { shape: readonly number[]; data: ArrayLike<number> }> = {};
  for (const [k, t] of Object.entries(sd)) {
    loaded[k] = /\.(k|v)_proj\.weight$/.test(k) ? await repeat(t) : { shape: t.shape, data: await t.data() };
  }
  mha.loadStateDict(loaded);
  const ids = tokenRows(2, 7);
  assert.ok(relErr(await gqa.forward(ids).logits.data(), await mha.forward(ids).logits.data()) <= 1e-6);
});

Deno.test("a KV cache: prefix then continuation gives the full forward's logits for the continuation", async () => {
  const model = tinyModel();
  const ids = tokenRows(2, 9);
  const full = await model.forward(ids).logits.data();
  const cache = new KVCache(model.config.numHiddenLayers);
  noGrad(() => model.forward(ids.map((r) => r.slice(0, 6)), { cache }));
  assert.equal(cache.length, 6);
  const rest = await noGrad(() => model.forward(ids.map((r) => r.slice(6)), { cache })).logits.data();
  assert.equal(cache.length, 9);
  for (let b = 0; b < 2; b++) {
    assert.ok(relErr(rowSlice(rest, 3, b, 0, 3), rowSlice(full, 9, b, 6, 9)) <= 1e-6);
  }
  cache.dispose();
});

Deno.test("lastOnly gives the last position's logits", async () => {
  const model = tinyModel();
  const ids = tokenRows(2, 5);
  const full = await model.forward(ids).logits.data();
  const last = model.forward(ids, { lastOnly: true }).logits;
  assert.deepEqual(last.shape, [2, 1, V]);
  const l = await last.data();
  for (let b = 0; b < 2; b++) assert.deepEqual(rowSlice(l, 1, b, 0, 1), rowSlice(full, 5, b, 4, 5));
});

Deno.test("an f16 model runs (norms and softmax in f32, as transformers) close to the f32 one", async () => {
  const f32 = tinyModel();
  const f16 = new LlamaForCausalLM(f32.config, { dtype: "f16", materialize: false });
  const sd: Record<string, { shape: readonly number[]; data: ArrayLike<number> }> = {};
  for (const [k, t] of Object.entries(f32.stateDict())) sd[k] = { shape: t.shape, data: await t.data() };
  f16.loadStateDict(sd);
  const ids = tokenRows(2, 6);
  const { logits, loss } = f16.forward(ids, { labels: ids });
  assert.equal(logits.dtype, "f16");
  assert.equal(loss!.dtype, "f32");
  const err = relErr(await logits.data(), await f32.forward(ids).logits.data());
  assert.ok(err > 0 && err < 1e-2, `f16 vs f32 relative error ${err}`);
});

Deno.test("the model is a causal LM to PEFT helpers: matchAllLinear skips lm_head", () => {
  const model = tinyModel();
  const n = applyLoraToLinearModules(model, new PeftConfig({ matchAllLinear: true, dim: 2 }));
  assert.equal(n, 2 * 7);
  assert.ok(!("lora_A" in model.lm_head));
});

Deno.test("forward input errors name the problem", () => {
  const model = tinyModel();
  assert.throws(
    () => model.forward([[1, 2, V]]),
    (e: unknown) => e instanceof ShapeError && /token id 64/.test(e.message),
  );
  assert.throws(() => model.forward([[1, 2], [3]]), /different lengths/);
  assert.throws(() => model.forward([[1, 2]], { attentionMask: [[1, 1, 1]] }), /attentionMask \[1,3\]/);
  assert.throws(() => model.forward([[1, 2]], { attentionMask: [[1, 2]] }), /only 0 and 1/);
  assert.throws(() => model.forward([[1, 2]], { labels: [[1]] }), /labels \[1,1\]/);
  assert.throws(() => model.forward([[1, 2]], { labels: [[1, 99]] }), /label 99/);
  assert.throws(() => model.forward({ data: [1, 2, 3], shape: [2, 2] }), /\[batch, seq\]/);
  assert.throws(() => model.forward([[1, 2]], { labels: [[1, 2]], lastOnly: true }), /lastOnly/);
});

Deno.test("ropeInverseFrequencies: float32 steps of 1 / theta^(2i/d); linear divides by the factor", () => {
  const f = Math.fround;
  const inv = ropeInverseFrequencies(16, { ropeType: "default", theta: 10000 });
  assert.equal(inv.length, 8);
  for (let i = 0; i < 8; i++) assert.equal(inv[i], f(1 / f(Math.pow(10000, f((2 * i) / 16)))));
  const lin = ropeInverseFrequencies(16, { ropeType: "linear", theta: 10000, factor: 4 });
  for (let i = 0; i < 8; i++) assert.equal(lin[i], f(inv[i] / 4));
});

Deno.test("ropeInverseFrequencies llama3: high frequencies kept, low ones divided, middle ones between", () => {
  const rope = {
    ropeType: "llama3" as const,
    theta: 500000,
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 64,
  };
  const base = ropeInverseFrequencies(32, { ropeType: "default", theta: 500000 });
  const scaled = ropeInverseFrequencies(32, rope);
  let kept = 0, divided = 0, between = 0;
  for (let i = 0; i < base.length; i++) {
    const wavelen = (2 * Math.PI) / base[i];
    if (wavelen < 64 / 4) (assert.equal(scaled[i], base[i]), kept++);
    else if (wavelen > 64) (assert.equal(scaled[i], Math.fround(base[i] / 8)), divided++);
    else (assert.ok(scaled[i] < base[i] && scaled[i] > base[i] / 8), between++);
  }
  assert.ok(kept > 0 && divided > 0 && between > 0, `${kept} kept, ${divided} divided, ${between} between`);
});

Deno.test("the rotate-half matrix maps x to cat(-x[d/2:], x[:d/2]) exactly", async () => {
  const d = 8;
  const x = [1.5, -2, 3.25, 4, -5, 6.5, 7, -8];
  const y = await tensor(x, [1, d]).matmul(tensor(rotateHalfMatrix(d), [d, d])).data();
  assert.deepEqual(Array.from(y), [5, -6.5, -7, 8, 1.5, -2, 3.25, 4]);
});

Deno.test("crossEntropy of the flattened logits is what forward's loss uses (no hidden reduction)", async () => {
  const model = tinyModel();
  const ids = tokenRows(1, 4);
  const { logits, loss } = model.forward(ids, { labels: ids });
  const manual = crossEntropy(logits.reshape([4, V]), [ids[0][1], ids[0][2], ids[0][3], -100]);
  assert.equal(await loss!.item(), await manual.item());
});
