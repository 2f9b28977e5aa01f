/** LoraConfig: PEFT's names and defaults, fromDict of the configs PEFT writes, and its validation. */
import assert from "node:assert/strict";
import { ConfigError, LoraConfig } from "../../mod.ts";

/** Every adapter_config.json under test/fixtures (all written by PEFT 0.21 through the generators). */
function peftConfigs(): [string, Record<string, unknown>][] {
  const out: [string, Record<string, unknown>][] = [];
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(dir)) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory) walk(p);
      else if (e.name === "adapter_config.json") out.push([p, JSON.parse(Deno.readTextFileSync(p))]);
    }
  };
  walk("test/fixtures");
  return out;
}

Deno.test("LoraConfig defaults are PEFT's: r 8, alpha 8, no dropout, no rsLoRA, init true, targets unset", () => {
  const c = new LoraConfig();
  assert.deepEqual(
    [c.r, c.loraAlpha, c.loraDropout, c.useRslora, c.initLoraWeights, c.targetModules, c.excludeModules],
    [8, 8, 0, false, true, null, null],
  );
  assert.deepEqual([c.rankPattern, c.alphaPattern, c.inferenceMode], [{}, {}, false]);
});

Deno.test("LoraConfig.fromDict reads every adapter_config.json PEFT wrote for the fixtures", () => {
  const configs = peftConfigs();
  assert.ok(configs.length >= 10, `found only ${configs.length} configs`);
  for (const [path, raw] of configs) {
    const c = LoraConfig.fromDict(raw);
    assert.equal(c.r, raw.r, path);
    assert.equal(c.loraAlpha, raw.lora_alpha, path);
    assert.deepEqual(c.targetModules, raw.target_modules, path);
    assert.deepEqual({ ...c.rankPattern }, raw.rank_pattern ?? {}, path);
    assert.deepEqual({ ...c.alphaPattern }, raw.alpha_pattern ?? {}, path);
    assert.equal(c.useRslora, raw.use_rslora, path);
    assert.equal(c.taskType, raw.task_type, path);
    // and back: what toDict writes reads to the same config
    assert.deepEqual(LoraConfig.fromDict(c.toDict()).options(), c.options(), path);
  }
});

Deno.test("LoraConfig.fromDict accepts PEFT's bookkeeping keys and refuses features it cannot honour, by name", () => {
  const base = { r: 4, lora_alpha: 8, target_modules: ["q_proj"] };
  const c = LoraConfig.fromDict({
    ...base,
    peft_type: "LORA",
    peft_version: "0.21.0",
    auto_mapping: null,
    revision: null,
    inference_mode: true,
    megatron_core: "megatron.core",
    qalora_group_size: 16,
    loftq_config: {},
    kasa_config: null,
  });
  assert.equal(c.inferenceMode, true);
  assert.throws(
    () => LoraConfig.fromDict({ ...base, use_dora: true }),
    (e) => e instanceof ConfigError && /use_dora/.test(e.message),
  );
  assert.throws(
    () => LoraConfig.fromDict({ ...base, modules_to_save: ["lm_head"] }),
    (e) => e instanceof ConfigError && /modules_to_save/.test(e.message),
  );
  assert.throws(
    () => LoraConfig.fromDict({ ...base, surprise: 3 }),
    (e) => e instanceof ConfigError && /surprise/.test(e.message),
  );
});

Deno.test("LoraConfig validates its options, naming the bad one", () => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ r: 0 }, /\br\b/],
    [{ r: 2.5 }, /\br\b/],
    [{ loraAlpha: Number.NaN }, /lora_alpha/],
    [{ loraDropout: 1 }, /lora_dropout/],
    [{ targetModules: "q_proj(" }, /target_modules/],
    [{ rankPattern: { q_proj: 0 } }, /rank_pattern/],
    [{ initLoraWeights: "pissa" }, /initLoraWeights/],
    [{ dim: 4 }, /dim/],
  ];
  for (const [opts, re] of bad) {
    assert.throws(
      () => new LoraConfig(opts as never),
      (e) => e instanceof ConfigError && /LoraConfig/.test(e.message) && re.test(e.message),
      JSON.stringify(opts),
    );
  }
});

Deno.test("LoraConfig.with changes some options and keeps the rest", () => {
  const c = new LoraConfig({ r: 4, targetModules: ["q_proj"], useRslora: true }).with({ r: 6 });
  assert.deepEqual([c.r, c.targetModules, c.useRslora], [6, ["q_proj"], true]);
});
