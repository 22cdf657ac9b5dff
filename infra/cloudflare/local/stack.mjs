// The local Cloudflare stack: a built Worker under workerd (miniflare), with
// the bindings of its wrangler configuration (D1, R2, the queues with their
// retry limits and dead-letter queues), D1 migrated from its migrations
// folder. R2's event notifications are not emulated locally, so `putObject`
// plays them: it stores the object and sends the notification R2 would send.
//
// Worker logs are captured: every queue invocation logs one summary line
// (the toolkit's, as on Lambda), which is how `drained` knows that every
// message sent has an outcome.
//
// D1 faults: with `faults` (or the var D1_FAULTS), the Worker's D1 binding is
// wrapped before the Worker sees it (an entry module of the stack's, around
// the bundle's): `{"rate": 0.1, "seed": 7}` fails that share of D1 batches,
// half of them before they run (nothing applied) and half after (applied,
// the answer lost); `{"before": [2, 3], "after": [5]}` fails the batches of
// those numbers (counted from 1 per isolate). The faults live here, in the
// test harness, not in the Worker.

import { readFileSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Log, LogLevel, Miniflare, convertV4MiniflareOptions } from "miniflare";
import { unstable_getMiniflareWorkerOptions } from "wrangler";

const here = dirname(fileURLToPath(import.meta.url));
export const infraDir = resolve(here, "..");
export const config = join(infraDir, "wrangler.jsonc");
export const ORDERS_QUEUE = "orders-events";
export const INGEST_QUEUE = "orders-ingest-events";
export const BUCKET = "orders-ingest";
export const RESERVATIONS_QUEUE = "reservations";

/// The Workers of the workspace: their configuration, build and migrations.
export const WORKERS = {
  orders: { name: "orders-pipeline", config, built: "cf-worker", migrations: join(infraDir, "migrations") },
  inventory: {
    name: "inventory-reservations",
    config: join(infraDir, "inventory/wrangler.jsonc"),
    built: "inventory-reservations-worker",
    migrations: join(infraDir, "inventory/migrations"),
  },
};

/// miniflare's own warnings (its queue broker says when it moves a message
/// to a dead-letter queue), kept instead of printed.
class Captured extends Log {
  constructor(sink) {
    super(LogLevel.WARN);
    this.sink = sink;
  }
  log(message) {
    this.sink.push(message);
  }
}

/// The entry module that wraps the Worker's D1 binding with faults (see the
/// top of this file). Its class is named D1Database: workers-rs checks a
/// binding's constructor name.
const FAULTY_ENTRY = `
import worker from "./worker.js";
let calls = 0;
let seed = 0;
const counts = { before: 0, after: 0 };
function random() {
  seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0;
  return seed / 4294967296;
}
class D1Database {
  constructor(inner, plan) { this.inner = inner; this.plan = plan; }
  prepare(sql) { return this.inner.prepare(sql); }
  async batch(statements) {
    calls += 1;
    const p = this.plan;
    let fault = null;
    if (p.before?.includes(calls)) fault = "before";
    else if (p.after?.includes(calls)) fault = "after";
    else if (p.rate && random() < p.rate) fault = random() < 0.5 ? "before" : "after";
    if (fault === "before") {
      counts.before += 1;
      console.log(JSON.stringify({ d1_fault: "before", call: calls, ...counts }));
      throw new Error("D1_ERROR: injected fault: the batch did not run");
    }
    const results = await this.inner.batch(statements);
    if (fault === "after") {
      counts.after += 1;
      console.log(JSON.stringify({ d1_fault: "after", call: calls, ...counts }));
      throw new Error("D1_ERROR: injected fault: the batch ran, its answer was lost");
    }
    return results;
  }
}
export default {
  async queue(batch, env, ctx) {
    if (env.D1_FAULTS) {
      const plan = JSON.parse(env.D1_FAULTS);
      if (!seed) seed = (plan.seed ?? 1) >>> 0 || 1;
      env = { ...env, DB: new D1Database(env.DB, plan) };
    }
    return worker.queue(batch, env, ctx);
  },
};
`;

/// Starts a Worker of WORKERS (`worker`, default the orders pipeline).
/// `vars` override the configuration's (tests use small chunks and fault
/// injection); `faults` wraps its D1 binding (see the top of this file);
/// `persist` keeps D1/R2 in a folder.
export async function start({ worker = "orders", vars = {}, faults = null, persist = false, echo = false } = {}) {
  const w = WORKERS[worker];
  const { workerOptions } = unstable_getMiniflareWorkerOptions(w.config);
  // The bundle `wrangler deploy` would upload (`cargo xtask build-worker`),
  // in cargo's target directory: xtask names it (it may be elsewhere); by
  // hand, the default one.
  const target = process.env.CF_TARGET_DIR ?? resolve(infraDir, "../../target");
  const builtDir = resolve(target, w.built, "dist");
  const logs = [];
  const warnings = [];
  const modules = builtModules(builtDir);
  if (faults) {
    vars = { ...vars, D1_FAULTS: JSON.stringify(faults) };
    modules.unshift({ type: "ESModule", path: join(builtDir, "faulty-entry.mjs"), contents: FAULTY_ENTRY });
  }
  // wrangler gives the worker options in miniflare 4's shape; miniflare 5 converts them.
  const mf = new Miniflare(convertV4MiniflareOptions({
    workers: [
      {
        ...workerOptions,
        name: w.name,
        // Every file of the bundle, named by its path in it: the entry first.
        modulesRoot: builtDir,
        modules,
        bindings: { ...workerOptions.bindings, ...vars },
        // The local producers of the stack (the orders Worker itself only produces to INGEST).
        queueProducers: {
          ...workerOptions.queueProducers,
          ...(worker === "orders" ? { ORDERS: { queueName: ORDERS_QUEUE } } : { RESERVATIONS: { queueName: RESERVATIONS_QUEUE } }),
        },
      },
    ],
    ...(persist ? { resourcePersistencePath: persist } : {}),
    telemetry: { enabled: false },
    log: new Captured(warnings),
    handleStructuredLogs({ level, message }) {
      for (const line of message.split("\n")) {
        logs.push(line);
        if (echo || (level === "error" && process.env.CF_STACK_DEBUG)) console.error(`  [worker ${level}] ${line}`);
      }
    },
  }));
  await mf.ready;
  const db = await mf.getD1Database("DB");
  for (const file of readdirSync(w.migrations).sort()) {
    for (const statement of splitSql(readFileSync(join(w.migrations, file), "utf8"))) {
      await db.prepare(statement).run();
    }
  }
  const bucket = worker === "orders" ? await mf.getR2Bucket("BUCKET") : null;
  const stack = new Stack(mf, db, bucket, logs);
  stack.warnings = warnings;
  return stack;
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

  /// Sends JSON text bodies, as a producer would, through the local
  /// producer binding `binding`, a hundred at a time.
  async send(binding, bodies) {
    const queue = await this.mf.getQueueProducer(binding);
    for (let i = 0; i < bodies.length; i += 100) {
      await queue.sendBatch(bodies.slice(i, i + 100).map((body) => ({ body, contentType: "text" })));
    }
  }

  /// Sends order events (JSON text, as a producer would) to the orders queue.
  async sendOrders(lines) {
    await this.send("ORDERS", lines);
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

  /// The summary lines the Worker logged (`"message": "invocation
  /// summary"`, the toolkit's shape), per queue: the counters and D1
  /// figures summed, and the invocations counted.
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
      if (parsed.message !== "invocation summary") continue;
      const t = (totals[parsed.queue] ??= { applied: 0, stale: 0, duplicate: 0, quarantined: 0, ignored: 0, failed: 0, records: 0, d1_statements: 0, d1_round_trips: 0, invocations: 0 });
      for (const k of Object.keys(t)) t[k] += k === "invocations" ? 1 : (parsed[k] ?? 0);
    }
    return totals;
  }

  /// Messages the local queues moved to a dead-letter queue (miniflare's
  /// broker says so in a warning).
  deadLettered() {
    return (this.warnings ?? []).filter((w) => w.includes("to dead letter queue")).length;
  }

  /// The D1 faults the stack's wrapper injected (see the top of this file).
  faults() {
    const out = { before: 0, after: 0 };
    for (const line of this.logs) {
      if (!line.includes('"d1_fault"')) continue;
      out[JSON.parse(line).d1_fault] += 1;
    }
    return out;
  }

  /// Waits until `condition()` holds, polling; fails after `timeoutMs`
  /// naming what it waited for.
  async until(what, condition, timeoutMs = 60_000, { log = true } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (await condition()) return;
      if (Date.now() > deadline) {
        const worker = log ? `\nworker log:\n${this.logs.join("\n")}` : "";
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${worker}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /// Waits until every order message sent has a settled outcome (applied,
  /// stale, duplicate, quarantined) and every object has a final manifest.
  async drained(ordersSent, objects, timeoutMs, options) {
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
      options,
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
