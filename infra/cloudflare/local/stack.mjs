// The local Cloudflare stack: the built Worker under workerd (miniflare),
// with the bindings of ../wrangler.jsonc (D1, R2, the queues with their retry
// limits and dead-letter queues), D1 migrated from ../migrations. R2's event
// notifications are not emulated locally, so `putObject` plays them: it
// stores the object and sends the notification R2 would send.
//
// Worker logs are captured: every queue invocation logs one summary line,
// which is how `drained` knows that every message sent has an outcome.

import { readFileSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Miniflare, convertV4MiniflareOptions } from "miniflare";
import { unstable_getMiniflareWorkerOptions } from "wrangler";

const here = dirname(fileURLToPath(import.meta.url));
export const infraDir = resolve(here, "..");
export const config = join(infraDir, "wrangler.jsonc");
export const ORDERS_QUEUE = "orders-events";
export const INGEST_QUEUE = "orders-ingest-events";
export const BUCKET = "orders-ingest";

/// Starts the Worker. `vars` override the configuration's (tests use small
/// chunks and fault injection); `persist` keeps D1/R2 in a folder.
export async function start({ vars = {}, persist = false, echo = false } = {}) {
  const { workerOptions } = unstable_getMiniflareWorkerOptions(config);
  // The bundle `wrangler deploy` would upload (`cargo xtask build-worker`):
  // xtask names it (cargo's target directory may be elsewhere); by hand,
  // the default target directory's.
  const builtDir = process.env.CF_WORKER_DIST ?? resolve(infraDir, "../../target/cf-worker/dist");
  const logs = [];
  // wrangler gives the worker options in miniflare 4's shape; miniflare 5 converts them.
  const mf = new Miniflare(convertV4MiniflareOptions({
    workers: [
      {
        ...workerOptions,
        name: "orders-pipeline",
        // Every file of the bundle, named by its path in it: worker.js first (the entry).
        modulesRoot: builtDir,
        modules: builtModules(builtDir),
        bindings: { ...workerOptions.bindings, ...vars },
        // The local producers of the stack (the Worker itself only produces to INGEST).
        queueProducers: { ...workerOptions.queueProducers, ORDERS: { queueName: ORDERS_QUEUE } },
      },
    ],
    ...(persist ? { resourcePersistencePath: persist } : {}),
    telemetry: { enabled: false },
    handleStructuredLogs({ level, message }) {
      for (const line of message.split("\n")) {
        logs.push(line);
        if (echo || (level === "error" && process.env.CF_STACK_DEBUG)) console.error(`  [worker ${level}] ${line}`);
      }
    },
  }));
  await mf.ready;
  const db = await mf.getD1Database("DB");
  for (const file of readdirSync(join(infraDir, "migrations")).sort()) {
    for (const statement of splitSql(readFileSync(join(infraDir, "migrations", file), "utf8"))) {
      await db.prepare(statement).run();
    }
  }
  return new Stack(mf, db, await mf.getR2Bucket("BUCKET"), logs);
}

/// The built Worker's modules (`cargo xtask build-worker`), the entry first.
function builtModules(dir) {
  const all = readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((f) => f.isFile())
    .map((f) => join(f.parentPath, f.name));
  const files = all.filter((f) => !f.endsWith(".map") && !f.endsWith(".md"));
  const type = (path) => (path.endsWith(".wasm") ? "CompiledWasm" : "ESModule");
  const entry = join(dir, "worker.js");
  if (!files.includes(entry)) throw new Error(`${entry} is missing: run \`cargo xtask build-worker\``);
  return [entry, ...files.filter((f) => f !== entry)].map((path) => ({ type: type(path), path }));
}

/// Statements of a migration file (no semicolons inside statements there).
function splitSql(text) {
  return text
    .split("\n")
    .filter((l) => !l.trim().startsWith("--"))
    .join("\n")
    .split(";")
    .map((s) => s.trim())
    .filter(Boolean);
}

export class Stack {
  constructor(mf, db, bucket, logs) {
    this.mf = mf;
    this.db = db;
    this.bucket = bucket;
    this.logs = logs;
  }

  /// Sends order events (JSON text, as a producer would) to the orders queue.
  async sendOrders(lines) {
    const queue = await this.mf.getQueueProducer("ORDERS");
    for (let i = 0; i < lines.length; i += 100) {
      await queue.sendBatch(lines.slice(i, i + 100).map((body) => ({ body, contentType: "text" })));
    }
  }

  /// Stores an object and sends the object-created notification R2 would send.
  async putObject(key, bytes, httpMetadata = {}) {
    const object = await this.bucket.put(key, bytes, { httpMetadata });
    await this.notify(key, object.etag, object.size);
    return object;
  }

  /// Sends an R2 event notification for an object.
  async notify(key, eTag, size, action = "PutObject") {
    const queue = await this.mf.getQueueProducer("INGEST");
    await queue.send(
      { account: "local", action, bucket: BUCKET, object: { key, size, eTag }, eventTime: new Date().toISOString() },
      { contentType: "json" },
    );
  }

  /// The summary lines the Worker logged, per queue, summed.
  summaries() {
    const totals = {};
    for (const line of this.logs) {
      if (!line.startsWith("{")) continue;
      let parsed;
      try {
        parsed = JSON.parse(line);
      } catch {
        continue;
      }
      if (!parsed.summary) continue;
      const t = (totals[parsed.queue] ??= { applied: 0, stale: 0, duplicate: 0, quarantined: 0, ignored: 0, failed: 0 });
      for (const [k, v] of Object.entries(parsed.summary)) t[k] = (t[k] ?? 0) + v;
    }
    return totals;
  }

  /// Waits until `condition()` holds, polling; fails after `timeoutMs`
  /// naming what it waited for.
  async until(what, condition, timeoutMs = 60_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (await condition()) return;
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\nworker log:\n${this.logs.join("\n")}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /// Waits until every order message sent has a settled outcome (applied,
  /// stale, duplicate, quarantined) and every object has a final manifest.
  async drained(ordersSent, objects, timeoutMs) {
    await this.until(
      `${ordersSent} order message(s) and ${objects.length} object(s) to settle`,
      async () => {
        const s = this.summaries()[ORDERS_QUEUE] ?? { applied: 0, stale: 0, duplicate: 0, quarantined: 0 };
        const settled = s.applied + s.stale + s.duplicate + s.quarantined;
        if (settled < ordersSent) return false;
        const { results } = await this.db.prepare("SELECT key, status FROM manifests").all();
        return objects.every((k) => results.some((m) => m.key === k && m.status !== "IN_PROGRESS"));
      },
      timeoutMs,
    );
  }

  /// Every table, as rows.
  async snapshot() {
    const all = async (sql) => (await this.db.prepare(sql).all()).results;
    return {
      orders: await all("SELECT * FROM orders ORDER BY order_id"),
      totals: await all("SELECT * FROM customer_totals ORDER BY customer_id"),
      manifests: await all("SELECT * FROM manifests ORDER BY key"),
      quarantine: await all("SELECT source, record_id, reason FROM quarantine ORDER BY source, record_id"),
      markers: (await all("SELECT COUNT(*) AS n FROM idempotency"))[0].n,
      summaries: this.summaries(),
    };
  }

  async stop() {
    await this.mf.dispose();
  }
}
