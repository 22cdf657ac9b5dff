/**
 * Shared by the tests: synthesizing the CDK stack offline, reading the SAM
 * template, and reducing both to one comparable model.
 *
 * The model is a map from logical ID to `{ Type, Properties, DeletionPolicy }`
 * where intrinsic functions are resolved to readable strings (`{stack}` for
 * the stack name, `<Id.Attr>` for `Fn::GetAtt`, `<Id>` for a `Ref`), SAM
 * functions are expanded the way SAM expands them (a function plus one event
 * source mapping per event, named function ID + event name), and IAM policy
 * documents become sorted lists of single permissions. Two definitions that
 * deploy the same stack have equal models.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { App } from 'aws-cdk-lib/core';
import { Template } from 'aws-cdk-lib/assertions';
import * as YAML from 'yaml';
import { buildApp, defaultAssetDir } from '../lib/app';
import { infraDir, isQueueSource, loadSpec, StackSpec, STACK_PLACEHOLDER } from '../lib/spec';
import { StreamProcessorStack } from '../lib/stack';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type Doc = { [key: string]: Json };

// ------------------------------------------------------------------ assets

let assetDirCache: string | undefined;

/**
 * The function binaries to synthesize with: `LAMBDA_ASSET_DIR` (xtask sets
 * it) or else `lambda/` of cargo's target directory, when
 * `cargo lambda build --release` (x86_64 here, `--arm64` for deployment) has
 * produced every declared function's, else a temporary directory of
 * placeholder `bootstrap` files: synth only hashes and copies them, the
 * tests never run them.
 */
export function assetDir(): string {
  if (assetDirCache) return assetDirCache;
  const functions = Object.keys(loadSpec().functions);
  const built = process.env.LAMBDA_ASSET_DIR ?? defaultAssetDir();
  if (functions.every((f) => fs.existsSync(path.join(built, f, 'bootstrap')))) {
    assetDirCache = built;
  } else {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'stream-processor-assets-'));
    for (const f of functions) {
      fs.mkdirSync(path.join(dir, f));
      fs.writeFileSync(path.join(dir, f, 'bootstrap'), `placeholder for ${f}: tests synthesize, never run, this asset\n`);
    }
    process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
    assetDirCache = dir;
  }
  return assetDirCache;
}

export interface Synth {
  app: App;
  stack: StreamProcessorStack;
  template: Template;
  json: Doc;
}

// CDK's built-in CloudFormation schema validation costs seconds of WASM per
// synth; the `cdk synth` step of `cargo xtask test` runs it (as errors, see
// cdk.json), so the in-process synths here skip it.
process.env.CDK_VALIDATION = 'false';

/** Synthesizes the app in-process, as `cdk synth` would, with extra context. */
export function synth(context: Record<string, string> = {}): Synth {
  const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'stream-processor-cdk-out-'));
  process.on('exit', () => fs.rmSync(outdir, { recursive: true, force: true }));
  const app = new App({ outdir, context: { assetDir: assetDir(), ...context } });
  const stack = buildApp(app);
  const template = Template.fromStack(stack);
  return { app, stack, template, json: template.toJSON() as Doc };
}

// --------------------------------------------------------------------- SAM

/** CloudFormation's short-form intrinsic tags, read into their long form. */
const INTRINSICS = [
  'Base64', 'Cidr', 'FindInMap', 'GetAZs', 'ImportValue', 'Join', 'Select', 'Split', 'Sub', 'Transform',
  'And', 'Equals', 'If', 'Not', 'Or',
];
const customTags: YAML.Tags = [
  { tag: '!Ref', resolve: (s: string) => ({ Ref: s }) },
  { tag: '!Condition', resolve: (s: string) => ({ Condition: s }) },
  { tag: '!GetAtt', resolve: (s: string) => ({ 'Fn::GetAtt': [s.slice(0, s.indexOf('.')), s.slice(s.indexOf('.') + 1)] }) },
  { tag: '!GetAtt', collection: 'seq', resolve: (seq: YAML.YAMLSeq) => ({ 'Fn::GetAtt': seq.toJSON() }) } as YAML.CollectionTag,
  ...INTRINSICS.flatMap((name): YAML.Tags => [
    { tag: `!${name}`, resolve: (s: string) => ({ [`Fn::${name}`]: s }) },
    { tag: `!${name}`, collection: 'seq', resolve: (seq: YAML.YAMLSeq) => ({ [`Fn::${name}`]: seq.toJSON() }) } as YAML.CollectionTag,
    { tag: `!${name}`, collection: 'map', resolve: (map: YAML.YAMLMap) => ({ [`Fn::${name}`]: map.toJSON() }) } as YAML.CollectionTag,
  ]),
];

export function samPath(): string {
  return path.join(infraDir(), 'template.yaml');
}

/** The SAM template as JSON, intrinsics in long form. */
export function loadSam(file = samPath()): Doc {
  return YAML.parse(fs.readFileSync(file, 'utf8'), { customTags }) as Doc;
}

/** SAM event properties that become mapping properties of another name. */
const SAM_EVENT_SOURCE = ['Queue', 'Stream'];
/** Function properties SAM consumes itself rather than passing to AWS::Lambda::Function. */
const SAM_ONLY_FUNCTION_PROPS = ['CodeUri', 'Events', 'Policies', 'AutoPublishAlias', 'DeploymentPreference'];

/**
 * The SAM template as the CloudFormation it transforms into, for the parts
 * this stack uses: Globals merged into functions, each function's events as
 * `AWS::Lambda::EventSourceMapping` resources named function ID + event name.
 */
export function expandSam(sam: Doc): Doc {
  const globals = ((sam.Globals as Doc | undefined)?.Function ?? {}) as Doc;
  const out: Doc = {};
  for (const [id, resource] of Object.entries(sam.Resources as Doc) as [string, Doc][]) {
    if (resource.Type !== 'AWS::Serverless::Function') {
      out[id] = resource;
      continue;
    }
    const props = { ...globals, ...(resource.Properties as Doc) };
    const fnProps: Doc = {};
    for (const [k, v] of Object.entries(props)) if (!SAM_ONLY_FUNCTION_PROPS.includes(k)) fnProps[k] = v;
    out[id] = { ...resource, Type: 'AWS::Lambda::Function', Properties: fnProps };
    delete (out[id] as Doc).Metadata;
    for (const [event, def] of Object.entries((props.Events ?? {}) as Doc) as [string, Doc][]) {
      if (def.Type !== 'SQS' && def.Type !== 'DynamoDB') throw new Error(`${id}.${event}: event type ${def.Type} not modelled`);
      const mapping: Doc = { FunctionName: { Ref: id } };
      for (const [k, v] of Object.entries(def.Properties as Doc)) {
        if (SAM_EVENT_SOURCE.includes(k)) mapping.EventSourceArn = v;
        else if (k === 'DestinationConfig') mapping.DestinationConfig = stripDestinationType(v as Doc);
        else mapping[k] = v;
      }
      out[`${id}${event}`] = { Type: 'AWS::Lambda::EventSourceMapping', Properties: mapping };
    }
  }
  return { ...sam, Resources: out };
}

/** SAM's `OnFailure.Type` (SQS/SNS) only picks the policy SAM would generate. */
function stripDestinationType(d: Doc): Doc {
  const onFailure = { ...((d.OnFailure ?? {}) as Doc) };
  delete onFailure.Type;
  return { ...d, OnFailure: onFailure };
}

// ------------------------------------------------------------ the model

export interface Resource {
  Type: string;
  Properties: Json;
  DeletionPolicy: string;
}
export type Model = Record<string, Resource>;

const PSEUDO: Record<string, string> = {
  'AWS::StackName': STACK_PLACEHOLDER,
  'AWS::Partition': '{partition}',
  'AWS::AccountId': '{account}',
  'AWS::Region': '{region}',
  'AWS::URLSuffix': '{urlsuffix}',
};

/** Resolves intrinsics to strings; parameters take their defaults. */
export function resolve(value: Json, params: Record<string, Json> = {}): Json {
  if (Array.isArray(value)) return value.map((v) => resolve(v, params));
  if (value === null || typeof value !== 'object') return value;
  const keys = Object.keys(value);
  if (keys.length === 1) {
    const [k] = keys;
    const arg = value[k];
    if (k === 'Ref') {
      const name = arg as string;
      if (PSEUDO[name]) return PSEUDO[name];
      if (name in params) return params[name];
      return `<${name}>`;
    }
    if (k === 'Fn::GetAtt') {
      const [id, attr] = typeof arg === 'string' ? arg.split(/\.(.*)/) : (arg as string[]);
      return `<${id}.${attr}>`;
    }
    if (k === 'Fn::Join') {
      const [sep, parts] = arg as [string, Json[]];
      return (resolve(parts, params) as Json[]).map((p) => (typeof p === 'string' ? p : JSON.stringify(p))).join(sep);
    }
    if (k === 'Fn::Sub') {
      const [text, vars] = typeof arg === 'string' ? [arg, {}] : (arg as [string, Doc]);
      return text.replace(/\$\{([^}!][^}]*)\}/g, (_m, name: string) => {
        if (name in (vars as Doc)) return String(resolve((vars as Doc)[name], params));
        if (name.includes('.')) return `<${name}>`;
        return String(resolve({ Ref: name }, params));
      });
    }
  }
  const out: Doc = {};
  for (const k of keys) out[k] = resolve(value[k], params);
  return out;
}

/** JSON with object keys sorted, for order-insensitive comparison of maps. */
export function canonical(value: Json): string {
  return JSON.stringify(sortKeys(value));
}
function sortKeys(value: Json): Json {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value === null || typeof value !== 'object') return value;
  const out: Doc = {};
  for (const k of Object.keys(value).sort()) out[k] = sortKeys(value[k]);
  return out;
}

function list(v: Json | undefined): Json[] {
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

/** A policy document as sorted single permissions: `Effect principal action resource condition`. */
export function permissions(doc: Json): string[] {
  const out = new Set<string>();
  for (const s of list((doc as Doc).Statement) as Doc[]) {
    const principals = s.Principal === undefined ? ['-'] : [canonical(s.Principal)];
    const condition = s.Condition === undefined ? '' : ` if ${canonical(s.Condition)}`;
    for (const p of principals)
      for (const a of list(s.Action))
        for (const r of list(s.Resource)) out.add(`${s.Effect} ${p} ${a} ${r}${condition}`);
  }
  return [...out].sort();
}

/** Properties that differ only in how the two tools spell them. */
function normalizeProperties(type: string, props: Doc): Json {
  switch (type) {
    case 'AWS::Lambda::Function': {
      const { Code: _code, ...rest } = props;
      void _code;
      return rest;
    }
    case 'AWS::IAM::Role': {
      const { Policies, AssumeRolePolicyDocument, ...rest } = props;
      const granted = (list(Policies) as Doc[]).flatMap((p) => permissions(p.PolicyDocument));
      return { ...rest, AssumeRole: permissions(AssumeRolePolicyDocument), Permissions: [...new Set(granted)].sort() };
    }
    case 'AWS::SQS::QueuePolicy':
    case 'AWS::S3::BucketPolicy': {
      const { PolicyDocument, ...rest } = props;
      return { ...rest, Permissions: permissions(PolicyDocument) };
    }
    case 'AWS::Lambda::EventSourceMapping': {
      const criteria = props.FilterCriteria as Doc | undefined;
      if (!criteria) return props;
      const filters = (list(criteria.Filters) as Doc[]).map((f) => ({ Pattern: canonical(JSON.parse(f.Pattern as string)) }));
      return { ...props, FilterCriteria: { Filters: filters } };
    }
    case 'AWS::CloudWatch::Dashboard':
      // The body is a JSON string (spaced differently by each tool): compare
      // what it says.
      return { ...props, DashboardBody: JSON.parse(props.DashboardBody as string) as Json };
    default:
      return props;
  }
}

/** The comparable model of a CloudFormation template (expand SAM first). */
export function model(template: Doc): Model {
  const params: Record<string, Json> = {};
  for (const [name, p] of Object.entries((template.Parameters ?? {}) as Doc) as [string, Doc][]) {
    if (p.Default !== undefined) params[name] = p.Default;
  }
  const out: Model = {};
  for (const [id, r] of Object.entries(template.Resources as Doc) as [string, Doc][]) {
    const props = resolve((r.Properties ?? {}) as Json, params) as Doc;
    out[id] = {
      Type: r.Type as string,
      Properties: sortKeys(normalizeProperties(r.Type as string, props)),
      DeletionPolicy: (r.DeletionPolicy as string | undefined) ?? 'Delete',
    };
  }
  return out;
}

/** The stack's outputs, resolved: name -> value. */
export function outputs(template: Doc): Record<string, Json> {
  const out: Record<string, Json> = {};
  for (const [name, o] of Object.entries((template.Outputs ?? {}) as Doc) as [string, Doc][]) out[name] = resolve(o.Value);
  return out;
}

/** Human-readable differences between two models; empty when they match. */
export function diffModels(a: Model, b: Model, aName: string, bName: string): string[] {
  const problems: string[] = [];
  for (const id of Object.keys(a).sort()) {
    if (!b[id]) problems.push(`${id} (${a[id].Type}) is declared in ${aName} but not in ${bName}`);
  }
  for (const id of Object.keys(b).sort()) {
    if (!a[id]) problems.push(`${id} (${b[id].Type}) is declared in ${bName} but not in ${aName}`);
  }
  for (const id of Object.keys(a).sort()) {
    if (!b[id]) continue;
    const [x, y] = [a[id], b[id]];
    if (x.Type !== y.Type) problems.push(`${id}: type ${x.Type} in ${aName}, ${y.Type} in ${bName}`);
    if (x.DeletionPolicy !== y.DeletionPolicy) {
      problems.push(`${id}: DeletionPolicy ${x.DeletionPolicy} in ${aName}, ${y.DeletionPolicy} in ${bName}`);
    }
    const px = x.Properties as Doc;
    const py = y.Properties as Doc;
    for (const k of [...new Set([...Object.keys(px), ...Object.keys(py)])].sort()) {
      if (canonical(px[k] ?? null) !== canonical(py[k] ?? null)) {
        problems.push(`${id}.${k}: ${aName} has ${canonical(px[k] ?? null)}, ${bName} has ${canonical(py[k] ?? null)}`);
      }
    }
  }
  return problems;
}

// --------------------------------------------------- against stack.json

function findByProp(m: Model, type: string, prop: string, value: string): [string, Doc] | undefined {
  const hit = Object.entries(m).find(([, r]) => r.Type === type && (r.Properties as Doc)[prop] === value);
  return hit ? [hit[0], hit[1].Properties as Doc] : undefined;
}

/** A mapping as stack.json states it, keyed the same way for either source. */
export interface MappingView {
  function: string;
  source: Json;
  batchSize?: Json;
  maximumBatchingWindowSeconds?: Json;
  startingPosition?: Json;
  reportBatchItemFailures: boolean;
  bisectBatchOnFunctionError?: Json;
  maximumRetryAttempts?: Json;
  onFailure?: Json;
  filterPatterns?: string[];
  maximumConcurrency?: Json;
  parallelizationFactor?: Json;
}

/** The model's event source mappings in stack.json's terms, sorted. */
export function mappingsOf(m: Model, spec: StackSpec): MappingView[] {
  const queueKeyOf = (ref: Json): string => {
    const id = String(ref).replace(/^<(.*)\.Arn>$/, '$1');
    const name = (m[id]?.Properties as Doc | undefined)?.QueueName;
    const key = Object.entries(spec.queues).find(([, q]) => q.name === name)?.[0];
    return key ?? `unknown queue ${String(ref)}`;
  };
  const tableKeyOf = (ref: Json): string => {
    const id = String(ref).replace(/^<(.*)\.StreamArn>$/, '$1');
    const name = (m[id]?.Properties as Doc | undefined)?.TableName;
    const key = Object.entries(spec.tables).find(([, t]) => t.name === name)?.[0];
    return key ?? `unknown table ${String(ref)}`;
  };
  const functionOf = (ref: Json): string => {
    const id = String(ref).replace(/^<(.*)>$/, '$1');
    const name = String((m[id]?.Properties as Doc | undefined)?.FunctionName);
    return name.startsWith(`${STACK_PLACEHOLDER}-`) ? name.slice(STACK_PLACEHOLDER.length + 1) : `unknown function ${name}`;
  };
  const known = new Set([
    'FunctionName', 'EventSourceArn', 'BatchSize', 'MaximumBatchingWindowInSeconds', 'StartingPosition',
    'FunctionResponseTypes', 'BisectBatchOnFunctionError', 'MaximumRetryAttempts', 'DestinationConfig', 'FilterCriteria',
    'ScalingConfig', 'ParallelizationFactor',
  ]);
  const views: MappingView[] = [];
  for (const [id, r] of Object.entries(m)) {
    if (r.Type !== 'AWS::Lambda::EventSourceMapping') continue;
    const p = r.Properties as Doc;
    const unknown = Object.keys(p).filter((k) => !known.has(k));
    if (unknown.length > 0) throw new Error(`${id}: settings stack.json does not state: ${unknown.join(', ')}`);
    const arn = String(p.EventSourceArn);
    const v: MappingView = {
      function: functionOf(p.FunctionName),
      source: arn.endsWith('.StreamArn>') ? { table: tableKeyOf(arn) } : { queue: queueKeyOf(arn) },
      batchSize: p.BatchSize,
      // Absent is Lambda's default, 0 (the only value a FIFO queue accepts).
      maximumBatchingWindowSeconds: p.MaximumBatchingWindowInSeconds ?? 0,
      startingPosition: p.StartingPosition,
      reportBatchItemFailures: list(p.FunctionResponseTypes).includes('ReportBatchItemFailures'),
      bisectBatchOnFunctionError: p.BisectBatchOnFunctionError,
      maximumRetryAttempts: p.MaximumRetryAttempts,
      onFailure: p.DestinationConfig
        ? { queue: queueKeyOf(((p.DestinationConfig as Doc).OnFailure as Doc).Destination) }
        : undefined,
      filterPatterns: p.FilterCriteria ? (list((p.FilterCriteria as Doc).Filters) as Doc[]).map((f) => String(f.Pattern)) : undefined,
      maximumConcurrency: p.ScalingConfig ? (p.ScalingConfig as Doc).MaximumConcurrency : undefined,
      parallelizationFactor: p.ParallelizationFactor,
    };
    views.push(v);
  }
  return sortViews(views);
}

/** stack.json's mappings in the same shape. */
export function specMappings(spec: StackSpec): MappingView[] {
  return sortViews(
    spec.mappings.map((m) => ({
      ...m,
      // Absent is Lambda's default, 0.
      maximumBatchingWindowSeconds: m.maximumBatchingWindowSeconds ?? 0,
      bisectBatchOnFunctionError: m.bisectBatchOnFunctionError || undefined,
      source: m.source as unknown as Json,
      onFailure: m.onFailure as Json | undefined,
      filterPatterns: m.filterPatterns?.map((p) => canonical(JSON.parse(p))),
    })),
  );
}

function sortViews(views: MappingView[]): MappingView[] {
  const clean = views.map((v) => JSON.parse(canonical(v as unknown as Json)) as MappingView);
  return clean.sort((a, b) => canonical(a as unknown as Json).localeCompare(canonical(b as unknown as Json)));
}

/**
 * The permissions `name` needs by its declaration, in the model's terms
 * (`Allow - <action> <resource>`), worked out here from the rules
 * infra/stack.json documents rather than taken from lib/spec.ts, so the
 * CDK app's grants are checked against a second reading of them: its log
 * group; consume its queues; read its streams (and ListStreams on `*`),
 * send to their failure queues; its tables at their access levels; its
 * bucket prefixes; the queues it sends to.
 */
export function neededPermissions(m: Model, spec: StackSpec, name: string, logGroupArn: string): string[] {
  const f = spec.functions[name];
  const byName = (type: string, prop: string, value: string, attr: string): string => {
    const hit = findByProp(m, type, prop, value);
    return hit ? `<${hit[0]}.${attr}>` : `<no ${type} named ${value}>`;
  };
  const queue = (key: string) => byName('AWS::SQS::Queue', 'QueueName', spec.queues[key].name, 'Arn');
  const table = (key: string, attr = 'Arn') => byName('AWS::DynamoDB::Table', 'TableName', spec.tables[key].name, attr);
  const bucket = findByProp(m, 'AWS::S3::Bucket', 'BucketName', spec.bucket.name)?.[0] ?? 'no bucket';
  const out: string[] = [];
  const allow = (actions: string[], resource: string) => actions.forEach((a) => out.push(`Allow - ${a} ${resource}`));
  allow(['logs:CreateLogStream', 'logs:PutLogEvents'], logGroupArn);
  for (const mp of spec.mappings.filter((mp) => mp.function === name)) {
    if (isQueueSource(mp.source)) {
      allow(['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:GetQueueAttributes'], queue(mp.source.queue));
    } else {
      allow(['dynamodb:DescribeStream', 'dynamodb:GetRecords', 'dynamodb:GetShardIterator'], table(mp.source.table, 'StreamArn'));
      allow(['dynamodb:ListStreams'], '*');
      if (mp.onFailure) allow(['sqs:SendMessage'], queue(mp.onFailure.queue));
    }
  }
  for (const [key, level] of Object.entries(f.tables ?? {})) allow(spec.tableAccess[level], table(key));
  for (const prefix of f.bucket?.read ?? []) allow(['s3:GetObject', 's3:GetObjectVersion'], `<${bucket}.Arn>/${prefix}*`);
  for (const prefix of f.bucket?.write ?? []) allow(['s3:PutObject'], `<${bucket}.Arn>/${prefix}*`);
  for (const key of f.sendsTo ?? []) allow(['sqs:SendMessage'], queue(key));
  return [...new Set(out)].sort();
}

/** Everything in stack.json the model gets wrong; empty when it matches. */
export function specProblems(m: Model, spec: StackSpec): string[] {
  const problems: string[] = [];
  // Functions.
  for (const [name, f] of Object.entries(spec.functions)) {
    const hit = findByProp(m, 'AWS::Lambda::Function', 'FunctionName', `${STACK_PLACEHOLDER}-${name}`);
    if (!hit) {
      problems.push(`function ${name}: no AWS::Lambda::Function named {stack}-${name}`);
      continue;
    }
    const [id, p] = hit;
    if (p.Timeout !== f.timeoutSeconds) problems.push(`${id}: Timeout ${p.Timeout}, stack.json says ${f.timeoutSeconds}`);
    if (p.MemorySize !== f.memoryMiB) problems.push(`${id}: MemorySize ${p.MemorySize}, stack.json says ${f.memoryMiB}`);
    const vars = (((p.Environment ?? {}) as Doc).Variables ?? {}) as Doc;
    const declared = f.environment ?? {};
    for (const [variable, source] of Object.entries(declared)) {
      const value = vars[variable];
      const target = m[String(value ?? '').replace(/^<(.*)>$/, '$1')]?.Properties as Doc | undefined;
      const ok =
        typeof source === 'string'
          ? value === source
          : 'table' in source
            ? target?.TableName === spec.tables[source.table].name
            : target?.QueueName === spec.queues[source.queue].name;
      if (!ok) problems.push(`${id}: ${variable} is ${canonical(value ?? null)}, stack.json says ${canonical(source)}`);
    }
    const extra = Object.keys(vars).filter((v) => !(v in declared));
    if (extra.length > 0) problems.push(`${id}: variables stack.json does not declare: ${extra.join(', ')}`);
    // Its role: exactly the permissions its declaration implies, no fewer
    // (it would fail) and no more (least privilege).
    const roleId = String(p.Role).replace(/^<(.*)\.Arn>$/, '$1');
    const role = m[roleId];
    if (!role || role.Type !== 'AWS::IAM::Role') {
      problems.push(`${id}: its role ${String(p.Role)} is not declared`);
    } else {
      const granted = new Set(((role.Properties as Doc).Permissions ?? []) as string[]);
      const needed = neededPermissions(m, spec, name, `<${String(p.LoggingConfig && (p.LoggingConfig as Doc).LogGroup).replace(/^<(.*)>$/, '$1')}.Arn>`);
      for (const n of needed) if (!granted.has(n)) problems.push(`${roleId} lacks a permission ${name} needs: ${n}`);
      for (const g of granted) if (!needed.includes(g)) problems.push(`${roleId} grants more than ${name}'s declaration implies: ${g}`);
    }
  }
  const functionCount = Object.values(m).filter((r) => r.Type === 'AWS::Lambda::Function').length;
  if (functionCount !== Object.keys(spec.functions).length) {
    problems.push(`${functionCount} functions declared, stack.json has ${Object.keys(spec.functions).length}`);
  }
  // Queues and their dead-letter queues.
  let queueCount = 0;
  for (const [key, q] of Object.entries(spec.queues)) {
    queueCount += q.deadLetterQueue ? 2 : 1;
    const hit = findByProp(m, 'AWS::SQS::Queue', 'QueueName', q.name);
    if (!hit) {
      problems.push(`queue ${key}: no AWS::SQS::Queue named ${q.name}`);
      continue;
    }
    const [id, p] = hit;
    if ((p.FifoQueue ?? false) !== q.fifo) problems.push(`${id}: FifoQueue ${p.FifoQueue}, stack.json says ${q.fifo}`);
    if ((p.ContentBasedDeduplication ?? false) !== (q.contentBasedDeduplication ?? false)) {
      problems.push(`${id}: ContentBasedDeduplication ${p.ContentBasedDeduplication}, stack.json says ${q.contentBasedDeduplication}`);
    }
    if ((p.VisibilityTimeout ?? 30) !== q.visibilityTimeoutSeconds) {
      problems.push(`${id}: VisibilityTimeout ${p.VisibilityTimeout}, stack.json says ${q.visibilityTimeoutSeconds}`);
    }
    const redrive = p.RedrivePolicy as Doc | undefined;
    if (q.deadLetterQueue) {
      const dlq = findByProp(m, 'AWS::SQS::Queue', 'QueueName', q.deadLetterQueue);
      if (!dlq) problems.push(`queue ${key}: no dead-letter queue named ${q.deadLetterQueue}`);
      else if ((dlq[1].FifoQueue ?? false) !== q.fifo) problems.push(`${dlq[0]}: FIFO-ness differs from ${id}`);
      if (!redrive || redrive.deadLetterTargetArn !== `<${dlq?.[0]}.Arn>` || redrive.maxReceiveCount !== q.maxReceiveCount) {
        problems.push(`${id}: RedrivePolicy ${canonical(redrive ?? null)}, stack.json says ${q.deadLetterQueue} after ${q.maxReceiveCount}`);
      }
    } else if (redrive) {
      problems.push(`${id}: has a RedrivePolicy stack.json does not declare`);
    }
    // AWS: a queue's visibility timeout at least six times its consumer's timeout.
    for (const mp of spec.mappings.filter((mp) => 'queue' in mp.source && mp.source.queue === key)) {
      const timeout = spec.functions[mp.function].timeoutSeconds;
      if (q.visibilityTimeoutSeconds < 6 * timeout) {
        problems.push(`queue ${key}: visibility ${q.visibilityTimeoutSeconds}s is under 6x ${mp.function}'s ${timeout}s timeout`);
      }
    }
  }
  const queues = Object.values(m).filter((r) => r.Type === 'AWS::SQS::Queue').length;
  if (queues !== queueCount) problems.push(`${queues} queues declared, stack.json has ${queueCount}`);
  // Tables.
  for (const [key, t] of Object.entries(spec.tables)) {
    const hit = findByProp(m, 'AWS::DynamoDB::Table', 'TableName', t.name);
    if (!hit) {
      problems.push(`table ${key}: no AWS::DynamoDB::Table named ${t.name}`);
      continue;
    }
    const [id, p] = hit;
    const keySchema = canonical(p.KeySchema);
    const wanted = canonical([
      { AttributeName: t.hashKey, KeyType: 'HASH' },
      ...(t.rangeKey ? [{ AttributeName: t.rangeKey, KeyType: 'RANGE' }] : []),
    ]);
    if (keySchema !== wanted) problems.push(`${id}: KeySchema ${keySchema}, stack.json says ${wanted}`);
    const view = ((p.StreamSpecification ?? {}) as Doc).StreamViewType;
    if ((view ?? null) !== (t.streamViewType ?? null)) problems.push(`${id}: stream ${view}, stack.json says ${t.streamViewType}`);
    const ttl = p.TimeToLiveSpecification as Doc | undefined;
    const ttlAttribute = ttl?.Enabled ? ttl.AttributeName : undefined;
    if ((ttlAttribute ?? null) !== (t.ttlAttribute ?? null)) problems.push(`${id}: TTL on ${ttlAttribute}, stack.json says ${t.ttlAttribute}`);
    const pitr = ((p.PointInTimeRecoverySpecification ?? {}) as Doc).PointInTimeRecoveryEnabled ?? false;
    if (pitr !== (t.pointInTimeRecovery ?? false)) problems.push(`${id}: point-in-time recovery ${pitr}, stack.json says ${t.pointInTimeRecovery}`);
  }
  // The bucket and its notifications.
  const bucket = findByProp(m, 'AWS::S3::Bucket', 'BucketName', spec.bucket.name);
  if (!bucket) {
    problems.push(`no AWS::S3::Bucket named ${spec.bucket.name}`);
  } else {
    const configs = (list(((bucket[1].NotificationConfiguration ?? {}) as Doc).QueueConfigurations) as Doc[]).map((c) => {
      const queueId = String(c.Queue).replace(/^<(.*)\.Arn>$/, '$1');
      const name = (m[queueId]?.Properties as Doc | undefined)?.QueueName;
      const rules = list((((c.Filter ?? {}) as Doc).S3Key as Doc | undefined)?.Rules) as Doc[];
      return canonical({
        queue: Object.entries(spec.queues).find(([, q]) => q.name === name)?.[0] ?? `unknown ${String(c.Queue)}`,
        event: c.Event,
        prefix: rules.find((r) => r.Name === 'prefix')?.Value ?? '',
      });
    });
    const wanted = spec.bucket.notifications.flatMap((n) => n.events.map((event) => canonical({ queue: n.queue, event, prefix: n.prefix })));
    if (canonical(configs.sort()) !== canonical(wanted.sort())) {
      problems.push(`${bucket[0]}: notifications ${configs.join(', ')}, stack.json says ${wanted.join(', ')}`);
    }
  }
  // Event source mappings.
  try {
    const got = mappingsOf(m, spec);
    const want = specMappings(spec);
    for (const g of got) {
      if (!want.some((w) => canonical(w as unknown as Json) === canonical(g as unknown as Json))) {
        problems.push(`mapping not in stack.json: ${canonical(g as unknown as Json)}`);
      }
    }
    for (const w of want) {
      if (!got.some((g) => canonical(w as unknown as Json) === canonical(g as unknown as Json))) {
        problems.push(`stack.json mapping not declared: ${canonical(w as unknown as Json)}`);
      }
    }
  } catch (e) {
    problems.push((e as Error).message);
  }
  return problems;
}
