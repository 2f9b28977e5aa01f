/**
 * generateText: strings, lists of strings and chat conversations in; only the new text out, decoded without
 * special tokens; batches in order; bad input as ConfigErrors naming generateText.
 */
import assert from "node:assert/strict";
import {
  AutoModelForCausalLM,
  AutoTokenizer,
  type ChatMessage,
  ConfigError,
  cpuDevice,
  type GenerateOptions,
  generateText,
} from "../../mod.ts";

const tok = await AutoTokenizer.fromPretrained("test/fixtures/tokenizer-bytelevel");
const model = AutoModelForCausalLM.fromConfig({
  architectures: ["Qwen2ForCausalLM"],
  vocab_size: tok.vocabSize,
  hidden_size: 32,
  intermediate_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
}, { device: cpuDevice(), seed: 7 });

/** The new tokens of one prompt, by hand: encode, generate, cut off the prompt, decode. */
async function byHand(ids: number[], maxNewTokens: number): Promise<string> {
  const [row] = await model.generate([ids], { maxNewTokens });
  return tok.decode(row.slice(ids.length), { skipSpecialTokens: true });
}

Deno.test("a string prompt gives the decoded new tokens only, as encode + generate + slice + decode would", async () => {
  const text = await generateText(model, tok, "Hello there", { maxNewTokens: 6 });
  assert.equal(typeof text, "string");
  assert.ok(text.length > 0); // the random model's six tokens decode to something
  assert.equal(text, await byHand(tok.encode("Hello there"), 6));
});

Deno.test("a list of prompts is one batch, answered in order, each as its own call would answer it", async () => {
  const prompts = ["Hi", "What is the weather like", "ok"];
  const texts = await generateText(model, tok, prompts, { maxNewTokens: 5 });
  assert.ok(Array.isArray(texts));
  assert.equal(texts.length, 3);
  for (let i = 0; i < prompts.length; i++) {
    assert.equal(texts[i], await generateText(model, tok, prompts[i], { maxNewTokens: 5 }), prompts[i]);
  }
});

Deno.test("chat messages go through the chat template with the assistant turn opened; the prompt is not returned", async () => {
  const chat: ChatMessage[] = [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi!" }];
  const text = await generateText(model, tok, chat, { maxNewTokens: 6 });
  const rendered = tok.applyChatTemplate(chat, { addGenerationPrompt: true });
  assert.ok(rendered.endsWith("<|im_start|>assistant\n"), rendered);
  assert.ok(text.length > 0 && !text.includes("<|im_start|>"), text);
  assert.equal(text, await byHand(tok.encode(rendered, { addSpecialTokens: false }), 6));
  const two = await generateText(model, tok, [chat, [{ role: "user", content: "Bye" }]], { maxNewTokens: 6 });
  assert.equal(two[0], text);
});

Deno.test("the model's generate sees the prompt ids and the options (skipSpecialTokens aside); specials skipped by default", async () => {
  const eos = tok.eosTokenId!;
  const answer = tok.encode("yes", { addSpecialTokens: false });
  const seen: { ids: number[][]; opts: GenerateOptions }[] = [];
  const scripted = {
    generate: (ids: number[][], opts: GenerateOptions) => {
      seen.push({ ids, opts });
      return Promise.resolve(ids.map((r) => [...r, ...answer, eos]));
    },
  };
  assert.equal(await generateText(scripted, tok, "Q?", { maxNewTokens: 9, greedy: true }), "yes");
  assert.deepEqual(seen[0].ids, [tok.encode("Q?")]);
  assert.deepEqual(seen[0].opts, { maxNewTokens: 9, greedy: true });
  const raw = await generateText(scripted, tok, "Q?", { maxNewTokens: 9, skipSpecialTokens: false });
  assert.equal(raw, "yes<|im_end|>");
  assert.deepEqual(seen[1].opts, { maxNewTokens: 9 });
});

Deno.test("bad prompts are ConfigErrors naming generateText; generate's own options are checked by generate", async () => {
  const bad: unknown[] = [[], 42, ["a", { role: "user", content: "b" }], [[]], [{ role: "user" }]];
  for (const p of bad) {
    await assert.rejects(
      // deno-lint-ignore no-explicit-any
      () => generateText(model, tok, p as any, { maxNewTokens: 1 }),
      (e: Error) => e instanceof ConfigError && e.message.startsWith("generateText:"),
      JSON.stringify(p),
    );
  }
  await assert.rejects(
    () => generateText(model, tok, "", { maxNewTokens: 1 }), // this tokenizer adds no BOS
    (e: Error) => e instanceof ConfigError && /encodes to no tokens/.test(e.message),
  );
  await assert.rejects(
    () => generateText(model, tok, "x", { maxNewTokens: 1, skipSpecialTokens: "yes" as unknown as boolean }),
    (e: Error) => e instanceof ConfigError && /skipSpecialTokens must be a boolean/.test(e.message),
  );
  await assert.rejects(
    // deno-lint-ignore no-explicit-any
    () => generateText(model, tok, "x", { maxNewTokens: 1, max_new_tokens: 3 } as any),
    (e: Error) => e instanceof ConfigError && /unknown option "max_new_tokens"/.test(e.message),
  );
  const plain = await AutoTokenizer.fromPretrained("test/fixtures/tokenizer"); // no chat template
  await assert.rejects(
    () => generateText(model, plain, [{ role: "user", content: "the cat" }], { maxNewTokens: 1 }),
    (e: Error) => e instanceof ConfigError && /chat_template/.test(e.message),
  );
});
