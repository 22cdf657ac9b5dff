//! `cargo xtask infra`: infra/template.yaml written from infra/stack.json
//! (and stack.json laid out as the generator writes it); `--check` changes
//! nothing and fails when either differs.

use anyhow::Result;

use crate::sam::TEMPLATE_YAML;
use crate::spec::STACK_JSON;

pub fn run(check: bool) -> Result<()> {
    let root = crate::workspace::root();
    if check {
        crate::sam::check(&root)?;
        println!("{TEMPLATE_YAML} and {STACK_JSON} are what `cargo xtask infra` writes");
        return Ok(());
    }
    let changed = crate::sam::write(&root)?;
    if changed.is_empty() {
        println!("{TEMPLATE_YAML} and {STACK_JSON} were up to date");
    } else {
        for path in changed {
            println!("wrote {path}");
        }
    }
    Ok(())
}
