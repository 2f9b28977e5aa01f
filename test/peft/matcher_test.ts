/**
 * `wildcardMatch` and `ModuleMatcher`, the module-selection rules of NeMo AutoModel's `PeftConfig`: `*`
 * wildcards against the whole dotted name with every other character literal, the option conflicts, the
 * `*_proj` default, `lm_head` skipped under matchAllLinear on a causal LM only.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { ConfigError, Embedding, Linear, ModuleMatcher, RMSNorm, wildcardMatch } from "../../mod.ts";

// ---------------------------------------------------------------------------------------------------
// Wildcards

Deno.test("wildcards: `*` matches any run of characters, dots included, against the whole name", () => {
  assert.ok(wildcardMatch("*_proj", "model.layers.0.self_attn.q_proj"));
  assert.ok(wildcardMatch("*.q_proj", "model.layers.0.self_attn.q_proj"));
  assert.ok(wildcardMatch("*", "anything.at.all"));
  assert.ok(wildcardMatch("*", ""));
  assert.ok(wildcardMatch("model.*.q_proj", "model.layers.0.self_attn.q_proj"));
  assert.ok(wildcardMatch("q*proj", "q_proj"));
  assert.ok(wildcardMatch("q_proj*", "q_proj"), "a star may match nothing");
  // Whole-name: a bare module name does not match a longer path, nor a prefix / suffix of it.
  assert.equal(wildcardMatch("q_proj", "model.layers.0.self_attn.q_proj"), false);
  assert.equal(wildcardMatch("model", "model.layers"), false);
  assert.equal(wildcardMatch("*.q", "model.q_proj"), false);
});

Deno.test("wildcards: `.` is literal, so `*.layers.1.*` does not hit layer 10", () => {
  assert.ok(wildcardMatch("*.layers.1.*", "model.layers.1.mlp.up_proj"));
  assert.equal(wildcardMatch("*.layers.1.*", "model.layers.10.mlp.up_proj"), false);
  assert.equal(wildcardMatch("*.layers.1.*", "model.layers.11.self_attn.q_proj"), false);
  assert.equal(wildcardMatch("a.b", "aXb"), false);
  assert.equal(wildcardMatch("layers.1", "layers11"), false);
});

Deno.test("wildcards: every regex metacharacter other than `*` is literal", () => {
  const cases: [string, string, string][] = [
    // pattern, a name it must match (itself), a name a regex reading would match but we must not
    ["a+b", "a+b", "aab"],
    ["a?b", "a?b", "ab"],
    ["(q|k)_proj", "(q|k)_proj", "q_proj"],
    ["[qk]_proj", "[qk]_proj", "q_proj"],
    ["x{2}", "x{2}", "xx"],
    ["^q$", "^q$", "q"],
    ["a\\d", "a\\d", "a1"],
    ["a/b", "a/b", "a/c"],
    ["a-b", "a-b", "a_b"],
    ["a$b", "a$b", "a"],
  ];
  for (const [pattern, literal, regexOnly] of cases) {
    assert.ok(wildcardMatch(pattern, literal), `${pattern} should match itself`);
    assert.equal(wildcardMatch(pattern, regexOnly), false, `${pattern} must not match ${regexOnly}`);
  }
});

Deno.test("wildcards (property): a name matches itself, its starred versions, and nothing else literal", () => {
  // Any characters at all (line breaks and astral code points included), except the wildcard itself.
  const segment = fc.string({
    minLength: 1,
    maxLength: 5,
    unit: fc.oneof(
      fc.constantFrom(..."._-+?^$()[]{}|\\/\na1"),
      fc.string({ unit: "binary", minLength: 1, maxLength: 1 }),
    ),
  })
    .filter((s) => !s.includes("*"));
  fc.assert(
    fc.property(
      fc.array(segment, { minLength: 1, maxLength: 5 }),
      fc.array(fc.boolean(), { minLength: 5, maxLength: 5 }),
      segment,
      (segs, starred, other) => {
        const name = segs.join(".");
        assert.ok(wildcardMatch(name, name));
        // Replacing whole segments by `*` keeps a match (a star spans any characters, newlines too).
        const pattern = segs.map((s, i) => (starred[i] ? "*" : s)).join(".");
        assert.ok(wildcardMatch(pattern, name), `${JSON.stringify(pattern)} vs ${JSON.stringify(name)}`);
        if (other !== name) assert.equal(wildcardMatch(name, other), false);
        assert.equal(wildcardMatch(name, `${name}.x`), false);
        assert.equal(wildcardMatch(name, `x${name}`), false);
      },
    ),
    { numRuns: 300 },
  );
});

// ---------------------------------------------------------------------------------------------------
// ModuleMatcher

Deno.test("ModuleMatcher: targetModules with excludeModules is a ConfigError", () => {
  assert.throws(
    () => new ModuleMatcher(["*_proj"], ["*.o_proj"]),
    (e: Error) =>
      e instanceof ConfigError && /targetModules/.test(e.message) && /excludeModules/.test(e.message),
  );
});

Deno.test("ModuleMatcher: matchAllLinear with targetModules or excludeModules is a ConfigError", () => {
  for (
    const [t, x] of [[["*_proj"], []], [[], ["lm_head"]], ["q_proj", []]] as [string[] | string, string[]][]
  ) {
    assert.throws(
      () => new ModuleMatcher(t, x, true),
      (e: Error) => e instanceof ConfigError && /matchAllLinear/.test(e.message),
    );
  }
});

Deno.test("ModuleMatcher: with no options the targets default to `*_proj`", () => {
  const m = new ModuleMatcher();
  assert.deepEqual(m.targetModules, ["*_proj"]);
  const lin = new Linear(2, 2);
  assert.ok(m.match(lin, "model.layers.0.self_attn.q_proj"));
  assert.ok(m.match(lin, "mlp.down_proj"));
  assert.equal(m.match(lin, "lm_head"), false);
  assert.equal(m.match(lin, "model.layers.0.mlp.proj_out"), false);
});

Deno.test("ModuleMatcher: excludeModules adapts every Linear except the excluded ones", () => {
  const m = new ModuleMatcher([], ["*.o_proj", "lm_head"]);
  const lin = new Linear(2, 2);
  assert.ok(m.match(lin, "model.layers.0.self_attn.q_proj"));
  assert.ok(m.match(lin, "model.layers.0.mlp.up_proj"));
  assert.equal(m.match(lin, "model.layers.0.self_attn.o_proj"), false);
  assert.equal(m.match(lin, "lm_head"), false);
  assert.equal(m.match(new RMSNorm(2), "model.norm"), false, "only Linears are candidates");
});

Deno.test("ModuleMatcher: matchAllLinear takes every Linear, skipping lm_head only on a causal LM", () => {
  const lin = new Linear(2, 2);
  const causalMatcher = new ModuleMatcher([], [], true, true);
  const plain = new ModuleMatcher([], [], true, false);
  assert.ok(causalMatcher.match(lin, "model.layers.3.mlp.up_proj"));
  assert.equal(causalMatcher.match(lin, "lm_head"), false);
  assert.ok(plain.match(lin, "lm_head"));
  assert.equal(plain.match(new Embedding(3, 2), "model.embed_tokens"), false);
});

Deno.test("ModuleMatcher accepts a single string for targets and excludes", () => {
  assert.deepEqual(new ModuleMatcher("*.q_proj").targetModules, ["*.q_proj"]);
  assert.deepEqual(new ModuleMatcher([], "lm_head").excludeModules, ["lm_head"]);
});
