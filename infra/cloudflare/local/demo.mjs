// `cargo xtask demo --cloudflare`'s driver: starts the Worker under workerd,
// loads events/data/ into local R2 (with the notifications R2 would send),
// sends the demo's order events (xtask/demo/) to the orders queue, waits until
// everything settled, then the late events (a resend, an older event, a
// cancellation), and prints the D1 tables as one JSON document on stdout.
// Progress goes to stderr.

import { readFileSync, readdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { start, infraDir } from "./stack.mjs";

const root = resolve(infraDir, "../..");
const lines = (file) =>
  readFileSync(join(root, "xtask/demo", file), "utf8")
    .split("\n")
    .filter((l) => l.length > 0);
const say = (s) => console.error(`  ${s}`);

const started = Date.now();
const stack = await start();
try {
  say(`workerd up (${Date.now() - started} ms)`);
  const objects = [];
  for (const name of readdirSync(join(root, "events/data")).sort()) {
    await stack.putObject(name, readFileSync(join(root, "events/data", name)));
    objects.push(name);
    say(`r2://orders-ingest/${name} (notification sent)`);
  }
  const first = [...lines("orders-queue.ndjson"), ...lines("orders-fifo.ndjson")];
  await stack.sendOrders(first);
  say(`${first.length} messages -> orders-events (xtask/demo/orders-queue.ndjson, orders-fifo.ndjson)`);
  await stack.drained(first.length, objects, 120_000);
  const late = lines("orders-late.ndjson");
  await stack.sendOrders(late);
  say(`${late.length} late messages -> orders-events (xtask/demo/orders-late.ndjson)`);
  const sent = first.length + late.length;
  await stack.drained(sent, objects, 120_000);
  say(`drained (${Date.now() - started} ms)`);
  const snapshot = await stack.snapshot();
  process.stdout.write(JSON.stringify({ sent, objects, elapsedMs: Date.now() - started, ...snapshot }) + "\n");
} finally {
  await stack.stop();
}
