/**
 * Tests of the safetensors reader/writer and the half-precision conversions: round trips for every
 * dtype, the Python-written fixtures (read, and rewritten byte for byte), exhaustive f16/bf16 checks
 * against independent references, and a hostile-input fuzz suite in which every input must either parse
 * or throw FormatError.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { DTypeError, FormatError, ShapeError } from "../../src/core/errors.ts";
import {
  bf16BitsToNumber,
  f16BitsToNumber,
  numberToBf16Bits,
  numberToF16Bits,
  roundToF16,
} from "../../src/core/half.ts";
import {
  type RawTensorEntry,
  readSafetensors,
  type SafetensorsData,
  type TensorLike,
  writeSafetensors,
} from "../../src/io/safetensors.ts";

const FIXTURES = new URL("../fixtures/llama-tiny-lora/", import.meta.url);
const readFixture = (path: string): Uint8Array => Deno.readFileSync(new URL(path, FIXTURES));

/** Fuzz cases run across this file, reported at the end so the suite's size stays visible. */
let fuzzCases = 0;

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

const product = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/** Builds a file around a header given as text (used as is) or a value (JSON-encoded). */
function fileWith(header: unknown, data: Uint8Array | number = 0): Uint8Array {
  const text = typeof header === "string" ? header : JSON.stringify(header);
  const h = new TextEncoder().encode(text);
  const d = typeof data === "number" ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + h.length + d.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(d, 8 + h.length);
  return out;
}

/** The header of a file as parsed JSON, and where its data section starts. */
function headerOf(bytes: Uint8Array): { header: Record<string, unknown>; dataStart: number } {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  return { header: JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))), dataStart: 8 + n };
}

/** Rebuilds a file with a changed header, keeping its data section. */
function withHeader(bytes: Uint8Array, edit: (h: Record<string, unknown>) => unknown): Uint8Array {
  const { header, dataStart } = headerOf(bytes);
  return fileWith(edit(header) ?? header, bytes.subarray(dataStart));
}

/**
 * The fuzz oracle: the reader must either succeed with a consistent result or throw FormatError with a
 * `readSafetensors:` message. Anything else (TypeError, RangeError, ...) fails, with the input attached.
 */
function parsesOrFormatError(bytes: Uint8Array): boolean {
  fuzzCases++;
  let result;
  try {
    result = readSafetensors(bytes);
  } catch (e) {
    if (e instanceof FormatError && e.message.startsWith("readSafetensors: ")) return false;
    const head = new TextDecoder().decode(bytes.subarray(0, 300));
    throw new Error(
      `unexpected ${(e as Error)?.name}: ${(e as Error)?.message}\ninput start: ${JSON.stringify(head)}`,
    );
  }
  let decoded = 0;
  for (const [name, t] of result.tensors) {
    assert.equal(t.data.length, product(t.shape), `tensor ${name}`);
    decoded += t.data.byteLength;
  }
  // F16/BF16 widen to f32; nothing else may exceed the file's own size.
  assert.ok(decoded <= 2 * bytes.length);
  return true;
}

/** Asserts that reading throws FormatError whose message matches `pattern`. */
function assertFormatError(bytes: Uint8Array, pattern: RegExp): void {
  fuzzCases++;
  assert.throws(() => readSafetensors(bytes), (e: unknown) => {
    assert.ok(
      e instanceof FormatError,
      `expected FormatError, got ${(e as Error)?.name}: ${(e as Error)?.message}`,
    );
    assert.match(e.message, /^readSafetensors: /);
    assert.match(e.message, pattern);
    return true;
  });
}

/** Element-wise equality by Object.is (so NaN equals NaN and -0 differs from 0). */
function assertSameElements(
  actual: SafetensorsData,
  expected: ArrayLike<number | bigint>,
  what: string,
): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    if (!Object.is(actual[i], expected[i])) {
      assert.fail(`${what}: element ${i} is ${String(actual[i])}, expected ${String(expected[i])}`);
    }
  }
}

const snapshotPrototype = (): string => JSON.stringify(Object.getOwnPropertyNames(Object.prototype).sort());
const PROTOTYPE_NAMES = snapshotPrototype();
function assertNoPollution(): void {
  assert.equal(snapshotPrototype(), PROTOTYPE_NAMES);
  assert.equal(Object.getPrototypeOf({}), Object.prototype);
  // deno-lint-ignore no-explicit-any
  assert.equal(({} as any).dtype, undefined);
}

/** Names that would collide with Object.prototype if anything copied them into plain objects. */
const SPECIAL_NAMES = [
  "__proto__",
  "constructor",
  "toString",
  "hasOwnProperty",
  "valueOf",
  "__defineGetter__",
  "prototype",
  "0",
  "10",
];

// ---------------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------------

interface DTypeCase {
  value: fc.Arbitrary<number | bigint>;
  /** Typed array the reader returns. */
  decoded: new (n: number) => SafetensorsData;
  /** Typed arrays the writer can be handed (a plain array always works too). */
  inputs: (new (values: ArrayLike<number> & ArrayLike<bigint>) => ArrayLike<number | bigint>)[];
}

// deno-lint-ignore no-explicit-any
const ctor = (c: any) => c;
const INT = (min: number, max: number) => fc.integer({ min, max });
const DTYPE_CASES: Record<string, DTypeCase> = {
  F32: { value: fc.float(), decoded: Float32Array, inputs: [ctor(Float32Array), ctor(Float64Array)] },
  F16: {
    value: INT(0, 0xffff).map(f16BitsToNumber),
    decoded: Float32Array,
    inputs: [ctor(Float32Array), ctor(Float64Array)],
  },
  BF16: {
    value: INT(0, 0xffff).map(bf16BitsToNumber),
    decoded: Float32Array,
    inputs: [ctor(Float32Array), ctor(Float64Array)],
  },
  F64: { value: fc.double(), decoded: Float64Array, inputs: [ctor(Float64Array)] },
  I64: {
    value: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
    decoded: BigInt64Array,
    inputs: [ctor(BigInt64Array)],
  },
  U64: {
    value: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    decoded: BigUint64Array,
    inputs: [ctor(BigUint64Array)],
  },
  I32: {
    value: INT(-(2 ** 31), 2 ** 31 - 1),
    decoded: Int32Array,
    inputs: [ctor(Int32Array), ctor(Float64Array)],
  },
  U32: { value: INT(0, 2 ** 32 - 1), decoded: Uint32Array, inputs: [ctor(Uint32Array)] },
  I16: { value: INT(-32768, 32767), decoded: Int16Array, inputs: [ctor(Int16Array)] },
  U16: { value: INT(0, 65535), decoded: Uint16Array, inputs: [ctor(Uint16Array)] },
  I8: { value: INT(-128, 127), decoded: Int8Array, inputs: [ctor(Int8Array)] },
  U8: { value: INT(0, 255), decoded: Uint8Array, inputs: [ctor(Uint8Array)] },
  BOOL: { value: INT(0, 1), decoded: Uint8Array, inputs: [ctor(Uint8Array)] },
};

/** Ranks 0-4 with dims 0-4: scalars and zero-size tensors come up often. */
const shapeArb = fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 4 });

const entryArb: fc.Arbitrary<{ dtype: string; shape: number[]; values: (number | bigint)[]; input: number }> =
  fc
    .record({ dtype: fc.constantFrom(...Object.keys(DTYPE_CASES)), shape: shapeArb })
    .chain(({ dtype, shape }) =>
      fc.record({
        dtype: fc.constant(dtype),
        shape: fc.constant(shape),
        values: fc.array(DTYPE_CASES[dtype].value, { minLength: product(shape), maxLength: product(shape) }),
        input: fc.nat(DTYPE_CASES[dtype].inputs.length), // == length: a plain array
      })
    );

const nameArb = fc.oneof(
  fc.constantFrom(...SPECIAL_NAMES, "a", "a.b", "model.layers.1.weight", "é", "\u{1F600}", "\uFFFF"),
  fc.string({ unit: "binary", minLength: 1, maxLength: 12 }),
).filter((n) => n !== "__metadata__");

const metadataArb = fc.option(
  fc.uniqueArray(
    fc.tuple(
      fc.oneof(fc.constantFrom(...SPECIAL_NAMES), fc.string({ unit: "binary" })),
      fc.string({ unit: "binary" }),
    ),
    {
      maxLength: 4,
      selector: ([k]) => k,
    },
  ).map((kv) => Object.fromEntries(kv)), // fromEntries defines own keys, "__proto__" included
  { nil: undefined },
);

Deno.test("round trip: every dtype, random shapes (scalars, zero-size dims), names and metadata", () => {
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.tuple(nameArb, entryArb), { maxLength: 6, selector: ([n]) => n }),
      metadataArb,
      (list, metadata) => {
        const entries: Record<string, RawTensorEntry> = Object.create(null);
        for (const [name, e] of list) {
          const Input = DTYPE_CASES[e.dtype].inputs[e.input];
          const data = Input ? new Input(e.values as never) : e.values;
          Object.defineProperty(entries, name, {
            value: { dtype: e.dtype, shape: e.shape, data },
            enumerable: true,
          });
        }
        const bytes = writeSafetensors(entries, metadata);
        const { header, dataStart } = headerOf(bytes);
        assert.equal(dataStart % 8, 0, "header padded to 8 bytes");

        const { tensors, metadata: meta } = readSafetensors(bytes);
        assert.equal(Object.getPrototypeOf(meta), null);
        assert.deepEqual({ ...meta }, { ...metadata });
        assert.equal(tensors.size, list.length);
        for (const [name, e] of list) {
          const t = tensors.get(name);
          assert.ok(t, `tensor ${JSON.stringify(name)} read back`);
          assert.equal(t.dtype, e.dtype);
          assert.deepEqual(t.shape, e.shape);
          assert.ok(t.data instanceof DTYPE_CASES[e.dtype].decoded, `${e.dtype} decodes to the right array`);
          const expected = e.dtype === "F32" ? e.values.map((v) => Math.fround(v as number)) : e.values;
          assertSameElements(t.data, expected, `${e.dtype} ${JSON.stringify(name)}`);
          // Widest dtypes come first, so every tensor is aligned to its element size in the file.
          const [begin, end] = (header[name] as { data_offsets: number[] }).data_offsets;
          const size = e.dtype === "BOOL" ? 1 : Number(e.dtype.replace(/\D/g, "")) / 8;
          assert.equal(end - begin, size * e.values.length);
          assert.equal((dataStart + begin) % size, 0);
        }
        // Writing what was read reproduces the file exactly.
        const again = writeSafetensors(new Map(tensors), metadata && meta);
        assert.deepEqual(again, bytes);
        assertNoPollution();
      },
    ),
    { numRuns: 300, examples: [[[["s", { dtype: "F32", shape: [], values: [1.5], input: 1 }]], undefined]] },
  );
});

Deno.test("round trip: scalars and zero-size tensors of every dtype", () => {
  for (const dtype of Object.keys(DTYPE_CASES)) {
    const one = dtype.endsWith("64") && dtype !== "F64" ? [1n] : [1];
    const bytes = writeSafetensors({
      scalar: { dtype, shape: [], data: one as number[] },
      empty: { dtype, shape: [3, 0, 2], data: [] },
      empty1d: { dtype, shape: [0], data: [] },
    });
    const { tensors } = readSafetensors(bytes);
    assert.deepEqual(tensors.get("scalar")!.shape, []);
    assert.equal(Number(tensors.get("scalar")!.data[0]), 1);
    assert.deepEqual(tensors.get("empty")!.shape, [3, 0, 2]);
    assert.equal(tensors.get("empty")!.data.length, 0);
    assert.equal(tensors.get("empty1d")!.data.length, 0);
  }
});

// ---------------------------------------------------------------------------------------------------
// Fixtures written by Python (torch / safetensors / transformers / peft)
// ---------------------------------------------------------------------------------------------------

Deno.test("fixture golden.safetensors: ids, losses and logits", () => {
  const { tensors, metadata } = readSafetensors(readFixture("golden.safetensors"));
  assert.deepEqual({ ...metadata }, {});
  const ids = tensors.get("input_ids")!;
  assert.equal(ids.dtype, "I64");
  assert.deepEqual(ids.shape, [2, 16]);
  assert.ok(ids.data instanceof BigInt64Array);
  assert.deepEqual([...ids.data.subarray(0, 5)], [173n, 254n, 32n, 99n, 146n]);
  assert.ok([...ids.data].every((v) => v >= 0n && v < 256n));
  assert.deepEqual([...tensors.get("greedy_prompt")!.data], [173n, 254n, 32n, 99n]);
  assert.deepEqual(tensors.get("greedy_tokens")!.shape, [1, 12]);

  const loss = tensors.get("loss")!;
  assert.equal(loss.dtype, "F32");
  assert.deepEqual(loss.shape, [1]);
  assert.equal(loss.data[0], Math.fround(5.608960151672363));
  assert.deepEqual(tensors.get("adamw_losses")!.shape, [5]);
  for (const k of ["logits_base", "logits_lora", "logits_merged", "logits_trained"]) {
    const t = tensors.get(k)!;
    assert.deepEqual([t.dtype, t.shape], ["F32", [2, 16, 256]]);
    assert.ok(t.data instanceof Float32Array && t.data.every(Number.isFinite));
  }
  const grads = [...tensors.keys()].filter((k) => k.startsWith("grad."));
  assert.equal(grads.length, 28); // 2 layers x 7 projections x (A, B)
  assert.deepEqual(tensors.get("grad.base_model.model.model.layers.0.mlp.down_proj.lora_A.weight")!.shape, [
    8,
    176,
  ]);
});

Deno.test("fixture linear_lora.safetensors: LinearLoRA cases", () => {
  const { tensors } = readSafetensors(readFixture("linear_lora.safetensors"));
  assert.equal(tensors.size, 32);
  assert.ok([...tensors.values()].every((t) => t.dtype === "F32" && t.data instanceof Float32Array));
  assert.deepEqual(tensors.get("case0.A")!.shape, [5, 37]);
  assert.deepEqual(tensors.get("case0.B")!.shape, [53, 5]);
  assert.deepEqual(tensors.get("case0.x")!.shape, [2, 7, 37]);
  assert.deepEqual(tensors.get("case1.y")!.shape, [1, 64, 96]);
  assert.deepEqual(tensors.get("case2.scale")!.shape, [1]);
});

Deno.test("fixture adapter/adapter_model.safetensors: PEFT's own save", () => {
  const { tensors, metadata } = readSafetensors(readFixture("adapter/adapter_model.safetensors"));
  assert.deepEqual({ ...metadata }, { format: "pt" });
  assert.equal(tensors.size, 28);
  for (const [name, t] of tensors) {
    assert.match(
      name,
      /^base_model\.model\.model\.layers\.[01]\.(self_attn|mlp)\.\w+_proj\.lora_[AB]\.weight$/,
    );
    assert.equal(t.dtype, "F32");
    assert.equal(t.shape.length, 2);
    assert.equal(name.includes("lora_A") ? t.shape[0] : t.shape[1], 8); // rank 8
    assert.ok(t.data.every((v) => Number.isFinite(v as number)));
  }
  assert.deepEqual(
    tensors.get("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight")!.shape,
    [32, 8],
  );
});

Deno.test("fixture base/model.safetensors: transformers' own save", () => {
  const { tensors, metadata } = readSafetensors(readFixture("base/model.safetensors"));
  assert.deepEqual({ ...metadata }, { format: "pt" });
  assert.equal(tensors.size, 21);
  assert.deepEqual(tensors.get("model.embed_tokens.weight")!.shape, [256, 64]);
  assert.deepEqual(tensors.get("lm_head.weight")!.shape, [256, 64]);
  assert.deepEqual(tensors.get("model.layers.0.mlp.gate_proj.weight")!.shape, [176, 64]);
  assert.deepEqual(tensors.get("model.layers.1.self_attn.k_proj.weight")!.shape, [32, 64]);
  assert.deepEqual([...tensors.get("model.norm.weight")!.data.subarray(0, 4)], [1, 1, 1, 1]);
});

Deno.test("writer reproduces every Python-written fixture byte for byte", () => {
  for (
    const path of [
      "golden.safetensors",
      "linear_lora.safetensors",
      "adapter/adapter_model.safetensors",
      "base/model.safetensors",
    ]
  ) {
    const bytes = readFixture(path);
    const { tensors, metadata } = readSafetensors(bytes);
    const rewritten = writeSafetensors(
      Object.fromEntries(tensors),
      Object.keys(metadata).length ? metadata : undefined,
    );
    assert.ok(rewritten.length === bytes.length && rewritten.every((b, i) => b === bytes[i]), path);
  }
});

Deno.test("reader works at any alignment and copies data out of the input", () => {
  const file = writeSafetensors({
    f64: { dtype: "F64", shape: [3], data: [1.5, -2, Math.PI] },
    i64: { dtype: "I64", shape: [2], data: [-(2 ** 53), 7] },
    f32: { dtype: "F32", shape: [2], data: [0.25, -8] },
    f16: { dtype: "F16", shape: [2], data: [0.5, -65504] },
    bf16: { dtype: "BF16", shape: [1], data: [3] },
    u8: { dtype: "U8", shape: [1], data: [200] },
  });
  for (let shift = 0; shift < 8; shift++) {
    const big = new Uint8Array(file.length + 16);
    big.set(file, shift);
    const view = big.subarray(shift, shift + file.length);
    const { tensors } = readSafetensors(view);
    assert.deepEqual([...tensors.get("f64")!.data], [1.5, -2, Math.PI]);
    assert.deepEqual([...tensors.get("i64")!.data], [-(2n ** 53n), 7n]);
    assert.deepEqual([...tensors.get("f32")!.data], [0.25, -8]);
    assert.deepEqual([...tensors.get("f16")!.data], [0.5, -65504]);
    assert.deepEqual([...tensors.get("bf16")!.data], [3]);
    view.fill(0); // the decoded arrays must not alias the input
    assert.equal(tensors.get("f64")!.data[2], Math.PI);
    assert.equal(tensors.get("u8")!.data[0], 200);
  }
});

// ---------------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------------

function fakeTensor(dtype: "f32" | "f16" | "f64", shape: number[], values: number[]): TensorLike {
  return {
    dtype,
    shape,
    dataSync: () => dtype === "f64" ? new Float64Array(values) : new Float32Array(values),
  };
}

Deno.test("writer: tensor-like objects map f32/f16/f64 to F32/F16/F64", () => {
  const bytes = writeSafetensors({
    a: fakeTensor("f32", [2, 2], [1, 2, 3, 4]),
    h: fakeTensor("f16", [3], [1, 65519, 1 + 2 ** -11]), // 65519 rounds down, the tie rounds to even
    d: fakeTensor("f64", [], [0.1]),
  }, { format: "pt" });
  const { tensors, metadata } = readSafetensors(bytes);
  assert.equal(metadata.format, "pt");
  assert.deepEqual(tensors.get("a"), { dtype: "F32", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) });
  assert.deepEqual(tensors.get("h"), { dtype: "F16", shape: [3], data: new Float32Array([1, 65504, 1]) });
  assert.deepEqual(tensors.get("d"), { dtype: "F64", shape: [], data: new Float64Array([0.1]) });
});

Deno.test("writer: dataSync errors (GPU tensors) propagate unchanged", () => {
  const err = new Error("tensor lives on the GPU; use await t.data()");
  const gpu: TensorLike = {
    dtype: "f32",
    shape: [1],
    dataSync: () => {
      throw err;
    },
  };
  assert.throws(() => writeSafetensors({ gpu }), (e) => e === err);
});

Deno.test("writer: header layout matches the Python library", () => {
  const bytes = writeSafetensors({
    b: { dtype: "F32", shape: [1], data: [1] },
    a: { dtype: "F32", shape: [1], data: [2] },
    z: { dtype: "I64", shape: [1], data: [3] },
    m: { dtype: "U8", shape: [2], data: [4, 5] },
  }, { format: "pt" });
  const { dataStart } = headerOf(bytes);
  const text = new TextDecoder().decode(bytes.subarray(8, dataStart));
  assert.equal(
    text.trimEnd(),
    '{"__metadata__":{"format":"pt"},"z":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},' +
      '"a":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]},' +
      '"m":{"dtype":"U8","shape":[2],"data_offsets":[16,18]}}',
  );
  assert.match(text, /^[^ ]+ *$/); // padding is spaces only
  assert.equal(bytes.length, dataStart + 18);
  // No metadata given: no __metadata__ key at all.
  assert.ok(
    !Object.hasOwn(
      headerOf(writeSafetensors({ a: { dtype: "U8", shape: [], data: [1] } })).header,
      "__metadata__",
    ),
  );
});

Deno.test("writer: integer and boolean encodings", () => {
  const bytes = writeSafetensors({
    i64n: { dtype: "I64", shape: [3], data: [-(2 ** 63), 2 ** 53 + 2, -1] },
    i64b: { dtype: "I64", shape: [2], data: [2n ** 63n - 1n, -5n] },
    u64: { dtype: "U64", shape: [1], data: [2n ** 64n - 1n] },
    i32: { dtype: "I32", shape: [2], data: [-(2 ** 31), 2 ** 31 - 1] },
    b: { dtype: "BOOL", shape: [4], data: [0, 1, 7, NaN] },
  });
  const { tensors } = readSafetensors(bytes);
  assert.deepEqual([...tensors.get("i64n")!.data], [-(2n ** 63n), 2n ** 53n + 2n, -1n]);
  assert.deepEqual([...tensors.get("i64b")!.data], [2n ** 63n - 1n, -5n]);
  assert.deepEqual([...tensors.get("u64")!.data], [2n ** 64n - 1n]);
  assert.deepEqual([...tensors.get("i32")!.data], [-(2 ** 31), 2 ** 31 - 1]);
  assert.deepEqual([...tensors.get("b")!.data], [0, 1, 1, 0]);
});

Deno.test("writer: bad input throws FormatError / ShapeError / DTypeError naming the key", () => {
  const raw = (dtype: string, shape: unknown, data: unknown) => ({ dtype, shape, data }) as RawTensorEntry;
  const cases: [Record<string, unknown> | Map<string, unknown>, new (...a: never[]) => Error, RegExp][] = [
    [{ "": raw("F32", [1], [1]) }, FormatError, /invalid tensor name ""/],
    [{ __metadata__: raw("F32", [1], [1]) }, FormatError, /invalid tensor name "__metadata__"/],
    [{ "bad\uD800": raw("F32", [1], [1]) }, FormatError, /invalid tensor name/],
    [
      { w: raw("F32", [2, 3], [1, 2, 3]) },
      ShapeError,
      /tensor "w" has shape \[2,3\] \(6 elements\) but 3 values/,
    ],
    [{ w: raw("F32", [-1], []) }, ShapeError, /tensor "w" shape \[-1\] has -1/],
    [{ w: raw("F32", [1.5], [1]) }, ShapeError, /tensor "w" shape \[1.5\]/],
    [{ w: raw("F32", "3", [1, 2, 3]) }, ShapeError, /tensor "w" shape "3" is not an array/],
    [{ w: raw("F32", [2 ** 30, 2 ** 30], []) }, ShapeError, /tensor "w" shape .* too large/],
    [{ w: raw("F8_E4M3", [1], [1]) }, DTypeError, /tensor "w" has unsupported dtype "F8_E4M3"/],
    [
      { w: { dtype: "i32", shape: [1], dataSync: () => new Float32Array(1) } },
      DTypeError,
      /tensor "w" has dtype "i32"/,
    ],
    [{ w: raw("I32", [2], [1, 1.5]) }, FormatError, /tensor "w" \(I32\) element 1 is "1.5", not an integer/],
    [{ w: raw("I32", [1], [2 ** 31]) }, FormatError, /element 0 is "2147483648", outside the I32 range/],
    [{ w: raw("U8", [1], [-1]) }, FormatError, /outside the U8 range/],
    [{ w: raw("U8", [1], [256]) }, FormatError, /outside the U8 range/],
    [{ w: raw("I16", [1], [NaN]) }, FormatError, /not an integer/],
    [{ w: raw("I64", [1], [2 ** 63]) }, FormatError, /outside the I64 range/],
    [{ w: raw("I64", [1], [0.5]) }, FormatError, /not an integer/],
    [{ w: raw("U64", [1], [-1n]) }, FormatError, /outside the U64 range/],
    [{ w: raw("F32", [1], null) }, FormatError, /tensor "w" data is not an array/],
    [{ w: null }, FormatError, /tensor "w" is null/],
    [new Map([["m", raw("F32", [2], [1])]]), ShapeError, /tensor "m" has shape \[2\]/],
  ];
  for (const [entries, Class, pattern] of cases) {
    assert.throws(
      () => writeSafetensors(entries as Record<string, RawTensorEntry>),
      (e: unknown) =>
        e instanceof Class && pattern.test((e as Error).message) &&
        /^writeSafetensors: /.test((e as Error).message),
      `${Class.name} ${pattern}`,
    );
  }
  const ok = { w: raw("F32", [1], [1]) };
  // deno-lint-ignore no-explicit-any
  assert.throws(() => writeSafetensors(ok, { format: 1 } as any), FormatError);
  // deno-lint-ignore no-explicit-any
  assert.throws(() => writeSafetensors(ok, [] as any), FormatError);
  assert.throws(() => writeSafetensors(ok, { ["k\uDC00"]: "v" }), FormatError);
});

// ---------------------------------------------------------------------------------------------------
// f16 / bf16 conversions
// ---------------------------------------------------------------------------------------------------

/**
 * An independent reference for round-to-nearest-even: binary search over the (monotonic) positive
 * encodings for the neighbours of |x|. Infinity sits one step past the largest finite value, at
 * 2^(bias+1), so overflow rounding falls out of the same rule.
 */
function referenceBits(x: number, decode: (b: number) => number, infBits: number, infValue: number): number {
  if (Number.isNaN(x)) return -1;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  const value = (b: number) => b === infBits ? infValue : decode(b);
  if (a >= infValue) return sign | infBits;
  let lo = 0, hi = infBits; // value(lo) <= a < value(hi)
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (value(mid) <= a) lo = mid;
    else hi = mid;
  }
  const dLo = a - value(lo), dHi = value(hi) - a;
  return sign | (dLo < dHi ? lo : dHi < dLo ? hi : lo % 2 === 0 ? lo : hi);
}
const refF16 = (x: number) => referenceBits(x, f16BitsToNumber, 0x7c00, 2 ** 16);
const refBf16 = (x: number) => referenceBits(x, bf16BitsToNumber, 0x7f80, 2 ** 128);

/** Doubles straddling every midpoint between adjacent encodings, where rounding errors would hide. */
function* midpointProbes(
  decode: (b: number) => number,
  maxFinite: number,
  infValue: number,
): Generator<number> {
  const next = (b: number) => b === maxFinite ? infValue : decode(b + 1);
  for (let b = 0; b <= maxFinite; b++) {
    const lo = decode(b), hi = next(b);
    const mid = (lo + hi) / 2; // exact: both are short floats
    const eps = Math.max(Math.abs(mid) * 2 ** -40, Number.MIN_VALUE);
    for (const x of [lo, mid, mid - eps, mid + eps]) {
      yield x;
      yield -x;
    }
  }
}

Deno.test("f16: every bit pattern decodes exactly and round-trips", () => {
  const native = typeof Float16Array === "function" ? new Float16Array(new Uint16Array(1).buffer) : undefined;
  const nativeBits = native ? new Uint16Array(native.buffer) : undefined;
  for (let h = 0; h < 65536; h++) {
    const x = f16BitsToNumber(h);
    // Independent decode from the definition.
    const e = (h >> 10) & 31, m = h & 1023, s = h & 0x8000 ? -1 : 1;
    const expected = e === 31
      ? (m ? NaN : s * Infinity)
      : e === 0
      ? s * m * 2 ** -24
      : s * (1 + m / 1024) * 2 ** (e - 15);
    assert.ok(Object.is(x, expected), `bits ${h.toString(16)}: ${x} vs ${expected}`);
    if (nativeBits) {
      nativeBits[0] = h;
      assert.ok(Object.is(native![0], x), `bits ${h.toString(16)} vs Float16Array`);
    }
    if (Number.isNaN(x)) {
      assert.equal(numberToF16Bits(x), 0x7e00);
    } else {
      assert.equal(numberToF16Bits(x), h, `bits ${h.toString(16)}`);
      assert.ok(Object.is(roundToF16(x), x));
    }
  }
});

Deno.test("f16: rounding matches Math.f16round and a reference at every midpoint and on random doubles", () => {
  // deno-lint-ignore no-explicit-any
  const f16round: ((x: number) => number) | undefined = (Math as any).f16round;
  const check = (x: number) => {
    const bits = numberToF16Bits(x);
    if (Number.isNaN(x)) return assert.ok(Number.isNaN(roundToF16(x)));
    assert.equal(bits, refF16(x), `x = ${x}`);
    if (f16round) assert.ok(Object.is(roundToF16(x), f16round(x)), `x = ${x}: ${roundToF16(x)} vs f16round`);
  };
  for (const x of midpointProbes(f16BitsToNumber, 0x7bff, 2 ** 16)) check(x);
  for (
    const x of [
      0,
      -0,
      65504,
      65519.999,
      65520,
      65536,
      1e300,
      -1e300,
      Infinity,
      -Infinity,
      NaN,
      2 ** -25,
      2 ** -26,
      3 * 2 ** -26,
      Number.MIN_VALUE,
    ]
  ) {
    check(x);
  }
  assert.equal(numberToF16Bits(65520), 0x7c00);
  assert.equal(numberToF16Bits(65519.999), 0x7bff);
  assert.equal(numberToF16Bits(2 ** -25), 0); // tie between 0 and the smallest subnormal: even wins
  assert.equal(numberToF16Bits(3 * 2 ** -26), 1);
  assert.equal(numberToF16Bits(-0), 0x8000);
  fc.assert(fc.property(fc.double(), (x) => check(x)), { numRuns: 5000 });
  fc.assert(fc.property(fc.float(), (x) => check(x)), { numRuns: 2000 });
});

Deno.test("bf16: every bit pattern decodes exactly and round-trips", () => {
  const u32 = new Uint32Array(1), f32 = new Float32Array(u32.buffer);
  for (let h = 0; h < 65536; h++) {
    u32[0] = h << 16;
    const x = bf16BitsToNumber(h);
    assert.ok(Object.is(x, f32[0]), `bits ${h.toString(16)}: ${x} vs ${f32[0]}`);
    if (Number.isNaN(x)) assert.equal(numberToBf16Bits(x), 0x7fc0);
    else assert.equal(numberToBf16Bits(x), h, `bits ${h.toString(16)}`);
  }
});

Deno.test("bf16: rounding matches a reference at every midpoint, on random doubles and PyTorch's f32 rule", () => {
  const u32 = new Uint32Array(1), f32 = new Float32Array(u32.buffer);
  // PyTorch's float32 -> bfloat16: add 0x7fff plus the lowest kept bit, then truncate.
  const torchBits = (x: number) => {
    f32[0] = x;
    const u = u32[0];
    return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
  };
  const check = (x: number) => {
    if (Number.isNaN(x)) return assert.ok(Number.isNaN(bf16BitsToNumber(numberToBf16Bits(x))));
    assert.equal(numberToBf16Bits(x), refBf16(x), `x = ${x}`);
  };
  for (const x of midpointProbes(bf16BitsToNumber, 0x7f7f, 2 ** 128)) check(x);
  fc.assert(fc.property(fc.double(), (x) => check(x)), { numRuns: 5000 });
  fc.assert(
    fc.property(fc.float({ noNaN: true }), (x) => {
      check(x);
      assert.equal(numberToBf16Bits(x), torchBits(x), `x = ${x}`);
    }),
    { numRuns: 5000 },
  );
  // Rounding the double directly, not through f32 first (which would round twice).
  const mid = (1 + 1 + 2 ** -7) / 2; // tie between 1 and the next bf16
  assert.equal(Math.fround(mid + 2 ** -40), mid);
  assert.equal(numberToBf16Bits(mid + 2 ** -40), 0x3f81);
  assert.equal(numberToBf16Bits(mid), 0x3f80);
});

// ---------------------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------------------

/** A small valid file with awkward names, several dtypes, a zero-size tensor and metadata. */
const SMALL = writeSafetensors(
  Object.fromEntries([
    ["__proto__", { dtype: "F32", shape: [2], data: [1, 2] }],
    ["constructor", { dtype: "I64", shape: [1], data: [3] }],
    ["toString", { dtype: "F16", shape: [3], data: [0.5, 1, 2] }],
    ["x", { dtype: "U8", shape: [0, 4], data: [] }],
    ["y", { dtype: "BF16", shape: [], data: [7] }],
  ]),
  Object.fromEntries([["__proto__", "meta"], ["format", "pt"]]),
);

Deno.test("hostile: prototype-like names read back without pollution", () => {
  const { tensors, metadata } = readSafetensors(SMALL);
  assert.deepEqual([...tensors.get("__proto__")!.data], [1, 2]);
  assert.deepEqual([...tensors.get("constructor")!.data], [3n]);
  assert.deepEqual([...tensors.get("toString")!.data], [0.5, 1, 2]);
  assert.deepEqual(tensors.get("x")!.shape, [0, 4]);
  assert.deepEqual(tensors.get("y")!.shape, []);
  assert.equal(Object.getPrototypeOf(metadata), null);
  assert.equal(metadata["__proto__"], "meta");
  assert.deepEqual(Object.keys(metadata).sort(), ["__proto__", "format"]);
  assertNoPollution();

  // Hand-written JSON with __proto__ at every level: entries must not be read through a prototype.
  const data = new Uint8Array(4);
  assert.deepEqual(
    readSafetensors(fileWith(`{"__proto__":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, data)).tensors
      .get("__proto__")!
      .shape,
    [1],
  );
  assertFormatError(
    fileWith(`{"a":{"__proto__":{"dtype":"F32"},"shape":[1],"data_offsets":[0,4]}}`, data),
    /tensor "a": dtype must be a string, got undefined/,
  );
  assertFormatError(
    fileWith(`{"__metadata__":{"__proto__":{"polluted":"1"}}}`),
    /__metadata__ entry "__proto__"/,
  );
  assertFormatError(fileWith(`{"__metadata__":{"constructor":1}}`), /__metadata__ entry "constructor"/);
  assertFormatError(fileWith(`{"toString":1}`), /tensor "toString": entry must be an object/);
  assertNoPollution();
});

Deno.test("hostile: one-field corruptions throw FormatError naming the key and field", () => {
  const A = "__proto__"; // F32 [2] at [0, 8] in SMALL's layout? Look it up rather than assume.
  const { header } = headerOf(SMALL);
  const entryA = header[A] as { data_offsets: [number, number] };
  const [a0, a1] = entryA.data_offsets;
  const set = (name: string, field: string, value: unknown) =>
    withHeader(SMALL, (h) => {
      (h[name] as Record<string, unknown>)[field] = value;
    });
  const del = (name: string, field: string) =>
    withHeader(SMALL, (h) => {
      delete (h[name] as Record<string, unknown>)[field];
    });
  const cases: [Uint8Array, RegExp][] = [
    [set(A, "dtype", "F8_E4M3"), /tensor "__proto__": unsupported dtype "F8_E4M3"/],
    [set(A, "dtype", "f32"), /unsupported dtype "f32"/],
    [set(A, "dtype", "constructor"), /unsupported dtype "constructor"/],
    [set(A, "dtype", 4), /tensor "__proto__": dtype must be a string, got 4/],
    [del(A, "dtype"), /dtype must be a string, got undefined/],
    [set(A, "shape", [-2]), /tensor "__proto__": shape \[-2\] has -2, not a non-negative integer/],
    [set(A, "shape", [2.5]), /shape \[2.5\] has 2.5/],
    [set(A, "shape", [1e300]), /shape \[1e\+300\] has 1e\+300/],
    [set(A, "shape", [2 ** 53]), /shape \[9007199254740992\] has 9007199254740992/],
    [set(A, "shape", ["2"]), /shape \["2"\] has "2"/],
    [set(A, "shape", [[2]]), /shape \[\[2\]\] has \[2\]/],
    [set(A, "shape", null), /tensor "__proto__": shape must be an array, got null/],
    [set(A, "shape", { length: 1, 0: 2 }), /shape must be an array/],
    [del(A, "shape"), /shape must be an array, got undefined/],
    [set(A, "shape", [2 ** 40, 2 ** 40]), /more than 2\^53 elements/],
    [set(A, "shape", [3]), /hold 8 bytes but F32 shape \[3\] needs 12/],
    [set(A, "shape", [2 ** 50, 2 ** 50, 0]), /hold 8 bytes but F32 shape .* needs 0/],
    [set(A, "data_offsets", [a1, a0]), /data_offsets \[\d+, \d+\] has begin after end/],
    [set(A, "data_offsets", [a0]), /data_offsets must be \[begin, end\]/],
    [set(A, "data_offsets", [a0, a1, a1]), /data_offsets must be \[begin, end\]/],
    [set(A, "data_offsets", [a0 - 1, a1 - 1]), /has -1|overlap|hole/],
    [set(A, "data_offsets", [a0, a1 + 1e6]), /run past the \d+-byte data section/],
    [set(A, "data_offsets", [a0 + 0.5, a1 + 0.5]), /has \d+\.5, not a non-negative integer/],
    [set(A, "data_offsets", [String(a0), a1]), /data_offsets .* not a non-negative integer/],
    [set(A, "data_offsets", null), /data_offsets must be \[begin, end\], got null/],
    [
      set("toString", "data_offsets", [a0, a0 + 6]),
      /tensor "__proto__": data_offsets \[\d+, \d+\] overlap tensor "toString"/,
    ],
    [set(A, "data_offsets", [a0 + 1, a1 + 1]), /hole|overlap|run past/],
    [set("x", "data_offsets", [1, 1]), /overlap tensor|hole/],
    [withHeader(SMALL, (h) => void delete h[A]), /hole at|cover only/],
    [withHeader(SMALL, (h) => void (h.extra = { dtype: "U8", shape: [1], data_offsets: [0, 1] })), /overlap/],
    [withHeader(SMALL, (h) => void (h[A] = 5)), /tensor "__proto__": entry must be an object, got 5/],
    [withHeader(SMALL, (h) => void (h[A] = [])), /entry must be an object, got \[\]/],
    [withHeader(SMALL, (h) => void (h[A] = null)), /entry must be an object, got null/],
    [withHeader(SMALL, (h) => void (h.__metadata__ = ["pt"])), /__metadata__ must be an object of strings/],
    [withHeader(SMALL, (h) => void (h.__metadata__ = "pt")), /__metadata__ must be an object of strings/],
    [withHeader(SMALL, (h) => void (h.__metadata__ = { format: { x: 1 } })), /__metadata__ entry "format"/],
    [withHeader(SMALL, () => []), /header does not start with "\{"/],
    [withHeader(SMALL, () => "x"), /header does not start with "\{"/],
    [fileWith(`{"a":1,`), /header is not valid UTF-8 JSON/],
    [
      fileWith(
        new Uint8Array([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]).reduce(
          (s, b) => s + String.fromCharCode(b),
          "",
        ),
      ),
      /./,
    ],
    [fileWith(" {}"), /header does not start with "\{"/],
    [fileWith("\uFEFF{}"), /header does not start with "\{"/],
    [fileWith("{}", 1), /data section is 1 bytes but the tensors cover only \[0, 0\]/],
    [
      fileWith(
        `{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`,
        2,
      ),
      /hole at \[0, 1\]/,
    ],
    [
      fileWith("{" + '"a":'.repeat(0) + "[".repeat(200_000) + "]".repeat(200_000) + "}"),
      /header is not valid UTF-8 JSON/,
    ],
    [fileWith("[".repeat(200_000) + "]".repeat(200_000)), /header does not start/],
    [
      fileWith(`{"a":` + "[".repeat(200_000) + "]".repeat(200_000) + "}"),
      /tensor "a": entry must be an object/,
    ],
  ];
  // Invalid UTF-8 inside the header: a raw 0xff byte.
  const invalidUtf8 = fileWith(`{"\u00ff":1}`);
  invalidUtf8[10] = 0xff;
  invalidUtf8[11] = 0x20;
  cases.push([invalidUtf8, /header is not valid UTF-8 JSON/]);
  for (const [bytes, pattern] of cases) assertFormatError(bytes, pattern);

  // Header length field.
  const n = headerOf(SMALL).dataStart - 8;
  const withLength = (len: bigint) => {
    const copy = SMALL.slice();
    new DataView(copy.buffer).setBigUint64(0, len, true);
    return copy;
  };
  assertFormatError(withLength(0n), /header does not start with "\{"/);
  assertFormatError(
    withLength(2n ** 64n - 1n),
    /header length 18446744073709551615 exceeds the 100000000-byte limit/,
  );
  assertFormatError(withLength(100_000_001n), /exceeds the 100000000-byte limit/);
  assertFormatError(withLength(BigInt(SMALL.length - 7)), /exceeds the \d+ bytes after the length field/);
  for (const len of [1, 2, n - 1, n + 1, n + 8, SMALL.length - 8]) {
    parsesOrFormatError(withLength(BigInt(len)));
  }
  assertFormatError(new Uint8Array(7), /shorter than the 8-byte header length/);
  // deno-lint-ignore no-explicit-any
  assertFormatError([1, 2, 3] as any, /expected a Uint8Array/);
});

Deno.test("hostile: truncations at every length and trailing bytes", () => {
  for (let len = 0; len < SMALL.length; len++) {
    assertFormatError(SMALL.subarray(0, len), /./);
  }
  for (let extra = 1; extra <= 16; extra++) {
    const longer = new Uint8Array(SMALL.length + extra);
    longer.set(SMALL);
    assertFormatError(longer, /data section is \d+ bytes but the tensors cover only/);
  }
  assert.ok(parsesOrFormatError(SMALL));
});

Deno.test("hostile: every header byte replaced by structural characters", () => {
  const { dataStart } = headerOf(SMALL);
  const replacements = [0x00, 0xff, 0x80, ...new TextEncoder().encode('{}[]",:-.e09 "')];
  for (let i = 0; i < dataStart; i++) {
    for (const r of replacements) {
      const copy = SMALL.slice();
      copy[i] = r;
      parsesOrFormatError(copy);
    }
  }
});

Deno.test("hostile: random bytes, random JSON headers and random header fields", () => {
  const runs = { numRuns: 1000 };
  fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (b) => void parsesOrFormatError(b)), runs);
  // Plausible header length followed by junk.
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 200 }), fc.nat(210), (tail, n) => {
      const b = new Uint8Array(8 + tail.length);
      new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
      b.set(tail, 8);
      b[8] = 0x7b;
      parsesOrFormatError(b);
    }),
    runs,
  );
  // Any JSON value as the header.
  fc.assert(
    fc.property(fc.jsonValue(), fc.nat(64), (h, dataLen) => void parsesOrFormatError(fileWith(h, dataLen))),
    runs,
  );
  // Headers shaped like real ones, built from a mix of valid and invalid pieces.
  const junk = fc.oneof(
    fc.constant(null),
    fc.boolean(),
    fc.string({ maxLength: 4 }),
    fc.double(),
    fc.constantFrom(-1, 0.5, 2 ** 53, 2 ** 64, 1e300, -0),
    fc.array(fc.nat(3), { maxLength: 3 }),
    fc.dictionary(fc.string({ maxLength: 3 }), fc.nat(3), { maxKeys: 2 }),
  );
  const dtype = fc.oneof(
    fc.constantFrom("F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E5M2"),
    junk,
  );
  const dim = fc.oneof({ weight: 5, arbitrary: fc.nat(4) }, { weight: 1, arbitrary: junk });
  const offset = fc.oneof({ weight: 5, arbitrary: fc.nat(40) }, { weight: 1, arbitrary: junk });
  const entry = fc.oneof(
    {
      weight: 8,
      arbitrary: fc.record({
        dtype,
        shape: fc.oneof(fc.array(dim, { maxLength: 3 }), junk),
        data_offsets: fc.oneof(fc.tuple(offset, offset), junk),
      }, { requiredKeys: [] }),
    },
    { weight: 1, arbitrary: junk },
  );
  fc.assert(
    fc.property(
      fc.uniqueArray(
        fc.tuple(
          fc.oneof(fc.constantFrom(...SPECIAL_NAMES, "__metadata__"), fc.string({ maxLength: 3 })),
          entry,
        ),
        { maxLength: 4, selector: ([k]) => k },
      ),
      fc.nat(48),
      (kv, dataLen) => {
        parsesOrFormatError(fileWith(Object.fromEntries(kv), dataLen));
        assertNoPollution();
      },
    ),
    { numRuns: 2000 },
  );
  // One field of the small valid file replaced by an arbitrary value.
  const names = Object.keys(headerOf(SMALL).header);
  fc.assert(
    fc.property(
      fc.constantFrom(...names),
      fc.constantFrom("dtype", "shape", "data_offsets", "format", "__proto__"),
      fc.oneof(junk, dim, fc.tuple(offset, offset), fc.array(dim, { maxLength: 3 }), dtype),
      (name, field, value) => {
        const file = withHeader(SMALL, (h) => {
          Object.defineProperty(h[name], field, {
            value,
            enumerable: true,
            writable: true,
            configurable: true,
          });
        });
        parsesOrFormatError(file);
      },
    ),
    runs,
  );
});

Deno.test("fuzz case count", () => {
  // Deno runs tests in file order, so this sees every case above.
  console.log(`safetensors fuzz cases: ${fuzzCases}`);
  assert.ok(fuzzCases > 5000);
});
