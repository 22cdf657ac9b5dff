/**
 * The stream processor's stack: the same resources, names and settings as
 * `infra/template.yaml` (SAM), built from `infra/stack.json`.
 *
 * Logical IDs are overridden to the SAM template's, so the two synthesized
 * templates can be compared resource by resource (test/equivalence.test.ts).
 * Everything is environment-agnostic: names are tokens of the stack name, no
 * lookups, so `cdk synth` needs no credentials and no network.
 */
import * as path from 'path';
import { Aws, CfnOutput, CfnResource, Duration, RemovalPolicy, Stack, StackProps, Validations } from 'aws-cdk-lib/core';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cloudwatchActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct, IConstruct } from 'constructs';
import { isQueueSource, MappingSpec, QueueSpec, StackSpec, STACK_PLACEHOLDER } from './spec';
import { addDashboard } from './dashboard';

export interface StreamProcessorProps extends StackProps {
  spec: StackSpec;
  /** Directory holding `<function>/bootstrap`, as `cargo lambda build --release` writes `target/lambda`. */
  assetDir: string;
  /** The binaries' instruction set; they must have been built for it. */
  architecture: lambda.Architecture;
}

/** Days CloudWatch keeps function logs. */
export const LOG_RETENTION = logs.RetentionDays.ONE_MONTH;
/** Days a dead-letter queue keeps a message: SQS's maximum, time to investigate. */
export const DLQ_RETENTION = Duration.days(14);

/** Alarm when the stream consumer is this far behind (ms). */
export const ITERATOR_AGE_ALARM_MS = 60_000;

/** The actions each function needs on the tables (TransactWriteItems is authorised per item action). */
export const STATE_TABLE_ACTIONS = [
  'dynamodb:GetItem',
  'dynamodb:PutItem',
  'dynamodb:UpdateItem',
  'dynamodb:BatchGetItem',
  'dynamodb:BatchWriteItem',
  'dynamodb:Query',
  'dynamodb:ConditionCheckItem',
];
export const IDEMPOTENCY_TABLE_ACTIONS = ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem'];
/** What a Lambda SQS event source mapping needs on its queue. */
export const QUEUE_CONSUME_ACTIONS = ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:GetQueueAttributes'];
/** What a Lambda DynamoDB stream event source mapping needs on its stream. */
export const STREAM_READ_ACTIONS = ['dynamodb:DescribeStream', 'dynamodb:GetRecords', 'dynamodb:GetShardIterator'];

/** `s3-ingest` -> `S3Ingest`, `ordersFifo` -> `OrdersFifo`: logical ID stems shared with the SAM template. */
export function pascal(name: string): string {
  return name
    .split(/[-_]/)
    .map((part) => part.charAt(0).toUpperCase() + part.slice(1))
    .join('');
}

/** A stack.json name with `{stack}` replaced by the stack name token. */
function physicalName(template: string): string {
  return template.split(STACK_PLACEHOLDER).join(Aws.STACK_NAME);
}

/** Gives the L1 resource behind `c` the logical ID the SAM template uses. */
function logicalId(c: IConstruct, id: string): void {
  (c.node.defaultChild as CfnResource).overrideLogicalId(id);
}

export class StreamProcessorStack extends Stack {
  readonly bucket: s3.Bucket;
  readonly queues: Record<string, sqs.Queue> = {};
  readonly deadLetterQueues: Record<string, sqs.Queue> = {};
  readonly tables: Record<string, dynamodb.Table> = {};
  readonly functions: Record<string, lambda.Function> = {};
  private readonly stackSpec: StackSpec;
  readonly alarms: cloudwatch.Alarm[] = [];
  alarmTopic!: sns.Topic;
  /** Label -> queue for the dead-letter queues and the stream's failure destination. */
  private readonly parkedQueues: [string, sqs.Queue][] = [];

  constructor(scope: Construct, id: string, props: StreamProcessorProps) {
    super(scope, id, props);
    const { spec } = props;
    this.stackSpec = spec;

    // ------------------------------------------------------------ queues
    // Dead-letter queues first: the main queues' redrive policies name them.
    for (const [key, q] of Object.entries(spec.queues)) {
      let deadLetterQueue: sqs.DeadLetterQueue | undefined;
      if (q.deadLetterQueue) {
        const dlq = new sqs.Queue(this, `${pascal(key)}DeadLetterQueue`, {
          queueName: physicalName(q.deadLetterQueue),
          fifo: q.fifo || undefined,
          retentionPeriod: DLQ_RETENTION,
          encryption: sqs.QueueEncryption.SQS_MANAGED,
          enforceSSL: true,
        });
        logicalId(dlq, `${pascal(key)}DeadLetterQueue`);
        logicalId(queuePolicy(dlq), `${pascal(key)}DeadLetterQueuePolicy`);
        this.deadLetterQueues[key] = dlq;
        deadLetterQueue = { queue: dlq, maxReceiveCount: q.maxReceiveCount! };
      }
      const queue = new sqs.Queue(this, `${pascal(key)}Queue`, {
        queueName: physicalName(q.name),
        fifo: q.fifo || undefined,
        contentBasedDeduplication: q.contentBasedDeduplication,
        visibilityTimeout: Duration.seconds(q.visibilityTimeoutSeconds),
        // The stream-failures queue is itself a dead-letter destination.
        retentionPeriod: q.deadLetterQueue ? undefined : DLQ_RETENTION,
        encryption: sqs.QueueEncryption.SQS_MANAGED,
        enforceSSL: true,
        deadLetterQueue,
      });
      logicalId(queue, `${pascal(key)}Queue`);
      logicalId(queuePolicy(queue), `${pascal(key)}QueuePolicy`);
      this.queues[key] = queue;
    }

    // ------------------------------------------------------------ tables
    for (const [key, t] of Object.entries(spec.tables)) {
      const table = new dynamodb.Table(this, `${pascal(key)}Table`, {
        tableName: physicalName(t.name),
        partitionKey: { name: t.hashKey, type: dynamodb.AttributeType.STRING },
        sortKey: t.rangeKey ? { name: t.rangeKey, type: dynamodb.AttributeType.STRING } : undefined,
        billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
        stream: t.streamViewType ? (t.streamViewType as dynamodb.StreamViewType) : undefined,
        pointInTimeRecoverySpecification: t.pointInTimeRecovery ? { pointInTimeRecoveryEnabled: true } : undefined,
        timeToLiveAttribute: t.ttlAttribute,
        // Encrypted at rest with the AWS owned key: DynamoDB's default, no KMS charge.
        encryption: dynamodb.TableEncryption.DEFAULT,
        removalPolicy: RemovalPolicy.RETAIN,
      });
      logicalId(table, `${pascal(key)}Table`);
      this.tables[key] = table;
    }

    // ------------------------------------------------------------ bucket
    this.bucket = new s3.Bucket(this, 'UploadsBucket', {
      bucketName: physicalName(spec.bucket.name),
      encryption: s3.BucketEncryption.S3_MANAGED,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      enforceSSL: true,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    logicalId(this.bucket, 'UploadsBucket');
    logicalId(this.bucket.policy!, 'UploadsBucketPolicy');
    this.addBucketNotifications(spec);

    // --------------------------------------------------------- functions
    for (const [name, f] of Object.entries(spec.functions)) {
      this.addFunction(spec, name, f.timeoutSeconds, f.memoryMiB, props);
    }
    spec.mappings.forEach((m) => this.addMapping(m));

    // ------------------------------------------------ alarms, dashboard
    this.addAlarms(spec);
    const stream = spec.mappings.find((m) => !isQueueSource(m.source));
    const dashboard = addDashboard(this, {
      functions: Object.entries(this.functions),
      parkedQueues: this.parkedQueues,
      alarms: this.alarms,
      streamFunction: this.functions[stream!.function],
      iteratorAgeThresholdMs: ITERATOR_AGE_ALARM_MS,
    });

    // ------------------------------------------------------------ outputs
    new CfnOutput(this, 'DashboardUrl', {
      description: 'The operations dashboard.',
      value: `https://${Aws.REGION}.console.aws.amazon.com/cloudwatch/home?region=${Aws.REGION}#dashboards/dashboard/${dashboard.ref}`,
    });
    new CfnOutput(this, 'AlarmTopicArn', {
      description: 'Subscribe to this topic to be notified when an alarm fires.',
      value: this.alarmTopic.topicArn,
    });
    new CfnOutput(this, 'UploadsBucketName', {
      description: 'Upload order files (NDJSON or CSV, optionally gzipped) under incoming/.',
      value: this.bucket.bucketName,
    });
    new CfnOutput(this, 'IngestQueueUrl', { value: this.queues.ingest.queueUrl });
    new CfnOutput(this, 'OrdersQueueUrl', {
      description: 'Send order events here (standard queue).',
      value: this.queues.orders.queueUrl,
    });
    new CfnOutput(this, 'OrdersFifoQueueUrl', {
      description: 'Send order events here (FIFO queue; use orderId as the message group).',
      value: this.queues.ordersFifo.queueUrl,
    });
    new CfnOutput(this, 'StreamFailuresQueueUrl', { value: this.queues.streamFailures.queueUrl });
    new CfnOutput(this, 'StateTableName', { value: this.tables.state.tableName });
    new CfnOutput(this, 'IdempotencyTableName', { value: this.tables.idempotency.tableName });

    // Context `acknowledgeNagFindings=false` drops the acknowledgements, to
    // list what they hide (the nag test checks none is stale).
    if (this.node.tryGetContext('acknowledgeNagFindings') !== 'false') this.suppressJustifiedFindings(spec);
  }

  /**
   * S3 -> SQS notifications as a plain bucket property. The L2
   * `addEventNotification` would deploy a custom resource (a Lambda function
   * with `s3:PutBucketNotification` on `*`) that the SAM stack does not need.
   */
  private addBucketNotifications(spec: StackSpec): void {
    const cfnBucket = this.bucket.node.defaultChild as s3.CfnBucket;
    cfnBucket.notificationConfiguration = {
      queueConfigurations: spec.bucket.notifications.flatMap((n) =>
        n.events.map((event) => ({
          event,
          queue: this.queues[n.queue].queueArn,
          filter: { s3Key: { rules: [{ name: 'prefix', value: n.prefix }] } },
        })),
      ),
    };
    for (const n of spec.bucket.notifications) {
      const queue = this.queues[n.queue];
      queue.addToResourcePolicy(
        new iam.PolicyStatement({
          sid: 'AllowUploadsBucketNotifications',
          principals: [new iam.ServicePrincipal('s3.amazonaws.com')],
          actions: ['sqs:SendMessage'],
          resources: [queue.queueArn],
          conditions: {
            // Built from the name, not the bucket, to avoid a dependency cycle.
            ArnEquals: { 'aws:SourceArn': `arn:${Aws.PARTITION}:s3:::${physicalName(spec.bucket.name)}` },
            StringEquals: { 'aws:SourceAccount': Aws.ACCOUNT_ID },
          },
        }),
      );
      // S3 validates the target when the bucket is created: the policy first.
      this.bucket.node.addDependency(queuePolicy(queue));
    }
  }

  private addFunction(spec: StackSpec, name: string, timeoutSeconds: number, memoryMiB: number, props: StreamProcessorProps): void {
    const stem = pascal(name);
    const logGroup = new logs.LogGroup(this, `${stem}LogGroup`, {
      logGroupName: `/aws/lambda/${physicalName(`${STACK_PLACEHOLDER}-${name}`)}`,
      retention: LOG_RETENTION,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    logicalId(logGroup, `${stem}LogGroup`);

    const statements: iam.PolicyStatement[] = [
      statement('Logs', ['logs:CreateLogStream', 'logs:PutLogEvents'], [logGroup.logGroupArn]),
    ];
    const mine = spec.mappings.filter((m) => m.function === name);
    const consumed = mine.filter((m) => isQueueSource(m.source)).map((m) => this.sourceQueue(m).queueArn);
    if (consumed.length > 0) statements.push(statement('ConsumeQueues', QUEUE_CONSUME_ACTIONS, consumed));
    for (const m of mine.filter((m) => !isQueueSource(m.source))) {
      const table = this.tables[(m.source as { table: string }).table];
      statements.push(statement('ReadStream', STREAM_READ_ACTIONS, [table.tableStreamArn!]));
      // ListStreams has no resource type: IAM accepts only `*`. It lists stream ARNs, no data.
      statements.push(statement('ListStreams', ['dynamodb:ListStreams'], ['*']));
      if (m.onFailure) {
        statements.push(statement('FailureDestination', ['sqs:SendMessage'], [this.queues[m.onFailure.queue].queueArn]));
      }
    }
    const environment: Record<string, string> = {};
    for (const [variable, source] of Object.entries(spec.environment)) {
      environment[variable] =
        typeof source === 'string' ? source : 'table' in source ? this.tables[source.table].tableName : this.queues[source.queue].queueUrl;
    }
    if (name === 's3-ingest') {
      // Objects arrive through the notification queues; unfinished objects are
      // handed on to the same queue (INGEST_QUEUE_URL) to resume there.
      for (const n of spec.bucket.notifications) {
        const queue = this.queues[n.queue];
        statements.push(statement('ContinueOnIngestQueue', ['sqs:SendMessage'], [queue.queueArn]));
        // GetObjectVersion: notifications of a versioned bucket name the version.
        statements.push(statement('ReadUploads', ['s3:GetObject', 's3:GetObjectVersion'], [this.bucket.arnForObjects(`${n.prefix}*`)]));
      }
      statements.push(statement('WriteRejectReports', ['s3:PutObject'], [this.bucket.arnForObjects(`${spec.bucket.rejectsPrefix}*`)]));
    }
    statements.push(statement('StateTable', STATE_TABLE_ACTIONS, [this.tables.state.tableArn]));
    statements.push(statement('IdempotencyTable', IDEMPOTENCY_TABLE_ACTIONS, [this.tables.idempotency.tableArn]));

    // An explicit role with one inline policy: no AWS managed policy (those
    // grant logs and queue/stream access on `*`), nothing added later.
    const role = new iam.Role(this, `${stem}Role`, {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      inlinePolicies: { [name]: new iam.PolicyDocument({ statements }) },
    });
    logicalId(role, `${stem}Role`);

    const fn = new lambda.Function(this, `${stem}Function`, {
      functionName: physicalName(`${STACK_PLACEHOLDER}-${name}`),
      description: FUNCTION_DESCRIPTIONS[name],
      code: lambda.Code.fromAsset(path.join(props.assetDir, name)),
      handler: 'bootstrap',
      runtime: lambda.Runtime.PROVIDED_AL2023,
      architecture: props.architecture,
      timeout: Duration.seconds(timeoutSeconds),
      memorySize: memoryMiB,
      role,
      environment,
      logGroup,
      loggingFormat: lambda.LoggingFormat.JSON,
    });
    logicalId(fn, `${stem}Function`);
    this.functions[name] = fn;
  }

  private spec(queueKey: string): QueueSpec {
    return this.stackSpec.queues[queueKey];
  }

  private sourceQueue(m: MappingSpec): sqs.Queue {
    return this.queues[(m.source as { queue: string }).queue];
  }

  /** One event source mapping, named as SAM names it: function ID + event name. */
  private addMapping(m: MappingSpec): void {
    const fn = this.functions[m.function];
    const event = isQueueSource(m.source) ? `From${pascal(m.source.queue)}` : `From${pascal(m.source.table)}Stream`;
    const id = `${pascal(m.function)}Function${event}`;
    const eventSourceArn = isQueueSource(m.source) ? this.sourceQueue(m).queueArn : this.tables[m.source.table].tableStreamArn!;
    const failures = m.onFailure ? this.queues[m.onFailure.queue] : undefined;
    // Lambda rejects any batching window on a FIFO queue, even 0 (its only value there).
    const fifo = isQueueSource(m.source) && this.spec(m.source.queue).fifo;
    if (fifo && m.maximumBatchingWindowSeconds !== 0) {
      throw new Error(`stack.json: a batching window is not supported for FIFO queue ${JSON.stringify(m.source)}`);
    }
    const mapping = new lambda.EventSourceMapping(this, id, {
      target: fn,
      eventSourceArn,
      batchSize: m.batchSize,
      maxBatchingWindow: fifo ? undefined : Duration.seconds(m.maximumBatchingWindowSeconds),
      reportBatchItemFailures: m.reportBatchItemFailures,
      startingPosition: m.startingPosition ? (m.startingPosition as lambda.StartingPosition) : undefined,
      bisectBatchOnError: m.bisectBatchOnFunctionError,
      retryAttempts: m.maximumRetryAttempts,
      // The role already allows sqs:SendMessage on this queue; `SqsDlq` would
      // add a second, broader grant.
      onFailure: failures ? { bind: () => ({ destination: failures.queueArn }) } : undefined,
      // Lambda takes each filter as a JSON string: pass stack.json's as they are.
      filters: m.filterPatterns?.map((pattern) => ({ pattern })),
    });
    logicalId(mapping, id);
  }

  private addAlarms(spec: StackSpec): void {
    // Every alarm notifies this topic: subscribe email, chat or paging to it.
    // Unencrypted: CloudWatch cannot publish to a topic under the aws/sns key,
    // and alarm notifications carry no record data.
    this.alarmTopic = new sns.Topic(this, 'AlarmTopic', { topicName: physicalName(`${STACK_PLACEHOLDER}-alarms`), enforceSSL: true });
    logicalId(this.alarmTopic, 'AlarmTopic');
    this.alarmTopic.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'AllowAlarmsOfThisAccount',
        principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
        actions: ['sns:Publish'],
        resources: [this.alarmTopic.topicArn],
        conditions: {
          ArnLike: { 'aws:SourceArn': `arn:${Aws.PARTITION}:cloudwatch:${Aws.REGION}:${Aws.ACCOUNT_ID}:alarm:*` },
          StringEquals: { 'aws:SourceAccount': Aws.ACCOUNT_ID },
        },
      }),
    );
    const topicPolicy = this.alarmTopic.node.tryFindChild('Policy');
    if (!(topicPolicy instanceof sns.TopicPolicy)) throw new Error('the alarm topic has no topic policy');
    logicalId(topicPolicy, 'AlarmTopicPolicy');
    const notify = new cloudwatchActions.SnsAction(this.alarmTopic);

    // Depth of every dead-letter queue, and of the stream's on-failure
    // destination: [alarm ID, queue key, stack.json name, queue].
    const label = (name: string) => name.replace(`${STACK_PLACEHOLDER}-`, '');
    const parked: [string, string, string, sqs.Queue][] = [
      ...Object.entries(this.deadLetterQueues).map(([key, q]): [string, string, string, sqs.Queue] => [
        `${pascal(key)}DeadLetterQueueAlarm`,
        key,
        label(spec.queues[key].deadLetterQueue!),
        q,
      ]),
      ...spec.mappings
        .filter((m) => m.onFailure)
        .map((m): [string, string, string, sqs.Queue] => {
          const key = m.onFailure!.queue;
          return [`${pascal(key)}QueueAlarm`, key, label(spec.queues[key].name), this.queues[key]];
        }),
    ];
    for (const [id, key, name, queue] of parked) {
      this.parkedQueues.push([name, queue]);
      const alarm = new cloudwatch.Alarm(this, id, {
        alarmDescription: DLQ_ALARM_DESCRIPTIONS[pascal(key)],
        metric: new cloudwatch.Metric({
          namespace: 'AWS/SQS',
          metricName: 'ApproximateNumberOfMessagesVisible',
          dimensionsMap: { QueueName: queue.queueName },
          statistic: 'Maximum',
          period: Duration.minutes(5),
        }),
        evaluationPeriods: 1,
        threshold: 1,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });
      logicalId(alarm, id);
      alarm.addAlarmAction(notify);
      this.alarms.push(alarm);
    }
    for (const [name, fn] of Object.entries(this.functions)) {
      const id = `${pascal(name)}ErrorsAlarm`;
      const alarm = new cloudwatch.Alarm(this, id, {
        alarmDescription: `${name} failed whole invocations (not per-record failures).`,
        metric: fn.metricErrors({ statistic: 'Sum', period: Duration.minutes(5) }),
        evaluationPeriods: 1,
        threshold: 1,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });
      logicalId(alarm, id);
      alarm.addAlarmAction(notify);
      this.alarms.push(alarm);
    }
    for (const m of spec.mappings.filter((m) => !isQueueSource(m.source))) {
      const alarm = new cloudwatch.Alarm(this, 'StreamIteratorAgeAlarm', {
        alarmDescription: "The aggregator is more than a minute behind the state table's stream.",
        metric: this.functions[m.function].metric('IteratorAge', { statistic: 'Maximum', period: Duration.minutes(1) }),
        evaluationPeriods: 5,
        threshold: ITERATOR_AGE_ALARM_MS,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });
      logicalId(alarm, 'StreamIteratorAgeAlarm');
      alarm.addAlarmAction(notify);
      this.alarms.push(alarm);
    }
  }

  /**
   * cdk-nag AwsSolutions findings that are deliberate, each with its reason
   * (CDK's `Validations.acknowledge`, which cdk-nag v3 reads).
   */
  private suppressJustifiedFindings(spec: StackSpec): void {
    Validations.of(this.bucket).acknowledge({
      id: 'AwsSolutions-S1',
      reason:
        'Server access logs would need a second bucket and cost per request; uploads are audited through the ingest ' +
        'queue, the object manifests in the state table, and CloudTrail data events where an account enables them.',
    });
    for (const m of spec.mappings.filter((m) => m.onFailure)) {
      Validations.of(this.queues[m.onFailure!.queue]).acknowledge({
        id: 'AwsSolutions-SQS3',
        reason:
          'This queue is itself a dead-letter destination (the stream mapping sends the batches it gave up on here); ' +
          'a DLQ of a DLQ would only move the same messages once more. Its depth is alarmed.',
      });
    }
    for (const [key, t] of Object.entries(spec.tables)) {
      if (t.pointInTimeRecovery) continue;
      Validations.of(this.tables[key]).acknowledge({
        id: 'AwsSolutions-DDB3',
        reason:
          'Idempotency markers are short-lived (TTL) and re-creatable: restoring them to a point in time would only ' +
          'resurrect expired locks. The state table, which holds the data, has point-in-time recovery.',
      });
    }
    for (const [name, fn] of Object.entries(this.functions)) {
      const role = fn.role!;
      if (spec.mappings.some((m) => m.function === name && !isQueueSource(m.source))) {
        Validations.of(role).acknowledge({
          id: 'AwsSolutions-IAM5[Resource::*]',
          reason: 'dynamodb:ListStreams has no resource type, so IAM accepts it only on `*`; it lists stream ARNs, no data.',
        });
      }
      if (name === 's3-ingest') {
        for (const prefix of [...spec.bucket.notifications.map((n) => n.prefix), spec.bucket.rejectsPrefix]) {
          Validations.of(role).acknowledge({
            id: `AwsSolutions-IAM5[Resource::<UploadsBucket.Arn>/${prefix}*]`,
            reason: `Objects under ${prefix} only: uploads are read from the notification prefix, reject reports written under the rejects prefix.`,
          });
        }
      }
    }
  }
}

/** The queue policy that `enforceSSL` created (the L2 keeps it private). */
function queuePolicy(queue: sqs.Queue): sqs.QueuePolicy {
  const policy = queue.node.tryFindChild('Policy');
  if (!(policy instanceof sqs.QueuePolicy)) throw new Error(`${queue.node.path} has no queue policy`);
  return policy;
}

function statement(sid: string, actions: string[], resources: string[]): iam.PolicyStatement {
  return new iam.PolicyStatement({ sid, effect: iam.Effect.ALLOW, actions, resources });
}

const FUNCTION_DESCRIPTIONS: Record<string, string> = {
  's3-ingest': 'S3 ObjectCreated notifications (via the ingest queue) -> orders',
  'sqs-consumer': 'SQS order events (standard and FIFO queues) -> orders',
  'stream-aggregator': 'DynamoDB stream of the state table -> customer totals',
};

/** Keyed by the alarm ID's stem (pascal-cased queue key). */
const DLQ_ALARM_DESCRIPTIONS: Record<string, string> = {
  Ingest: 'Objects the ingest function gave up on are in the ingest DLQ.',
  Orders: 'Order messages the consumer gave up on are in the orders DLQ.',
  OrdersFifo: 'Order messages the consumer gave up on are in the FIFO orders DLQ.',
  StreamFailures: 'The stream mapping gave up on a batch; its shard and sequence range are in the stream-failures queue.',
};
