/**
 * `npm run demo` (= `deno task demo`): LoRA-fine-tunes the shipped tiny Llama model on a task it cannot
 * do, or any Llama, Mistral, Qwen2/2.5 or Qwen3 checkpoint on your own data (`--base`, `--data`);
 * `--help` lists every option.
 * Mistakes in flags or files end with a one-line message and exit code 2.
 * @module
 */
import { LoraError } from "../mod.ts";
import { DEMO_DESCRIPTION, DEMO_FLAGS, DEMO_USAGE, helpText, parseDemoArgs, UsageError } from "./demo/cli.ts";
import { runDemo } from "./demo/run.ts";

const encoder = new TextEncoder();

try {
  const opts = parseDemoArgs(Deno.args);
  if (opts === null) {
    console.log(helpText(DEMO_USAGE, DEMO_DESCRIPTION, DEMO_FLAGS));
  } else {
    await runDemo(opts, {
      log: (line) => console.log(line),
      write: (text) => Deno.stdout.writeSync(encoder.encode(text)),
      tty: Deno.stdout.isTerminal(),
    });
  }
} catch (e) {
  // The user's input (flags, files, checkpoints) is at fault: say what, without a stack trace.
  if (e instanceof UsageError || e instanceof LoraError) {
    console.error(`demo: ${e.message}`);
    Deno.exit(2);
  }
  throw e;
}
