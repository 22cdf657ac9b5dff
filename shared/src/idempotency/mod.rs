//! Idempotency: stable keys derived from event identity, and a
//! storage-independent core over a small store trait.
//!
//! Two paths, by where the effect lands:
//! - **Exactly-once** (effects on DynamoDB): the marker and the effect commit
//!   in one `TransactWriteItems` ([`crate::exactly_once`]); there is no window
//!   in which one exists without the other.
//! - **Lock** (effects anywhere else): [`Idempotency::run`] takes an
//!   `INPROGRESS` lock with one conditional write, runs the effect, stores the
//!   result as `COMPLETED`, or releases the lock on failure. This is the
//!   Powertools model, on the same table schema.

pub mod key;

pub use key::{IdempotencyKey, KeyError, KeySource};

#[cfg(feature = "lock")]
pub mod dynamo;
#[cfg(feature = "lock")]
mod lock;
#[cfg(feature = "lock")]
pub mod memory;

#[cfg(feature = "lock")]
pub use lock::*;
