/**
 * The SAM template (written by `cargo xtask infra`) and the CDK app declare
 * the same stack, and both declare what stack.json (which xtask's local
 * stack creates) says: every deployed function with its resources and
 * exactly the permissions its declaration implies.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { deployedSpec, loadSpec, repoRoot } from '../lib/spec';
import { canonical, diffModels, Doc, expandSam, loadSam, mappingsOf, model, outputs, resolve, specMappings, specProblems, synth } from './support';

const spec = deployedSpec(loadSpec());
const sam = loadSam();
const samModel = model(expandSam(sam));
const cdk = synth();
const cdkModel = model(cdk.json);

describe('SAM and CDK', () => {
  it('declare the same resources with the same settings and permissions', () => {
    assert.deepEqual(diffModels(samModel, cdkModel, 'template.yaml', 'the CDK app'), []);
  });

  it('declare the same event source mappings', () => {
    assert.deepEqual(mappingsOf(samModel, spec), mappingsOf(cdkModel, spec));
    assert.equal(mappingsOf(samModel, spec).length, spec.mappings.length);
  });

  it('declare the same outputs', () => {
    assert.deepEqual(outputs(sam), outputs(cdk.json));
  });

  it('default to the same architecture, arm64', () => {
    const parameter = (sam.Parameters as Doc).Architecture as Doc;
    assert.equal(parameter.Default, 'arm64');
    cdk.template.hasResourceProperties('AWS::Lambda::Function', { Architectures: ['arm64'] });
  });

  it('a changed mapping setting in one definition only is caught', () => {
    // Mutate a copy of each definition in turn: the comparison must fail.
    const changedSam = JSON.parse(JSON.stringify(sam)) as Doc;
    const events = ((changedSam.Resources as Doc).SqsConsumerFunction as Doc).Properties as Doc;
    (((events.Events as Doc).FromOrders as Doc).Properties as Doc).BatchSize = 11;
    assert.notDeepEqual(diffModels(model(expandSam(changedSam)), cdkModel, 'sam', 'cdk'), []);
    assert.notDeepEqual(specProblems(model(expandSam(changedSam)), spec), []);

    const changedCdk = JSON.parse(JSON.stringify(cdk.json)) as Doc;
    const mapping = (changedCdk.Resources as Doc).StreamAggregatorFunctionFromStateStream as Doc;
    (mapping.Properties as Doc).MaximumRetryAttempts = 4;
    assert.notDeepEqual(diffModels(samModel, model(changedCdk), 'sam', 'cdk'), []);
    assert.notDeepEqual(specProblems(model(changedCdk), spec), []);
  });
});

describe('a declared function without what it needs', () => {
  // Each definition, changed in a copy: the check against stack.json fails
  // and names what is missing or extra.
  const withoutStatement = (doc: Doc, roleId: string, sid: string, sam: boolean): Doc => {
    const copy = JSON.parse(JSON.stringify(doc)) as Doc;
    const role = (copy.Resources as Doc)[roleId] as Doc;
    const policy = ((role.Properties as Doc).Policies as Doc[])[0].PolicyDocument as Doc;
    const statements = policy.Statement as Doc[];
    const kept = statements.filter((st) => st.Sid !== sid);
    assert.equal(kept.length, statements.length - 1, `${sam ? 'SAM' : 'CDK'} ${roleId} has a statement ${sid}`);
    policy.Statement = kept;
    return copy;
  };

  it('a permission removed from its role is reported, naming it', () => {
    for (const [name, doc, isSam] of [['SAM', sam, true], ['CDK', cdk.json, false]] as [string, Doc, boolean][]) {
      const changed = withoutStatement(doc, 'SqsConsumerRole', 'ConsumeQueues', isSam);
      const problems = specProblems(model(isSam ? expandSam(changed) : changed), spec);
      assert.ok(
        problems.some((p) => p === 'SqsConsumerRole lacks a permission sqs-consumer needs: Allow - sqs:ReceiveMessage <OrdersQueue.Arn>'),
        `${name}: ${problems.join('\n')}`,
      );
    }
  });

  it('a permission beyond its declaration is reported', () => {
    const changed = JSON.parse(JSON.stringify(cdk.json)) as Doc;
    const role = (changed.Resources as Doc).SqsConsumerRole as Doc;
    const policy = ((role.Properties as Doc).Policies as Doc[])[0].PolicyDocument as Doc;
    (policy.Statement as Doc[]).push({ Effect: 'Allow', Action: 'dynamodb:Scan', Resource: { 'Fn::GetAtt': ['StateTable', 'Arn'] } });
    const problems = specProblems(model(changed), spec);
    assert.ok(problems.includes("SqsConsumerRole grants more than sqs-consumer's declaration implies: Allow - dynamodb:Scan <StateTable.Arn>"), problems.join('\n'));
  });

  it('a resource removed is reported, naming it', () => {
    const changed = JSON.parse(JSON.stringify(sam)) as Doc;
    delete (changed.Resources as Doc).OrdersFifoQueue;
    const problems = specProblems(model(expandSam(changed)), spec);
    assert.ok(problems.some((p) => p.startsWith('queue ordersFifo: no AWS::SQS::Queue named {stack}-orders.fifo')), problems.join('\n'));
  });
});

describe('the local-only functions, deployed', () => {
  // The examples are not deployed; synthesized as if they were, they
  // exercise the deploy path of functions of other domains: their own
  // table, queue, stream mapping and environment.
  const all = deployedSpec(loadSpec(), true);
  const allCdk = synth({ includeLocalOnly: 'true' });

  it('get their resources and exactly their permissions from the CDK app', () => {
    assert.ok(Object.keys(all.functions).length > Object.keys(spec.functions).length, 'there are local-only functions');
    assert.deepEqual(specProblems(model(allCdk.json), all), []);
  });

  it('are declared the same by the SAM template cargo xtask writes for them', (t) => {
    // `cargo xtask test` writes it (xtask/src/infra.rs) and names it here.
    const file = process.env.SAM_ALL_FUNCTIONS;
    if (!file) {
      t.skip('SAM_ALL_FUNCTIONS is not set (cargo xtask test sets it)');
      return;
    }
    const allSam = model(expandSam(loadSam(file)));
    assert.deepEqual(diffModels(allSam, model(allCdk.json), file, 'the CDK app'), []);
    assert.deepEqual(specProblems(allSam, all), []);
  });
});

describe('stack.json', () => {
  it('is what the SAM template declares', () => {
    assert.deepEqual(specProblems(samModel, spec), []);
  });

  it('is what the CDK app declares', () => {
    assert.deepEqual(specProblems(cdkModel, spec), []);
  });

  it("is what xtask's local stack is built from", () => {
    const specRs = fs.readFileSync(path.join(repoRoot(), 'xtask', 'src', 'spec.rs'), 'utf8');
    assert.match(specRs, /pub const STACK_JSON: &str = "infra\/stack\.json";/);
  });

  it('mappings are all declared, with the stream filter passing only order items', () => {
    assert.deepEqual(mappingsOf(cdkModel, spec), specMappings(spec));
    const stream = spec.mappings.find((m) => 'table' in m.source)!;
    assert.deepEqual(stream.filterPatterns!.map((p) => canonical(JSON.parse(p))), [canonical({ dynamodb: { Keys: { sk: { S: ['ORDER'] } } } })]);
  });
});

describe('SAM build settings', () => {
  const functionIds = Object.entries(sam.Resources as Doc).filter(([, r]) => (r as Doc).Type === 'AWS::Serverless::Function');

  it('declares one function per stack.json function', () => {
    assert.equal(functionIds.length, Object.keys(spec.functions).length);
  });

  for (const [id, resource] of functionIds as [string, Doc][]) {
    it(`${id} builds its binary from the Cargo workspace with cargo-lambda`, () => {
      const props = resource.Properties as Doc;
      const binary = String(((resource.Metadata as Doc).BuildProperties as Doc).Binary);
      assert.equal((resource.Metadata as Doc).BuildMethod, 'rust-cargolambda');
      assert.equal(props.FunctionName && String(resolve(props.FunctionName)), `{stack}-${binary}`);
      // cargo-lambda runs in CodeUri and SAM copies target/lambda/<Binary>/bootstrap from there:
      // CodeUri must be the workspace root (a member's target/ would be empty).
      const workspace = path.resolve(path.join(repoRoot(), 'infra'), String(props.CodeUri));
      assert.equal(workspace, repoRoot());
      assert.match(fs.readFileSync(path.join(workspace, 'Cargo.toml'), 'utf8'), /^\[workspace\]/m);
      const crate = fs.readFileSync(path.join(workspace, spec.functions[binary].path, 'Cargo.toml'), 'utf8');
      assert.match(crate, new RegExp(`\\[\\[bin\\]\\]\\s*\\nname = "${binary}"`));
    });
  }

  it('run provided.al2023 with handler bootstrap', () => {
    const globals = (sam.Globals as Doc).Function as Doc;
    assert.equal(globals.Runtime, 'provided.al2023');
    assert.equal(globals.Handler, 'bootstrap');
  });
});
