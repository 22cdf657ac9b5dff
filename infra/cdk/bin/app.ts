#!/usr/bin/env node
/**
 * The CDK app: `cdk synth` / `cdk deploy` from infra/cdk.
 *
 * Context (or environment) settings:
 * - `stackName` (default stack.json's `stackName`): the CloudFormation stack name.
 * - `architecture` (`arm64` default, or `x86_64`): must match the build
 *   (`cargo lambda build --release --arm64` or `--x86-64`).
 * - `assetDir` / `LAMBDA_ASSET_DIR` (default `<repo>/target/lambda`): where
 *   `<function>/bootstrap` are.
 */
import { App } from 'aws-cdk-lib/core';
import { buildApp } from '../lib/app';

buildApp(new App());
