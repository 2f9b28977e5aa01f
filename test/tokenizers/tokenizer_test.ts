/**
 * AutoTokenizer against the Python `tokenizers` library and transformers' apply_chat_template, on two
 * tokenizers built by scripts/make_tokenizer_fixtures.py: byte-level BPE as Qwen2/2.5 and SmolLM use
 * (with Qwen2-Instruct's chat template) and a Llama/SentencePiece-style BPE with byte fallback (with
 * Llama 2's chat template).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { AutoTokenizer, ConfigError, FormatError } from "../../mod.ts";

const FIXTURES = ["tokenizer-bytelevel", "tokenizer-llama"];
const dirOf = (name: string) => new URL(`../fixtures/${name}/`, import.meta.url).pathname;

interface Cases {
  texts: {
    text: string;
    ids: number[];
    ids_no_special: number[];
    decoded: string;
    decoded_skip_special: string;
  }[];
  chats: {
    messages: { role: string; content: string }[];
    rendered: string;
    rendered_generation_prompt: string;
    ids_generation_prompt: number[];
  }[];
  eos_token_id: number;
  vocab_size: number;
}
const casesOf = (name: string): Cases => JSON.parse(Deno.readTextFileSync(`${dirOf(name)}cases.json`));

for (const name of FIXTURES) {
  Deno.test(`AutoTokenizer ${name}: encode and decode equal the Python tokenizers library's`, async () => {
    const tok = await AutoTokenizer.fromPretrained(dirOf(name));
    const cases = casesOf(name);
    assert.equal(tok.vocabSize, cases.vocab_size);
    for (const c of cases.texts) {
      assert.deepEqual(tok.encode(c.text), c.ids, `encode ${JSON.stringify(c.text)}`);
      assert.deepEqual(
        tok.encode(c.text, { addSpecialTokens: false }),
        c.ids_no_special,
        `no special ${c.text}`,
      );
      assert.equal(tok.decode(c.ids), c.decoded, `decode ${JSON.stringify(c.text)}`);
      assert.equal(tok.decode(c.ids, { skipSpecialTokens: true }), c.decoded_skip_special);
    }
  });

  Deno.test(`AutoTokenizer ${name}: the chat template renders what transformers renders`, async () => {
    const tok = await AutoTokenizer.fromPretrained(dirOf(name));
    assert.ok(tok.hasChatTemplate);
    for (const c of casesOf(name).chats) {
      assert.equal(tok.applyChatTemplate(c.messages), c.rendered);
      const prompt = tok.applyChatTemplate(c.messages, { addGenerationPrompt: true });
      assert.equal(prompt, c.rendered_generation_prompt);
      assert.deepEqual(tok.encode(prompt, { addSpecialTokens: false }), c.ids_generation_prompt);
    }
  });
}

Deno.test("AutoTokenizer: special token ids from tokenizer_config.json", async () => {
  const qwen = await AutoTokenizer.fromPretrained(dirOf("tokenizer-bytelevel"));
  assert.equal(qwen.eosTokenId, casesOf("tokenizer-bytelevel").eos_token_id);
  assert.equal(qwen.eosTokenId, qwen.tokenToId("<|im_end|>"));
  assert.equal(qwen.padTokenId, qwen.tokenToId("<|endoftext|>"));
  assert.equal(qwen.bosTokenId, null);
  const llama = await AutoTokenizer.fromPretrained(dirOf("tokenizer-llama"));
  assert.deepEqual([llama.unkTokenId, llama.bosTokenId, llama.eosTokenId, llama.padTokenId], [0, 1, 2, null]);
  assert.equal(llama.idToToken(1), "<s>");
});

Deno.test("AutoTokenizer: { tokenizerJson, tokenizerConfig } as objects or text, the config optional", async () => {
  const dir = dirOf("tokenizer-llama");
  const json = Deno.readTextFileSync(`${dir}tokenizer.json`);
  const config = Deno.readTextFileSync(`${dir}tokenizer_config.json`);
  const fromText = await AutoTokenizer.fromPretrained({ tokenizerJson: json, tokenizerConfig: config });
  const fromObjects = await AutoTokenizer.fromPretrained({
    tokenizerJson: JSON.parse(json),
    tokenizerConfig: JSON.parse(config),
  });
  const c = casesOf("tokenizer-llama").texts[1];
  assert.deepEqual(fromText.encode(c.text), c.ids);
  assert.deepEqual(fromObjects.encode(c.text), c.ids);
  const bare = await AutoTokenizer.fromPretrained({ tokenizerJson: json });
  assert.deepEqual(bare.encode(c.text), c.ids, "tokenizer.json alone encodes the same");
  assert.equal(bare.eosTokenId, null);
  assert.equal(bare.hasChatTemplate, false);
  assert.throws(
    () => bare.applyChatTemplate([{ role: "user", content: "hi" }]),
    (e: unknown) => e instanceof ConfigError && /no chat_template/.test(e.message),
  );
});

Deno.test("applyChatTemplate: a template's own raise_exception and malformed messages are ConfigErrors", async () => {
  const tok = await AutoTokenizer.fromPretrained(dirOf("tokenizer-llama"));
  assert.throws(
    () => tok.applyChatTemplate([{ role: "assistant", content: "first" }]),
    (e: unknown) => e instanceof ConfigError && /alternate/.test(e.message),
  );
  for (const bad of [[], [{ role: "user" }], "hi", [{ role: 1, content: "x" }]]) {
    assert.throws(() => tok.applyChatTemplate(bad as never), ConfigError, JSON.stringify(bad));
  }
});

Deno.test("AutoTokenizer: bad sources and files are ConfigErrors and FormatErrors naming the problem", async () => {
  const dir = dirOf("tokenizer-llama");
  const json = JSON.parse(Deno.readTextFileSync(`${dir}tokenizer.json`));
  await assert.rejects(() => AutoTokenizer.fromPretrained("/nonexistent/tokenizer"), ConfigError);
  await assert.rejects(
    () => AutoTokenizer.fromPretrained(new URL("../fixtures/qwen2-tied/base/", import.meta.url).pathname),
    (e: unknown) => e instanceof ConfigError && /no tokenizer.json/.test(e.message),
  );
  await assert.rejects(() => AutoTokenizer.fromPretrained({} as never), ConfigError);
  await assert.rejects(
    () => AutoTokenizer.fromPretrained({ tokenizerJson: "{oops" }),
    (e: unknown) => e instanceof FormatError && /tokenizer.json is not valid JSON/.test(e.message),
  );
  await assert.rejects(
    () => AutoTokenizer.fromPretrained({ tokenizerJson: json, tokenizerConfig: { eos_token: "<|nope|>" } }),
    (e: unknown) => e instanceof FormatError && /eos_token "<\|nope\|>" is not a token/.test(e.message),
  );
  await assert.rejects(
    () => AutoTokenizer.fromPretrained({ tokenizerJson: json, tokenizerConfig: { bos_token: 5 } }),
    (e: unknown) => e instanceof FormatError && /bos_token/.test(e.message),
  );
  await assert.rejects(
    () =>
      AutoTokenizer.fromPretrained({ tokenizerJson: json, tokenizerConfig: { chat_template: "{% if %}" } }),
    (e: unknown) => e instanceof FormatError && /chat_template does not parse/.test(e.message),
  );
  await assert.rejects(
    () => AutoTokenizer.fromPretrained({ tokenizerJson: { model: { type: "Nonsense" } } }),
    FormatError,
  );
  const tok = await AutoTokenizer.fromPretrained({
    tokenizerJson: json,
    tokenizerConfig: { eos_token: { content: "</s>" } },
  });
  assert.equal(tok.eosTokenId, 2);
  assert.throws(() => tok.decode([tok.vocabSize]), ConfigError);
  assert.throws(() => tok.encode(3 as never), ConfigError);
});

Deno.test("applyChatTemplate: a list of named templates uses the one named default", async () => {
  const dir = dirOf("tokenizer-bytelevel");
  const config = JSON.parse(Deno.readTextFileSync(`${dir}tokenizer_config.json`));
  const tok = await AutoTokenizer.fromPretrained({
    tokenizerJson: Deno.readTextFileSync(`${dir}tokenizer.json`),
    tokenizerConfig: {
      ...config,
      chat_template: [{ name: "tool_use", template: "TOOLS" }, {
        name: "default",
        template: config.chat_template,
      }],
    },
  });
  const c = casesOf("tokenizer-bytelevel").chats[0];
  assert.equal(tok.applyChatTemplate(c.messages), c.rendered);
});

Deno.test("AutoTokenizer: any text round-trips through encode and decode (byte-level: NFC; Llama-style: byte fallback)", async () => {
  const bytelevel = await AutoTokenizer.fromPretrained(dirOf("tokenizer-bytelevel"));
  const llama = await AutoTokenizer.fromPretrained(dirOf("tokenizer-llama"));
  // Special-token spellings and Llama's own space mark "▁" are the only texts that do not come back.
  const text = fc.string({ unit: "grapheme", maxLength: 40 }).filter((s) =>
    !/<\|(endoftext|im_start|im_end)\|>|<s>|<\/s>|<unk>|▁/.test(s)
  );
  fc.assert(
    fc.property(text, (s) => {
      assert.equal(bytelevel.decode(bytelevel.encode(s)), s.normalize("NFC"));
      assert.equal(llama.decode(llama.encode(s), { skipSpecialTokens: true }), s);
    }),
    { numRuns: 300 },
  );
});
