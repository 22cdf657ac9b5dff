/**
 * cdk-nag's AwsSolutions pack finds nothing that is not acknowledged with a
 * reason, and every acknowledgement is still needed.
 */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { App, Validations } from 'aws-cdk-lib/core';
import { AwsSolutionsChecks } from 'cdk-nag';
import { IConstruct } from 'constructs';
import { buildApp } from '../lib/app';
import { assetDir, synth } from './support';

interface Acknowledged {
  id: string;
  reason: string;
}

/** Every acknowledgement in the tree: `Validations.acknowledge` stores `{ "Annotation::<id>": reason }`. */
function acknowledgements(root: IConstruct): { path: string; ack: Acknowledged }[] {
  return root.node.findAll().flatMap((c) =>
    c.node.metadata
      .filter((m) => m.type === Validations.ACKNOWLEDGED_RULES_METADATA_KEY)
      .flatMap((m) => Object.entries(m.data as Record<string, string>))
      .map(([key, reason]) => ({ path: c.node.path, ack: { id: key.replace(/^Annotation::/, ''), reason } })),
  );
}

describe('cdk-nag AwsSolutions', () => {
  const { app } = synth();

  it('reports no unacknowledged finding', () => {
    const report = new AwsSolutionsChecks(app).validateScope(app);
    const findings = report.violations.flatMap((v) => v.violatingResources.map((r) => `${v.ruleName} at ${r.resourceLogicalId}`));
    assert.deepEqual(findings, []);
    assert.equal(report.success, true);
  });

  it('acknowledges only with a real reason', () => {
    const acks = acknowledgements(app);
    assert.ok(acks.length > 0, 'no acknowledgements found: the metadata key changed?');
    for (const { path, ack } of acks) {
      assert.match(ack.id, /^AwsSolutions-[A-Z]+\d+(\[.+\])?$/, path);
      assert.ok(ack.reason.length >= 60, `${path}: ${ack.id} needs a reason, not "${ack.reason}"`);
    }
  });

  it('has no stale acknowledgement: each hides a finding', () => {
    const acked = acknowledgements(app).map(({ path, ack }) => ({ id: ack.id, path }));
    const bare = new App({ context: { assetDir: assetDir(), acknowledgeNagFindings: 'false' } });
    buildApp(bare);
    assert.deepEqual(acknowledgements(bare), []);
    // `cdk synth` itself fails on them: cdk-nag runs as a validation plugin.
    assert.throws(() => bare.synth(), /Validation failed/);
    const report = new AwsSolutionsChecks(bare).validateScope(bare);
    // Findings as `Rule[detail]` ids at construct paths, as acknowledgements name them.
    const found = report.violations.flatMap((v) =>
      v.violatingResources.map((r) => `${v.ruleName} @ ${r.constructPath ?? r.resourceLogicalId}`),
    );
    for (const { id, path } of acked) {
      assert.ok(
        found.some((f) => f === `${id} @ ${path}` || f === `${id} @ ${path}/Resource`),
        `stale acknowledgement ${id} at ${path}; findings: ${found.join(', ')}`,
      );
    }
    // And nothing is found that is not acknowledged (the first test, from the other side).
    for (const f of found) {
      assert.ok(acked.some(({ id, path }) => f === `${id} @ ${path}` || f === `${id} @ ${path}/Resource`), `unacknowledged: ${f}`);
    }
  });
});
