/**
 * Fuzz suite (issue 23): random values of random types in every field PEFT writes into
 * adapter_config.json, and in the option objects of our public calls. The only acceptable outcomes are
 * success or one of the library's five error classes, within a few seconds; a TypeError, RangeError or
 * a hang fails the property. Runs are few and the models tiny, to keep the suite fast.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  AdamW,
  adapterToFiles,
  ConfigError,
  DeviceError,
  DTypeError,
  FormatError,
  Linear,
  loadAdapter,
  LoraConfig,
  patchLinearModule,
  PeftConfig,
  ShapeError,
} from "../../mod.ts";
import { tinyLlamaTree } from "./adapter_fixtures.ts";

const FIXTURE = new URL("../fixtures/llama-tiny-lora/adapter/", import.meta.url);
const CONFIG_TEXT = Deno.readTextFileSync(new URL("adapter_config.json", FIXTURE));
const WEIGHTS = Deno.readFileSync(new URL("adapter_model.safetensors", FIXTURE));
/** The config PEFT 0.21 wrote for the fixture: its keys are the fields to fuzz. */
const PEFT_CONFIG: Record<string, unknown> = JSON.parse(CONFIG_TEXT);

const OURS = [ShapeError, DTypeError, DeviceError, FormatError, ConfigError];

/** Any JSON-ish value: the types a hand-edited or foreign config might hold. */
const anyValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.integer({ min: -3, max: 70 }),
  fc.constantFrom(0, -1, 1e9, 2 ** 53, 0.5, 2.7, -0.0),
  fc.double({ noNaN: false }),
  fc.string({ maxLength: 8 }),
  fc.constantFrom("all-linear", "q_proj", ".*", "(", "LORA", "gaussian", "pissa", "8"),
  fc.array(fc.oneof(fc.string({ maxLength: 6 }), fc.constantFrom("q_proj", "v_proj"), fc.integer()), {
    maxLength: 3,
  }),
  fc.dictionary(
    fc.constantFrom("q_proj", "v_proj", "model.layers.0.self_attn.q_proj", "(", "x"),
    anyScalar(),
    {
      maxKeys: 3,
    },
  ),
);

function anyScalar(): fc.Arbitrary<unknown> {
  return fc.oneof(
    fc.constant(null),
    fc.boolean(),
    fc.integer({ min: -2, max: 64 }),
    fc.double(),
    fc.string(),
  );
}

/** Resolves to what `fn` gave or threw; rejects (failing the property) if it takes over `ms`. */
async function outcome(fn: () => unknown, ms = 5000): Promise<unknown> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms (a hang)`)), ms);
  });
  try {
    return await Promise.race([Promise.resolve().then(fn).then(() => null, (e) => e), hang]);
  } finally {
    clearTimeout(timer);
  }
}

function assertOurs(err: unknown, what: string): void {
  if (err === null) return;
  assert.ok(
    OURS.some((cls) => err instanceof cls),
    `${what}: expected success or one of our errors, got ${err instanceof Error ? err.stack : String(err)}`,
  );
  const msg = (err as Error).message;
  assert.ok(msg.length > 0 && !/undefined is not|Cannot read prop|is not a function/.test(msg), msg);
}

Deno.test("fuzz: every adapter_config.json field PEFT writes, with random values and types, loads or fails with our error", async () => {
  const fields = Object.keys(PEFT_CONFIG);
  // The unedited file loads: failures below come from the edits, not from a broken fixture.
  assert.equal(
    await outcome(() =>
      loadAdapter(tinyLlamaTree(), {
        "adapter_config.json": CONFIG_TEXT,
        "adapter_model.safetensors": WEIGHTS,
      })
    ),
    null,
  );
  let loaded = 0, refused = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.uniqueArray(fc.constantFrom(...fields), { minLength: 1, maxLength: 3 }),
      fc.array(anyValue, { minLength: 3, maxLength: 3 }),
      fc.constantFrom("set", "delete", "text"),
      async (keys, values, how) => {
        const config: Record<string, unknown> = structuredClone(PEFT_CONFIG);
        keys.forEach((k, i) => how === "delete" ? delete config[k] : config[k] = values[i]);
        // "text": the same edit, but NaN / Infinity written as bare literals (a foreign writer's JSON).
        let text = JSON.stringify(config);
        if (how === "text") {
          text = text.replace(/"r":\s*\d+/, '"r": NaN').replace(
            /"lora_alpha":\s*\d+/,
            '"lora_alpha": Infinity',
          );
        }
        const err = await outcome(() =>
          loadAdapter(tinyLlamaTree(), { "adapter_config.json": text, "adapter_model.safetensors": WEIGHTS })
        );
        if (err === null) loaded++;
        else refused++;
        assertOurs(
          err,
          `loadAdapter with ${keys.map((k, i) => `${k}=${JSON.stringify(values[i])}`).join(", ")} (${how})`,
        );
      },
    ),
    { numRuns: 120, seed: 23 },
  );
  assert.ok(loaded > 0 && refused > 0, `both outcomes occur (${loaded} loaded, ${refused} refused)`);
});

Deno.test("fuzz: adapter_config.json that is not a config at all is a FormatError", async () => {
  for (const text of ["", "[]", "null", "{", '"LORA"', "1e999", '{"r": }', "\u0000"]) {
    const err = await outcome(() =>
      loadAdapter(tinyLlamaTree(), { "adapter_config.json": text, "adapter_model.safetensors": WEIGHTS })
    );
    assert.ok(err instanceof FormatError || err instanceof ConfigError, `${JSON.stringify(text)}: ${err}`);
  }
});

/** An options object: some known keys with random values, sometimes an unknown key. */
function options(known: string[]): fc.Arbitrary<Record<string, unknown>> {
  return fc.record({
    picked: fc.uniqueArray(fc.constantFrom(...known), { maxLength: 4 }),
    values: fc.array(anyValue, { minLength: 4, maxLength: 4 }),
    extra: fc.option(fc.constantFrom("rank", "lora_alpha", "__proto__", "constructor"), { nil: undefined }),
  }).map(({ picked, values, extra }) => {
    const o: Record<string, unknown> = {};
    picked.forEach((k, i) => o[k] = values[i]);
    if (extra !== undefined) Object.defineProperty(o, extra, { value: 1, enumerable: true });
    return o;
  });
}

Deno.test("fuzz: option objects of PeftConfig, LoraConfig, patchLinearModule, AdamW and adapterToFiles give only our errors", async () => {
  const peftKeys = [
    "targetModules",
    "excludeModules",
    "matchAllLinear",
    "dim",
    "alpha",
    "dropout",
    "dropoutPosition",
    "loraAInit",
    "loraDtype",
    "useFused",
  ];
  const loraKeys = [
    "r",
    "loraAlpha",
    "targetModules",
    "loraDropout",
    "useRslora",
    "initLoraWeights",
    "biasMode",
    "excludeModules",
    "rankPattern",
    "alphaPattern",
    "modulesToSave",
    "fanInFanOut",
  ];
  const layerKeys = [
    "dim",
    "alpha",
    "dropout",
    "dropoutPosition",
    "loraAInitMethod",
    "loraDtype",
    "useFused",
  ];
  const adamKeys = ["lr", "betas", "eps", "weightDecay"];
  await fc.assert(
    fc.asyncProperty(
      options(peftKeys),
      options(loraKeys),
      options(layerKeys),
      options(adamKeys),
      options(["baseModelNameOrPath", "allowNonFinite"]),
      async (peft, lora, layer, adam, save) => {
        assertOurs(await outcome(() => new PeftConfig(peft)), `PeftConfig(${JSON.stringify(peft)})`);
        assertOurs(
          await outcome(() => PeftConfig.fromDict(peft)),
          `PeftConfig.fromDict(${JSON.stringify(peft)})`,
        );
        assertOurs(await outcome(() => new LoraConfig(lora)), `LoraConfig(${JSON.stringify(lora)})`);
        const linear = new Linear(6, 5, { seed: 1 });
        assertOurs(
          await outcome(() => patchLinearModule(linear, layer)),
          `patchLinearModule(${JSON.stringify(layer)})`,
        );
        assertOurs(
          await outcome(() => new AdamW(linear.parameters(), adam)),
          `AdamW(${JSON.stringify(adam)})`,
        );
        if ("lora_A" in linear) {
          assertOurs(
            await outcome(() => adapterToFiles(linear, save)),
            `adapterToFiles(${JSON.stringify(save)})`,
          );
        }
      },
    ),
    { numRuns: 150, seed: 23 },
  );
});

Deno.test('messages echo values as given: dim "8" (a string) is quoted, a number is not', () => {
  assert.throws(
    () => new PeftConfig({ targetModules: ["q_proj"], dim: "8" as unknown as number }),
    (e: unknown) =>
      e instanceof ConfigError && e.message.endsWith('dim (rank) must be an integer ≥ 1, got "8"'),
  );
  assert.throws(
    () => patchLinearModule(new Linear(4, 4), { dim: 2.5 }),
    (e: unknown) =>
      e instanceof ConfigError && e.message.startsWith("patchLinearModule:") && e.message.endsWith("got 2.5"),
  );
  assert.throws(
    () => new PeftConfig({ targetModules: ["q_proj"], alpha: "16" as unknown as number }),
    /alpha must be a finite number, got "16"$/,
  );
});
