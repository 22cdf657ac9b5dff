//! Offline checks of `infra/`: cfn-lint on the SAM template, `cdk synth` with
//! assertion tests and cdk-nag, and the SAM/CDK/local-stack equivalence test.

use std::path::Path;

/// Runs every infra check; fails with a message naming the check that failed.
pub fn check(_root: &Path) -> anyhow::Result<()> {
    anyhow::bail!("infra checks are not implemented yet")
}
