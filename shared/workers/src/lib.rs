//! `shared-workers`: the toolkit on Cloudflare Workers, with the Lambda
//! entry point's shape.
//!
//! A team gives its record type (serde), what one record means (a
//! [`UnitOfWork`]: its D1 statements, each with the condition that makes it
//! safe and how to read that condition failing), and gets the queue
//! handler: each message's body read on its own, refusals quarantined with
//! their reason (in a D1 table of its naming), every effect committed once
//! with its idempotency marker in the same D1 `batch` (one SQL
//! transaction), each message acknowledged or retried with a delay by the
//! core's rules, and a summary line and metrics in the Lambda functions'
//! shape.
//!
//! ```ignore
//! shared_workers::export_queue!(consume);
//!
//! async fn consume(batch: shared_workers::Batch, env: shared_workers::Env) -> Result<(), shared_workers::Error> {
//!     let inventory = shared_workers::config::required(&env, "INVENTORY_TABLE")?;
//!     shared_workers::queue("inventory-reservations", batch, &env, move |r| my_domain::reserve(&inventory, r)).await
//! }
//! ```
//!
//! The parts:
//! - [`unit`](mod@unit): [`UnitOfWork`] and [`Write`], the names of `shared`'s.
//! - [`d1`]: statements as values, the guard that names a failed write,
//!   and (wasm32) the binding that counts what it sends.
//! - [`config`]: the settings from the Worker's vars.
//! - [`telemetry`]: the summary line and the EMF document.
//! - [`r2`]: typed R2 event notifications, an object's lines and its
//!   manifest, and (wasm32) the object ingest for any line parser.
//! - (wasm32) the queue consumer: `queue`, `Consumer`, `Batch`, and
//!   [`export_queue!`].
//!
//! The batch rules, keys, fingerprints, the reading of failed conditions,
//! quarantine records, line formats and manifests are `shared-core`'s: the
//! functions the Lambda adapter calls. The Workers bindings exist on
//! wasm32 only; natively the platform-neutral part builds and is tested
//! alone.
#![deny(missing_docs)]

// Its caller is the queue consumer, on wasm32; natively its tests call it.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod commit;
pub mod config;
pub mod d1;
pub mod r2;
pub mod telemetry;
pub mod unit;

#[cfg(target_arch = "wasm32")]
mod queue;

pub use shared_core::batch::{Disposition, Invalid, Outcome, RecordError, Summary};
pub use shared_core::plan::Verdict;
pub use unit::{IntoPlan, UnitOfWork, Write};

#[cfg(target_arch = "wasm32")]
pub use queue::{Batch, Consumer, Error, Message, back_off, now, queue};
#[cfg(target_arch = "wasm32")]
pub use worker::{self, Env};

/// What a record became: its outcome, or why it can never apply (the
/// reason it is quarantined with).
pub type Decided = Result<Outcome, String>;

/// Exports `handler` as the Worker's queue handler (`queue` of the wasm
/// module, which the entry module calls). `handler` is an `async fn(Batch,
/// Env) -> Result<(), Error>`; an error fails the invocation, and the
/// runtime retries the whole batch.
///
/// The export reads the delivered batch itself rather than through
/// `#[event(queue)]`: workers-rs 0.8.7 hides a message's `attempts`
/// (cloudflare/workers-rs#1057), which the retry delays are made from.
// rustfmt indents the attribute's arguments further on every run.
#[rustfmt::skip]
#[macro_export]
macro_rules! export_queue {
    ($handler:path) => {
        #[$crate::__private::wasm_bindgen::prelude::wasm_bindgen(
            wasm_bindgen = $crate::__private::wasm_bindgen,
            wasm_bindgen_futures = $crate::__private::wasm_bindgen_futures,
            js_sys = $crate::__private::js_sys,
            js_name = queue
        )]
        #[doc(hidden)]
        pub async fn __shared_workers_queue(
            batch: $crate::__private::MessageBatch,
            env: $crate::Env,
            _ctx: $crate::__private::Context,
        ) -> ::core::result::Result<$crate::__private::JsValue, $crate::__private::JsValue> {
            $crate::__private::run($handler, batch, env).await
        }
    };
}

/// What [`export_queue!`] expands to refers to.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __private {
    pub use crate::queue::run;
    pub use worker::wasm_bindgen::JsValue;
    pub use worker::worker_sys::{Context, MessageBatch};
    pub use worker::{js_sys, wasm_bindgen, wasm_bindgen_futures};
}
