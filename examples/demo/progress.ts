/**
 * Training progress on one line: step, bar, loss, tokens/s and ETA. On a terminal the line is redrawn
 * in place (`\r`); elsewhere (CI logs, pipes) a plain line is printed every `every` steps and at the end.
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
