/** Builds the stack from context, shared by bin/app.ts and the tests. */
import * as fs from 'fs';
import * as path from 'path';
import { App, Validations } from 'aws-cdk-lib/core';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { AwsSolutionsChecks } from 'cdk-nag';
import { deployedSpec, loadSpec, repoRoot, StackSpec } from './spec';
import { StreamProcessorStack } from './stack';

/** Where `cargo lambda build --release` writes `<function>/bootstrap`: `lambda/` in cargo's target directory. */
export function defaultAssetDir(): string {
  return path.join(process.env.CARGO_TARGET_DIR ?? path.join(repoRoot(), 'target'), 'lambda');
}

/**
 * The part of stack.json the app deploys. Context `includeLocalOnly=true`
 * deploys the local-only functions too (the offline checks synthesize the
 * examples that way, to exercise the deploy path of functions of other
 * domains).
 */
export function specToDeploy(includeLocalOnly: boolean): StackSpec {
  return deployedSpec(loadSpec(), includeLocalOnly);
}

export function architectureFrom(value: string | undefined): lambda.Architecture {
  switch (value ?? 'arm64') {
    case 'arm64':
      return lambda.Architecture.ARM_64;
    case 'x86_64':
      return lambda.Architecture.X86_64;
    default:
      throw new Error(`architecture must be arm64 or x86_64, not ${JSON.stringify(value)}`);
  }
}

/** Adds the stack (and the cdk-nag AwsSolutions checks) to `app`. */
export function buildApp(app: App): StreamProcessorStack {
  const context = (key: string): string | undefined => app.node.tryGetContext(key);
  const spec = specToDeploy(String(context('includeLocalOnly')) === 'true');
  const assetDir = path.resolve(context('assetDir') ?? process.env.LAMBDA_ASSET_DIR ?? defaultAssetDir());
  const missing = Object.keys(spec.functions).filter((f) => !fs.existsSync(path.join(assetDir, f, 'bootstrap')));
  if (missing.length > 0) {
    throw new Error(
      `no function binaries in ${assetDir} (missing ${missing.join(', ')}): run ` +
        '`cargo lambda build --release --arm64` (or `--x86-64` with -c architecture=x86_64) in the repository root, ' +
        'or point -c assetDir=... at a directory of <function>/bootstrap',
    );
  }
  const stack = new StreamProcessorStack(app, context('stackName') ?? spec.stackName, {
    spec,
    assetDir,
    architecture: architectureFrom(context('architecture')),
    description: 'Event-driven functions on S3 uploads, SQS queues and DynamoDB streams, each a Rust binary, declared in infra/stack.json.',
  });
  // cdk-nag runs as a policy validation plugin: `cdk synth` fails on any
  // finding that is not acknowledged with a reason (lib/stack.ts).
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
  return stack;
}
