/** generate: KV-cache decoding equals recomputation, seeded sampling, top-k / top-p, EOS, option errors. */
import assert from "node:assert/strict";
import { argmax, ConfigError, noGrad, sampleToken, ShapeError } from "../../mod.ts";
import { Rng } from "../../src/core/random.ts";
import { tinyModel, tokenRows } from "./tiny_model.ts";
import type { LlamaForCausalLM } from "../../mod.ts";

/** Greedy decoding by a full forward over the whole sequence at every step, one row at a time. */
async function greedyByRecompute(model: LlamaForCausalLM, prompt: number[], n: number): Promise<number[]> {
  const seq = [...prompt];
  for (let i = 0; i < n; i++) {
    const logits = await noGrad(() => model.forward([seq], { lastOnly: true }).logits).data();
    seq.push(argmax(logits));
  }
  return seq;
}

Deno.test("greedy generate with the KV cache equals recomputing the whole prefix at every step", async () => {
  const model = tinyModel();
  const prompts = [tokenRows(1, 5, 64, 1)[0], tokenRows(1, 2, 64, 2)[0], tokenRows(1, 7, 64, 3)[0]];
  const out = await model.generate(prompts, { maxNewTokens: 10 });
  for (let b = 0; b < prompts.length; b++) {
    assert.deepEqual(out[b], await greedyByRecompute(model, prompts[b], 10), `row ${b}`);
  }
});

Deno.test("generate returns the prompts unchanged for maxNewTokens 0", async () => {
  const model = tinyModel();
  assert.deepEqual(await model.generate([[1, 2], [3]], { maxNewTokens: 0 }), [[1, 2], [3]]);
});

Deno.test("sampling is reproducible with a seed and differs between seeds", async () => {
  const model = tinyModel();
  const prompts = tokenRows(2, 3);
  const opts = { maxNewTokens: 12, greedy: false, temperature: 1.5 };
  const a = await model.generate(prompts, { ...opts, seed: 42 });
  const b = await model.generate(prompts, { ...opts, seed: 42 });
  const c = await model.generate(prompts, { ...opts, seed: 43 });
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  assert.ok(a.every((r) => r.length === 15 && r.every((t) => Number.isInteger(t) && t >= 0 && t < 64)));
});

Deno.test("sampling with topK 1, or a tiny topP, is greedy decoding", async () => {
  const model = tinyModel();
  const prompts = tokenRows(2, 4);
  const greedy = await model.generate(prompts, { maxNewTokens: 6 });
  assert.deepEqual(
    await model.generate(prompts, { maxNewTokens: 6, greedy: false, topK: 1, seed: 5 }),
    greedy,
  );
  assert.deepEqual(
    await model.generate(prompts, { maxNewTokens: 6, greedy: false, topP: 1e-6, seed: 5 }),
    greedy,
  );
});

Deno.test("a row stops after eosTokenId (kept in its output) while the others continue", async () => {
  const model = tinyModel();
  const prompts = [tokenRows(1, 4, 64, 1)[0], tokenRows(1, 4, 64, 9)[0]];
  const free = await model.generate(prompts, { maxNewTokens: 8 });
  const eos = free[0][4 + 2]; // row 0's third new token
  assert.ok(!free[0].slice(4, 6).includes(eos), "pick a token that row 0 does not produce earlier");
  const stopped = await model.generate(prompts, { maxNewTokens: 8, eosTokenId: eos });
  assert.deepEqual(stopped[0], free[0].slice(0, 7));
  const firstEos = free[1].slice(4).indexOf(eos);
  assert.deepEqual(stopped[1], firstEos < 0 ? free[1] : free[1].slice(0, 4 + firstEos + 1));
});

Deno.test("sampleToken follows the softmax distribution", () => {
  const logits = [1, 0.5, -1, 2, 0];
  const z = logits.map(Math.exp), total = z.reduce((a, b) => a + b);
  const rng = new Rng(123);
  const counts = new Array(5).fill(0);
  const n = 20000;
  for (let i = 0; i < n; i++) {
    counts[sampleToken(logits, { greedy: false, temperature: 1, topK: 0, topP: 1 }, rng)]++;
  }
  for (let i = 0; i < 5; i++) {
    const p = z[i] / total;
    assert.ok(
      Math.abs(counts[i] / n - p) < 4 * Math.sqrt(p * (1 - p) / n) + 1e-3,
      `token ${i}: ${counts[i] / n} vs ${p}`,
    );
  }
});

Deno.test("sampleToken: topK keeps the k largest (ties with the k-th kept); topP keeps transformers' nucleus", () => {
  const rng = new Rng(9);
  const s = { greedy: false, temperature: 1, topK: 2, topP: 1 };
  const seen = new Set<number>();
  for (let i = 0; i < 500; i++) seen.add(sampleToken([0, 3, 1, 3, 2.9], s, rng));
  assert.deepEqual([...seen].sort(), [1, 3], "two tokens tie for the top: exactly those two");
  const probs = [0.5, 0.3, 0.15, 0.05];
  const logp = probs.map(Math.log);
  const nucleus = new Set<number>();
  for (let i = 0; i < 500; i++) {
    nucleus.add(sampleToken(logp, { greedy: false, temperature: 1, topK: 0, topP: 0.7 }, rng));
  }
  assert.deepEqual([...nucleus].sort(), [0, 1], "0.5 + 0.3 is the smallest set reaching 0.7");
});

Deno.test("argmax takes the first of equal maxima, like torch.argmax", () => {
  assert.equal(argmax([1, 3, 2, 3]), 1);
  assert.equal(argmax([-1]), 0);
});

Deno.test("generate option and prompt errors", async () => {
  const model = tinyModel();
  const p = [[1, 2]];
  const bad: [object, RegExp][] = [
    [{ maxNewTokens: -1 }, /maxNewTokens/],
    [{ maxNewTokens: 2, temperature: 0.5 }, /greedy: false/],
    [{ maxNewTokens: 2, greedy: false, temperature: 0 }, /temperature/],
    [{ maxNewTokens: 2, greedy: false, topP: 0 }, /topP/],
    [{ maxNewTokens: 2, greedy: false, topK: 0 }, /topK/],
    [{ maxNewTokens: 2, eosTokenId: 64 }, /eosTokenId 64/],
    [{ maxNewTokens: 2, greedy: false, seed: 1.5 }, /seed/],
  ];
  for (const [opts, msg] of bad) {
    await assert.rejects(
      () => model.generate(p, opts as { maxNewTokens: number }),
      (e: unknown) => e instanceof ConfigError && msg.test(e.message),
    );
  }
  await assert.rejects(() => model.generate([], { maxNewTokens: 1 }), ShapeError);
  await assert.rejects(() => model.generate([[]], { maxNewTokens: 1 }), ShapeError);
  await assert.rejects(() => model.generate([[1, 64]], { maxNewTokens: 1 }), /token 64 at row 0, position 1/);
});
