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
import { isQueueSource, MappingSpec, pascal, permissions, QueueSpec, ResourceRef, sorted, StackSpec, STACK_PLACEHOLDER } from './spec';
import { addDashboard } from './dashboard';

export { pascal } from './spec';

export interface StreamProcessorProps extends StackProps {
  /** The deployed part of stack.json (`deployedSpec`). */
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

/** Alarm when a stream consumer is this far behind (ms). */
export const ITERATOR_AGE_ALARM_MS = 60_000;

/** A stack.json name with `{stack}` replaced by the stack name token. */
function physicalName(template: string): string {
  return template.split(STACK_PLACEHOLDER).join(Aws.STACK_NAME);
}

/** A queue's name without the stack's: `{stack}-orders-dlq` -> `orders-dlq`. */
function label(name: string): string {
  return name.replace(`${STACK_PLACEHOLDER}-`, '');
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
  private readonly logGroups: Record<string, logs.LogGroup> = {};
  private readonly stackSpec: StackSpec;
  readonly alarms: cloudwatch.Alarm[] = [];
  alarmTopic!: sns.Topic;
  /** Label -> queue for the dead-letter queues and the stream mappings' failure destinations. */
  private readonly parkedQueues: [string, sqs.Queue][] = [];

  constructor(scope: Construct, id: string, props: StreamProcessorProps) {
    super(scope, id, props);
    const { spec } = props;
    this.stackSpec = spec;

    // ------------------------------------------------------------ queues
    // Dead-letter queues first: the main queues' redrive policies name them.
    for (const [key, q] of sorted(spec.queues)) {
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
        contentBasedDeduplication: q.contentBasedDeduplication || undefined,
        visibilityTimeout: Duration.seconds(q.visibilityTimeoutSeconds),
        // A queue without a dead-letter queue is itself a destination of
        // what was given up on (a stream mapping's failures).
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
    for (const [key, t] of sorted(spec.tables)) {
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
    for (const [name] of sorted(spec.functions)) this.addFunction(spec, name, props);
    spec.mappings.forEach((m) => this.addMapping(m));

    // ------------------------------------------------ alarms, dashboard
    this.addAlarms(spec);
    const streamFunctions = [...new Set(spec.mappings.filter((m) => !isQueueSource(m.source)).map((m) => m.function))];
    const dashboard = addDashboard(this, {
      functions: sorted(this.functions),
      parkedQueues: this.parkedQueues,
      alarms: this.alarms,
      streamFunctions: streamFunctions.map((f): [string, lambda.IFunction] => [f, this.functions[f]]),
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
    for (const [key, q] of sorted(spec.queues)) {
      new CfnOutput(this, `${pascal(key)}QueueUrl`, { description: q.description, value: this.queues[key].queueUrl });
    }
    for (const [key] of sorted(spec.tables)) {
      new CfnOutput(this, `${pascal(key)}TableName`, { value: this.tables[key].tableName });
    }

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
    if (spec.bucket.notifications.length === 0) return;
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
    for (const key of [...new Set(spec.bucket.notifications.map((n) => n.queue))]) {
      const queue = this.queues[key];
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

  /** The ARN a declared permission is on. */
  private arnOf(name: string, r: ResourceRef): string {
    if ('logGroup' in r) return this.logGroups[name].logGroupArn;
    if ('queue' in r) return this.queues[r.queue].queueArn;
    if ('table' in r) return this.tables[r.table].tableArn;
    if ('stream' in r) return this.tables[r.stream].tableStreamArn!;
    if ('objects' in r) return this.bucket.arnForObjects(`${r.objects}*`);
    return '*';
  }

  private addFunction(spec: StackSpec, name: string, props: StreamProcessorProps): void {
    const f = spec.functions[name];
    const stem = pascal(name);
    const logGroup = new logs.LogGroup(this, `${stem}LogGroup`, {
      logGroupName: `/aws/lambda/${physicalName(`${STACK_PLACEHOLDER}-${name}`)}`,
      retention: LOG_RETENTION,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    logicalId(logGroup, `${stem}LogGroup`);
    this.logGroups[name] = logGroup;

    // Exactly what the declaration implies (lib/spec.ts `permissions`).
    const statements = permissions(spec, name).map((p) => statement(p.sid, p.actions, p.resources.map((r) => this.arnOf(name, r))));
    const environment: Record<string, string> = {};
    for (const [variable, source] of sorted(f.environment)) {
      environment[variable] =
        typeof source === 'string' ? source : 'table' in source ? this.tables[source.table].tableName : this.queues[source.queue].queueUrl;
    }

    // An explicit role with one inline policy: no AWS managed policy (those
    // grant logs and queue/stream access on `*`), nothing added later.
    const role = new iam.Role(this, `${stem}Role`, {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      inlinePolicies: { [name]: new iam.PolicyDocument({ statements }) },
    });
    logicalId(role, `${stem}Role`);

    const fn = new lambda.Function(this, `${stem}Function`, {
      functionName: physicalName(`${STACK_PLACEHOLDER}-${name}`),
      description: f.description,
      code: lambda.Code.fromAsset(path.join(props.assetDir, name)),
      handler: 'bootstrap',
      runtime: lambda.Runtime.PROVIDED_AL2023,
      architecture: props.architecture,
      timeout: Duration.seconds(f.timeoutSeconds),
      memorySize: f.memoryMiB,
      role,
      environment: Object.keys(environment).length > 0 ? environment : undefined,
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
    if (fifo && (m.maximumBatchingWindowSeconds ?? 0) !== 0) {
      throw new Error(`stack.json: a batching window is not supported for FIFO queue ${JSON.stringify(m.source)}`);
    }
    const mapping = new lambda.EventSourceMapping(this, id, {
      target: fn,
      eventSourceArn,
      batchSize: m.batchSize,
      maxBatchingWindow: fifo ? undefined : Duration.seconds(m.maximumBatchingWindowSeconds ?? 0),
      reportBatchItemFailures: m.reportBatchItemFailures || undefined,
      startingPosition: m.startingPosition ? (m.startingPosition as lambda.StartingPosition) : undefined,
      bisectBatchOnError: m.bisectBatchOnFunctionError || undefined,
      retryAttempts: m.maximumRetryAttempts,
      maxConcurrency: m.maximumConcurrency,
      parallelizationFactor: m.parallelizationFactor,
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
    const addAlarm = (id: string, props: cloudwatch.AlarmProps) => {
      const alarm = new cloudwatch.Alarm(this, id, props);
      logicalId(alarm, id);
      alarm.addAlarmAction(notify);
      this.alarms.push(alarm);
    };
    const depth = (queue: sqs.Queue): Partial<cloudwatch.AlarmProps> => ({
      metric: new cloudwatch.Metric({
        namespace: 'AWS/SQS',
        metricName: 'ApproximateNumberOfMessagesVisible',
        dimensionsMap: { QueueName: queue.queueName },
        statistic: 'Maximum',
        period: Duration.minutes(5),
      }),
      evaluationPeriods: 1,
      threshold: 1,
    });
    const common = {
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    };

    // Depth of every dead-letter queue, and of each stream mapping's failure destination.
    for (const [key, q] of sorted(spec.queues)) {
      if (!q.deadLetterQueue) continue;
      const dlq = this.deadLetterQueues[key];
      this.parkedQueues.push([label(q.deadLetterQueue), dlq]);
      addAlarm(`${pascal(key)}DeadLetterQueueAlarm`, {
        alarmDescription: q.alarmDescription ?? `Messages given up on are in the ${label(q.deadLetterQueue)} dead-letter queue.`,
        ...(depth(dlq) as cloudwatch.AlarmProps),
        ...common,
      });
    }
    for (const key of [...new Set(spec.mappings.filter((m) => m.onFailure).map((m) => m.onFailure!.queue))]) {
      const q = spec.queues[key];
      this.parkedQueues.push([label(q.name), this.queues[key]]);
      addAlarm(`${pascal(key)}QueueAlarm`, {
        alarmDescription: q.alarmDescription ?? `A stream mapping gave up on a batch; its shard and sequence range are in ${label(q.name)}.`,
        ...(depth(this.queues[key]) as cloudwatch.AlarmProps),
        ...common,
      });
    }
    for (const [name, fn] of sorted(this.functions)) {
      addAlarm(`${pascal(name)}ErrorsAlarm`, {
        alarmDescription: `${name} failed whole invocations (not per-record failures).`,
        metric: fn.metricErrors({ statistic: 'Sum', period: Duration.minutes(5) }),
        evaluationPeriods: 1,
        threshold: 1,
        ...common,
      });
    }
    const seen = new Set<string>();
    for (const m of spec.mappings.filter((m) => !isQueueSource(m.source))) {
      if (seen.has(m.function)) continue;
      seen.add(m.function);
      const table = spec.tables[(m.source as { table: string }).table];
      addAlarm(`${pascal(m.function)}IteratorAgeAlarm`, {
        alarmDescription: `${m.function} is more than a minute behind the ${label(table.name)} table's stream.`,
        metric: this.functions[m.function].metric('IteratorAge', { statistic: 'Maximum', period: Duration.minutes(1) }),
        evaluationPeriods: 5,
        threshold: ITERATOR_AGE_ALARM_MS,
        ...common,
      });
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
        'Server access logs would need a second bucket and cost per request; uploads are audited through the ' +
        'notification queues, what the functions record, and CloudTrail data events where an account enables them.',
    });
    for (const key of new Set(spec.mappings.filter((m) => m.onFailure).map((m) => m.onFailure!.queue))) {
      Validations.of(this.queues[key]).acknowledge({
        id: 'AwsSolutions-SQS3',
        reason:
          'This queue is itself a dead-letter destination (a stream mapping sends the batches it gave up on here); ' +
          'a DLQ of a DLQ would only move the same messages once more. Its depth is alarmed.',
      });
    }
    for (const [key, t] of sorted(spec.tables)) {
      // Marker tables (their items expire): everything else keeps PITR, or
      // cdk-nag fails the synth.
      if (t.pointInTimeRecovery || !t.ttlAttribute) continue;
      Validations.of(this.tables[key]).acknowledge({
        id: 'AwsSolutions-DDB3',
        reason:
          'Idempotency markers are short-lived (TTL) and re-creatable: restoring them to a point in time would only ' +
          'resurrect expired locks. The tables that hold data have point-in-time recovery.',
      });
    }
    for (const [name, fn] of sorted(this.functions)) {
      const role = fn.role!;
      const f = spec.functions[name];
      if (spec.mappings.some((m) => m.function === name && !isQueueSource(m.source))) {
        Validations.of(role).acknowledge({
          id: 'AwsSolutions-IAM5[Resource::*]',
          reason: 'dynamodb:ListStreams has no resource type, so IAM accepts it only on `*`; it lists stream ARNs, no data.',
        });
      }
      for (const prefix of [...new Set([...(f.bucket?.read ?? []), ...(f.bucket?.write ?? [])])]) {
        Validations.of(role).acknowledge({
          id: `AwsSolutions-IAM5[Resource::<UploadsBucket.Arn>/${prefix}*]`,
          reason: `Objects under ${prefix} only: each function reads and writes the bucket prefixes its declaration names, nothing else.`,
        });
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
