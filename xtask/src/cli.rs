//! The command line of `cargo xtask`: every command and flag, parsed by
//! clap from these types, so each takes `--help` and the README's commands
//! can be checked against them ([`command`]).

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::dynamodb_local::Engine;

/// The project's dev commands: the local AWS stack, its tests, the
/// infrastructure, and new functions.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, propagate_version = true)]
#[command(after_help = "Run `cargo xtask <command> --help` for a command's flags.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline locally and check the invariant.
    Demo(DemoArgs),
    /// Start the local stack with every declared function, for `cargo lambda invoke`, until Ctrl-C.
    Stack(StackArgs),
    /// Formatting, lints, builds, all tests, infra checks: what CI runs.
    Test(TestArgs),
    /// The pipeline under duplicates, reordering, poison records, DynamoDB faults and SIGKILLed
    /// functions, with concurrent deliveries; then the invariant and every record's accounting.
    Soak(SoakArgs),
    /// One large object and many queue messages through the local stack: time and the
    /// emulators' peak memory.
    Volume(VolumeArgs),
    /// Release benchmarks (bench/README.md): one table, report.json and chart.svg in the target
    /// directory's bench/.
    Bench(BenchArgs),
    /// Build the Cloudflare Worker into the target directory's cf-worker/.
    BuildWorker(BuildWorkerArgs),
    /// Write infra/template.yaml (the SAM template) from infra/stack.json, and lay stack.json out.
    Infra(InfraArgs),
    /// Add a function: a crate with a planner to fill in, fixture events, a unit test and a
    /// local-stack test, declared in infra/stack.json with its source, table and mapping.
    New(NewArgs),
}

/// Which engine plays DynamoDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DynamoDb {
    /// AWS's DynamoDB Local (needs Java 17).
    Local,
    /// moto (no Java; moto's limits, see the README).
    Moto,
}

/// The DynamoDB engine flag of the stack commands.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// The DynamoDB engine [default: local, or LOCAL_STACK_DYNAMODB]
    #[arg(long, value_enum, value_name = "ENGINE")]
    pub dynamodb: Option<DynamoDb>,
}

impl EngineArgs {
    /// The flag's engine, else `LOCAL_STACK_DYNAMODB`'s, else DynamoDB Local.
    pub fn engine(&self) -> anyhow::Result<Engine> {
        Ok(match self.dynamodb {
            Some(DynamoDb::Local) => Engine::Local,
            Some(DynamoDb::Moto) => Engine::Moto,
            None => Engine::from_env()?,
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The Worker under workerd instead (Queues, R2, D1; no account needed).
    #[arg(long, conflicts_with = "dynamodb")]
    pub cloudflare: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StackArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Run no event source mappings: nothing is consumed unless you invoke it.
    #[arg(long)]
    pub no_driver: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    /// Run only these steps (the numbers the run prints before each, `[n/...]`), in order; again
    /// after fixing what one of them found. CI runs them all.
    #[arg(long = "step", value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    pub steps: Vec<u8>,
}

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// How long traffic is produced.
    #[arg(long, default_value_t = 2.0, value_parser = positive_minutes)]
    pub minutes: f64,
    /// Concurrent deliveries per mapping (and processes per function).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=10))]
    pub concurrency: u8,
    /// The random seed [default: from the clock]
    #[arg(long)]
    pub seed: Option<u64>,
}

fn positive_minutes(text: &str) -> Result<f64, String> {
    let minutes: f64 = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
    if minutes.is_finite() && minutes > 0.0 { Ok(minutes) } else { Err("must be a positive number".into()) }
}

#[derive(Debug, Clone, Args)]
pub struct VolumeArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Lines of the one object uploaded.
    #[arg(long, default_value_t = crate::commands::volume::DEFAULT_LINES)]
    pub lines: u64,
    /// Queue messages sent.
    #[arg(long, default_value_t = crate::commands::volume::DEFAULT_MESSAGES)]
    pub messages: u64,
    /// Through the Worker under workerd instead: rates, D1 statements.
    #[arg(long, conflicts_with = "dynamodb")]
    pub cloudflare: bool,
}

/// The flags of the `bench` binary, passed on to it.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Tiny sizes: seconds instead of minutes.
    #[arg(long)]
    pub smoke: bool,
    /// Starts per binary for the cold-start rows [default: 9; 3 with --smoke]
    #[arg(long, value_name = "N")]
    pub runs: Option<u32>,
    /// Size of the large object, in MiB [default: 1024]
    #[arg(long, value_name = "N")]
    pub ingest_mib: Option<u64>,
    /// Use the release binaries as they are.
    #[arg(long)]
    pub no_build: bool,
    /// Skip the rows that need the emulators.
    #[arg(long)]
    pub skip_emulator: bool,
    /// Only the DynamoDB cost workload and its table.
    #[arg(long)]
    pub cost_only: bool,
    /// Only the peak RSS rows.
    #[arg(long)]
    pub memory_only: bool,
    /// Where the report goes [default: bench/ in the target directory]
    #[arg(long, value_name = "DIR")]
    pub out: Option<String>,
    /// Measure the binaries in this directory (implies --no-build).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<String>,
}

impl BenchArgs {
    /// The arguments of the `bench` binary.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let flags = [
            (self.smoke, "--smoke"),
            (self.no_build, "--no-build"),
            (self.skip_emulator, "--skip-emulator"),
            (self.cost_only, "--cost-only"),
            (self.memory_only, "--memory-only"),
        ];
        args.extend(flags.iter().filter(|(on, _)| *on).map(|(_, f)| (*f).to_owned()));
        let values = [
            ("--runs", self.runs.map(|n| n.to_string())),
            ("--ingest-mib", self.ingest_mib.map(|n| n.to_string())),
            ("--out", self.out.clone()),
            ("--bin-dir", self.bin_dir.clone()),
        ];
        for (flag, value) in values {
            if let Some(value) = value {
                args.extend([flag.to_owned(), value]);
            }
        }
        args
    }
}

#[derive(Debug, Clone, Args)]
pub struct BuildWorkerArgs {}

#[derive(Debug, Clone, Args)]
pub struct InfraArgs {
    /// Change nothing: fail, naming what differs, when infra/template.yaml or stack.json's layout is
    /// not what the generator writes.
    #[arg(long)]
    pub check: bool,
}

/// What feeds a new function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Trigger {
    /// A standard SQS queue with a dead-letter queue.
    Sqs,
    /// A FIFO SQS queue with a FIFO dead-letter queue.
    SqsFifo,
    /// The DynamoDB stream of a table of its own.
    DynamodbStream,
    /// Objects created under a prefix of the uploads bucket (notifications through a queue).
    S3,
}

#[derive(Debug, Clone, Args)]
pub struct NewArgs {
    /// The function's name: its crate, binary and resource names (lower-case letters, digits,
    /// hyphens).
    pub name: String,
    /// What feeds it.
    #[arg(long, value_enum)]
    pub trigger: Trigger,
}

/// The whole command line, for checks and help.
pub fn command() -> clap::Command {
    Cli::command()
}

/// The long flags `subcommand` takes (without `--help`).
pub fn flags_of(subcommand: &str) -> Vec<String> {
    command()
        .find_subcommand(subcommand)
        .map(|c| {
            c.get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| *l != "help" && *l != "version")
                .map(|l| format!("--{l}"))
                .collect()
        })
        .unwrap_or_default()
}

/// The subcommands' names.
pub fn subcommands() -> Vec<String> {
    command().get_subcommands().map(|c| c.get_name().to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn every_command_has_help_listing_its_flags() {
        for sub in subcommands() {
            let err = command().try_get_matches_from(["cargo xtask", &sub, "--help"]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp, "{sub}");
            let help = err.to_string();
            for flag in flags_of(&sub) {
                assert!(help.contains(&flag), "`cargo xtask {sub} --help` does not list {flag}:\n{help}");
            }
        }
    }

    #[test]
    fn bench_flags_pass_through() {
        let cli = Cli::try_parse_from(["cargo xtask", "bench", "--smoke", "--runs", "3", "--out", "x"]).unwrap();
        let Command::Bench(args) = cli.command else { panic!("bench") };
        assert_eq!(args.to_args(), ["--smoke", "--runs", "3", "--out", "x"]);
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        for (args, flag) in [
            (vec!["soak", "--minutes", "0"], "--minutes"),
            (vec!["soak", "--concurrency", "11"], "--concurrency"),
            (vec!["new", "x", "--trigger", "kafka"], "--trigger"),
            (vec!["stack", "--dynamodb", "postgres"], "--dynamodb"),
        ] {
            let err = Cli::try_parse_from(["cargo xtask"].into_iter().chain(args.iter().copied())).unwrap_err();
            assert!(err.to_string().contains(flag), "{args:?}: {err}");
        }
    }
}
