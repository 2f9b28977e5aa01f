/**
 * Every public op and layer validates its operands up front: the right error class, a message naming
 * the operation and the offending shapes / dtypes / values, and no partial result.
 */
import assert from "node:assert/strict";
import {
  add,
  concat,
  ConfigError,
  crossEntropy,
  dropout,
  DTypeError,
  embedding,
  Linear,
  linear,
  LinearLoRA,
  logSoftmax,
  loraLinear,
  matmul,
  mean,
  mul,
  PeftConfig,
  permute,
  reshape,
  rmsNorm,
  ShapeError,
  slice,
  softmax,
  sub,
  sum,
  tensor,
  transpose,
  zeros,
} from "../../mod.ts";

const t = (shape: number[], dtype: "f32" | "f64" = "f32") => zeros(shape, { dtype });

interface Case {
  name: string;
  run: () => unknown;
  error: new (...args: never[]) => Error;
  /** Substrings the message must contain (op name first). */
  mentions: string[];
}

const cases: Case[] = [
  {
    name: "add non-broadcastable",
    run: () => add(t([2, 3]), t([4, 3])),
    error: ShapeError,
    mentions: ["add", "[2,3]", "[4,3]"],
  },
  {
    name: "sub mixed dtypes",
    run: () => sub(t([2]), t([2], "f64")),
    error: DTypeError,
    mentions: ["sub", "f32", "f64"],
  },
  {
    name: "mul non-broadcastable",
    run: () => mul(t([5]), t([3])),
    error: ShapeError,
    mentions: ["mul", "[5]", "[3]"],
  },
  {
    name: "matmul inner dims",
    run: () => matmul(t([2, 3]), t([4, 5])),
    error: ShapeError,
    mentions: ["matmul", "[2,3]", "[4,5]"],
  },
  {
    name: "matmul 1-D operand",
    run: () => matmul(t([3]), t([3, 2])),
    error: ShapeError,
    mentions: ["matmul", "[3]"],
  },
  {
    name: "linear in_features",
    run: () => linear(t([2, 7]), t([4, 6])),
    error: ShapeError,
    mentions: ["linear", "[2,7]", "[4,6]"],
  },
  {
    name: "linear bias size",
    run: () => linear(t([2, 6]), t([4, 6]), t([5])),
    error: ShapeError,
    mentions: ["linear", "[5]"],
  },
  {
    name: "reshape size",
    run: () => reshape(t([2, 3]), [4, 2]),
    error: ShapeError,
    mentions: ["reshape", "[2,3]", "[4,2]"],
  },
  {
    name: "reshape two -1 impossible",
    run: () => reshape(t([2, 3]), [-1, 4]),
    error: ShapeError,
    mentions: ["reshape", "[2,3]"],
  },
  {
    name: "transpose dim",
    run: () => transpose(t([2, 3]), 0, 2),
    error: ShapeError,
    mentions: ["transpose", "dim 2", "rank 2"],
  },
  {
    name: "permute not a permutation",
    run: () => permute(t([2, 3]), [0, 0]),
    error: ShapeError,
    mentions: ["permute", "[0,0]"],
  },
  { name: "sum dim", run: () => sum(t([2, 3]), 5), error: ShapeError, mentions: ["sum", "dim 5"] },
  {
    name: "mean repeated dims",
    run: () => mean(t([2, 3]), [1, -1]),
    error: ShapeError,
    mentions: ["mean", "repeated"],
  },
  {
    name: "softmax dim",
    run: () => softmax(t([2, 3]), -3),
    error: ShapeError,
    mentions: ["softmax", "dim -3"],
  },
  {
    name: "logSoftmax dim",
    run: () => logSoftmax(t([2]), 1),
    error: ShapeError,
    mentions: ["logSoftmax", "dim 1"],
  },
  {
    name: "rmsNorm weight",
    run: () => rmsNorm(t([2, 4]), t([3]), 1e-6),
    error: ShapeError,
    mentions: ["rmsNorm", "[3]", "[2,4]"],
  },
  {
    name: "embedding index range",
    run: () => embedding([[0, 9]], t([5, 2])),
    error: ShapeError,
    mentions: ["embedding", "9", "5 rows"],
  },
  {
    name: "embedding fractional id",
    run: () => embedding([1.5], t([5, 2])),
    error: ShapeError,
    mentions: ["embedding", "1.5"],
  },
  {
    name: "embedding ragged rows",
    run: () => embedding([[1, 2], [3]], t([5, 2])),
    error: ShapeError,
    mentions: ["embedding", "lengths"],
  },
  {
    name: "crossEntropy target count",
    run: () => crossEntropy(t([3, 4]), [0, 1]),
    error: ShapeError,
    mentions: ["crossEntropy", "2 targets", "[3,4]"],
  },
  {
    name: "crossEntropy target range",
    run: () => crossEntropy(t([2, 4]), [0, 4]),
    error: ShapeError,
    mentions: ["crossEntropy", "4", "row 1"],
  },
  {
    name: "crossEntropy 3-D logits",
    run: () => crossEntropy(t([2, 2, 4]), [0, 1]),
    error: ShapeError,
    mentions: ["crossEntropy", "[2,2,4]"],
  },
  { name: "dropout p = 1", run: () => dropout(t([2]), 1), error: ConfigError, mentions: ["dropout", "1"] },
  {
    name: "dropout p negative",
    run: () => dropout(t([2]), -0.1),
    error: ConfigError,
    mentions: ["dropout", "-0.1"],
  },
  {
    name: "tensor value count",
    run: () => tensor([1, 2, 3], [2, 2]),
    error: ShapeError,
    mentions: ["tensor", "3 values", "[2,2]"],
  },
  { name: "zeros bad shape", run: () => zeros([2, -1]), error: ShapeError, mentions: ["zeros", "[2,-1]"] },
  {
    name: "tensor unknown dtype",
    run: () => tensor([1], [1], { dtype: "int8" as "f32" }),
    error: DTypeError,
    mentions: ["tensor", "int8"],
  },
  {
    name: "concat mismatched",
    run: () => concat([t([2, 3]), t([3, 2])], 0),
    error: ShapeError,
    mentions: ["concat", "[2,3]", "[3,2]"],
  },
  {
    name: "slice out of bounds",
    run: () => slice(t([2, 3]), 1, 1, 5),
    error: ShapeError,
    mentions: ["slice", "[1, 5)", "[2,3]"],
  },
  {
    name: "loraLinear A/B shapes",
    run: () => loraLinear(t([2, 4]), t([3, 4]), null, t([2, 5]), t([3, 2]), 1),
    error: ShapeError,
    mentions: ["loraLinear", "[2,5]", "[3,4]"],
  },
  {
    name: "Linear zero features",
    run: () => new Linear(0, 3),
    error: ConfigError,
    mentions: ["Linear", "0"],
  },
  {
    name: "LinearLoRA rank 0",
    run: () => new LinearLoRA(new Linear(3, 3), { dim: 0 }),
    error: ConfigError,
    mentions: ["LinearLoRA", "dim", "0"],
  },
  {
    name: "LinearLoRA dropout 1",
    run: () => new LinearLoRA(new Linear(3, 3), { dropout: 1 }),
    error: ConfigError,
    mentions: ["LinearLoRA", "dropout", "1"],
  },
  {
    name: "LinearLoRA dropout position",
    run: () => new LinearLoRA(new Linear(3, 3), { dropoutPosition: "mid" as "pre" }),
    error: ConfigError,
    mentions: ["LinearLoRA", "dropoutPosition", "mid"],
  },
  {
    name: "LinearLoRA init name",
    run: () => new LinearLoRA(new Linear(3, 3), { loraAInitMethod: "normal" as "xavier" }),
    error: ConfigError,
    mentions: ["LinearLoRA", "loraAInit", "normal"],
  },
  {
    name: "PeftConfig rank",
    run: () => new PeftConfig({ dim: 2.5 }),
    error: ConfigError,
    mentions: ["PeftConfig", "2.5"],
  },
  {
    name: "PeftConfig dtype",
    run: () => new PeftConfig({ loraDtype: "int4" as "f32" }),
    error: ConfigError,
    mentions: ["PeftConfig", "int4"],
  },
];

for (const c of cases) {
  Deno.test(`validation: ${c.name} → ${c.error.name} naming the op and values`, () => {
    assert.throws(c.run, (e: unknown) => {
      assert.ok(
        e instanceof c.error,
        `expected ${c.error.name}, got ${(e as Error)?.constructor?.name}: ${e}`,
      );
      const msg = (e as Error).message.replaceAll(" ", "");
      for (const m of c.mentions) {
        assert.ok(
          msg.includes(m.replaceAll(" ", "")),
          `message ${JSON.stringify((e as Error).message)} lacks ${m}`,
        );
      }
      return true;
    });
  });
}

Deno.test("validation: the table covers every differentiable functional op exported by mod.ts", async () => {
  const mod = await import("../../mod.ts");
  const covered = new Set(cases.map((c) => c.mentions[0]));
  // Element-wise unary ops accept any shape; their only failure is a non-tensor input, checked below.
  const unary = ["neg", "exp", "log", "sqrt", "rsqrt", "sigmoid", "silu", "relu", "square", "sin", "cos"];
  for (const name of unary) {
    const f = (mod as unknown as Record<string, (x: unknown) => unknown>)[name];
    assert.throws(
      () => f(42),
      (e: unknown) => e instanceof ShapeError && (e as Error).message.startsWith(name),
    );
  }
  for (
    const op of [
      "add",
      "sub",
      "mul",
      "matmul",
      "linear",
      "reshape",
      "transpose",
      "sum",
      "softmax",
      "rmsNorm",
      "embedding",
      "crossEntropy",
      "dropout",
    ]
  ) {
    assert.ok(covered.has(op), `no validation case for ${op}`);
  }
});
