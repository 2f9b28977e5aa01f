/**
 * How a tensor prints (`String(t)`, `console.log(t)` in Deno and Node): its values laid out as nested
 * brackets the way PyTorch prints a tensor, followed by shape, dtype, device and requiresGrad. Tensors of
 * more than {@link SUMMARY_THRESHOLD} elements show the first and last {@link EDGE_ITEMS} entries of each
 * axis around `...`, as PyTorch does past its own threshold of 1000.
 * @module
 */

/** Past this many elements the values are summarised (PyTorch's default print threshold). */
export const SUMMARY_THRESHOLD = 1000;
/** Rows of values wrap past this many characters (PyTorch's default linewidth). */
export const LINE_WIDTH = 80;
/** Entries kept at each end of a summarised axis (PyTorch's default edgeitems). */
export const EDGE_ITEMS = 3;
/**
 * Past this many elements a CPU tensor prints no values at all: reading it back is a full copy, and a
 * string conversion should not copy hundreds of megabytes to show a dozen numbers.
 */
export const MAX_READ_FOR_PRINT = 1 << 22;

/** What {@link formatTensor} shows about a tensor. */
export interface TensorDescription {
  shape: readonly number[];
  dtype: string;
  device: string;
  requiresGrad: boolean;
  /** Row-major values, or a word saying why there are none (`"disposed"`, `"meta"`), or null (not read). */
  values: ArrayLike<number> | string | null;
}

/** One number as a print shows it, before padding. */
type NumberStyle = (v: number) => string;

/**
 * The one style for every shown value, chosen from all of them so that columns line up: integers when
 * every finite value is a (not too large) integer, four decimals when the magnitudes fit, else exponents.
 */
function chooseStyle(values: readonly number[]): NumberStyle {
  const finite = values.filter(Number.isFinite);
  const special = (v: number): string | null =>
    Number.isNaN(v) ? "NaN" : v === Infinity ? "Infinity" : v === -Infinity ? "-Infinity" : null;
  const abs = finite.map(Math.abs);
  const max = abs.length === 0 ? 0 : Math.max(...abs);
  const nonZero = abs.filter((a) => a > 0);
  const min = nonZero.length === 0 ? 0 : Math.min(...nonZero);
  if (finite.every(Number.isInteger) && max < 1e8) return (v) => special(v) ?? String(v);
  if (max < 1e4 && (min === 0 || min >= 1e-4)) {
    return (v) => special(v) ?? v.toFixed(4);
  }
  return (v) => special(v) ?? v.toExponential(4);
}

/** The indices shown along an axis of length `n` (-1 marks the `...`). */
function shownIndices(n: number, summarise: boolean): number[] {
  if (!summarise || n <= 2 * EDGE_ITEMS) return Array.from({ length: n }, (_, i) => i);
  const head = Array.from({ length: EDGE_ITEMS }, (_, i) => i);
  const tail = Array.from({ length: EDGE_ITEMS }, (_, i) => n - EDGE_ITEMS + i);
  return [...head, -1, ...tail];
}

/** The values as nested brackets; `indent` is the column where the outermost `[` stands. */
export function formatValues(values: ArrayLike<number>, shape: readonly number[], indent: number): string {
  if (shape.length === 0) return chooseStyle([values[0]])(values[0]);
  const size = shape.reduce((a, b) => a * b, 1);
  if (size === 0) return "[]";
  const summarise = size > SUMMARY_THRESHOLD;
  const strides = shape.map((_, d) => shape.slice(d + 1).reduce((a, b) => a * b, 1));
  // Collect the shown values first: the style and the column width depend on all of them.
  const shown: number[] = [];
  const collect = (dim: number, offset: number) => {
    for (const i of shownIndices(shape[dim], summarise)) {
      if (i < 0) continue;
      if (dim === shape.length - 1) shown.push(values[offset + i]);
      else collect(dim + 1, offset + i * strides[dim]);
    }
  };
  collect(0, 0);
  const style = chooseStyle(shown);
  const width = Math.max(...shown.map((v) => style(v).length));
  const build = (dim: number, offset: number): string => {
    const parts = shownIndices(shape[dim], summarise).map((i) => {
      if (i < 0) return "...";
      if (dim === shape.length - 1) return style(values[offset + i]).padStart(width);
      return build(dim + 1, offset + i * strides[dim]);
    });
    if (dim === shape.length - 1) {
      // Rows wider than LINE_WIDTH wrap, continuing under their first entry (PyTorch's linewidth).
      const column = indent + dim + 1;
      const perLine = Math.max(1, Math.floor((LINE_WIDTH - column) / (width + 2)));
      const chunks: string[] = [];
      for (let i = 0; i < parts.length; i += perLine) chunks.push(parts.slice(i, i + perLine).join(", "));
      return `[${chunks.join(`,\n${" ".repeat(column)}`)}]`;
    }
    // Rows of a matrix on their own lines under the first; blocks of higher rank separated by blank lines.
    const gap = "\n".repeat(shape.length - dim - 1);
    return `[${parts.join(`,${gap}${" ".repeat(indent + dim + 1)}`)}]`;
  };
  return build(0, 0);
}

/** `Tensor([[1, 2], [3, 4]], shape=[2, 2], dtype=f32, device=cpu(...), requiresGrad=false)`. */
export function formatTensor(t: TensorDescription): string {
  const head = "Tensor(";
  const meta = `shape=[${t.shape.join(", ")}], dtype=${t.dtype}, device=${t.device}, ` +
    `requiresGrad=${t.requiresGrad}`;
  if (t.values === null) return `${head}${meta})`;
  if (typeof t.values === "string") return `${head}${t.values}, ${meta})`;
  return `${head}${formatValues(t.values, t.shape, head.length)}, ${meta})`;
}
