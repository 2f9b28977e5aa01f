/**
 * collateCompletions: prompt/completion pairs into { inputIds, attentionMask, labels } with -100 over the
 * prompt and the padding, EOS after each completion, right or left padding and truncation to maxLength.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { AutoTokenizer, collateCompletions, ConfigError } from "../../mod.ts";
import type { CollateTokenizer } from "../../src/text/collate.ts";

/** One token per character (id = char code − 96, so "a" is 1), EOS 0 and pad 30: results are easy to read. */
const letters: CollateTokenizer = {
  encode: (
    text,
    opts,
  ) => [...(opts?.addSpecialTokens ?? true ? [27] : []), ...[...text].map((c) => c.charCodeAt(0) - 96)],
  eosTokenId: 0,
  padTokenId: 30,
};

Deno.test("rows are BOS + prompt + completion + EOS, labels -100 over BOS and prompt, right-padded by default", () => {
  const batch = collateCompletions(letters, [{ prompt: "ab", completion: "c" }, {
    prompt: "a",
    completion: "bcd",
  }]);
  assert.deepEqual(batch.inputIds, [[27, 1, 2, 3, 0, 30], [27, 1, 2, 3, 4, 0]]);
  assert.deepEqual(batch.attentionMask, [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]);
  assert.deepEqual(batch.labels, [[-100, -100, -100, 3, 0, -100], [-100, -100, 2, 3, 4, 0]]);
});

Deno.test("padSide left puts the padding first; maxLength cuts the end of each row", () => {
  const pairs = [{ prompt: "ab", completion: "c" }, { prompt: "a", completion: "bcd" }];
  const left = collateCompletions(letters, pairs, { padSide: "left" });
  assert.deepEqual(left.inputIds[0], [30, 27, 1, 2, 3, 0]);
  assert.deepEqual(left.attentionMask[0], [0, 1, 1, 1, 1, 1]);
  assert.deepEqual(left.labels[0], [-100, -100, -100, -100, 3, 0]);
  const cut = collateCompletions(letters, pairs, { maxLength: 4 });
  assert.deepEqual(cut.inputIds, [[27, 1, 2, 3], [27, 1, 2, 3]]);
  assert.deepEqual(cut.labels, [[-100, -100, -100, 3], [-100, -100, 2, 3]]);
  // a prompt that fills maxLength leaves its row with nothing to train on
  assert.deepEqual(collateCompletions(letters, pairs, { maxLength: 2 }).labels, [[-100, -100], [-100, -100]]);
});

Deno.test("EOS is not doubled, addEos: false leaves it out, padTokenId overrides the tokenizer's", () => {
  const eosEnded: CollateTokenizer = {
    ...letters,
    encode: (t, o) => [...letters.encode(t, o), ...(o?.addSpecialTokens === false ? [0] : [])],
  };
  assert.deepEqual(collateCompletions(eosEnded, [{ prompt: "a", completion: "b" }]).inputIds, [[
    27,
    1,
    2,
    0,
  ]]);
  assert.deepEqual(
    collateCompletions(letters, [{ prompt: "a", completion: "b" }], { addEos: false }).inputIds,
    [[27, 1, 2]],
  );
  const padded = collateCompletions(letters, [{ prompt: "a", completion: "b" }, {
    prompt: "",
    completion: "",
  }], {
    padTokenId: 5,
  });
  assert.deepEqual(padded.inputIds[1], [27, 0, 5, 5]);
  // without a pad token the EOS pads; with neither, an error asks for padTokenId
  const noPad = { ...letters, padTokenId: null };
  assert.deepEqual(
    collateCompletions(noPad, [{ prompt: "ab", completion: "c" }, { prompt: "", completion: "" }])
      .inputIds[1],
    [
      27,
      0,
      0,
      0,
      0,
    ],
  );
  assert.throws(
    () => collateCompletions({ ...noPad, eosTokenId: null }, [{ prompt: "a", completion: "b" }]),
    (e: Error) => e instanceof ConfigError && /padTokenId/.test(e.message),
  );
});

Deno.test("with a tokenizer.json tokenizer: its BOS, EOS and pad ids, completions encoded without specials", async () => {
  const tok = await AutoTokenizer.fromPretrained("test/fixtures/tokenizer");
  const pairs = [{ prompt: "what color is the cat ?", completion: "red ." }, {
    prompt: "the dog",
    completion: "ran",
  }];
  const batch = collateCompletions(tok, pairs);
  const bos = tok.bosTokenId!, eos = tok.eosTokenId!, pad = tok.padTokenId!;
  const [red, dot, ran] = ["red", ".", "ran"].map((w) => tok.tokenToId(w)!);
  assert.equal(batch.inputIds[0][0], bos);
  assert.deepEqual(batch.inputIds[0].slice(-3), [red, dot, eos]);
  assert.deepEqual(batch.labels[0].filter((l) => l !== -100), [red, dot, eos]);
  assert.deepEqual(batch.labels[1].filter((l) => l !== -100), [ran, eos]);
  const width = batch.inputIds[0].length;
  assert.deepEqual(batch.inputIds[1], [
    bos,
    tok.tokenToId("the")!,
    tok.tokenToId("dog")!,
    ran,
    eos,
    ...new Array(width - 5).fill(pad),
  ]);
});

Deno.test("bad pairs and options are ConfigErrors naming collateCompletions and the value", () => {
  const cases: [unknown, unknown, RegExp][] = [
    [[], {}, /non-empty list/],
    [[{ prompt: "a" }], {}, /pairs\[0\] must be/],
    [[{ prompt: "a", completion: 3 }], {}, /pairs\[0\]/],
    [
      [{ prompt: "a", completion: "b" }],
      { padSide: "middle" },
      /padSide must be "left" or "right", got "middle"/,
    ],
    [[{ prompt: "a", completion: "b" }], { maxLength: 0 }, /maxLength must be a positive integer, got 0/],
    [[{ prompt: "a", completion: "b" }], { max_length: 8 }, /unknown option "max_length"/],
    [[{ prompt: "a", completion: "b" }], { padTokenId: -1 }, /padTokenId must be a non-negative integer/],
  ];
  for (const [pairs, opts, re] of cases) {
    assert.throws(
      // deno-lint-ignore no-explicit-any
      () => collateCompletions(letters, pairs as any, opts as any),
      (e: Error) =>
        e instanceof ConfigError && e.message.startsWith("collateCompletions:") && re.test(e.message),
      `${JSON.stringify(pairs)} ${JSON.stringify(opts)}`,
    );
  }
});

Deno.test("property: every row has the batch's width; labels are the ids on completion tokens and -100 elsewhere", () => {
  const pair = fc.record({
    prompt: fc.stringMatching(/^[a-z]{0,6}$/),
    completion: fc.stringMatching(/^[a-z]{0,6}$/),
  });
  fc.assert(
    fc.property(
      fc.array(pair, { minLength: 1, maxLength: 5 }),
      fc.constantFrom<"left" | "right">("left", "right"),
      fc.option(fc.integer({ min: 1, max: 12 }), { nil: undefined }),
      (pairs, padSide, maxLength) => {
        const b = collateCompletions(letters, pairs, { padSide, maxLength });
        const width = b.inputIds[0].length;
        pairs.forEach((p, i) => {
          const full = 1 + p.prompt.length + p.completion.length + 1;
          const real = Math.min(full, maxLength ?? Infinity);
          for (const row of [b.inputIds[i], b.attentionMask[i], b.labels[i]]) assert.equal(row.length, width);
          assert.equal(b.attentionMask[i].filter((m) => m === 1).length, real);
          const offset = padSide === "left" ? width - real : 0;
          for (let j = 0; j < width; j++) {
            const pos = j - offset; // position within the unpadded row
            const inRow = pos >= 0 && pos < real;
            assert.equal(b.attentionMask[i][j], inRow ? 1 : 0);
            const trained = inRow && pos >= 1 + p.prompt.length;
            assert.equal(b.labels[i][j], trained ? b.inputIds[i][j] : -100);
            if (!inRow) assert.equal(b.inputIds[i][j], 30);
          }
        });
        assert.equal(
          width,
          Math.max(
            ...pairs.map((p) => Math.min(2 + p.prompt.length + p.completion.length, maxLength ?? Infinity)),
          ),
        );
      },
    ),
  );
});
