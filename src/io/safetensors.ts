/**
 * Reading and writing the safetensors format (https://github.com/huggingface/safetensors), plus the
 * half-precision conversions it needs.
 *
 * Layout: an 8-byte little-endian header length `n`, `n` bytes of UTF-8 JSON mapping tensor names to
 * `{ dtype, shape, data_offsets: [begin, end] }` (offsets relative to the data section) and an optional
 * `__metadata__` string map, then the data section.
 *
 * The reader treats every file as hostile: each field is checked before anything is allocated, so a
 * malformed file throws {@link FormatError} instead of hanging, throwing some other error, polluting
 * prototypes or allocating memory out of proportion to its size. The checks follow the reference Rust
 * implementation, so what we accept Python accepts too. The writer reproduces the Python library's
 * output byte for byte (same tensor order, header JSON and padding).
 * @module
 */

import { DTypeError, FormatError, ShapeError } from "../core/errors.ts";
import { f16ToF32BitsTable, numberToBf16Bits, numberToF16Bits } from "../core/half.ts";
import type { FileRangeReader } from "./fs.ts";

/** A decoded tensor of a safetensors file. */
export interface SafetensorsTensor {
  /** The file's own dtype string, such as "F32", "BF16" or "I64". */
  dtype: string;
  /** Row-major shape; `[]` is a scalar. */
  shape: number[];
  /**
   * Decoded elements: F32, F16 and BF16 as Float32Array, F64 as Float64Array, I64 as BigInt64Array,
   * U64 as BigUint64Array, I32/U32/I16/U16/I8 as the matching typed array, U8 and BOOL as Uint8Array.
   */
  data: SafetensorsData;
}

/** The typed arrays {@link readSafetensors} decodes tensor data into. */
export type SafetensorsData =
  | Float32Array
  | Float64Array
  | BigInt64Array
  | BigUint64Array
  | Int32Array
  | Uint32Array
  | Int16Array
  | Uint16Array
  | Int8Array
  | Uint8Array;

/** What {@link readSafetensors} returns. */
export interface SafetensorsFile {
  /** Tensors in the order their data lies in the file. */
  tensors: Map<string, SafetensorsTensor>;
  /** The `__metadata__` map (empty when absent); a null-prototype object, so any key is safe. */
  metadata: Record<string, string>;
}

/**
 * Any tensor object {@link writeSafetensors} can take: our `Tensor` class fits. `dataSync()` may throw
 * (a GPU tensor cannot be read synchronously); that error propagates to the caller.
 */
export interface TensorLike {
  /** Element type; written as "F32", "F16" or "F64". */
  readonly dtype: "f32" | "f16" | "f64";
  /** Row-major shape. */
  readonly shape: readonly number[];
  /** The elements, synchronously (f16 tensors hand their values over widened to f32). */
  dataSync(): Float32Array | Float64Array;
}

/** A tensor given directly by its file dtype string, shape and elements. */
export interface RawTensorEntry {
  /** The file dtype: "F32", "F16", "BF16", "F64", "I64", "U64", "I32", "U32", "I16", "U16", "I8", "U8", "BOOL". */
  dtype: string;
  /** Row-major shape; `[]` is a scalar. */
  shape: readonly number[];
  /**
   * Elements: numbers, or bigints for I64/U64. Floats are rounded to nearest-even; integer dtypes
   * take only integers within their range; BOOL writes 1 for every truthy value.
   */
  data: ArrayLike<number> | ArrayLike<bigint>;
}

/** Largest header the reader accepts, the same bound as the reference implementation. */
const MAX_HEADER_BYTES = 100_000_000;

/** Names are quoted in messages; a hostile name could be megabytes long. */
const MAX_NAME_IN_MESSAGE = 120;

interface DTypeInfo {
  /** Bytes per element. */
  size: number;
  /**
   * Position in the reference implementation's `Dtype` enum. Its writer lays tensors out by this,
   * descending, then by name, which keeps every tensor aligned to its element size.
   */
  rank: number;
}

/** The dtypes we read and write. F8 and F4 variants are deliberately absent (rejected by name). */
const DTYPES: ReadonlyMap<string, DTypeInfo> = new Map([
  ["BOOL", { size: 1, rank: 0 }],
  ["U8", { size: 1, rank: 4 }],
  ["I8", { size: 1, rank: 5 }],
  ["I16", { size: 2, rank: 9 }],
  ["U16", { size: 2, rank: 10 }],
  ["F16", { size: 2, rank: 11 }],
  ["BF16", { size: 2, rank: 12 }],
  ["I32", { size: 4, rank: 13 }],
  ["U32", { size: 4, rank: 14 }],
  ["F32", { size: 4, rank: 15 }],
  ["F64", { size: 8, rank: 17 }],
  ["I64", { size: 8, rank: 18 }],
  ["U64", { size: 8, rank: 19 }],
]);

const TENSOR_DTYPES: ReadonlyMap<string, string> = new Map([["f32", "F32"], ["f16", "F16"], ["f64", "F64"]]);

/** Typed arrays use the platform's byte order; the format is little-endian. */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// ---------------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------------

/** Quotes a (possibly hostile) name for a message. */
function quote(name: string): string {
  const short = name.length > MAX_NAME_IN_MESSAGE ? name.slice(0, MAX_NAME_IN_MESSAGE) + "…" : name;
  return JSON.stringify(short);
}

/** Renders a JSON value from a hostile header for a message, briefly. */
function show(value: unknown): string {
  let s: string;
  try {
    s = JSON.stringify(value) ?? String(value);
  } catch {
    s = String(value);
  }
  return s.length > 80 ? s.slice(0, 80) + "…" : s;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Reads an own field only, so names such as `constructor` never reach Object.prototype. */
function own(obj: Record<string, unknown>, key: string): unknown {
  return Object.hasOwn(obj, key) ? obj[key] : undefined;
}

function fail(msg: string): never {
  throw new FormatError(`readSafetensors: ${msg}`);
}

interface Entry {
  name: string;
  dtype: string;
  info: DTypeInfo;
  shape: number[];
  begin: number;
  end: number;
}

/**
 * Parses a safetensors file.
 *
 * Everything is validated before any tensor is decoded: the header length (at most 100 MB and within
 * the file), the header (UTF-8 JSON object starting with `{`), `__metadata__` (string to string), each
 * entry's dtype, shape (non-negative safe integers) and `data_offsets` (matching the shape's byte size),
 * and that the entries tile the data section exactly, with no overlap, hole or trailing bytes.
 * Data is copied out of `bytes`, so any alignment works and the result does not alias the input.
 * Unknown fields in an entry are ignored, as the reference implementation does.
 *
 * @param bytes the whole file
 * @returns the tensors (in file order) and the metadata
 * @throws {FormatError} for any malformed input, with a message starting `readSafetensors:` that names
 *   the tensor and field at fault
 */
export function readSafetensors(bytes: Uint8Array): SafetensorsFile {
  // Checked by tag rather than instanceof so Uint8Arrays from other realms (and Node Buffers) pass.
  if (Object.prototype.toString.call(bytes) !== "[object Uint8Array]") {
    fail(`expected a Uint8Array, got ${Object.prototype.toString.call(bytes)}`);
  }
  const headerLen = safetensorsHeaderLength(bytes.subarray(0, 8), bytes.length);
  const header = parseSafetensorsHeader(bytes.subarray(8, 8 + headerLen), bytes.length);
  const tensors = new Map<string, SafetensorsTensor>();
  const dataStart = bytes.byteOffset + header.dataStart;
  for (const e of header.entries) {
    const data = decode(e.dtype, bytes.buffer, dataStart + e.begin, (e.end - e.begin) / dtypeBytes(e.dtype));
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data });
  }
  return { tensors, metadata: header.metadata };
}

/** One tensor's place in a safetensors file, as its (validated) header states it. */
export interface SafetensorsEntry {
  /** The tensor's name. */
  name: string;
  /** The file's dtype string ("F32", "BF16", ...). */
  dtype: string;
  /** Row-major shape. */
  shape: number[];
  /** First byte, relative to the data section. */
  begin: number;
  /** One past the last byte, relative to the data section. */
  end: number;
}

/** What {@link parseSafetensorsHeader} finds: the tensors' places, the metadata, where data starts. */
export interface SafetensorsHeader {
  /** The tensors in the order their data lies in the file. */
  entries: SafetensorsEntry[];
  /** The `__metadata__` map (empty when absent); a null-prototype object. */
  metadata: Record<string, string>;
  /** Byte offset of the data section in the file (8 + the header length). */
  dataStart: number;
}

/** Bytes per element of a dtype the format defines (and we read). */
export function dtypeBytes(dtype: string): number {
  const info = DTYPES.get(dtype);
  if (!info) throw new DTypeError(`safetensors: unsupported dtype ${show(dtype)}`);
  return info.size;
}

/**
 * The header length a file's first 8 bytes give, checked against the 100 MB bound and the file's
 * length (`fileLength` bytes in all).
 * @throws {FormatError} as {@link readSafetensors} does
 */
export function safetensorsHeaderLength(first8: Uint8Array, fileLength: number): number {
  if (fileLength < 8 || first8.length < 8) {
    fail(`file is ${Math.min(fileLength, first8.length)} bytes, shorter than the 8-byte header length`);
  }
  const view = new DataView(first8.buffer, first8.byteOffset, 8);
  const headerLen64 = view.getBigUint64(0, true);
  if (headerLen64 > BigInt(MAX_HEADER_BYTES)) {
    fail(`header length ${headerLen64} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  }
  const headerLen = Number(headerLen64);
  if (headerLen > fileLength - 8) {
    fail(`header length ${headerLen} exceeds the ${fileLength - 8} bytes after the length field`);
  }
  return headerLen;
}

/**
 * Validates a header (the bytes after the length field, as long as it says) of a file of `fileLength`
 * bytes, as {@link readSafetensors} does, without touching any tensor data: the JSON, `__metadata__`,
 * every entry's dtype, shape and offsets, and that the entries tile the data section exactly.
 * @throws {FormatError} naming the tensor and field at fault
 */
export function parseSafetensorsHeader(headerBytes: Uint8Array, fileLength: number): SafetensorsHeader {
  const headerLen = headerBytes.length;
  // The reference implementation requires this (a BOM or leading space is rejected there too).
  if (headerLen === 0 || headerBytes[0] !== 0x7b) fail(`header does not start with "{"`);

  let header: unknown;
  try {
    const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(headerBytes);
    header = JSON.parse(text);
  } catch (e) {
    // Invalid UTF-8, invalid JSON, or nesting deep enough to exhaust the stack: all are bad headers.
    fail(`header is not valid UTF-8 JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  if (!isPlainObject(header)) fail(`header is not a JSON object`);
  const hdr = header as Record<string, unknown>;

  const metadata: Record<string, string> = Object.create(null);
  const rawMeta = own(hdr, "__metadata__");
  if (rawMeta !== undefined && rawMeta !== null) {
    if (!isPlainObject(rawMeta)) fail(`__metadata__ must be an object of strings, got ${show(rawMeta)}`);
    for (const key of Object.keys(rawMeta)) {
      const value = rawMeta[key];
      if (typeof value !== "string") {
        fail(`__metadata__ entry ${quote(key)} must be a string, got ${show(value)}`);
      }
      metadata[key] = value as string; // null prototype: even "__proto__" is a plain own key here
    }
  }

  const dataLen = fileLength - 8 - headerLen;
  const entries: Entry[] = [];
  for (const name of Object.keys(hdr)) {
    if (name === "__metadata__") continue;
    entries.push(parseEntry(name, hdr[name], dataLen));
  }

  // Entries must tile [0, dataLen): sort by range and walk it.
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let prev: Entry | undefined;
  for (const e of entries) {
    if (e.begin < cursor) {
      fail(
        `tensor ${quote(e.name)}: data_offsets [${e.begin}, ${e.end}] overlap tensor ${quote(prev!.name)} ` +
          `[${prev!.begin}, ${prev!.end}]`,
      );
    }
    if (e.begin > cursor) {
      fail(
        `tensor ${
          quote(e.name)
        }: data_offsets [${e.begin}, ${e.end}] leave a hole at [${cursor}, ${e.begin}]`,
      );
    }
    cursor = e.end;
    prev = e;
  }
  if (cursor !== dataLen) {
    fail(`data section is ${dataLen} bytes but the tensors cover only [0, ${cursor}]`);
  }
  return {
    entries: entries.map(({ name, dtype, shape, begin, end }) => ({ name, dtype, shape, begin, end })),
    metadata,
    dataStart: 8 + headerLen,
  };
}

/**
 * Reads and validates the header of an open file ({@link FileRangeReader}), reading nothing else: the
 * streaming loaders' first step.
 * @throws {FormatError} as {@link readSafetensors} does
 */
export async function readSafetensorsHeader(file: FileRangeReader): Promise<SafetensorsHeader> {
  const first8 = new Uint8Array(Math.min(8, file.size));
  await file.read(first8, 0);
  const headerLen = safetensorsHeaderLength(first8, file.size);
  const headerBytes = new Uint8Array(headerLen);
  await file.read(headerBytes, 8);
  return parseSafetensorsHeader(headerBytes, file.size);
}

/**
 * Decodes one tensor's little-endian bytes as {@link readSafetensors} decodes them (F16 and BF16 widened
 * to Float32Array, ...), into a fresh array.
 */
export function decodeSafetensorsData(dtype: string, bytes: Uint8Array): SafetensorsData {
  return decode(dtype, bytes.buffer, bytes.byteOffset, bytes.byteLength / dtypeBytes(dtype));
}

/** Validates one header entry; nothing here trusts the JSON's types or magnitudes. */
function parseEntry(name: string, raw: unknown, dataLen: number): Entry {
  const where = `tensor ${quote(name)}`;
  if (!isPlainObject(raw)) fail(`${where}: entry must be an object, got ${show(raw)}`);
  const obj = raw as Record<string, unknown>;

  const dtype = own(obj, "dtype");
  if (typeof dtype !== "string") fail(`${where}: dtype must be a string, got ${show(dtype)}`);
  const info = DTYPES.get(dtype as string);
  if (!info) fail(`${where}: unsupported dtype ${show(dtype)}`);

  const rawShape = own(obj, "shape");
  if (!Array.isArray(rawShape)) fail(`${where}: shape must be an array, got ${show(rawShape)}`);
  const shape: number[] = [];
  let elements = 1;
  let overflow = false;
  for (const d of rawShape as unknown[]) {
    if (typeof d !== "number" || !Number.isSafeInteger(d) || d < 0) {
      fail(`${where}: shape ${show(rawShape)} has ${show(d)}, not a non-negative integer`);
    }
    shape.push(d as number);
    elements *= d as number;
    if (elements > Number.MAX_SAFE_INTEGER) overflow = true; // a later 0 would not make it exact again
  }
  if (shape.includes(0)) elements = 0;
  else if (overflow) fail(`${where}: shape ${show(shape)} has more than 2^53 elements`);

  const offsets = own(obj, "data_offsets");
  if (!Array.isArray(offsets) || offsets.length !== 2) {
    fail(`${where}: data_offsets must be [begin, end], got ${show(offsets)}`);
  }
  const [begin, end] = offsets as unknown[];
  for (const v of [begin, end]) {
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
      fail(`${where}: data_offsets ${show(offsets)} has ${show(v)}, not a non-negative integer`);
    }
  }
  const b = begin as number, e = end as number;
  if (b > e) fail(`${where}: data_offsets [${b}, ${e}] has begin after end`);
  if (e > dataLen) fail(`${where}: data_offsets [${b}, ${e}] run past the ${dataLen}-byte data section`);
  // elements <= 2^53 and size <= 8: the product may round, but then it is far above any real e - b.
  const nbytes = elements * info!.size;
  if (e - b !== nbytes) {
    fail(
      `${where}: data_offsets [${b}, ${e}] hold ${e - b} bytes but ${dtype} shape ${
        show(shape)
      } needs ${nbytes}`,
    );
  }
  return { name, dtype: dtype as string, info: info!, shape, begin: b, end: e };
}

/** Copies `count` elements at byte `offset` of `buffer` out into a fresh typed array. */
function decode(dtype: string, buffer: ArrayBufferLike, offset: number, count: number): SafetensorsData {
  const size = DTYPES.get(dtype)!.size;
  // slice() copies into a new, aligned buffer whatever the source alignment.
  const copy = (): ArrayBuffer => (buffer as ArrayBuffer).slice(offset, offset + count * size);
  const le = (): DataView => new DataView(buffer, offset, count * size);
  switch (dtype) {
    case "F16":
    case "BF16": {
      const out = new Uint32Array(count);
      const dv = le();
      if (dtype === "F16") {
        const table = f16ToF32BitsTable();
        for (let i = 0; i < count; i++) out[i] = table[dv.getUint16(2 * i, true)];
      } else {
        // bf16 is the top half of an f32, so widening is a shift (NaN payloads kept).
        for (let i = 0; i < count; i++) out[i] = dv.getUint16(2 * i, true) << 16;
      }
      return new Float32Array(out.buffer);
    }
    case "U8":
    case "BOOL":
      return new Uint8Array(copy());
    case "I8":
      return new Int8Array(copy());
  }
  if (LITTLE_ENDIAN) {
    switch (dtype) {
      case "F32":
        return new Float32Array(copy());
      case "F64":
        return new Float64Array(copy());
      case "I64":
        return new BigInt64Array(copy());
      case "U64":
        return new BigUint64Array(copy());
      case "I32":
        return new Int32Array(copy());
      case "U32":
        return new Uint32Array(copy());
      case "I16":
        return new Int16Array(copy());
      case "U16":
        return new Uint16Array(copy());
    }
  }
  // Big-endian hosts: fill element by element through little-endian reads.
  const dv = le();
  const fill = <T extends { [i: number]: number | bigint }>(
    out: T,
    get: (o: number) => number | bigint,
  ): T => {
    for (let i = 0; i < count; i++) out[i] = get(i * size);
    return out;
  };
  switch (dtype) {
    case "F32":
      return fill(new Float32Array(count), (o) => dv.getFloat32(o, true));
    case "F64":
      return fill(new Float64Array(count), (o) => dv.getFloat64(o, true));
    case "I64":
      return fill(new BigInt64Array(count), (o) => dv.getBigInt64(o, true));
    case "U64":
      return fill(new BigUint64Array(count), (o) => dv.getBigUint64(o, true));
    case "I32":
      return fill(new Int32Array(count), (o) => dv.getInt32(o, true));
    case "U32":
      return fill(new Uint32Array(count), (o) => dv.getUint32(o, true));
    case "I16":
      return fill(new Int16Array(count), (o) => dv.getInt16(o, true));
    default:
      return fill(new Uint16Array(count), (o) => dv.getUint16(o, true));
  }
}

// ---------------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------------

interface Pending {
  name: string;
  nameBytes: Uint8Array;
  dtype: string;
  info: DTypeInfo;
  shape: number[];
  data: ArrayLike<number> | ArrayLike<bigint>;
}

function isTensorLike(v: unknown): v is TensorLike {
  return typeof v === "object" && v !== null && typeof (v as TensorLike).dataSync === "function";
}

/** Well-formed UTF-16: lone surrogates would silently become U+FFFD when encoded. */
function isWellFormed(s: string): boolean {
  return !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}

/** Byte-wise UTF-8 order, the order of Rust's `String` comparison. */
function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

/**
 * Serialises tensors into a safetensors file, laid out exactly as the Python library lays it out:
 * tensors ordered by dtype (widest first, which keeps every tensor aligned to its element size) then by
 * name, compact header JSON padded with spaces to a multiple of 8 bytes, `__metadata__` first and only
 * when given.
 *
 * @param entries tensors by name: {@link TensorLike} objects (f32/f16/f64 become F32/F16/F64) or
 *   {@link RawTensorEntry} objects with the file dtype string. A `Map` works too.
 * @param metadata optional string-to-string `__metadata__`
 * @returns the file's bytes
 * @throws {FormatError} for an empty or `__metadata__` name, names or metadata that are not well-formed
 *   strings, or element values an integer dtype cannot hold
 * @throws {ShapeError} for a shape that is not a list of non-negative integers or does not match the
 *   number of elements
 * @throws {DTypeError} for an unsupported dtype
 */
export function writeSafetensors(
  entries:
    | Record<string, TensorLike | RawTensorEntry>
    | ReadonlyMap<string, TensorLike | RawTensorEntry>,
  metadata?: Record<string, string>,
): Uint8Array {
  const encoder = new TextEncoder();
  const list = entries instanceof Map ? [...entries] : Object.entries(entries);
  const pending: Pending[] = [];
  for (const [name, value] of list) {
    if (typeof name !== "string" || name === "" || name === "__metadata__" || !isWellFormed(name)) {
      throw new FormatError(
        `writeSafetensors: invalid tensor name ${show(name)} (must be a non-empty, well-formed string ` +
          `other than "__metadata__")`,
      );
    }
    const where = `tensor ${quote(name)}`;
    if (typeof value !== "object" || value === null) {
      throw new FormatError(`writeSafetensors: ${where} is ${show(value)}, not a tensor`);
    }
    let dtype: string;
    let data: ArrayLike<number> | ArrayLike<bigint>;
    if (isTensorLike(value)) {
      const mapped = TENSOR_DTYPES.get(value.dtype);
      if (!mapped) throw new DTypeError(`writeSafetensors: ${where} has dtype ${show(value.dtype)}`);
      dtype = mapped;
      data = value.dataSync();
    } else {
      dtype = value.dtype;
      data = value.data;
      if (data === null || typeof data !== "object" || typeof data.length !== "number") {
        throw new FormatError(`writeSafetensors: ${where} data is not an array`);
      }
    }
    const info = typeof dtype === "string" ? DTYPES.get(dtype) : undefined;
    if (!info) {
      throw new DTypeError(
        `writeSafetensors: ${where} has unsupported dtype ${show(dtype)} (supported: ${[...DTYPES.keys()]})`,
      );
    }
    const shape = checkShape(value.shape, where);
    const elements = shape.reduce((a, b) => a * b, 1);
    if (data.length !== elements) {
      throw new ShapeError(
        `writeSafetensors: ${where} has shape ${
          show(shape)
        } (${elements} elements) but ${data.length} values`,
      );
    }
    pending.push({ name, nameBytes: encoder.encode(name), dtype, info, shape, data });
  }
  pending.sort((a, b) => b.info.rank - a.info.rank || compareBytes(a.nameBytes, b.nameBytes));

  const parts: string[] = [];
  if (metadata !== undefined) {
    if (typeof metadata !== "object" || metadata === null || Array.isArray(metadata)) {
      throw new FormatError(`writeSafetensors: metadata must be an object of strings, got ${show(metadata)}`);
    }
    const meta: string[] = [];
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string" || !isWellFormed(k) || !isWellFormed(v)) {
        throw new FormatError(
          `writeSafetensors: __metadata__ entry ${quote(k)} must be a well-formed string, got ${show(v)}`,
        );
      }
      meta.push(`${JSON.stringify(k)}:${JSON.stringify(v)}`);
    }
    parts.push(`"__metadata__":{${meta.join(",")}}`);
  }
  let offset = 0;
  for (const p of pending) {
    const end = offset + p.data.length * p.info.size;
    parts.push(
      `${JSON.stringify(p.name)}:{"dtype":"${p.dtype}","shape":[${p.shape.join(",")}],` +
        `"data_offsets":[${offset},${end}]}`,
    );
    offset = end;
  }
  const headerBytes = encoder.encode(`{${parts.join(",")}}`);
  const headerLen = Math.ceil(headerBytes.length / 8) * 8;
  const dataStart = 8 + headerLen;

  const out = new Uint8Array(dataStart + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(headerLen), true);
  out.set(headerBytes, 8);
  out.fill(0x20, 8 + headerBytes.length, dataStart);
  offset = dataStart;
  for (const p of pending) {
    encode(p, view, offset);
    offset += p.data.length * p.info.size;
  }
  return out;
}

function checkShape(shape: unknown, where: string): number[] {
  if (!Array.isArray(shape)) {
    throw new ShapeError(`writeSafetensors: ${where} shape ${show(shape)} is not an array`);
  }
  let elements = 1;
  for (const d of shape) {
    if (typeof d !== "number" || !Number.isSafeInteger(d) || d < 0) {
      throw new ShapeError(
        `writeSafetensors: ${where} shape ${show(shape)} has ${show(d)}, not a non-negative integer`,
      );
    }
    elements *= d;
  }
  if (!shape.includes(0) && elements * 8 > Number.MAX_SAFE_INTEGER) {
    throw new ShapeError(`writeSafetensors: ${where} shape ${show(shape)} is too large`);
  }
  return [...shape];
}

const INT_RANGES: ReadonlyMap<string, readonly [number, number]> = new Map(
  [
    ["I8", [-128, 127]],
    ["U8", [0, 255]],
    ["I16", [-32768, 32767]],
    ["U16", [0, 65535]],
    ["I32", [-(2 ** 31), 2 ** 31 - 1]],
    ["U32", [0, 2 ** 32 - 1]],
  ] as const,
);

/** Writes one tensor's elements little-endian at byte `at` of the output. */
function encode(p: Pending, view: DataView, at: number): void {
  const { dtype, data, name } = p;
  const n = data.length;
  const bad = (i: number, why: string): never => {
    throw new FormatError(
      `writeSafetensors: tensor ${quote(name)} (${dtype}) element ${i} is ${show(String(data[i]))}, ${why}`,
    );
  };
  // Fast path: same element type, little-endian host. The writer's layout keeps `at` aligned.
  if (LITTLE_ENDIAN) {
    const same = (dtype === "F32" && data instanceof Float32Array) ||
      (dtype === "F64" && data instanceof Float64Array) ||
      (dtype === "I64" && data instanceof BigInt64Array) ||
      (dtype === "U64" && data instanceof BigUint64Array) ||
      (dtype === "I32" && data instanceof Int32Array) ||
      (dtype === "U32" && data instanceof Uint32Array) ||
      (dtype === "I16" && data instanceof Int16Array) ||
      (dtype === "U16" && data instanceof Uint16Array) ||
      (dtype === "I8" && data instanceof Int8Array) ||
      (dtype === "U8" && data instanceof Uint8Array);
    if (same) {
      const src = data as Uint8Array;
      new Uint8Array(view.buffer, at, src.byteLength).set(
        new Uint8Array(src.buffer, src.byteOffset, src.byteLength),
      );
      return;
    }
    // Any other non-bigint typed array converts in one native pass (rounding to f32 included).
    if (
      (dtype === "F32" || dtype === "F64") && ArrayBuffer.isView(data) &&
      !(data instanceof BigInt64Array || data instanceof BigUint64Array)
    ) {
      const Ctor = dtype === "F32" ? Float32Array : Float64Array;
      new Ctor(view.buffer as ArrayBuffer, at, n).set(data as unknown as ArrayLike<number>);
      return;
    }
  }
  const num = (i: number): number => {
    const v = data[i];
    return typeof v === "bigint" ? Number(v) : v;
  };
  switch (dtype) {
    case "F32":
      for (let i = 0; i < n; i++) view.setFloat32(at + 4 * i, num(i), true);
      return;
    case "F64":
      for (let i = 0; i < n; i++) view.setFloat64(at + 8 * i, num(i), true);
      return;
    case "F16":
      for (let i = 0; i < n; i++) view.setUint16(at + 2 * i, numberToF16Bits(num(i)), true);
      return;
    case "BF16":
      for (let i = 0; i < n; i++) view.setUint16(at + 2 * i, numberToBf16Bits(num(i)), true);
      return;
    case "BOOL":
      for (let i = 0; i < n; i++) view.setUint8(at + i, data[i] ? 1 : 0);
      return;
    case "I64":
    case "U64": {
      const [lo, hi] = dtype === "I64" ? [-(2n ** 63n), 2n ** 63n - 1n] : [0n, 2n ** 64n - 1n];
      for (let i = 0; i < n; i++) {
        const v = data[i];
        let b: bigint;
        if (typeof v === "bigint") b = v;
        else if (Number.isInteger(v)) b = BigInt(v);
        else bad(i, "not an integer");
        if (b! < lo || b! > hi) bad(i, `outside the ${dtype} range`);
        if (dtype === "I64") view.setBigInt64(at + 8 * i, b!, true);
        else view.setBigUint64(at + 8 * i, b!, true);
      }
      return;
    }
  }
  const [lo, hi] = INT_RANGES.get(dtype)!;
  const size = p.info.size;
  for (let i = 0; i < n; i++) {
    const v = num(i);
    if (!Number.isInteger(v)) bad(i, "not an integer");
    if (v < lo || v > hi) bad(i, `outside the ${dtype} range [${lo}, ${hi}]`);
    // Two's complement: the unsigned write of a negative value stores the same bytes.
    if (size === 1) view.setUint8(at + i, v & 0xff);
    else if (size === 2) view.setUint16(at + 2 * i, v & 0xffff, true);
    else view.setUint32(at + 4 * i, v >>> 0, true);
  }
}
