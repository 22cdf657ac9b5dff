// The inventory-reservations example on Workers (examples/
// inventory-reservations-worker) under workerd: the Lambda example's test
// (tests/tests/examples.rs) on D1. The same eight messages (the Lambda
// fixture's bodies and ids), then the same batch again; then D1 failing
// around the commit.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { start, infraDir, RESERVATIONS_QUEUE } from "../local/stack.mjs";

const root = join(infraDir, "../..");
const fixture = JSON.parse(readFileSync(join(root, "examples/inventory-reservations/events/sqs-reservations.json"), "utf8"));
/// The fixture's messages as the queue handler receives them.
const messages = () =>
  fixture.Records.map((r) => ({ id: r.messageId, timestamp: new Date(), body: r.body, attempts: 1 }));

async function stock(stack, sku) {
  return stack.db.prepare("SELECT available, reserved FROM inventory WHERE sku = ?").bind(sku).first();
}

async function seed(stack) {
  await stack.db.batch([
    stack.db.prepare("INSERT INTO inventory (sku, available) VALUES ('A-1', 10)"),
    stack.db.prepare("INSERT INTO inventory (sku, available) VALUES ('B-2', 1)"),
  ]);
}

const count = async (stack, table) => (await stack.db.prepare(`SELECT COUNT(*) AS n FROM ${table}`).first("n"));

describe("inventory reservations on D1", () => {
  let stack;
  let worker;
  before(async () => {
    stack = await start({ worker: "inventory" });
    worker = await stack.mf.getWorker();
    await seed(stack);
  });
  after(() => stack.stop());

  test("reserve once, quarantine what cannot be reserved with its reason; the batch redelivered changes nothing", async () => {
    const batch = messages();
    const first = await worker.queue(RESERVATIONS_QUEUE, batch);
    assert.deepEqual([first.outcome, [...first.explicitAcks].sort(), first.retryMessages], ["ok", batch.map((m) => m.id).sort(), []]);
    // r-1 (3) and r-3 (2) of A-1 reserved; the resend of r-1 is a duplicate.
    assert.deepEqual(await stock(stack, "A-1"), { available: 5, reserved: 5 });
    assert.deepEqual(await stock(stack, "B-2"), { available: 1, reserved: 0 }, "r-2 wants 5 of B-2 and must change nothing");
    const { results } = await stack.db.prepare("SELECT record_id, reason FROM quarantine WHERE source = 'queue/reservations'").all();
    const reason = Object.fromEntries(results.map((q) => [q.record_id, q.reason]));
    assert.equal(results.length, 5, JSON.stringify(results));
    assert.equal(reason["res-msg-2"], "sku B-2: 5 requested, 1 available");
    assert.match(reason["res-msg-4"], /^malformed JSON in message body/);
    assert.match(reason["res-msg-6"], /was already used with a different payload/);
    assert.equal(reason["res-msg-7"], "sku Z-9: no such item");
    assert.equal(reason["res-msg-8"], "quantity: must be at least 1");

    const again = await worker.queue(RESERVATIONS_QUEUE, messages());
    assert.deepEqual(again.retryMessages, []);
    assert.deepEqual(await stock(stack, "A-1"), { available: 5, reserved: 5 });
    assert.deepEqual(await stock(stack, "B-2"), { available: 1, reserved: 0 });
    assert.equal(await count(stack, "quarantine"), 5);
    assert.equal(await count(stack, "idempotency"), 2, "one marker per reservation applied (r-1, r-3)");
    const markers = (await stack.db.prepare("SELECT key FROM idempotency ORDER BY key").all()).results.map((m) => m.key);
    assert.deepEqual(markers, ["inventory-reservations#reservation#r-1", "inventory-reservations#reservation#r-3"]);
    const lines = stack.logs.filter((l) => l.includes('"invocation summary"')).map((l) => JSON.parse(l));
    assert.deepEqual(
      lines.map((l) => [l.applied, l.duplicate, l.quarantined, l.failed, l.records]),
      [[2, 1, 5, 0, 8], [0, 3, 5, 0, 8]],
    );
  });

  test("a refused reservation is evaluated again once stock is back (its rejection is not remembered)", async () => {
    const wants = { id: "m-later-1", timestamp: new Date(), body: JSON.stringify({ reservationId: "r-9", sku: "B-2", quantity: 3 }), attempts: 1 };
    await worker.queue(RESERVATIONS_QUEUE, [wants]);
    assert.deepEqual(await stock(stack, "B-2"), { available: 1, reserved: 0 });
    await stack.db.prepare("UPDATE inventory SET available = 4 WHERE sku = 'B-2'").run();
    await worker.queue(RESERVATIONS_QUEUE, [{ ...wants, id: "m-later-2" }]);
    assert.deepEqual(await stock(stack, "B-2"), { available: 1, reserved: 3 });
  });
});

describe("inventory reservations when D1 fails", () => {
  test("a commit whose answer is lost is not applied twice: the retry finds its marker", async () => {
    // Batch 1 reads the markers; batch 2 commits, and its answer is lost.
    const stack = await start({ worker: "inventory", faults: { after: [2] } });
    try {
      await seed(stack);
      const worker = await stack.mf.getWorker();
      const m = { id: "m-1", timestamp: new Date(), body: JSON.stringify({ reservationId: "r-1", sku: "A-1", quantity: 4 }), attempts: 1 };
      const first = await worker.queue(RESERVATIONS_QUEUE, [m]);
      assert.deepEqual(first.explicitAcks, ["m-1"]);
      assert.deepEqual(stack.faults(), { before: 0, after: 1 });
      assert.deepEqual(await stock(stack, "A-1"), { available: 6, reserved: 4 }, "applied once");
      await worker.queue(RESERVATIONS_QUEUE, [{ ...m, attempts: 2 }]);
      assert.deepEqual(await stock(stack, "A-1"), { available: 6, reserved: 4 }, "and not again");
      assert.equal(await count(stack, "idempotency"), 1);
    } finally {
      await stack.stop();
    }
  });

  test("a D1 that keeps failing sends the messages back to the queue with a delay; redelivered, each applies once", async () => {
    // Every batch of the first invocation fails before it runs (the
    // markers' read and its retries: 1 + 6 back-offs).
    const stack = await start({ worker: "inventory", faults: { before: [1, 2, 3, 4, 5, 6, 7] }, vars: { RETRY_DELAY_SECONDS: "1" } });
    try {
      await seed(stack);
      const bodies = [
        JSON.stringify({ reservationId: "q-1", sku: "A-1", quantity: 1 }),
        JSON.stringify({ reservationId: "q-2", sku: "A-1", quantity: 2 }),
      ];
      await stack.send("RESERVATIONS", bodies);
      await stack.until("both reservations to apply", async () => (await stock(stack, "A-1")).reserved === 3);
      const s = stack.summaries()[RESERVATIONS_QUEUE];
      assert.deepEqual([s.failed, s.applied, s.quarantined], [2, 2, 0], JSON.stringify(s));
      assert.equal(stack.faults().before, 7);
      assert.deepEqual(await stock(stack, "A-1"), { available: 7, reserved: 3 });
      assert.equal(await count(stack, "idempotency"), 2);
    } finally {
      await stack.stop();
    }
  });
});
