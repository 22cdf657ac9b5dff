/**
 * Assertions on the synthesized CDK template: the settings issue 7 asks for,
 * stated directly (the equivalence test then holds SAM to the same).
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { App } from 'aws-cdk-lib/core';
import { Match } from 'aws-cdk-lib/assertions';
import { buildApp } from '../lib/app';
import { deployedSpec, loadSpec, pascal, repoRoot } from '../lib/spec';
import { Doc, Json, permissions, resolve, synth } from './support';

const spec = deployedSpec(loadSpec());
/** The reference pipeline's functions: the settings below are theirs. */
const PIPELINE = ['s3-ingest', 'sqs-consumer', 'stream-aggregator'];
const deployedFunctions = Object.keys(spec.functions).length;
const { template, json } = synth();
const resources = json.Resources as Doc;
const ofType = (type: string): [string, Doc][] =>
  (Object.entries(resources) as [string, Doc][]).filter(([, r]) => r.Type === type);
const stackName = (name: string) => ({ 'Fn::Join': ['', [{ Ref: 'AWS::StackName' }, name.replace('{stack}', '')]] });

describe('functions', () => {
  it('are the three Rust binaries on provided.al2023, handler bootstrap, arm64 by default', () => {
    // The pipeline's three, and any function added with `cargo xtask new`.
    template.resourceCountIs('AWS::Lambda::Function', deployedFunctions);
    for (const name of PIPELINE) assert.ok(spec.functions[name], `${name} is deployed`);
    for (const [name, f] of Object.entries(spec.functions).filter(([name]) => PIPELINE.includes(name))) {
      template.hasResourceProperties('AWS::Lambda::Function', {
        FunctionName: stackName(`{stack}-${name}`),
        Runtime: 'provided.al2023',
        Handler: 'bootstrap',
        Architectures: ['arm64'],
        Timeout: f.timeoutSeconds,
        MemorySize: f.memoryMiB,
        LoggingConfig: { LogFormat: 'JSON', LogGroup: { Ref: Match.stringLikeRegexp('LogGroup$') } },
        Environment: {
          Variables: {
            STATE_TABLE: { Ref: 'StateTable' },
            IDEMPOTENCY_TABLE: { Ref: 'IdempotencyTable' },
            INGEST_QUEUE_URL: { Ref: 'IngestQueue' },
          },
        },
      });
    }
  });

  it('build for x86_64 when the context says so', () => {
    const x86 = synth({ architecture: 'x86_64' });
    for (const [, f] of Object.entries(x86.template.findResources('AWS::Lambda::Function'))) {
      assert.deepEqual((f.Properties as Doc).Architectures, ['x86_64']);
    }
  });

  it('package target/lambda/<function> as their code', () => {
    for (const [id, f] of ofType('AWS::Lambda::Function')) {
      const code = (f.Properties as Doc).Code as Doc;
      assert.ok(code.S3Bucket, `${id} has no asset code`);
      assert.match(String(code.S3Key), /^[0-9a-f]{64}\.zip$/, `${id} is not a zipped file asset`);
    }
  });

  it('refuse to synthesize without binaries, saying how to build them', () => {
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'no-assets-'));
    try {
      assert.throws(() => buildApp(new App({ context: { assetDir: empty } })), /cargo lambda build --release --arm64/);
    } finally {
      fs.rmSync(empty, { recursive: true, force: true });
    }
  });

  it('keep their logs 30 days', () => {
    template.resourceCountIs('AWS::Logs::LogGroup', deployedFunctions);
    template.allResourcesProperties('AWS::Logs::LogGroup', { RetentionInDays: 30 });
  });
});

describe('queues', () => {
  it('have the names, visibility timeouts and redrive policies of stack.json', () => {
    for (const [key, q] of Object.entries(spec.queues)) {
      template.hasResourceProperties('AWS::SQS::Queue', {
        QueueName: stackName(q.name),
        VisibilityTimeout: q.visibilityTimeoutSeconds,
        ...(q.fifo ? { FifoQueue: true } : {}),
        ...(q.deadLetterQueue
          ? { RedrivePolicy: { deadLetterTargetArn: Match.anyValue(), maxReceiveCount: q.maxReceiveCount } }
          : {}),
      });
      if (q.deadLetterQueue) {
        template.hasResourceProperties('AWS::SQS::Queue', { QueueName: stackName(q.deadLetterQueue), MessageRetentionPeriod: 1209600 });
      }
      void key;
    }
  });

  it('are at least six times the consuming function timeout', () => {
    for (const m of spec.mappings) {
      if (!('queue' in m.source)) continue;
      const visibility = spec.queues[m.source.queue].visibilityTimeoutSeconds;
      assert.ok(visibility >= 6 * spec.functions[m.function].timeoutSeconds, `${m.source.queue} visibility ${visibility}s`);
    }
  });

  it('are encrypted at rest and refuse requests without TLS', () => {
    template.allResourcesProperties('AWS::SQS::Queue', { SqsManagedSseEnabled: true });
    const queues = ofType('AWS::SQS::Queue').map(([id]) => id);
    for (const id of queues) {
      const policy = ofType('AWS::SQS::QueuePolicy').find(([, p]) => JSON.stringify((p.Properties as Doc).Queues) === JSON.stringify([{ Ref: id }]));
      assert.ok(policy, `${id} has no queue policy`);
      const denied = permissions(resolve((policy[1].Properties as Doc).PolicyDocument));
      assert.ok(denied.includes(`Deny {"AWS":"*"} sqs:* <${id}.Arn> if {"Bool":{"aws:SecureTransport":"false"}}`), `${id}: ${denied}`);
    }
  });

  it('let only the uploads bucket of this account send to the ingest queue', () => {
    const [, policy] = ofType('AWS::SQS::QueuePolicy').find(([id]) => id === 'IngestQueuePolicy')!;
    const allowed = permissions(resolve((policy.Properties as Doc).PolicyDocument)).filter((p) => p.startsWith('Allow'));
    assert.deepEqual(allowed, [
      'Allow {"Service":"s3.amazonaws.com"} sqs:SendMessage <IngestQueue.Arn> if ' +
        '{"ArnEquals":{"aws:SourceArn":"arn:{partition}:s3:::{stack}-uploads"},"StringEquals":{"aws:SourceAccount":"{account}"}}',
    ]);
  });
});

describe('tables', () => {
  it('state: pk/sk, NEW_AND_OLD_IMAGES stream, point-in-time recovery, on-demand', () => {
    template.hasResourceProperties('AWS::DynamoDB::Table', {
      TableName: stackName(spec.tables.state.name),
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      StreamSpecification: { StreamViewType: 'NEW_AND_OLD_IMAGES' },
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      BillingMode: 'PAY_PER_REQUEST',
    });
  });

  it('idempotency: id key, TTL on expiration, on-demand', () => {
    template.hasResourceProperties('AWS::DynamoDB::Table', {
      TableName: stackName(spec.tables.idempotency.name),
      KeySchema: [{ AttributeName: 'id', KeyType: 'HASH' }],
      TimeToLiveSpecification: { AttributeName: 'expiration', Enabled: true },
      BillingMode: 'PAY_PER_REQUEST',
    });
  });

  it('are kept when the stack is deleted', () => {
    template.allResources('AWS::DynamoDB::Table', { DeletionPolicy: 'Retain', UpdateReplacePolicy: 'Retain' });
  });
});

describe('uploads bucket', () => {
  it('is encrypted, private, and sends incoming/ uploads to the ingest queue', () => {
    template.hasResource('AWS::S3::Bucket', {
      DeletionPolicy: 'Retain',
      DependsOn: Match.arrayWith(['IngestQueuePolicy']),
      Properties: {
        BucketName: stackName(spec.bucket.name),
        BucketEncryption: { ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }] },
        PublicAccessBlockConfiguration: {
          BlockPublicAcls: true,
          BlockPublicPolicy: true,
          IgnorePublicAcls: true,
          RestrictPublicBuckets: true,
        },
        NotificationConfiguration: {
          // incoming/ to the ingest queue (beside any prefix a function added with `cargo xtask new --trigger s3` reads).
          QueueConfigurations: Match.arrayWith([
            {
              Event: 's3:ObjectCreated:*',
              Queue: { 'Fn::GetAtt': ['IngestQueue', 'Arn'] },
              Filter: { S3Key: { Rules: [{ Name: 'prefix', Value: 'incoming/' }] } },
            },
          ]),
        },
      },
    });
  });

  it('refuses requests without TLS', () => {
    const [, policy] = ofType('AWS::S3::BucketPolicy')[0];
    const denied = permissions(resolve((policy.Properties as Doc).PolicyDocument));
    for (const resource of ['<UploadsBucket.Arn>', '<UploadsBucket.Arn>/*']) {
      assert.ok(denied.includes(`Deny {"AWS":"*"} s3:* ${resource} if {"Bool":{"aws:SecureTransport":"false"}}`), denied.join('\n'));
    }
  });

  it('needs no custom resource for its notifications', () => {
    assert.deepEqual(ofType('Custom::S3BucketNotifications'), []);
    assert.deepEqual(
      Object.values(resources).filter((r) => String((r as Doc).Type).startsWith('Custom::')),
      [],
    );
  });
});

describe('event source mappings', () => {
  it('report batch item failures with the batching of stack.json', () => {
    template.resourceCountIs('AWS::Lambda::EventSourceMapping', spec.mappings.length);
    // Every declared mapping asks for partial batch responses.
    assert.ok(spec.mappings.every((m) => m.reportBatchItemFailures));
    template.allResourcesProperties('AWS::Lambda::EventSourceMapping', { FunctionResponseTypes: ['ReportBatchItemFailures'] });
    template.hasResourceProperties('AWS::Lambda::EventSourceMapping', {
      EventSourceArn: { 'Fn::GetAtt': ['OrdersQueue', 'Arn'] },
      BatchSize: 10,
      MaximumBatchingWindowInSeconds: 1,
    });
  });

  it('set no batching window on the FIFO queue (Lambda rejects one)', () => {
    const fifo = ofType('AWS::Lambda::EventSourceMapping').find(
      ([, r]) => JSON.stringify((r.Properties as Doc).EventSourceArn) === JSON.stringify({ 'Fn::GetAtt': ['OrdersFifoQueue', 'Arn'] }),
    );
    assert.ok(fifo);
    assert.equal((fifo[1].Properties as Doc).MaximumBatchingWindowInSeconds, undefined);
  });

  it('on the stream: bisect, bounded retries, an on-failure queue, and only order items', () => {
    template.hasResourceProperties('AWS::Lambda::EventSourceMapping', {
      EventSourceArn: { 'Fn::GetAtt': ['StateTable', 'StreamArn'] },
      StartingPosition: 'TRIM_HORIZON',
      BatchSize: 100,
      BisectBatchOnFunctionError: true,
      MaximumRetryAttempts: 3,
      DestinationConfig: { OnFailure: { Destination: { 'Fn::GetAtt': ['StreamFailuresQueue', 'Arn'] } } },
      FilterCriteria: { Filters: [{ Pattern: '{"dynamodb":{"Keys":{"sk":{"S":["ORDER"]}}}}' }] },
    });
  });
});

describe('IAM', () => {
  const roles = ofType('AWS::IAM::Role');
  const granted = (id: string) =>
    ((resources[id] as Doc).Properties as Doc).Policies
      ? (((resources[id] as Doc).Properties as Doc).Policies as Doc[]).flatMap((p) => permissions(resolve(p.PolicyDocument)))
      : [];

  it('gives each function its own role, with no managed policy and no separate policy resource', () => {
    assert.equal(roles.length, deployedFunctions);
    for (const [id, r] of roles) assert.equal((r.Properties as Doc).ManagedPolicyArns, undefined, id);
    template.resourceCountIs('AWS::IAM::Policy', 0);
    template.resourceCountIs('AWS::IAM::ManagedPolicy', 0);
  });

  it('grants no wildcard action and `*` only for dynamodb:ListStreams', () => {
    for (const [id] of roles) {
      for (const p of granted(id)) {
        const [, , action, resource] = p.split(' ');
        assert.ok(!action.includes('*'), `${id}: ${p}`);
        if (resource === '*') assert.equal(action, 'dynamodb:ListStreams', `${id}: ${p}`);
      }
    }
  });

  it('lets s3-ingest read incoming/ and write rejected/ only', () => {
    const s3 = granted('S3IngestRole').filter((p) => p.includes(' s3:'));
    assert.deepEqual(s3, [
      'Allow - s3:GetObject <UploadsBucket.Arn>/incoming/*',
      'Allow - s3:GetObjectVersion <UploadsBucket.Arn>/incoming/*',
      'Allow - s3:PutObject <UploadsBucket.Arn>/rejected/*',
    ]);
    assert.ok(granted('S3IngestRole').includes('Allow - sqs:SendMessage <IngestQueue.Arn>'));
  });

  it('lets only stream-aggregator read the stream and send to its failure queue', () => {
    for (const id of ['S3IngestRole', 'SqsConsumerRole']) {
      assert.ok(!granted(id).some((p) => p.includes('dynamodb:GetRecords') || p.includes('StreamFailuresQueue')), id);
    }
    assert.ok(granted('StreamAggregatorRole').includes('Allow - dynamodb:GetRecords <StateTable.StreamArn>'));
    assert.ok(granted('StreamAggregatorRole').includes('Allow - sqs:SendMessage <StreamFailuresQueue.Arn>'));
  });

  it('gives no function table-wide destructive actions', () => {
    for (const [id] of roles) {
      for (const forbidden of ['dynamodb:DeleteTable', 'dynamodb:Scan', 'dynamodb:UpdateTable']) {
        assert.ok(!granted(id).some((p) => p.includes(` ${forbidden} `)), `${id} has ${forbidden}`);
      }
      assert.ok(!granted(id).some((p) => p.includes('dynamodb:DeleteItem <StateTable')), `${id} deletes state items`);
    }
  });
});

describe('alarms', () => {
  it('watch every dead-letter queue, the stream failure queue, function errors and iterator age', () => {
    const alarmed = ofType('AWS::CloudWatch::Alarm').map(([id]) => id).sort();
    const pipeline = [
      'IngestDeadLetterQueueAlarm',
      'OrdersDeadLetterQueueAlarm',
      'OrdersFifoDeadLetterQueueAlarm',
      'S3IngestErrorsAlarm',
      'SqsConsumerErrorsAlarm',
      'StreamAggregatorErrorsAlarm',
      'StreamAggregatorIteratorAgeAlarm',
      'StreamFailuresQueueAlarm',
    ];
    // Every declared function's: its errors, its dead-letter queues, its
    // stream's age and failure queue.
    const expected = new Set(pipeline);
    for (const name of Object.keys(spec.functions)) expected.add(`${pascal(name)}ErrorsAlarm`);
    for (const [key, q] of Object.entries(spec.queues)) if (q.deadLetterQueue) expected.add(`${pascal(key)}DeadLetterQueueAlarm`);
    for (const m of spec.mappings) {
      if ('table' in m.source) expected.add(`${pascal(m.function)}IteratorAgeAlarm`);
      if (m.onFailure) expected.add(`${pascal(m.onFailure.queue)}QueueAlarm`);
    }
    assert.deepEqual(alarmed, [...expected].sort());
    for (const id of pipeline) assert.ok(alarmed.includes(id), id);
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: 'AWS/Lambda',
      MetricName: 'IteratorAge',
      Dimensions: [{ Name: 'FunctionName', Value: { Ref: 'StreamAggregatorFunction' } }],
      Threshold: 60000,
    });
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: 'AWS/SQS',
      MetricName: 'ApproximateNumberOfMessagesVisible',
      Dimensions: [{ Name: 'QueueName', Value: { 'Fn::GetAtt': ['OrdersFifoDeadLetterQueue', 'QueueName'] } }],
      Threshold: 1,
    });
  });
});

describe('alarm notifications', () => {
  it('every alarm notifies the alarm topic', () => {
    template.allResourcesProperties('AWS::CloudWatch::Alarm', { AlarmActions: [{ Ref: 'AlarmTopic' }] });
  });

  it("the topic takes only TLS publishes, and this account's alarms may publish", () => {
    const [, policy] = ofType('AWS::SNS::TopicPolicy')[0];
    assert.deepEqual(permissions(resolve((policy.Properties as Doc).PolicyDocument)), [
      'Allow {"Service":"cloudwatch.amazonaws.com"} sns:Publish <AlarmTopic> if ' +
        '{"ArnLike":{"aws:SourceArn":"arn:{partition}:cloudwatch:{region}:{account}:alarm:*"},"StringEquals":{"aws:SourceAccount":"{account}"}}',
      'Deny "*" sns:Publish <AlarmTopic> if {"Bool":{"aws:SecureTransport":"false"}}',
    ]);
  });
});

describe('dashboard', () => {
  const body = JSON.parse(String(resolve(((resources.Dashboard as Doc).Properties as Doc).DashboardBody))) as {
    widgets: { type: string; properties: { alarms?: string[]; metrics?: Json[][] } }[];
  };
  const metrics = body.widgets.flatMap((w) => w.properties.metrics ?? []).map((m) => m.slice(0, 4).join(' '));

  it('shows every alarm', () => {
    const alarms = body.widgets.find((w) => w.type === 'alarm')!.properties.alarms!;
    assert.deepEqual(alarms.sort(), ofType('AWS::CloudWatch::Alarm').map(([id]) => `<${id}.Arn>`).sort());
  });

  it('shows DLQ depth, iterator age, errors and duration', () => {
    for (const q of ['IngestDeadLetterQueue', 'OrdersDeadLetterQueue', 'OrdersFifoDeadLetterQueue', 'StreamFailuresQueue']) {
      assert.ok(metrics.includes(`AWS/SQS ApproximateNumberOfMessagesVisible QueueName <${q}.QueueName>`), q);
    }
    assert.ok(metrics.includes('AWS/Lambda IteratorAge FunctionName <StreamAggregatorFunction>'));
    for (const f of ['S3IngestFunction', 'SqsConsumerFunction', 'StreamAggregatorFunction']) {
      assert.ok(metrics.includes(`AWS/Lambda Errors FunctionName <${f}>`), f);
      assert.ok(metrics.includes(`AWS/Lambda Duration FunctionName <${f}>`), f);
    }
  });

  it("shows each function's EMF metrics under the dimension shared::telemetry writes", () => {
    for (const f of Object.keys(spec.functions)) {
      for (const m of ['BatchSize', 'Applied', 'Stale', 'Duplicate', 'Quarantined', 'Ignored', 'Failed', 'DynamoDBRequests', 'RecordDuration']) {
        assert.ok(metrics.includes(`StreamProcessor ${m} function ${f}`), `${f} ${m}`);
      }
    }
    // The metric names as the toolkit emits them: the portable core writes the
    // outcome counts (on Lambda and on Workers), the Lambda layer its own.
    const telemetry = ['shared/src/telemetry.rs', 'shared/core/src/telemetry.rs']
      .map((f) => fs.readFileSync(path.join(repoRoot(), ...f.split('/')), 'utf8'))
      .join('\n');
    assert.match(telemetry, /NAMESPACE: &str = "StreamProcessor"/);
    for (const m of ['Applied', 'Stale', 'Duplicate', 'Quarantined', 'Ignored', 'Failed', 'BatchSize', 'DynamoDBRequests', 'RecordDuration']) {
      assert.ok(telemetry.includes(`"${m}"`), `the toolkit's telemetry no longer writes ${m}`);
    }
  });
});
