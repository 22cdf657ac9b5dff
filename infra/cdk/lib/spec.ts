/**
 * `infra/stack.json`: the one declaration of the stack's functions, names
 * and settings. The CDK app builds from it directly; `cargo xtask infra`
 * writes the SAM template from it (xtask/src/sam.rs), and the tests hold
 * both to it. `{stack}` in a name stands for the CloudFormation stack name.
 */
import * as fs from 'fs';
import * as path from 'path';

export type EnvSource = { table: string } | { queue: string } | string;

export interface FunctionSpec {
  description: string;
  /** Deployed unless false (the examples run in the local stack only). */
  deploy?: boolean;
  /** The crate's directory, from the repository root. */
  path: string;
  /** Its fixture events: `.json` files whose path starts with this. */
  fixtures: string;
  timeoutSeconds: number;
  memoryMiB: number;
  environment?: Record<string, EnvSource>;
  /** Table key -> access level (a key of `tableAccess`). */
  tables?: Record<string, string>;
  /** The uploads bucket's prefixes it reads and writes. */
  bucket?: { read?: string[]; write?: string[] };
  /** Queues it sends messages to. */
  sendsTo?: string[];
}

export interface NotificationSpec {
  queue: string;
  events: string[];
  prefix: string;
}

export interface QueueSpec {
  name: string;
  fifo: boolean;
  contentBasedDeduplication?: boolean;
  visibilityTimeoutSeconds: number;
  deadLetterQueue?: string;
  maxReceiveCount?: number;
  description?: string;
  alarmDescription?: string;
}

export interface TableSpec {
  name: string;
  hashKey: string;
  rangeKey?: string;
  streamViewType?: string;
  ttlAttribute?: string;
  pointInTimeRecovery?: boolean;
}

export type SourceSpec = { queue: string } | { table: string };

export interface MappingSpec {
  function: string;
  source: SourceSpec;
  batchSize: number;
  maximumBatchingWindowSeconds?: number;
  startingPosition?: string;
  reportBatchItemFailures: boolean;
  bisectBatchOnFunctionError?: boolean;
  maximumRetryAttempts?: number;
  onFailure?: { queue: string };
  filterPatterns?: string[];
  maximumConcurrency?: number;
  parallelizationFactor?: number;
}

export interface StackSpec {
  stackName: string;
  region: string;
  /** Access level -> the DynamoDB item actions it allows. */
  tableAccess: Record<string, string[]>;
  functions: Record<string, FunctionSpec>;
  bucket: { name: string; notifications: NotificationSpec[] };
  queues: Record<string, QueueSpec>;
  tables: Record<string, TableSpec>;
  mappings: MappingSpec[];
}

/** The placeholder for the stack name in resource names. */
export const STACK_PLACEHOLDER = '{stack}';

/** `infra/`, found from this file whether it runs from source or from `dist/`. */
export function infraDir(): string {
  let dir = __dirname;
  for (;;) {
    if (fs.existsSync(path.join(dir, 'stack.json')) && fs.existsSync(path.join(dir, 'template.yaml'))) {
      return dir;
    }
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`infra/stack.json not found above ${__dirname}`);
    dir = parent;
  }
}

/** The repository root (the Cargo workspace). */
export function repoRoot(): string {
  return path.dirname(infraDir());
}

export function loadSpec(): StackSpec {
  const file = path.join(infraDir(), 'stack.json');
  return JSON.parse(fs.readFileSync(file, 'utf8')) as StackSpec;
}

export function isQueueSource(s: SourceSpec): s is { queue: string } {
  return (s as { queue?: string }).queue !== undefined;
}

/** A record's entries sorted by key: the order xtask (a BTreeMap) uses everywhere. */
export function sorted<T>(record: Record<string, T> | undefined): [string, T][] {
  return Object.entries(record ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/**
 * What is deployed: the functions whose `deploy` is not false, their
 * mappings, and the queues, tables and notifications they reference
 * (xtask's `StackSpec::deployed`). `includeLocalOnly` deploys every
 * function (the offline checks exercise the deploy path of the examples).
 */
export function deployedSpec(spec: StackSpec, includeLocalOnly = false): StackSpec {
  // Functions fed by a Kinesis stream stay local even then: neither this app
  // nor the SAM template declares Kinesis streams yet (xtask's infra check
  // leaves them out of its all-functions template the same way).
  const readsKinesis = (name: string) => spec.mappings.some((m) => m.function === name && 'stream' in m.source);
  const functions = Object.fromEntries(
    sorted(spec.functions).filter(([name, f]) => (includeLocalOnly && !readsKinesis(name)) || f.deploy !== false),
  );
  const mappings = spec.mappings.filter((m) => m.function in functions);
  const queues = new Set<string>();
  const tables = new Set<string>();
  for (const f of Object.values(functions)) {
    for (const t of Object.keys(f.tables ?? {})) tables.add(t);
    for (const q of f.sendsTo ?? []) queues.add(q);
    for (const source of Object.values(f.environment ?? {})) {
      if (typeof source === 'string') continue;
      if ('table' in source) tables.add(source.table);
      else queues.add(source.queue);
    }
  }
  for (const m of mappings) {
    if (isQueueSource(m.source)) queues.add(m.source.queue);
    else tables.add(m.source.table);
    if (m.onFailure) queues.add(m.onFailure.queue);
  }
  return {
    ...spec,
    functions: functions as Record<string, FunctionSpec>,
    mappings,
    queues: Object.fromEntries(sorted(spec.queues).filter(([k]) => queues.has(k))),
    tables: Object.fromEntries(sorted(spec.tables).filter(([k]) => tables.has(k))),
    bucket: { ...spec.bucket, notifications: spec.bucket.notifications.filter((n) => queues.has(n.queue)) },
  };
}

/** What a permission is on. */
export type ResourceRef =
  | { logGroup: true }
  | { queue: string }
  | { table: string }
  | { stream: string }
  | { objects: string }
  | { any: true };

export interface Permission {
  sid: string;
  actions: string[];
  resources: ResourceRef[];
}

/** What a Lambda SQS event source mapping needs on its queue. */
export const QUEUE_CONSUME_ACTIONS = ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:GetQueueAttributes'];
/** What a Lambda DynamoDB stream event source mapping needs on its stream. */
export const STREAM_READ_ACTIONS = ['dynamodb:DescribeStream', 'dynamodb:GetRecords', 'dynamodb:GetShardIterator'];

/**
 * The IAM permissions `name` needs, from its declaration (xtask's
 * `StackSpec::permissions`, which the SAM template is written from): its
 * log group; the queues and streams its mappings read, and a stream
 * mapping's failure destination; its tables at their access levels; its
 * bucket prefixes; the queues it sends to.
 */
export function permissions(spec: StackSpec, name: string): Permission[] {
  const f = spec.functions[name];
  const mine = spec.mappings.filter((m) => m.function === name);
  const out: Permission[] = [{ sid: 'Logs', actions: ['logs:CreateLogStream', 'logs:PutLogEvents'], resources: [{ logGroup: true }] }];
  const consumed = mine.filter((m) => isQueueSource(m.source)).map((m) => ({ queue: (m.source as { queue: string }).queue }));
  if (consumed.length > 0) out.push({ sid: 'ConsumeQueues', actions: QUEUE_CONSUME_ACTIONS, resources: consumed });
  const streams = mine.filter((m) => !isQueueSource(m.source));
  if (streams.length > 0) {
    out.push({ sid: 'ReadStreams', actions: STREAM_READ_ACTIONS, resources: streams.map((m) => ({ stream: (m.source as { table: string }).table })) });
    // ListStreams has no resource type: IAM accepts only `*`. It lists stream ARNs, no data.
    out.push({ sid: 'ListStreams', actions: ['dynamodb:ListStreams'], resources: [{ any: true }] });
    const failures = [...new Set(streams.filter((m) => m.onFailure).map((m) => m.onFailure!.queue))].sort();
    if (failures.length > 0) out.push({ sid: 'FailureDestinations', actions: ['sqs:SendMessage'], resources: failures.map((queue) => ({ queue })) });
  }
  if ((f.sendsTo ?? []).length > 0) out.push({ sid: 'SendMessages', actions: ['sqs:SendMessage'], resources: f.sendsTo!.map((queue) => ({ queue })) });
  if ((f.bucket?.read ?? []).length > 0) {
    // GetObjectVersion: notifications of a versioned bucket name the version.
    out.push({ sid: 'ReadObjects', actions: ['s3:GetObject', 's3:GetObjectVersion'], resources: f.bucket!.read!.map((objects) => ({ objects })) });
  }
  if ((f.bucket?.write ?? []).length > 0) {
    out.push({ sid: 'WriteObjects', actions: ['s3:PutObject'], resources: f.bucket!.write!.map((objects) => ({ objects })) });
  }
  for (const [table, level] of sorted(f.tables)) {
    out.push({ sid: `${pascal(table)}Table`, actions: spec.tableAccess[level], resources: [{ table }] });
  }
  return out;
}

/** `s3-ingest` -> `S3Ingest`, `ordersFifo` -> `OrdersFifo`: logical ID stems shared with the SAM template. */
export function pascal(name: string): string {
  return name
    .split(/[-_]/)
    .map((part) => part.charAt(0).toUpperCase() + part.slice(1))
    .join('');
}
