/** Modules print PyTorch's `print(model)` tree: class names, each layer's extra_repr, indented children. */
import assert from "node:assert/strict";
import { inspect } from "node:util";
import { Dropout, Embedding, Linear, Module, RMSNorm } from "../../mod.ts";
import { reprFloat } from "../../src/nn/module.ts";

Deno.test("each basic layer prints its settings as PyTorch's extra_repr writes them", () => {
  assert.equal(String(new Linear(64, 32)), "Linear(in_features=64, out_features=32, bias=True)");
  assert.equal(
    String(new Linear(3, 5, { bias: false })),
    "Linear(in_features=3, out_features=5, bias=False)",
  );
  assert.equal(String(new Embedding(10, 4)), "Embedding(10, 4)");
  assert.equal(String(new RMSNorm(8)), "RMSNorm((8,), eps=1e-06)");
  assert.equal(String(new RMSNorm(8, { eps: 1e-5 })), "RMSNorm((8,), eps=1e-05)");
  assert.equal(String(new Dropout(0.1)), "Dropout(p=0.1, inplace=False)");
  assert.equal(String(new Dropout(0)), "Dropout(p=0.0, inplace=False)");
});

Deno.test("a module with children prints them as (name): child, indented two spaces per level", () => {
  class Block extends Module {
    constructor() {
      super();
      this.proj = new Linear(4, 4, { bias: false });
      this.norm = new RMSNorm(4);
      this.steps = 3; // not a module: not printed
    }
  }
  const root = new Module();
  root.block = new Block();
  root.head = new Linear(4, 2);
  assert.equal(
    String(root),
    [
      "Module(",
      "  (block): Block(",
      "    (proj): Linear(in_features=4, out_features=4, bias=False)",
      "    (norm): RMSNorm((4,), eps=1e-06)",
      "  )",
      "  (head): Linear(in_features=4, out_features=2, bias=True)",
      ")",
    ].join("\n"),
  );
  assert.equal(String(new Module()), "Module()");
});

Deno.test("arrays of modules print as a ModuleList; runs of identical children fold into (i-j): n x", () => {
  const root = new Module();
  root.layers = [new Linear(4, 4), new Linear(4, 4), new Linear(4, 8), new Linear(4, 4)];
  assert.equal(
    String(root),
    [
      "Module(",
      "  (layers): ModuleList(",
      "    (0-1): 2 x Linear(in_features=4, out_features=4, bias=True)",
      "    (2): Linear(in_features=4, out_features=8, bias=True)",
      "    (3): Linear(in_features=4, out_features=4, bias=True)",
      "  )",
      ")",
    ].join("\n"),
  );
});

Deno.test("a layer whose extraRepr has several lines prints them above its children", () => {
  class Mixed extends Module {
    constructor() {
      super();
      this.fc = new Linear(2, 2);
    }
    override extraRepr(): string {
      return "first=1\nsecond=2";
    }
  }
  assert.equal(
    String(new Mixed()),
    "Mixed(\n  first=1\n  second=2\n  (fc): Linear(in_features=2, out_features=2, bias=True)\n)",
  );
});

Deno.test("Deno.inspect and Node's util.inspect show a module's tree", () => {
  const root = new Module();
  root.fc = new Linear(2, 3);
  assert.equal(Deno.inspect(root), String(root));
  assert.equal(inspect(root), String(root));
});

Deno.test("reprFloat writes numbers as Python's repr writes floats", () => {
  const cases: [number, string][] = [
    [1, "1.0"],
    [0.5, "0.5"],
    [1e-6, "1e-06"],
    [1e-5, "1e-05"],
    [1e-4, "0.0001"],
    [2.5e-7, "2.5e-07"],
    [1e16, "1e+16"],
    [123456.0, "123456.0"],
    [0, "0.0"],
    [-3, "-3.0"],
    [NaN, "nan"],
    [-Infinity, "-inf"],
  ];
  for (const [x, want] of cases) assert.equal(reprFloat(x), want, String(x));
});
