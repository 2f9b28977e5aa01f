/**
 * Command-line flags of the demo and of the pretraining script: one small parser driven by a table, so
 * `--help` is generated from the same entries that are parsed, and every bad flag is a one-line
 * {@link UsageError}.
 * @module
 */

/** A problem with what the user typed or pointed at; the programs print its message and exit with 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** How a flag's value is read. */
export type FlagKind = "int" | "number" | "string" | "list";

/** One flag of a program. */
export interface FlagSpec {
  /** Without the leading dashes. */
  name: string;
  kind: FlagKind;
  /** Placeholder in the help, e.g. "DIR". */
  metavar: string;
  help: string;
  /** Parsed like a user's value when the flag is absent; absent and no default: undefined. */
  default?: string;
  /** Allowed values ("string" flags). */
  choices?: readonly string[];
  /** Smallest allowed value ("int" flags; default 1). Numbers of kind "number" must be > 0. */
  min?: number;
}

/** A parsed flag value. */
export type FlagValue = string | number | string[] | undefined;

/** What {@link parseFlags} returns: `help` when -h/--help was given, else every flag's value. */
export interface ParsedFlags {
  help: boolean;
  values: Record<string, FlagValue>;
}

function parseValue(spec: FlagSpec, raw: string): Exclude<FlagValue, undefined> {
  const flag = `--${spec.name}`;
  switch (spec.kind) {
    case "int": {
      const min = spec.min ?? 1;
      const v = Number(raw);
      if (raw.trim() === "" || !Number.isSafeInteger(v) || v < min) {
        throw new UsageError(`${flag} must be an integer ≥ ${min}, got ${JSON.stringify(raw)}`);
      }
      return v;
    }
    case "number": {
      const v = Number(raw);
      if (raw.trim() === "" || !Number.isFinite(v) || v <= 0) {
        throw new UsageError(`${flag} must be a positive number, got ${JSON.stringify(raw)}`);
      }
      return v;
    }
    case "list": {
      const items = raw.split(",").map((s) => s.trim());
      if (items.length === 0 || items.some((s) => s === "")) {
        throw new UsageError(
          `${flag} must be a comma-separated list without empty entries, got ${JSON.stringify(raw)}`,
        );
      }
      return items;
    }
    case "string":
      if (raw === "") throw new UsageError(`${flag} must not be empty`);
      if (spec.choices && !spec.choices.includes(raw)) {
        throw new UsageError(`${flag} must be one of ${spec.choices.join(", ")}, got ${JSON.stringify(raw)}`);
      }
      return raw;
  }
}

/**
 * Reads `--name value` and `--name=value` flags. Unknown flags, missing or malformed values, repeated
 * flags and positional arguments are {@link UsageError}s that name the flag.
 */
export function parseFlags(argv: readonly string[], specs: readonly FlagSpec[]): ParsedFlags {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const given = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "-h" || arg === "--help") return { help: true, values: {} };
    if (!arg.startsWith("--")) {
      throw new UsageError(`unexpected argument ${JSON.stringify(arg)} (flags start with --)`);
    }
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const spec = byName.get(name);
    if (spec === undefined) throw new UsageError(`unknown flag --${name} (see --help)`);
    if (given.has(name)) throw new UsageError(`--${name} is given twice`);
    let raw: string;
    if (eq >= 0) raw = arg.slice(eq + 1);
    else {
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith("--") && next.length > 2)) {
        throw new UsageError(`--${name} needs a value (${spec.metavar})`);
      }
      raw = next;
      i++;
    }
    given.set(name, raw);
  }
  const values: Record<string, FlagValue> = {};
  for (const spec of specs) {
    const raw = given.get(spec.name) ?? spec.default;
    values[spec.name] = raw === undefined ? undefined : parseValue(spec, raw);
  }
  return { help: false, values };
}

/** Lines of the help text stay within this many columns where words allow. */
const HELP_COLUMNS = 100;

/** Splits `text` at spaces into lines of at most `width` characters (longer words stand alone). */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line !== "" && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line === "" ? word : `${line} ${word}`;
    }
  }
  return [...lines, line];
}

/** The `--help` text: usage, description, then one entry per flag with its default. */
export function helpText(usage: string, description: string, specs: readonly FlagSpec[]): string {
  const heads = specs.map((s) => `  --${s.name} ${s.metavar}`);
  const width = Math.max(...heads.map((h) => h.length)) + 2;
  const lines = specs.map((s, i) => {
    const extra = s.default !== undefined ? ` (default: ${s.default})` : "";
    return wrap(s.help + extra, HELP_COLUMNS - width).map((l, j) =>
      (j === 0 ? heads[i] : "").padEnd(width) + l
    )
      .join("\n");
  });
  return [
    `Usage: ${usage}`,
    "",
    description,
    "",
    "Options:",
    ...lines,
    "  -h, --help".padEnd(width) + "this text",
  ]
    .join("\n");
}

/** Devices the programs accept. */
export const DEVICE_CHOICES = ["auto", "cpu", "webgpu"] as const;

/** What `--device` means, shared by the demo and the pretraining script. */
export const DEVICE_HELP = "auto: a hardware GPU through WebGPU if present, else the CPU reference; " +
  "webgpu: any WebGPU adapter, software ones included";

/** The demo's flags. */
export const DEMO_FLAGS: readonly FlagSpec[] = [
  {
    name: "base",
    kind: "string",
    metavar: "DIR",
    help: "a transformers Llama, Mistral, Qwen2/2.5 or Qwen3 checkpoint (config.json, " +
      "model.safetensors, tokenizer.json); " +
      "default: the shipped demo model",
  },
  {
    name: "data",
    kind: "string",
    metavar: "FILE",
    help: 'training data: JSONL lines {"prompt": ..., "completion": ...} (file ending in .jsonl, or ' +
      "first line a JSON object) or plain text; default: the demo's task B",
  },
  {
    name: "steps",
    kind: "int",
    metavar: "N",
    help: "training steps (with --resume: further steps)",
    default: "120",
  },
  { name: "batch", kind: "int", metavar: "N", help: "sequences per step", default: "16" },
  { name: "rank", kind: "int", metavar: "R", help: "LoRA rank", default: "8" },
  { name: "alpha", kind: "number", metavar: "A", help: "LoRA alpha (scale = alpha / rank)", default: "16" },
  {
    name: "lr",
    kind: "number",
    metavar: "LR",
    help: "peak learning rate of AdamW (warmup, then cosine decay); tuned for the shipped model, " +
      "larger checkpoints usually want 1e-4 to 3e-4",
    default: "0.01",
  },
  {
    name: "targets",
    kind: "list",
    metavar: "LIST",
    help: "comma list of module-name patterns to adapt, matched by the seed's rule (NeMo AutoModel's " +
      "applyLoraToLinearModules: * is a wildcard over whole dotted names, nothing else is special); a bare " +
      "name such as q_proj is widened to *.q_proj, so it means every module of that name",
    default: "*_proj",
  },
  {
    name: "resume",
    kind: "string",
    metavar: "DIR",
    help: "continue from a directory this demo wrote with --out (adapter + optimizer state)",
  },
  {
    name: "out",
    kind: "string",
    metavar: "DIR",
    help: "where the adapter and optimizer state go",
    default: "lora-out",
  },
  {
    name: "device",
    kind: "string",
    metavar: "auto|cpu|webgpu",
    help: DEVICE_HELP,
    choices: DEVICE_CHOICES,
    default: "auto",
  },
  {
    name: "seed",
    kind: "int",
    metavar: "N",
    help: "seed of the adapter init and the data order",
    min: 0,
    default: "0",
  },
  {
    name: "eval",
    kind: "int",
    metavar: "N",
    help: "held-out examples to score before and after",
    default: "200",
  },
  {
    name: "seq-len",
    kind: "int",
    metavar: "N",
    help: "tokens per training sequence for plain-text data",
    min: 2,
    default: "64",
  },
  {
    name: "quantize",
    kind: "string",
    metavar: "none|nf4|int8",
    help: "train on a quantized frozen base (QLoRA): every Linear but lm_head as NF4 or int8",
    choices: ["none", "nf4", "int8"],
    default: "none",
  },
];

/** The demo's settings. */
export interface DemoOptions {
  /** Checkpoint directory; null: the shipped model. */
  base: string | null;
  /** Data file; null: task B. */
  data: string | null;
  steps: number;
  batch: number;
  rank: number;
  alpha: number;
  lr: number;
  /** Patterns as PeftConfig takes them (bare names already widened to `*.name`). */
  targets: string[];
  resume: string | null;
  out: string;
  device: (typeof DEVICE_CHOICES)[number];
  seed: number;
  evalCount: number;
  seqLen: number;
  /** The frozen base's quantization ("none": dense). */
  quantize: "none" | "nf4" | "int8";
}

/** A bare module name (no dot, no wildcard) stands for every module of that name. */
export function widenTarget(pattern: string): string {
  return pattern.includes(".") || pattern.includes("*") ? pattern : `*.${pattern}`;
}

/** The demo's usage line and description for `--help`. */
export const DEMO_USAGE = "npm run demo -- [options]   (or: deno run -A examples/demo.ts [options])";

/** What the demo does, for `--help`. */
export const DEMO_DESCRIPTION =
  "LoRA-fine-tunes a small Llama model and saves the adapter in Hugging Face PEFT's format.\n" +
  "Without --base/--data it teaches the shipped model (pretrained on task A: add 1 to every digit,\n" +
  '"3917+1=4028") task B (add 2: "3917+2=5139"), reports held-out exact-match accuracy before and\n' +
  "after, reloads the saved adapter, checks merged and unmerged outputs agree and prints generations.";

/** Parses the demo's command line; null means `--help` was asked for. */
export function parseDemoArgs(argv: readonly string[]): DemoOptions | null {
  const { help, values: v } = parseFlags(argv, DEMO_FLAGS);
  if (help) return null;
  return {
    base: (v.base as string | undefined) ?? null,
    data: (v.data as string | undefined) ?? null,
    steps: v.steps as number,
    batch: v.batch as number,
    rank: v.rank as number,
    alpha: v.alpha as number,
    lr: v.lr as number,
    targets: (v.targets as string[]).map(widenTarget),
    resume: (v.resume as string | undefined) ?? null,
    out: v.out as string,
    device: v.device as DemoOptions["device"],
    seed: v.seed as number,
    evalCount: v.eval as number,
    seqLen: v["seq-len"] as number,
    quantize: v.quantize as DemoOptions["quantize"],
  };
}

/**
 * Refuses a `--seq-len` beyond the base model's positions before any work: training such windows would
 * only grow attention's memory until the process is killed (the 16 GB run).
 */
export function checkSequenceLength(seqLen: number, maxPositionEmbeddings: number): void {
  if (seqLen > maxPositionEmbeddings) {
    throw new UsageError(
      `--seq-len ${seqLen}: longer than the base model's max_position_embeddings (${maxPositionEmbeddings}); ` +
        `use --seq-len ${maxPositionEmbeddings} or less`,
    );
  }
}
