// `cargo xtask soak --cloudflare`'s driver: the orders Worker under workerd
// for a while, with a workload xtask made (its seeded producer: new orders,
// updates, exact and reformatted resends, older events, poison messages, and
// NDJSON objects with bad lines), D1 failing at a seeded rate (the stack's
// fault wrapper: before a batch runs, or after with its answer lost), and
// concurrent batches: a share of each tick's messages goes straight to the
// queue handler in batches of their own, `concurrency` at a time, some of
// them delivered twice at once (a redelivery racing the first delivery); a
// message the handler retries is delivered again after its delay, as the
// queue would. The rest goes through the local queue (its batching, retries
// with delay and dead-letter queue). Then it drains and prints the D1 tables,
// the Worker's accounting and its own as one JSON document on stdout.
//
// Usage: node local/soak.mjs WORKLOAD.json

import { readFileSync } from "node:fs";
import { start, ORDERS_QUEUE } from "./stack.mjs";

const workload = JSON.parse(readFileSync(process.argv[2], "utf8"));
const say = (s) => console.error(`  ${s}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/// xorshift32, seeded: which messages go direct, which batches twice.
let seed = (workload.seed * 2654435761) >>> 0 || 1;
function random() {
  seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0;
  return seed / 4294967296;
}

/// Direct deliveries: a batch's attempts until every message is acknowledged
/// (the runtime's `attempts` grows per delivery), at most this many.
const MAX_DIRECT_ATTEMPTS = 10;
const DIRECT_SHARE = 0.3;
const TWICE_SHARE = 0.1;

const started = Date.now();
const stack = await start({
  faults: { rate: workload.faultRate, seed: workload.seed },
  // Short delays: the soak's retries come back while it runs.
  vars: { RETRY_DELAY_SECONDS: "1", MAX_RETRY_DELAY_SECONDS: "4", CHUNK_LINES: "10" },
});
const worker = await stack.mf.getWorker();
const direct = { batches: 0, twice: 0, messages: 0, deliveries: 0, chains: 0, retried: 0, lost: 0 };
let inFlight = 0;
let nextId = 0;

/// Delivers `messages` straight to the queue handler until each is
/// acknowledged: a chain of deliveries whose every message ends acked once.
async function deliver(messages) {
  let pending = messages;
  for (let attempt = 1; pending.length > 0; attempt++) {
    if (attempt > MAX_DIRECT_ATTEMPTS) {
      direct.lost += pending.length;
      return;
    }
    direct.deliveries += pending.length;
    const result = await worker.queue(ORDERS_QUEUE, pending.map((m) => ({ ...m, timestamp: new Date(), attempts: attempt })));
    const retried = new Set((result.retryMessages ?? []).map((r) => r.msgId ?? r.id ?? r));
    if (result.outcome !== "ok") {
      // The whole invocation failed: every message comes back.
      pending.forEach((m) => retried.add(m.id));
    }
    direct.retried += retried.size;
    pending = pending.filter((m) => retried.has(m.id));
    if (pending.length > 0) await sleep(1000);
  }
}

async function directBatch(bodies) {
  const messages = bodies.map((body) => ({ id: `direct-${++nextId}`, body }));
  direct.batches += 1;
  direct.messages += messages.length;
  const twice = random() < TWICE_SHARE;
  const chains = twice ? [deliver(messages), deliver(messages)] : [deliver(messages)];
  direct.chains += messages.length * chains.length;
  if (twice) direct.twice += 1;
  inFlight += 1;
  try {
    await Promise.all(chains);
  } finally {
    inFlight -= 1;
  }
}

let queueSent = 0;
const objects = [];
const running = new Set();
for (const [i, tick] of workload.ticks.entries()) {
  const due = started + i * workload.tickMs;
  if (Date.now() < due) await sleep(due - Date.now());
  const viaQueue = [];
  const viaDirect = [];
  for (const m of tick.messages) (random() < DIRECT_SHARE ? viaDirect : viaQueue).push(m.body);
  if (viaQueue.length) {
    await stack.sendOrders(viaQueue);
    queueSent += viaQueue.length;
  }
  if (viaDirect.length) {
    while (inFlight >= workload.concurrency) await sleep(20);
    const p = directBatch(viaDirect).catch((e) => {
      console.error(e);
      process.exitCode = 1;
    });
    running.add(p);
    p.finally(() => running.delete(p));
  }
  if (tick.object) {
    await stack.putObject(tick.object.key, Buffer.from(tick.object.text, "utf8"));
    objects.push(tick.object.key);
  }
  if ((i + 1) % 120 === 0) {
    const s = stack.summaries()[ORDERS_QUEUE] ?? {};
    say(`${i + 1}/${workload.ticks.length} ticks, ${((Date.now() - started) / 1000).toFixed(0)} s: ${s.invocations ?? 0} invocations, ${JSON.stringify(stack.faults())} D1 faults`);
  }
}
say(`producer done (${((Date.now() - started) / 1000).toFixed(1)} s); draining`);
await Promise.all([...running]);
// Every queue message and every direct delivery chain settled once (but the
// chains given up on), every object with a final manifest; or, after the
// timeout, what there is, for xtask to say what is missing.
let drainTimedOut = false;
try {
  await stack.drained(queueSent + direct.chains - direct.lost, objects, 300_000, { log: false });
  say(`drained (${((Date.now() - started) / 1000).toFixed(1)} s)`);
} catch (e) {
  drainTimedOut = true;
  say(`not drained after 300 s: ${e.message.split("\n")[0]}`);
}
const snapshot = await stack.snapshot();
const { results: quarantinedMessages } = await stack.db
  .prepare("SELECT COUNT(*) AS n FROM quarantine WHERE source = ?")
  .bind(`queue/${ORDERS_QUEUE}`)
  .all();
process.stdout.write(
  JSON.stringify({
    sent: queueSent + direct.messages,
    queueSent,
    objects,
    elapsedMs: Date.now() - started,
    direct,
    drainTimedOut,
    deadLettered: stack.deadLettered(),
    faults: stack.faults(),
    quarantinedMessages: quarantinedMessages[0].n,
    ...snapshot,
  }) + "\n",
);
await stack.stop();
