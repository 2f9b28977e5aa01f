/** PEFT's matching rules on load: list and regex targets, exclusion, rank/alpha patterns, rsLoRA. */
import assert from "node:assert/strict";
import { ConfigError, type LinearLoRA, loadAdapter, type Module } from "../../mod.ts";
import { adapterSummary, moduleAt, node, peftFiles, PROJECTIONS, tinyLlamaTree } from "./adapter_fixtures.ts";

const L0 = "model.layers.0", L1 = "model.layers.1";

/** Loads `config` with weights for exactly `ranks` and returns what got patched (name → r, scale). */
async function loadWith(
  config: Record<string, unknown>,
  ranks: Record<string, number>,
  model: Module = tinyLlamaTree(),
) {
  const names = await loadAdapter(model, peftFiles(model, config, ranks));
  assert.deepEqual([...names].sort(), Object.keys(ranks).sort());
  return adapterSummary(model);
}

/** `ranks` with every module at rank r. */
const allAt = (names: string[], r: number) => Object.fromEntries(names.map((n) => [n, r]));

Deno.test("matching: a list entry equal to a full module name targets exactly that module", async () => {
  const got = await loadWith({ r: 4, lora_alpha: 8, target_modules: [`${L0}.self_attn.q_proj`] }, {
    [`${L0}.self_attn.q_proj`]: 4,
  });
  assert.deepEqual(got, { [`${L0}.self_attn.q_proj`]: { r: 4, scale: 2 } });
});

Deno.test("matching: list entries match as dot-bounded suffixes of any length", async () => {
  const qv = [
    `${L0}.self_attn.q_proj`,
    `${L0}.self_attn.v_proj`,
    `${L1}.self_attn.q_proj`,
    `${L1}.self_attn.v_proj`,
  ];
  await loadWith({ r: 2, target_modules: ["q_proj", "v_proj"] }, allAt(qv, 2));
  await loadWith({ r: 2, target_modules: ["self_attn.q_proj"] }, allAt([qv[0], qv[2]], 2));
  await loadWith({ r: 2, target_modules: ["layers.1.mlp.up_proj"] }, allAt([`${L1}.mlp.up_proj`], 2));
});

Deno.test("matching: a list entry must end at a dot boundary ('proj' is not a suffix entry of 'q_proj')", async () => {
  for (const entry of ["proj", "_proj", "attn.q_proj", "elf_attn.q_proj"]) {
    const model = tinyLlamaTree();
    await assert.rejects(
      loadAdapter(model, peftFiles(model, { target_modules: [entry] }, {})),
      (e: Error) =>
        e instanceof ConfigError && e.message.includes("matches no module") && e.message.includes(entry),
      entry,
    );
    assert.deepEqual(adapterSummary(model), {}, `${entry}: nothing may be patched`);
  }
});

Deno.test("matching: a regex string must match the whole name (Python's re.fullmatch)", async () => {
  const qv = PROJECTIONS.filter((n) => /\.(q|v)_proj$/.test(n));
  await loadWith({ r: 2, target_modules: String.raw`.*\.(q|v)_proj` }, allAt(qv, 2));
  await loadWith(
    { r: 2, target_modules: String.raw`model\.layers\.1\..*_proj` },
    allAt(PROJECTIONS.slice(7), 2),
  );
  // Python's named groups are translated.
  await loadWith(
    { r: 2, target_modules: String.raw`(?P<block>.*)\.mlp\.down_proj` },
    allAt([`${L0}.mlp.down_proj`, `${L1}.mlp.down_proj`], 2),
  );
  // A regex matching only part of a name selects nothing (re.fullmatch, not re.search).
  const model = tinyLlamaTree();
  await assert.rejects(loadAdapter(model, peftFiles(model, { target_modules: "q_proj" }, {})), ConfigError);
});

Deno.test("matching: exclude_modules (list or regex) takes precedence over the targets", async () => {
  const q = PROJECTIONS.filter((n) => n.endsWith("q_proj"));
  await loadWith(
    { target_modules: ["q_proj"], exclude_modules: [`${L0}.self_attn.q_proj`] },
    allAt([q[1]], 8),
  );
  await loadWith(
    { target_modules: "all-linear", exclude_modules: String.raw`.*layers\.1\..*|.*mlp.*` },
    allAt(PROJECTIONS.slice(0, 4), 8),
  );
  await loadWith({ target_modules: ["q_proj", "k_proj"], exclude_modules: ["k_proj"] }, allAt(q, 8));
});

Deno.test("matching: 'all-linear' takes every Linear but a causal LM's lm_head; other models keep it", async () => {
  await loadWith({ r: 2, target_modules: "all-linear" }, allAt(PROJECTIONS, 2));
  const plain = tinyLlamaTree();
  const notCausal = node({ model: plain.model, lm_head: plain.lm_head });
  await loadWith({ r: 2, target_modules: "all-linear" }, allAt([...PROJECTIONS, "lm_head"], 2), notCausal);
});

Deno.test("matching: rank_pattern and alpha_pattern keys match name suffixes, first key in order wins", async () => {
  const config = {
    r: 4,
    lora_alpha: 8,
    target_modules: ["q_proj", "k_proj", "down_proj"],
    // layer 1's q_proj hits the first key; layer 0's q_proj only the second; "proj" hits nothing (dot boundary).
    rank_pattern: { "layers.1.self_attn.q_proj": 2, "q_proj": 16, "proj": 1, "mlp\\.down_.*": 8 },
    alpha_pattern: { "k_proj": 32, [`${L1}.mlp.down_proj`]: 4 },
  };
  const got = await loadWith(config, {
    [`${L0}.self_attn.q_proj`]: 16,
    [`${L0}.self_attn.k_proj`]: 4,
    [`${L0}.mlp.down_proj`]: 8,
    [`${L1}.self_attn.q_proj`]: 2,
    [`${L1}.self_attn.k_proj`]: 4,
    [`${L1}.mlp.down_proj`]: 8,
  });
  assert.deepEqual(got, {
    [`${L0}.self_attn.q_proj`]: { r: 16, scale: 8 / 16 },
    [`${L0}.self_attn.k_proj`]: { r: 4, scale: 32 / 4 },
    [`${L0}.mlp.down_proj`]: { r: 8, scale: 8 / 8 },
    [`${L1}.self_attn.q_proj`]: { r: 2, scale: 8 / 2 },
    [`${L1}.self_attn.k_proj`]: { r: 4, scale: 32 / 4 },
    [`${L1}.mlp.down_proj`]: { r: 8, scale: 4 / 8 },
  });
});

Deno.test("matching: use_rslora scales by alpha / sqrt(r), per module rank included", async () => {
  const got = await loadWith(
    {
      r: 4,
      lora_alpha: 8,
      use_rslora: true,
      target_modules: ["q_proj"],
      rank_pattern: { [`${L1}.self_attn.q_proj`]: 16 },
    },
    { [`${L0}.self_attn.q_proj`]: 4, [`${L1}.self_attn.q_proj`]: 16 },
  );
  assert.deepEqual(got, {
    [`${L0}.self_attn.q_proj`]: { r: 4, scale: 8 / 2 },
    [`${L1}.self_attn.q_proj`]: { r: 16, scale: 8 / 4 },
  });
});

Deno.test("matching: lora_dropout becomes the layers' dropout, applied to the LoRA input as PEFT does", async () => {
  const model = tinyLlamaTree();
  await loadAdapter(
    model,
    peftFiles(
      model,
      { lora_dropout: 0.1, target_modules: ["o_proj"] },
      allAt(PROJECTIONS.filter((n) => n.endsWith("o_proj")), 8),
    ),
  );
  const l = moduleAt(model, `${L0}.self_attn.o_proj`) as LinearLoRA;
  assert.equal(l.dropoutP, 0.1);
  assert.equal(l.dropoutPosition, "pre");
});

Deno.test("matching: a target that hits a non-Linear module is a ConfigError naming it (PEFT rejects it too)", async () => {
  for (
    const [targets, culprit] of [[["mlp"], `${L0}.mlp`], [["embed_tokens"], "model.embed_tokens"], [[
      "q_proj",
      "norm",
    ], "model.norm"]] as const
  ) {
    const model = tinyLlamaTree();
    await assert.rejects(
      loadAdapter(model, peftFiles(model, { target_modules: targets }, {})),
      (e: Error) => e instanceof ConfigError && e.message.includes(culprit) && e.message.includes("Linear"),
      culprit,
    );
    assert.deepEqual(adapterSummary(model), {}, "nothing may be patched");
  }
});
