/**
 * `npm run demo`: until the full fine-tuning demo lands, runs the quickstart LoRA example.
 */
await import("./quickstart.ts");
