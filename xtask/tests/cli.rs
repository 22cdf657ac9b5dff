//! `cargo xtask <command> --help`, through the binary: exits 0 and lists
//! every flag of the command; an unknown flag exits non-zero naming it.

use std::process::Command;

fn xtask(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().expect("running the xtask binary")
}

#[test]
fn every_command_answers_help_with_its_flags() {
    let subcommands = xtask::cli::subcommands();
    assert!(subcommands.len() >= 9, "{subcommands:?}");
    for sub in &subcommands {
        let out = xtask(&[sub, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "`cargo xtask {sub} --help` exited with {}: {help}", out.status);
        assert!(help.contains("Usage: cargo xtask"), "{sub}: {help}");
        for flag in xtask::cli::flags_of(sub) {
            assert!(help.contains(&flag), "`cargo xtask {sub} --help` does not list {flag}:\n{help}");
        }
    }
    let out = xtask(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for sub in &subcommands {
        assert!(help.contains(sub.as_str()), "`cargo xtask --help` does not list {sub}:\n{help}");
    }
}

#[test]
fn an_unknown_flag_is_refused_naming_it() {
    let out = xtask(&["soak", "--minuets", "1"]);
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("--minuets"), "{error}");
}
