/**
 * The runtime's throttle of native setImmediate callbacks (src/backend/webgpu/runtime.ts
 * `throttleNativeImmediates`, the default poll mode for awaits of GPU work): Dawn's addon polls by
 * rescheduling a native callback with setImmediate, which stalled Deno + Dawn for seconds on the H200.
 */
import assert from "node:assert/strict";
import { throttleNativeImmediates } from "../../../src/backend/webgpu/runtime.ts";

type Immediate = (cb: (...args: unknown[]) => void, ...args: unknown[]) => unknown;
const g = globalThis as unknown as { setImmediate: Immediate };

/** Runs `fn` with a recording stand-in for the host's setImmediate, restoring the real one after. */
async function withSpy(fn: (calls: unknown[]) => Promise<void>): Promise<void> {
  const real = g.setImmediate;
  const calls: unknown[] = [];
  g.setImmediate = (cb, ...args) => {
    calls.push(cb);
    return real(cb, ...args);
  };
  try {
    await fn(calls);
  } finally {
    g.setImmediate = real;
  }
}

const turn = () => new Promise((resolve) => setTimeout(resolve, 5));

Deno.test("throttleNativeImmediates: native callbacks go to a timer, JavaScript ones to the real setImmediate", async () => {
  await withSpy(async (calls) => {
    const spy = g.setImmediate;
    const ran: string[] = [];
    const release = throttleNativeImmediates();
    assert.notEqual(g.setImmediate, spy, "replaced while held");
    // A bound function stands in for an addon's callback: its source reads "[native code]".
    const native = Array.prototype.push.bind(ran, "native");
    const js = () => void ran.push("js");
    g.setImmediate(native);
    g.setImmediate(js);
    await turn();
    assert.deepEqual([...ran].sort(), ["js", "native"], "both callbacks ran");
    assert.deepEqual(calls, [js], "only the JavaScript callback reached the host's setImmediate");
    release();
    assert.equal(g.setImmediate, spy, "restored when released");
  });
});

Deno.test("throttleNativeImmediates: nested holds share one replacement; released once each", async () => {
  await withSpy(async () => {
    const spy = g.setImmediate;
    const outer = throttleNativeImmediates();
    const replaced = g.setImmediate;
    const inner = throttleNativeImmediates();
    assert.equal(g.setImmediate, replaced, "the inner hold reuses the replacement");
    inner();
    inner(); // a second release of the same hold changes nothing
    assert.equal(g.setImmediate, replaced, "still held by the outer await");
    outer();
    assert.equal(g.setImmediate, spy);
    await turn();
  });
});
