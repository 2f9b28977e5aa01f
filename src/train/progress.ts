/**
 * Training progress on one line: step, bar, loss, tokens/s and ETA. On a terminal the line is redrawn
 * in place (`\r`); elsewhere (CI logs, pipes) a plain line is printed every `every` steps and at the end.
 * `train({ progress: true })` draws it on standard error ({@link standardErrorOutput}), as tqdm does.
 * @module
 */

/** The figures a progress line shows (the training loop's progress report has them all). */
export interface ProgressFigures {
  step: number;
  totalSteps: number;
  loss: number;
  tokensPerSecond: number;
  etaSeconds: number;
}

/** `75s` → `1:15`, `3725s` → `1:02:05`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const two = (n: number) => String(n).padStart(2, "0");
  return h > 0 ? `${h}:${two(m)}:${two(sec)}` : `${m}:${two(sec)}`;
}

/** A bar of `width` cells, filled in proportion to done / total. */
export function formatBar(done: number, total: number, width: number): string {
  const filled = total > 0 ? Math.min(width, Math.round((done / total) * width)) : width;
  return "[" + "#".repeat(filled) + ".".repeat(width - filled) + "]";
}

/** One progress line, e.g. `step  40/120 [#######.............] loss 0.5571 | 1390 tok/s | ETA 0:35`. */
export function formatProgress(p: ProgressFigures, barWidth = 20): string {
  const digits = String(p.totalSteps).length;
  const loss = Math.abs(p.loss) >= 1e-3 || p.loss === 0 ? p.loss.toFixed(4) : p.loss.toExponential(2);
  return `step ${String(p.step).padStart(digits)}/${p.totalSteps} ${
    formatBar(p.step, p.totalSteps, barWidth)
  } ` +
    `loss ${loss} | ${Math.round(p.tokensPerSecond)} tok/s | ETA ${formatDuration(p.etaSeconds)}`;
}

/** Options of {@link ProgressLine}. */
export interface ProgressLineOptions {
  /** Writes text as is (no newline added). */
  write: (text: string) => void;
  /** Redraw in place (a terminal) or print plain lines. */
  tty: boolean;
  /** Without a terminal: print when at least this many steps passed since the last line (default 10). */
  every?: number;
}

/** A progress display fed by the training loop's reports. */
export class ProgressLine {
  #opts: ProgressLineOptions;
  #lastPrinted = -Infinity;
  #drawn = false;

  constructor(opts: ProgressLineOptions) {
    this.#opts = opts;
  }

  /** Shows `p`: redraws the line on a terminal; otherwise prints it when due (always at the last step). */
  update(p: ProgressFigures): void {
    const line = formatProgress(p);
    if (this.#opts.tty) {
      // \x1b[K clears what a longer previous line left behind.
      this.#opts.write(`\r${line}\x1b[K`);
      this.#drawn = true;
      return;
    }
    const every = this.#opts.every ?? 10;
    if (p.step - this.#lastPrinted >= every || p.step >= p.totalSteps) {
      this.#opts.write(line + "\n");
      this.#lastPrinted = p.step;
    }
  }

  /** Ends the redrawn line so later output starts on a fresh one. */
  finish(): void {
    if (this.#drawn) this.#opts.write("\n");
    this.#drawn = false;
  }
}

/** The parts of Deno's and Node's (or Bun's) standard-error stream that a progress line uses. */
interface RuntimeGlobals {
  Deno?: { stderr?: { writeSync(bytes: Uint8Array): number; isTerminal?(): boolean } };
  process?: { stderr?: { write(text: string): unknown; isTTY?: boolean } };
}

/**
 * Where `train({ progress: true })` draws: standard error in Deno, Node and Bun (redrawn in place when it
 * is a terminal), `console.log` lines elsewhere (a browser has no terminal to redraw on).
 */
export function standardErrorOutput(): Pick<ProgressLineOptions, "write" | "tty"> {
  const g = globalThis as unknown as RuntimeGlobals;
  const deno = g.Deno?.stderr;
  if (deno !== undefined && typeof deno.writeSync === "function") {
    const encoder = new TextEncoder();
    return {
      write: (text) => {
        const bytes = encoder.encode(text);
        // writeSync may write part of the buffer; the rest follows until all of it is out.
        for (let done = 0; done < bytes.length;) done += deno.writeSync(bytes.subarray(done));
      },
      tty: deno.isTerminal?.() ?? false,
    };
  }
  const node = g.process?.stderr;
  if (node !== undefined && typeof node.write === "function") {
    return { write: (text) => void node.write(text), tty: node.isTTY === true };
  }
  return { write: (text) => console.log(text.replace(/\n$/, "")), tty: false };
}
