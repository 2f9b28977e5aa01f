/** The demo's tokenizers: the byte tokenizer, and a checkpoint's tokenizer.json through @huggingface/tokenizers. */
import assert from "node:assert/strict";
import fc from "fast-check";
import { ConfigError, FormatError, llamaConfig } from "../../../mod.ts";
import { ByteTokenizer, HfTokenizer, loadTokenizer } from "../../../examples/demo/tokenizer.ts";

const fixtureDir = new URL("../../fixtures/tokenizer/", import.meta.url).pathname;
const tokenizerJson = JSON.parse(Deno.readTextFileSync(`${fixtureDir}tokenizer.json`));
const tokenizerConfig = JSON.parse(Deno.readTextFileSync(`${fixtureDir}tokenizer_config.json`));
const vocab: Record<string, number> = tokenizerJson.model.vocab;

const config = (vocabSize: number, extra: { eosTokenId?: number; padTokenId?: number } = {}) =>
  llamaConfig({
    vocabSize,
    hiddenSize: 8,
    intermediateSize: 16,
    numHiddenLayers: 1,
    numAttentionHeads: 2,
    ...extra,
  });

Deno.test("ByteTokenizer: ids are the UTF-8 bytes and any text round-trips", () => {
  const tok = new ByteTokenizer(10);
  assert.deepEqual(tok.encode("A\n"), [65, 10]);
  assert.deepEqual(tok.encode("é"), [0xc3, 0xa9]);
  fc.assert(fc.property(fc.string({ unit: "grapheme" }), (s) => tok.decode(tok.encode(s)) === s), {
    numRuns: 200,
  });
  assert.equal(tok.eosTokenId, 10);
  assert.equal(tok.padTokenId, 10);
  assert.throws(() => new ByteTokenizer(256), ConfigError);
});

Deno.test("HfTokenizer on the fixture: word ids from its vocabulary, <s> only with special tokens", () => {
  const tok = new HfTokenizer(tokenizerJson, tokenizerConfig, config(27));
  const words = ["the", "cat", "sat", "on", "the", "mat", "."];
  assert.deepEqual(tok.encode("The cat sat on the mat."), words.map((w) => vocab[w]));
  assert.deepEqual(tok.encode("the cat", { addSpecialTokens: true }), [vocab["<s>"], vocab.the, vocab.cat]);
  assert.deepEqual(tok.encode("zebra"), [vocab["<unk>"]]);
  assert.equal(tok.decode([vocab["<s>"], vocab.the, vocab.red, vocab.cat, vocab["."]]), "the red cat.");
});

Deno.test("HfTokenizer: EOS and padding come from config.json first, then tokenizer_config.json", () => {
  const fromTokenizer = new HfTokenizer(tokenizerJson, tokenizerConfig, config(27));
  assert.equal(fromTokenizer.eosTokenId, vocab["</s>"]);
  assert.equal(fromTokenizer.padTokenId, vocab["<pad>"]);
  const fromModel = new HfTokenizer(
    tokenizerJson,
    tokenizerConfig,
    config(27, { eosTokenId: 5, padTokenId: 6 }),
  );
  assert.equal(fromModel.eosTokenId, 5);
  assert.equal(fromModel.padTokenId, 6);
  const bare = new HfTokenizer(tokenizerJson, {}, config(27));
  assert.equal(bare.eosTokenId, null);
  assert.equal(bare.padTokenId, 0);
  const objectForm = new HfTokenizer(tokenizerJson, { eos_token: { content: "</s>" } }, config(27));
  assert.equal(objectForm.eosTokenId, vocab["</s>"]);
});

Deno.test("HfTokenizer: a vocabulary larger than the model's is a ConfigError; garbage a FormatError", () => {
  assert.throws(
    () => new HfTokenizer(tokenizerJson, tokenizerConfig, config(20)),
    (e: Error) => e instanceof ConfigError && /token id 26, beyond the model's vocab_size 20/.test(e.message),
  );
  assert.throws(() => new HfTokenizer({ model: { type: "Nonsense" } }, {}, config(27)), FormatError);
});

Deno.test("loadTokenizer: tokenizer.json when present, else bytes when the vocabulary holds them", async () => {
  const dir = await Deno.makeTempDir();
  try {
    assert.ok((await loadTokenizer(dir, config(300, { eosTokenId: 10 }))) instanceof ByteTokenizer);
    await assert.rejects(
      () => loadTokenizer(dir, config(100)),
      (e: Error) => e instanceof ConfigError && /no tokenizer\.json.*vocab_size 100/.test(e.message),
    );
    await Deno.copyFile(`${fixtureDir}tokenizer.json`, `${dir}/tokenizer.json`);
    const noConfig = await loadTokenizer(dir, config(27));
    assert.ok(noConfig instanceof HfTokenizer);
    assert.equal(noConfig.eosTokenId, null, "no tokenizer_config.json: no EOS name");
    await Deno.copyFile(`${fixtureDir}tokenizer_config.json`, `${dir}/tokenizer_config.json`);
    assert.equal((await loadTokenizer(dir, config(27))).eosTokenId, vocab["</s>"]);
    await Deno.writeTextFile(`${dir}/tokenizer_config.json`, "[1]");
    await assert.rejects(() => loadTokenizer(dir, config(27)), FormatError);
    await Deno.writeTextFile(`${dir}/tokenizer.json`, "{ not json");
    await assert.rejects(
      () => loadTokenizer(dir, config(27)),
      (e: Error) => e instanceof FormatError && /tokenizer\.json is not valid JSON/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
