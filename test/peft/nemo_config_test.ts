/**
 * `PeftConfig`: NeMo AutoModel's defaults, `toDict` / `fromDict` round trips, NeMo AutoModel's snake_case keys and
 * torch dtype strings, and ConfigErrors for unknown keys and bad values.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { ConfigError, PeftConfig, type PeftConfigOptions } from "../../mod.ts";

Deno.test("PeftConfig defaults follow NeMo AutoModel's PeftConfig (useFused true here)", () => {
  const c = new PeftConfig();
  assert.deepEqual(c.toDict(), {
    targetModules: [],
    excludeModules: [],
    matchAllLinear: false,
    dim: 8,
    alpha: 32,
    dropout: 0,
    dropoutPosition: "post",
    loraAInit: "xavier",
    loraDtype: null,
    useFused: true,
  });
});

const patternArb = fc.array(fc.stringMatching(/^[a-z_.*0-9]{1,12}$/), { maxLength: 3 });
const optionsArb: fc.Arbitrary<PeftConfigOptions> = fc.record({
  targetModules: patternArb,
  excludeModules: patternArb,
  matchAllLinear: fc.boolean(),
  dim: fc.integer({ min: 1, max: 256 }),
  alpha: fc.double({ min: -64, max: 512, noNaN: true }).map((v) => v + 0), // JSON has no −0
  dropout: fc.double({ min: 0, max: 0.99, noNaN: true }),
  dropoutPosition: fc.constantFrom("pre" as const, "post" as const),
  loraAInit: fc.constantFrom("xavier" as const, "uniform" as const, "kaiming" as const),
  loraDtype: fc.constantFrom(null, "f32" as const, "f16" as const, "f64" as const),
  useFused: fc.boolean(),
}, { requiredKeys: [] });

Deno.test("fromDict(toDict()) round-trips any valid config; toDict survives JSON", () => {
  fc.assert(
    fc.property(optionsArb, (opts) => {
      const c = new PeftConfig(opts);
      const d = c.toDict();
      assert.deepEqual(PeftConfig.fromDict(d).toDict(), d);
      assert.deepEqual(PeftConfig.fromDict(JSON.parse(JSON.stringify(d))).toDict(), d);
      for (const [k, v] of Object.entries(opts)) if (v !== undefined) assert.deepEqual(d[k], v, k);
    }),
    { numRuns: 100 },
  );
});

Deno.test("fromDict reads NeMo AutoModel's snake_case keys and torch dtype strings", () => {
  const c = PeftConfig.fromDict({
    target_modules: ["*.q_proj", "*.v_proj"],
    match_all_linear: false,
    dim: 16,
    alpha: 8,
    dropout: 0.1,
    dropout_position: "pre",
    lora_A_init: "kaiming",
    lora_dtype: "torch.float16",
    use_triton: false,
  });
  assert.deepEqual(c.toDict(), {
    targetModules: ["*.q_proj", "*.v_proj"],
    excludeModules: [],
    matchAllLinear: false,
    dim: 16,
    alpha: 8,
    dropout: 0.1,
    dropoutPosition: "pre",
    loraAInit: "kaiming",
    loraDtype: "f16",
    useFused: false,
  });
  assert.deepEqual(PeftConfig.fromDict(c.toDict()).toDict(), c.toDict());
  assert.deepEqual(PeftConfig.fromDict({ exclude_modules: ["lm_head"] }).excludeModules, ["lm_head"]);
  assert.equal(PeftConfig.fromDict({ match_all_linear: true }).matchAllLinear, true);
  assert.equal(PeftConfig.fromDict({ use_triton: true }).useFused, true);
});

Deno.test("dtype strings: float16 / torch.float16 / fp16 / half → f16, and the f32 / f64 spellings", () => {
  const table: [string, string][] = [
    ["float16", "f16"],
    ["torch.float16", "f16"],
    ["fp16", "f16"],
    ["half", "f16"],
    ["float32", "f32"],
    ["torch.float32", "f32"],
    ["float", "f32"],
    ["float64", "f64"],
    ["torch.float64", "f64"],
    ["double", "f64"],
  ];
  for (const [given, dtype] of table) {
    assert.equal(PeftConfig.fromDict({ lora_dtype: given }).loraDtype, dtype, given);
    assert.equal(new PeftConfig({ loraDtype: given as "f16" }).loraDtype, dtype, given);
  }
  assert.equal(PeftConfig.fromDict({ lora_dtype: null }).loraDtype, null);
});

Deno.test("a single string target is a one-element list", () => {
  assert.deepEqual(PeftConfig.fromDict({ target_modules: "*_proj" }).targetModules, ["*_proj"]);
});

/** Asserts fromDict throws a ConfigError whose message names each string. */
function rejects(d: Record<string, unknown>, mentions: string[]): void {
  assert.throws(() => PeftConfig.fromDict(d), (e: Error) => {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${e}`);
    for (const m of mentions) assert.ok(e.message.includes(m), `"${e.message}" lacks "${m}"`);
    return true;
  });
}

Deno.test("fromDict: unknown keys and keys given twice are ConfigErrors naming them", () => {
  rejects({ rank: 4 }, ["rank"]);
  rejects({ target_module: ["x"] }, ["target_module"]);
  rejects({ use_dora: true }, ["use_dora"]);
  rejects({ dim: 4, targetModules: ["a"], target_modules: ["b"] }, ["target_modules"]);
});

Deno.test("bad values are ConfigErrors naming the option and value", () => {
  rejects({ dim: 0 }, ["dim", "0"]);
  rejects({ dim: 2.5 }, ["dim", "2.5"]);
  rejects({ dim: -3 }, ["dim"]);
  rejects({ dropout: 1 }, ["dropout", "1"]);
  rejects({ dropout: -0.1 }, ["dropout"]);
  rejects({ dropout_position: "mid" }, ["dropoutPosition", "mid"]);
  rejects({ lora_A_init: "normal" }, ["loraAInit", "normal"]);
  rejects({ lora_dtype: "int8" }, ["int8"]);
  rejects({ lora_dtype: "bfloat16" }, ["bfloat16"]);
  rejects({ alpha: "32" }, ["alpha"]);
  rejects({ alpha: Infinity }, ["alpha"]);
  rejects({ target_modules: [3] }, ["targetModules"]);
  rejects({ match_all_linear: "yes" }, ["matchAllLinear"]);
  rejects({ use_triton: 1 }, ["useFused"]);
  for (const bad of [null, [], "x", 3]) {
    assert.throws(() => PeftConfig.fromDict(bad as unknown as Record<string, unknown>), ConfigError);
  }
});

Deno.test("the constructor validates like fromDict", () => {
  assert.throws(() => new PeftConfig({ dim: 0 }), ConfigError);
  assert.throws(() => new PeftConfig({ dropout: 1 }), ConfigError);
  assert.throws(() => new PeftConfig({ dropoutPosition: "mid" as "pre" }), ConfigError);
  assert.throws(() => new PeftConfig({ loraAInit: "normal" as "xavier" }), ConfigError);
});
