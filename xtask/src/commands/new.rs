//! `cargo xtask new <name> --trigger <trigger>`: see [`crate::scaffold`].

use anyhow::{Context, Result};

use crate::cli::Trigger;

pub fn run(name: &str, trigger: Trigger) -> Result<()> {
    let root = crate::workspace::root();
    let created = crate::scaffold::create(&root, name, trigger)?;
    // The generated sources laid out as the workspace's rustfmt.toml says
    // (the names substituted change line lengths).
    let status = crate::workspace::cargo_command()
        .args(["fmt", "-p", name])
        .current_dir(&root)
        .status()
        .context("running cargo fmt")?;
    anyhow::ensure!(status.success(), "cargo fmt -p {name} failed ({status})");
    let relative = |p: &std::path::Path| p.strip_prefix(&root).unwrap_or(p).display().to_string();
    println!("created {} ({})", relative(&created.crate_dir), trigger_name(trigger));
    for file in &created.files {
        println!("  {}", relative(file));
    }
    println!("added functions/{name} to the workspace members (Cargo.toml)");
    println!(
        "declared {name} in infra/stack.json with its {}, its table and its environment; \
         infra/template.yaml written again from it",
        match trigger {
            Trigger::Sqs => "queue (and dead-letter queue), its mapping",
            Trigger::SqsFifo => "FIFO queue (and dead-letter queue), its mapping",
            Trigger::DynamodbStream => "table's stream mapping (and failure queue)",
            Trigger::S3 => "bucket prefix's notifications, queue (and dead-letter queue), its mapping",
        }
    );
    println!("\nnext:");
    println!("  fill in the planner: {}/src/lib.rs (plan)", relative(&created.crate_dir));
    println!("  cargo test -p {name}                 # its unit test, and its test through the local stack");
    println!("  cargo xtask stack                    # the local stack serves it beside the pipeline");
    if let Some(fixture) = created.fixtures.first() {
        println!(
            "  cargo lambda invoke {name} --invoke-address 127.0.0.1 --invoke-port <port> --data-file {}",
            fixture.display()
        );
    }
    Ok(())
}

fn trigger_name(trigger: Trigger) -> &'static str {
    match trigger {
        Trigger::Sqs => "sqs",
        Trigger::SqsFifo => "sqs-fifo",
        Trigger::DynamodbStream => "dynamodb-stream",
        Trigger::S3 => "s3",
    }
}
