// `cargo xtask volume --cloudflare`'s driver: N order messages through the
// local queue and one object of N lines through R2, each timed from the first
// send (the put) to the last outcome, with the D1 statements and round trips
// the Worker logged. Prints one JSON document on stdout; progress on stderr.
//
// Usage: node local/volume.mjs MESSAGES LINES

import { start, ORDERS_QUEUE } from "./stack.mjs";

const [messages, lines] = process.argv.slice(2).map((n) => Number.parseInt(n, 10));
if (!(messages >= 0 && lines >= 0)) throw new Error("usage: node local/volume.mjs MESSAGES LINES");
const say = (s) => console.error(`  ${s}`);

/// Event i: orders of four events each (placed, paid, shipped, and a fourth
/// that cancels every tenth order), customers of ten orders each.
function event(i, prefix) {
  const order = Math.floor(i / 4);
  const step = i % 4;
  const status = ["PLACED", "PAID", "SHIPPED", order % 10 === 0 ? "CANCELLED" : "SHIPPED"][step];
  const at = new Date(Date.UTC(2026, 10, 1) + order * 60_000 + step * 1000).toISOString();
  return JSON.stringify({
    eventId: `${prefix}-${i}`,
    orderId: `${prefix}-o${order}`,
    customerId: `${prefix}-c${Math.floor(order / 10)}`,
    status,
    amount: `${(order % 97) + 1}.${String(order % 100).padStart(2, "0")}`,
    currency: "EUR",
    occurredAt: at,
  });
}

const stack = await start();
try {
  const result = { messages, lines };
  if (messages > 0) {
    const bodies = Array.from({ length: messages }, (_, i) => event(i, "q"));
    const t0 = performance.now();
    await stack.sendOrders(bodies);
    const sent = performance.now();
    await stack.drained(messages, [], 300_000);
    const seconds = (performance.now() - t0) / 1000;
    const s = stack.summaries()[ORDERS_QUEUE];
    const invocations = s.invocations;
    Object.assign(result, {
      queueSeconds: seconds,
      sendSeconds: (sent - t0) / 1000,
      queuePerSecond: messages / seconds,
      queueInvocations: invocations,
      queueStatementsPerEvent: s.d1_statements / messages,
      queueRoundTripsPerInvocation: s.d1_round_trips / invocations,
      queueOutcomes: s,
    });
    say(`${messages} messages in ${seconds.toFixed(2)} s (${(messages / seconds).toFixed(0)}/s), ${invocations} invocations`);
  }
  if (lines > 0) {
    const text = Array.from({ length: lines }, (_, i) => event(i, "f")).join("\n") + "\n";
    const t0 = performance.now();
    await stack.putObject("volume.ndjson", Buffer.from(text));
    await stack.drained(0, ["volume.ndjson"], 300_000);
    const seconds = (performance.now() - t0) / 1000;
    let statements = 0;
    let roundTrips = 0;
    let invocations = 0;
    for (const l of stack.logs) {
      if (!l.includes('"ended"')) continue;
      const e = JSON.parse(l);
      statements += e.d1_statements ?? 0;
      roundTrips += e.d1_round_trips ?? 0;
      invocations += 1;
    }
    const manifest = (await stack.snapshot()).manifests.find((m) => m.key === "volume.ndjson");
    Object.assign(result, {
      objectBytes: Buffer.byteLength(text),
      objectSeconds: seconds,
      objectLinesPerSecond: lines / seconds,
      objectInvocations: invocations,
      objectStatementsPerLine: statements / lines,
      objectRoundTrips: roundTrips,
      manifest,
    });
    say(`${lines} lines in ${seconds.toFixed(2)} s (${(lines / seconds).toFixed(0)}/s), ${invocations} invocation(s)`);
  }
  process.stdout.write(JSON.stringify(result) + "\n");
} finally {
  await stack.stop();
}
