// The Worker under workerd (miniflare), end to end: `cargo xtask test` runs
// these with `node --test` after `cargo xtask build-worker`'s build.
//
// Deliveries go two ways: through the local queues (the producer sends, the
// queue broker batches, retries and dead-letters as wrangler.jsonc says), and
// straight into the queue handler (`worker.queue(...)`) where a test needs to
// choose what one invocation receives: the same message twice, two
// invocations at once.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { start, infraDir, ORDERS_QUEUE } from "../local/stack.mjs";

const root = join(infraDir, "../..");
const data = (name) => readFileSync(join(root, "events/data", name));
const demoLines = (file) =>
  readFileSync(join(root, "xtask/demo", file), "utf8")
    .split("\n")
    .filter((l) => l.length > 0);

const event = (id, order, customer, status, amount, at, extra = {}) =>
  JSON.stringify({ eventId: id, orderId: order, customerId: customer, status, amount, currency: "EUR", occurredAt: at, ...extra });

/// The invariant, from D1's rows: each customer's totals are the sum of its
/// non-CANCELLED orders (amounts compared as exact decimal strings, summed in
/// integer cents: every amount here has at most two decimal places).
async function assertInvariant(stack) {
  const { orders, totals } = await stack.snapshot();
  const cents = (s) => {
    const [whole, frac = ""] = s.split(".");
    return BigInt(whole) * 100n + BigInt((frac + "00").slice(0, 2)) * (whole.startsWith("-") ? -1n : 1n);
  };
  const want = {};
  for (const o of orders) {
    if (o.status === "CANCELLED") continue;
    const t = (want[o.customer_id] ??= { count: 0, sums: {} });
    t.count += 1;
    t.sums[o.currency] = (t.sums[o.currency] ?? 0n) + cents(o.amount);
  }
  for (const t of totals) {
    const expected = want[t.customer_id] ?? { count: 0, sums: {} };
    const stored = Object.fromEntries(
      Object.entries(JSON.parse(t.totals))
        .map(([c, v]) => [c, cents(v)])
        .filter(([, v]) => v !== 0n),
    );
    assert.equal(t.order_count, expected.count, `order count of ${t.customer_id}`);
    assert.deepEqual(stored, expected.sums, `totals of ${t.customer_id}`);
    delete want[t.customer_id];
  }
  assert.deepEqual(Object.keys(want), [], "customers with orders but no totals");
}

/// One message as the queue handler receives it.
let nextId = 0;
const message = (body, id = `m-${++nextId}`) => ({ id, timestamp: new Date(), body, attempts: 1 });

describe("the fixtures through the local queues", () => {
  let stack;
  before(async () => {
    stack = await start();
  });
  after(() => stack.stop());

  test("objects and order events end with the demo's totals, bad lines quarantined by line number", async () => {
    const objects = ["orders.ndjson", "orders.csv", "orders.csv.gz", "orders.ndjson.gz", "daily orders+extra.ndjson"];
    for (const name of objects) await stack.putObject(name, data(name));
    const first = [...demoLines("orders-queue.ndjson"), ...demoLines("orders-fifo.ndjson")];
    await stack.sendOrders(first);
    await stack.drained(first.length, objects);
    const late = demoLines("orders-late.ndjson");
    await stack.sendOrders(late);
    await stack.drained(first.length + late.length, objects);

    const snap = await stack.snapshot();
    const expected = JSON.parse(readFileSync(join(root, "xtask/demo/expected-totals.json"), "utf8"));
    const stored = Object.fromEntries(
      snap.totals.map((t) => [t.customer_id, { orderCount: t.order_count, totals: JSON.parse(t.totals) }]),
    );
    const normal = (m) =>
      Object.fromEntries(Object.entries(m).map(([c, v]) => [c, String(Number(v))]).filter(([, v]) => v !== "0"));
    for (const [customer, want] of Object.entries(expected)) {
      assert.equal(stored[customer]?.orderCount, want.orderCount, customer);
      assert.deepEqual(normal(stored[customer].totals), normal(want.totals), customer);
    }
    assert.deepEqual(Object.keys(stored).sort(), Object.keys(expected).sort());
    await assertInvariant(stack);

    const ndjson = snap.manifests.find((m) => m.key === "orders.ndjson");
    assert.deepEqual(
      [ndjson.status, ndjson.lines, ndjson.accepted, ndjson.rejected, ndjson.stale, ndjson.duplicates],
      ["COMPLETED", 7, 5, 2, 0, 0],
    );
    const lines = snap.quarantine.filter((q) => q.source === "r2/orders-ingest/orders.ndjson").map((q) => q.record_id);
    assert.deepEqual(lines, ["line-4", "line-7"]);
    const s = snap.summaries[ORDERS_QUEUE];
    assert.equal(s.applied + s.stale + s.duplicate + s.quarantined, first.length + late.length);
    assert.equal(s.failed, 0);
  });
});

describe("order events", () => {
  let stack;
  let worker;
  before(async () => {
    stack = await start();
    worker = await stack.mf.getWorker();
  });
  after(() => stack.stop());

  test("poison messages are quarantined with their reason and acknowledged; the rest of the batch applies", async () => {
    const batch = [
      message("this is not JSON at all"),
      message(event("p-1", "o-p1", "c-p", "REFUNDED", "1.00", "2026-11-06T10:30:00Z")),
      message(event("p-2", "o-p2", "c-p", "PLACED", "1e30", "2026-11-06T10:30:00Z")),
      message(event("p-3", "o-p3", "c-p", "PLACED", "2.50", "2026-11-06T10:30:00Z")),
    ];
    const result = await worker.queue(ORDERS_QUEUE, batch);
    assert.equal(result.outcome, "ok");
    assert.deepEqual([...result.explicitAcks].sort(), batch.map((m) => m.id).sort());
    assert.deepEqual(result.retryMessages, []);
    const { quarantine, orders } = await stack.snapshot();
    const reasons = Object.fromEntries(quarantine.map((q) => [q.record_id, q.reason]));
    assert.match(reasons[batch[0].id], /malformed JSON/);
    assert.match(reasons[batch[1].id], /status: must be PLACED, PAID, SHIPPED or CANCELLED, got "REFUNDED"/);
    assert.match(reasons[batch[2].id], /amount/);
    assert.equal(reasons[batch[3].id], undefined);
    assert.deepEqual(
      orders.map((o) => o.order_id),
      ["o-p3"],
    );
  });

  test("the same message delivered twice has one effect; a resend in other formatting is a duplicate, a changed one a reused key", async () => {
    const body = event("r-1", "o-r1", "c-r", "PLACED", "10.00", "2026-11-06T10:00:00Z");
    const m = message(body);
    const first = await worker.queue(ORDERS_QUEUE, [m]);
    const again = await worker.queue(ORDERS_QUEUE, [m]);
    assert.deepEqual([first.explicitAcks, again.explicitAcks], [[m.id], [m.id]]);
    const reformatted = message(
      JSON.stringify({ amount: "10", occurredAt: "2026-11-06T11:00:00+01:00", eventId: "r-1", orderId: "o-r1", customerId: "c-r", status: "PLACED", currency: "EUR", note: "ignored field" }),
    );
    const changed = message(event("r-1", "o-r1", "c-r", "PLACED", "11.00", "2026-11-06T10:00:00Z"));
    await worker.queue(ORDERS_QUEUE, [reformatted, changed]);
    const snap = await stack.snapshot();
    const order = snap.orders.find((o) => o.order_id === "o-r1");
    assert.equal(order.version, 1, "applied once");
    const totals = snap.totals.find((t) => t.customer_id === "c-r");
    assert.deepEqual([totals.order_count, JSON.parse(totals.totals)], [1, { EUR: "10" }]);
    const reused = snap.quarantine.filter((q) => q.record_id === changed.id);
    assert.equal(reused.length, 1);
    assert.match(reused[0].reason, /already used with a different payload/);
    assert.equal(snap.quarantine.some((q) => q.record_id === reformatted.id), false, "a duplicate, not quarantined");
    await assertInvariant(stack);
  });

  test("idempotency keys are under IDEMPOTENCY_KEY_PREFIX, `orders` (the Lambda functions' default) when unset", async () => {
    const body = event("k-1", "o-k1", "c-k", "PLACED", "1.00", "2026-11-06T10:00:00Z");
    await worker.queue(ORDERS_QUEUE, [message(body)]);
    const key = (db) => db.prepare("SELECT key FROM idempotency WHERE key LIKE '%=k-1'").first("key");
    assert.equal(await key(stack.db), "orders#sqs-body#/eventId=k-1");
    const shop = await start({ vars: { IDEMPOTENCY_KEY_PREFIX: "shop" } });
    try {
      await (await shop.mf.getWorker()).queue(ORDERS_QUEUE, [message(body)]);
      assert.equal(await key(shop.db), "shop#sqs-body#/eventId=k-1");
    } finally {
      await shop.stop();
    }
  });

  test("a transient D1 failure retries the batch through the queue, then it applies once", async () => {
    await stack.db.prepare("ALTER TABLE idempotency RENAME TO idempotency_away").run();
    const before = stack.summaries()[ORDERS_QUEUE]?.failed ?? 0;
    await stack.sendOrders([event("t-1", "o-t1", "c-t", "PLACED", "3.00", "2026-11-06T10:00:00Z")]);
    await stack.until("the batch to be reported for retry", () => (stack.summaries()[ORDERS_QUEUE]?.failed ?? 0) > before);
    const applied = await stack.db.prepare("SELECT COUNT(*) AS n FROM orders WHERE order_id = 'o-t1'").first("n");
    assert.equal(applied, 0, "nothing applied");
    await stack.db.prepare("ALTER TABLE idempotency_away RENAME TO idempotency").run();
    await stack.until("the retried message to apply", async () =>
      (await stack.snapshot()).orders.some((o) => o.order_id === "o-t1"),
    );
    const snap = await stack.snapshot();
    assert.equal(snap.orders.find((o) => o.order_id === "o-t1").version, 1);
    await assertInvariant(stack);
  });

  test("a guard after a write that changed no row fails its whole D1 batch, naming itself: nothing of the batch is written", async () => {
    await stack.db.prepare("INSERT INTO customer_totals VALUES ('c-g', 1, '{}', 5)").run();
    const guard = stack.db.prepare("SELECT json_extract('{}', ?1) WHERE changes() = 0").bind("guard#ledger");
    const guarded = [
      stack.db.prepare("INSERT INTO idempotency (key, fingerprint, outcome, recorded_at) VALUES ('k-g', 'f', 'APPLIED', 'now')"),
      stack.db.prepare("UPDATE customer_totals SET order_count = 2, version = 6 WHERE customer_id = 'c-g' AND version = 4"),
      guard,
    ];
    await assert.rejects(stack.db.batch(guarded), /bad JSON path: 'guard#ledger'/);
    assert.equal(await stack.db.prepare("SELECT COUNT(*) AS n FROM idempotency WHERE key = 'k-g'").first("n"), 0);
    guarded[1] = stack.db.prepare("UPDATE customer_totals SET order_count = 2, version = 6 WHERE customer_id = 'c-g' AND version = 5");
    await stack.db.batch(guarded);
    assert.equal(await stack.db.prepare("SELECT order_count FROM customer_totals WHERE customer_id = 'c-g'").first("order_count"), 2);
    await stack.db.prepare("DELETE FROM customer_totals WHERE customer_id = 'c-g'").run();
    await stack.db.prepare("DELETE FROM idempotency WHERE key = 'k-g'").run();
  });

  test("every invocation logs the toolkit's summary line and metrics, in the Lambda functions' shape", async () => {
    const before = stack.logs.length;
    await worker.queue(ORDERS_QUEUE, [message(event("l-1", "o-l1", "c-l", "PLACED", "1.00", "2026-11-06T10:00:00Z")), message("nope")]);
    const lines = stack.logs.slice(before).filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
    const summary = lines.find((l) => l.message === "invocation summary");
    assert.deepEqual(
      [summary.function_name, summary.queue, summary.applied, summary.quarantined, summary.failed, summary.records],
      ["orders", ORDERS_QUEUE, 1, 1, 0, 2],
    );
    assert.equal(summary.level, "INFO");
    assert.ok(summary.d1_round_trips >= 2 && summary.d1_statements > summary.d1_round_trips, JSON.stringify(summary));
    const metrics = lines.find((l) => l._aws);
    assert.deepEqual(metrics._aws.CloudWatchMetrics[0].Dimensions, [["function"]]);
    assert.equal(metrics._aws.CloudWatchMetrics[0].Namespace, "StreamProcessor");
    assert.deepEqual([metrics.function, metrics.Applied, metrics.Quarantined, metrics.BatchSize], ["orders", 1, 1, 2]);
  });

  test("concurrent invocations on the same order and customer: every write guarded, the totals exact", async () => {
    const batches = Array.from({ length: 6 }, (_, i) => [
      message(event(`c-${i}`, "o-c", "c-c", i % 2 ? "PAID" : "PLACED", `${i + 1}.00`, `2026-11-06T10:0${i}:00Z`)),
      message(event(`d-${i}`, `o-d${i}`, "c-c", "PLACED", "1.00", "2026-11-06T10:00:00Z")),
    ]);
    const results = await Promise.all(batches.map((b) => worker.queue(ORDERS_QUEUE, b)));
    for (const [r, b] of results.map((r, i) => [r, batches[i]])) {
      assert.deepEqual([...r.explicitAcks].sort(), b.map((m) => m.id).sort(), JSON.stringify(r));
    }
    const snap = await stack.snapshot();
    const order = snap.orders.find((o) => o.order_id === "o-c");
    assert.deepEqual([order.last_event_id, order.amount], ["c-5", "6"], "the newest event wins");
    const totals = snap.totals.find((t) => t.customer_id === "c-c");
    assert.deepEqual([totals.order_count, JSON.parse(totals.totals)], [7, { EUR: "12" }]);
    await assertInvariant(stack);
  });
});

describe("objects", () => {
  test("an object interrupted after a commit, and handed on chunk by chunk, resumes to one clean pass", async () => {
    const clean = await start();
    const interrupted = await start({ vars: { CHUNK_LINES: "2", CHUNKS_PER_INVOCATION: "1", INTERRUPT_AT_LINE: "3" } });
    try {
      for (const stack of [clean, interrupted]) {
        // Two lines, one chunk: handed on after its last line, the rest is an empty read.
        const objects = ["orders.ndjson", "orders.ndjson.gz", "orders.csv", "daily orders+extra.ndjson"];
        for (const name of objects) await stack.putObject(name, data(name));
        await stack.drained(0, objects, 30_000);
      }
      const a = await clean.snapshot();
      const b = await interrupted.snapshot();
      const counters = (s) =>
        s.manifests.map((m) => [m.key, m.status, m.lines, m.accepted, m.rejected, m.stale, m.duplicates]);
      assert.deepEqual(counters(b), counters(a));
      assert.deepEqual(b.orders, a.orders);
      assert.deepEqual(b.totals.map((t) => [t.customer_id, t.order_count, t.totals]), a.totals.map((t) => [t.customer_id, t.order_count, t.totals]));
      assert.deepEqual(b.quarantine, a.quarantine, "each bad line quarantined once");
      const log = interrupted.logs.join("\n");
      assert.match(log, /interrupted at line/);
      assert.match(log, /handed on/);
      assert.ok(b.manifests.every((m) => m.version >= 2), "committed in more than one invocation");
      assert.ok(b.manifests.find((m) => m.key === "orders.ndjson").version > 3, "chunk by chunk");
    } finally {
      await clean.stop();
      await interrupted.stop();
    }
  });

  test("a spreadsheet's CSV (byte-order mark, quoted header names, CRLF) reads like a plain one", async () => {
    const stack = await start();
    try {
      const names = ["eventId", "orderId", "customerId", "status", "amount", "currency", "occurredAt"];
      const rows = [
        names.map((n) => `"${n}"`).join(","),
        "s-1,o-s1,c-s,PLACED,10.50,EUR,2026-11-06T10:00:00Z",
        "s-2,o-s2,c-s,PAID,2.25,EUR,2026-11-06T10:00:00Z",
        "s-3,o-s3,c-s,REFUNDED,1.00,EUR,2026-11-06T10:00:00Z",
      ];
      const text = "\ufeff" + rows.join("\r\n") + "\r\n";
      await stack.putObject("spreadsheet.csv", Buffer.from(text, "utf8"));
      await stack.drained(0, ["spreadsheet.csv"]);
      const snap = await stack.snapshot();
      const m = snap.manifests.find((m) => m.key === "spreadsheet.csv");
      assert.deepEqual(
        [m.status, m.lines, m.accepted, m.rejected, m.next_line, m.next_byte],
        ["COMPLETED", 3, 2, 1, 5, Buffer.byteLength(text)],
      );
      assert.deepEqual(
        snap.orders.filter((o) => o.customer_id === "c-s").map((o) => [o.order_id, o.status, Number(o.amount)]),
        [["o-s1", "PLACED", 10.5], ["o-s2", "PAID", 2.25]],
      );
      const bad = snap.quarantine.filter((q) => q.source === "r2/orders-ingest/spreadsheet.csv");
      assert.deepEqual(bad.map((q) => q.record_id), ["line-4"]);
      assert.match(bad[0].reason, /status: must be PLACED, PAID, SHIPPED or CANCELLED, got "REFUNDED"/);
      await assertInvariant(stack);
    } finally {
      await stack.stop();
    }
  });

  test("a CRLF line of exactly MAX_LINE_BYTES is read, one byte longer is rejected, as on Lambda", async () => {
    const line = event("l-1", "o-l1", "c-l", "PLACED", "1.00", "2026-11-06T10:00:00Z");
    const limit = Buffer.byteLength(line);
    const stack = await start({ vars: { MAX_LINE_BYTES: String(limit) } });
    try {
      const longer = event("l-2", "o-l2", "c-l", "PLACED", "12.00", "2026-11-06T10:00:00Z");
      assert.equal(Buffer.byteLength(longer), limit + 1);
      await stack.putObject("limit.ndjson", Buffer.from(`${line}\r\n${longer}\r\n`));
      await stack.drained(0, ["limit.ndjson"]);
      const snap = await stack.snapshot();
      const m = snap.manifests.find((m) => m.key === "limit.ndjson");
      assert.deepEqual([m.status, m.lines, m.accepted, m.rejected], ["COMPLETED", 2, 1, 1]);
      assert.deepEqual(snap.orders.map((o) => o.order_id), ["o-l1"]);
      const bad = snap.quarantine.filter((q) => q.source === "r2/orders-ingest/limit.ndjson");
      assert.deepEqual(
        bad.map((q) => [q.record_id, q.reason]),
        [["line-2", `line is ${limit + 1} bytes, over the limit of ${limit}`]],
      );
    } finally {
      await stack.stop();
    }
  });

  test("objects that cannot be ingested end with a manifest that says why and are acknowledged", async () => {
    const stack = await start();
    try {
      await stack.notify("gone.ndjson", "0123456789abcdef", 10);
      await stack.putObject("notes.txt", Buffer.from("hello\n"));
      await stack.putObject("broken.ndjson.gz", Buffer.from("this is not gzip"));
      await stack.drained(0, ["gone.ndjson", "notes.txt", "broken.ndjson.gz"]);
      const m = Object.fromEntries((await stack.snapshot()).manifests.map((m) => [m.key, m]));
      assert.equal(m["gone.ndjson"].status, "FAILED");
      assert.match(m["gone.ndjson"].reason, /no such object/);
      assert.equal(m["notes.txt"].status, "REJECTED");
      assert.match(m["notes.txt"].reason, /not a format we ingest/);
      assert.equal(m["broken.ndjson.gz"].status, "FAILED");
      assert.match(m["broken.ndjson.gz"].reason, /not valid gzip/);
    } finally {
      await stack.stop();
    }
  });
});
