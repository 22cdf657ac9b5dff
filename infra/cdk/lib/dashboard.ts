/**
 * The operations dashboard: alarm states, dead-letter queue depth, stream
 * iterator age, function errors and duration, and the functions' own EMF
 * metrics (shared::telemetry: namespace `StreamProcessor`, dimension
 * `function` = the logical function name such as `sqs-consumer`): records by
 * outcome, DynamoDB requests and per-record duration.
 *
 * The body is plain CloudWatch dashboard JSON, the same the SAM template
 * writes out, so the equivalence test can compare the two widget by widget.
 */
import { Aws, Stack } from 'aws-cdk-lib/core';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sqs from 'aws-cdk-lib/aws-sqs';

/** Namespace of the functions' Embedded Metric Format metrics (shared::telemetry::NAMESPACE). */
export const EMF_NAMESPACE = 'StreamProcessor';
/** The one dimension: the logical function name (`s3-ingest`, ...), not the deployed name. */
export const EMF_FUNCTION_DIMENSION = 'function';
/** Per-invocation counts the functions write, with the label shown: BatchSize summed is records. */
export const EMF_RECORD_METRICS: [string, string][] = [
  ['BatchSize', 'records'],
  ['Applied', 'applied'],
  ['Stale', 'stale'],
  ['Duplicate', 'duplicate'],
  ['Quarantined', 'quarantined'],
  ['Ignored', 'ignored'],
  ['Failed', 'failed'],
];

export interface DashboardRefs {
  /** Function name (package) -> function, sorted by name. */
  functions: [string, lambda.IFunction][];
  /** Label -> queue whose depth means records were given up on. */
  parkedQueues: [string, sqs.IQueue][];
  alarms: cloudwatch.IAlarm[];
  /** The stream consumers, for iterator age. */
  streamFunctions: [string, lambda.IFunction][];
  iteratorAgeThresholdMs: number;
}

type Widget = Record<string, unknown>;

function metricWidget(x: number, y: number, width: number, title: string, metrics: unknown[][], extra: Widget = {}): Widget {
  return {
    type: 'metric',
    x,
    y,
    width,
    height: 6,
    properties: { title, region: Aws.REGION, view: 'timeSeries', stacked: false, period: 60, metrics, ...extra },
  };
}

/**
 * The dashboard body as JSON-able data (tokens for names and ARNs); xtask's
 * SAM generator writes the same (xtask/src/sam.rs `dashboard_body`).
 */
export function dashboardBody(r: DashboardRefs): { widgets: Widget[] } {
  const fnName = (f: lambda.IFunction) => f.functionName;
  const below = 17 + Math.ceil(r.functions.length / 3) * 6;
  const widgets: Widget[] = [
    {
      type: 'text',
      x: 0,
      y: 0,
      width: 24,
      height: 2,
      properties: {
        markdown:
          '## Stream processor\nA dead-letter message or a stream failure means records were given up on: ' +
          'see infra/README.md, "When an alarm fires". Quarantined records are in the state table under `QUARANTINE#`.',
      },
    },
    { type: 'alarm', x: 0, y: 2, width: 24, height: 3, properties: { title: 'Alarms', alarms: r.alarms.map((a) => a.alarmArn) } },
    metricWidget(
      0,
      5,
      12,
      'Dead-letter queue depth (messages given up on)',
      r.parkedQueues.map(([label, q]) => ['AWS/SQS', 'ApproximateNumberOfMessagesVisible', 'QueueName', q.queueName, { label, stat: 'Maximum' }]),
    ),
    metricWidget(
      12,
      5,
      12,
      'Stream iterator age (ms behind the table)',
      r.streamFunctions.map(([name, f]) => ['AWS/Lambda', 'IteratorAge', 'FunctionName', fnName(f), { label: name, stat: 'Maximum' }]),
      { annotations: { horizontal: [{ label: 'alarm', value: r.iteratorAgeThresholdMs }] } },
    ),
    metricWidget(
      0,
      11,
      12,
      'Function errors (failed invocations)',
      r.functions.map(([name, f]) => ['AWS/Lambda', 'Errors', 'FunctionName', fnName(f), { label: name, stat: 'Sum' }]),
    ),
    metricWidget(
      12,
      11,
      12,
      'Function duration (p99, ms)',
      r.functions.map(([name, f]) => ['AWS/Lambda', 'Duration', 'FunctionName', fnName(f), { label: name, stat: 'p99' }]),
    ),
    // Three functions a row.
    ...r.functions.map(([name], i) =>
      metricWidget(
        (i % 3) * 8,
        17 + Math.floor(i / 3) * 6,
        8,
        `${name}: records by outcome`,
        EMF_RECORD_METRICS.map(([metric, label]) => [EMF_NAMESPACE, metric, EMF_FUNCTION_DIMENSION, name, { label, stat: 'Sum' }]),
      ),
    ),
    metricWidget(
      0,
      below,
      12,
      'DynamoDB requests',
      r.functions.map(([name]) => [EMF_NAMESPACE, 'DynamoDBRequests', EMF_FUNCTION_DIMENSION, name, { label: name, stat: 'Sum' }]),
    ),
    metricWidget(
      12,
      below,
      12,
      'Time per record (p99, ms)',
      r.functions.map(([name]) => [EMF_NAMESPACE, 'RecordDuration', EMF_FUNCTION_DIMENSION, name, { label: name, stat: 'p99' }]),
    ),
  ];
  return { widgets };
}

export function addDashboard(stack: Stack, refs: DashboardRefs): cloudwatch.CfnDashboard {
  const dashboard = new cloudwatch.CfnDashboard(stack, 'Dashboard', {
    dashboardName: Aws.STACK_NAME,
    dashboardBody: stack.toJsonString(dashboardBody(refs)),
  });
  dashboard.overrideLogicalId('Dashboard');
  return dashboard;
}
