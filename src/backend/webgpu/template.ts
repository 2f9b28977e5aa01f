/**
 * The WGSL template preprocessor. Kernels in `wgsl/` are WGSL plus two additions, expanded when a pipeline
 * is specialised: `${EXPR}` inserts a value (a type name such as `f16`, or an integer), and directive lines
 * `//#if EXPR`, `//#elif EXPR`, `//#else`, `//#for NAME in EXPR..EXPR`, `//#end` select or repeat lines.
 * `//#for` exists so that per-thread register tiles become separately named variables with every loop over
 * them unrolled: GPU compilers spill private arrays indexed in loops to slow memory (on the H200 a GEMM
 * whose accumulators were such an array ran at 0.85-1.9 TFLOP/s, unrolled at 20-23; bench/NOTES.md).
 * @module
 */
import { LoraError } from "../../core/errors.ts";

/** A template parameter: a type name or flag string, an integer, or a boolean. */
export type TemplateValue = string | number | boolean;

/** Parameters visible to a template's expressions. */
export type TemplateParams = Readonly<Record<string, TemplateValue>>;

/**
 * A template that cannot be expanded: unknown names, bad expressions, unbalanced directives. A bug in
 * our WGSL rather than in a caller's input, so it derives from the library's base class directly.
 */
export class TemplateError extends LoraError {}

type Token =
  | { kind: "num"; value: number }
  | { kind: "str"; value: string }
  | { kind: "id"; value: string }
  | {
    kind: "op";
    value: string;
  };

function tokenize(src: string, where: string): Token[] {
  const tokens: Token[] = [];
  const re = /\s*(?:(\d+)|"([^"]*)"|([A-Za-z_]\w*)|(==|!=|<=|>=|&&|\|\||[-+*/%<>!()]))/y;
  let pos = 0;
  while (pos < src.length) {
    if (/^\s*$/.test(src.slice(pos))) break;
    re.lastIndex = pos;
    const m = re.exec(src);
    if (m === null) {
      throw new TemplateError(`${where}: cannot read expression "${src}" at "${src.slice(pos)}"`);
    }
    if (m[1] !== undefined) tokens.push({ kind: "num", value: Number(m[1]) });
    else if (m[2] !== undefined) tokens.push({ kind: "str", value: m[2] });
    else if (m[3] !== undefined) tokens.push({ kind: "id", value: m[3] });
    else tokens.push({ kind: "op", value: m[4] });
    pos = re.lastIndex;
  }
  return tokens;
}

const BINARY_LEVELS: readonly (readonly string[])[] = [
  ["||"],
  ["&&"],
  ["==", "!="],
  ["<", ">", "<=", ">="],
  ["+", "-"],
  ["*", "/", "%"],
];

/** Evaluates a template expression against `scope` (precedence climbing over {@link BINARY_LEVELS}). */
export function evaluate(src: string, scope: TemplateParams, where = "template"): TemplateValue {
  const tokens = tokenize(src, where);
  let i = 0;
  const fail = (why: string): never => {
    throw new TemplateError(`${where}: ${why} in expression "${src}"`);
  };
  const num = (v: TemplateValue, op: string): number =>
    typeof v === "number" ? v : typeof v === "boolean" ? Number(v) : fail(`operator ${op} applied to "${v}"`);
  const primary = (): TemplateValue => {
    const t = tokens[i++];
    if (t === undefined) return fail("unexpected end");
    if (t.kind === "num" || t.kind === "str") return t.value;
    if (t.kind === "id") {
      if (t.value === "true") return true;
      if (t.value === "false") return false;
      if (!(t.value in scope)) return fail(`unknown name ${t.value}`);
      return scope[t.value];
    }
    if (t.value === "(") {
      const v = binary(0);
      if (tokens[i++]?.value !== ")") fail("missing )");
      return v;
    }
    if (t.value === "!") return !truthy(primary());
    if (t.value === "-") return -num(primary(), "-");
    return fail(`unexpected ${t.value}`);
  };
  const apply = (op: string, a: TemplateValue, b: TemplateValue): TemplateValue => {
    switch (op) {
      case "||":
        return truthy(a) || truthy(b);
      case "&&":
        return truthy(a) && truthy(b);
      case "==":
        return a === b;
      case "!=":
        return a !== b;
    }
    const x = num(a, op), y = num(b, op);
    switch (op) {
      case "<":
        return x < y;
      case ">":
        return x > y;
      case "<=":
        return x <= y;
      case ">=":
        return x >= y;
      case "+":
        return x + y;
      case "-":
        return x - y;
      case "*":
        return x * y;
      case "/":
        return y === 0 ? fail("division by zero") : Math.trunc(x / y);
      default:
        return y === 0 ? fail("division by zero") : x % y;
    }
  };
  const binary = (level: number): TemplateValue => {
    if (level === BINARY_LEVELS.length) return primary();
    let left = binary(level + 1);
    for (;;) {
      const t = tokens[i];
      if (t?.kind !== "op" || !BINARY_LEVELS[level].includes(t.value)) return left;
      i++;
      left = apply(t.value, left, binary(level + 1));
    }
  };
  const v = binary(0);
  if (i !== tokens.length) fail(`unexpected ${tokens[i].value}`);
  return v;
}

function truthy(v: TemplateValue): boolean {
  return v !== false && v !== 0 && v !== "";
}

function substitute(line: string, scope: TemplateParams, where: string): string {
  return line.replace(/\$\{([^}]*)\}/g, (_, expr: string) => String(evaluate(expr, scope, where)));
}

/**
 * Expands a template: evaluates directives and substitutions with `params`.
 * @param name used in error messages (the kernel file)
 */
export function expandTemplate(source: string, params: TemplateParams, name = "template"): string {
  const lines = source.split("\n");
  const out: string[] = [];
  const directive = (line: string) => /^\s*\/\/#(\w+)\s*(.*?)\s*$/.exec(line);

  // Finds the line of the matching //#end (and the //#elif / //#else lines of an if) from `start`.
  const matchBlock = (start: number): { branches: number[]; end: number } => {
    const branches: number[] = [];
    let depth = 0;
    for (let j = start + 1; j < lines.length; j++) {
      const d = directive(lines[j]);
      if (d === null) continue;
      if (d[1] === "if" || d[1] === "for") depth++;
      else if (d[1] === "end") {
        if (depth === 0) return { branches, end: j };
        depth--;
      } else if ((d[1] === "elif" || d[1] === "else") && depth === 0) branches.push(j);
    }
    throw new TemplateError(`${name}: line ${start + 1}: //#${directive(lines[start])![1]} has no //#end`);
  };

  const run = (from: number, to: number, scope: TemplateParams): void => {
    for (let j = from; j < to; j++) {
      const where = `${name}:${j + 1}`;
      const d = directive(lines[j]);
      if (d === null) {
        out.push(substitute(lines[j], scope, where));
        continue;
      }
      const [, kind, arg] = d;
      if (kind === "if") {
        const { branches, end } = matchBlock(j);
        const bounds = [j, ...branches, end];
        for (let b = 0; b < bounds.length - 1; b++) {
          const head = directive(lines[bounds[b]])!;
          if (head[1] === "else" || truthy(evaluate(head[2], scope, where))) {
            run(bounds[b] + 1, bounds[b + 1], scope);
            break;
          }
        }
        j = end;
      } else if (kind === "for") {
        const m = /^([A-Za-z_]\w*)\s+in\s+(.+?)\.\.(.+)$/.exec(arg);
        if (m === null) {
          throw new TemplateError(`${where}: expected //#for NAME in A..B, got "${lines[j].trim()}"`);
        }
        const { branches, end } = matchBlock(j);
        if (branches.length > 0) throw new TemplateError(`${where}: //#else inside //#for`);
        const lo = evaluate(m[2], scope, where), hi = evaluate(m[3], scope, where);
        if (typeof lo !== "number" || typeof hi !== "number") {
          throw new TemplateError(`${where}: //#for bounds must be integers, got ${lo}..${hi}`);
        }
        for (let v = lo; v < hi; v++) run(j + 1, end, { ...scope, [m[1]]: v });
        j = end;
      } else {
        throw new TemplateError(`${where}: unexpected //#${kind}`);
      }
    }
  };
  run(0, lines.length, params);
  return out.join("\n");
}
