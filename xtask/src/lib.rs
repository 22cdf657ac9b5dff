//! Dev tooling for the stream processor: the local AWS stack (moto server +
//! `cargo lambda watch`), the event source mapping driver, and the commands
//! behind `cargo xtask demo | stack | test | bench`.

pub mod infra;
