/**
 * `infra/stack.json`: the one definition of the stack's names and settings.
 * The CDK app builds from it directly; the tests check the SAM template
 * against it. `{stack}` in a name stands for the CloudFormation stack name.
 */
import * as fs from 'fs';
import * as path from 'path';

export interface FunctionSpec {
  timeoutSeconds: number;
  memoryMiB: number;
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
}

export interface TableSpec {
  name: string;
  hashKey: string;
  rangeKey?: string;
  streamViewType?: string;
  ttlAttribute?: string;
  pointInTimeRecovery?: boolean;
}

export type EnvSource = { table: string } | { queue: string } | string;

export type SourceSpec = { queue: string } | { table: string };

export interface MappingSpec {
  function: string;
  source: SourceSpec;
  batchSize: number;
  maximumBatchingWindowSeconds: number;
  startingPosition?: string;
  reportBatchItemFailures: boolean;
  bisectBatchOnFunctionError?: boolean;
  maximumRetryAttempts?: number;
  onFailure?: { queue: string };
  filterPatterns?: string[];
}

export interface StackSpec {
  stackName: string;
  region: string;
  functions: Record<string, FunctionSpec>;
  bucket: { name: string; notifications: NotificationSpec[]; rejectsPrefix: string };
  queues: Record<string, QueueSpec>;
  tables: Record<string, TableSpec>;
  mappings: MappingSpec[];
  /** Every function gets every variable: a table's name, a queue's URL, or a literal. */
  environment: Record<string, EnvSource>;
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
