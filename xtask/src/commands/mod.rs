//! The `cargo xtask` commands.

pub mod bench;
pub mod demo;
pub mod stack;
pub mod test;

use std::time::Instant;

/// Prints a step header.
pub(crate) fn header(text: &str) {
    println!("\n==> {text}");
}

/// `12.3s` since `start`.
pub(crate) fn elapsed(start: Instant) -> String {
    format!("{:.1}s", start.elapsed().as_secs_f64())
}
