//! A record's effect on D1: its idempotency key and the writes that are
//! its effect, each with the condition that makes it safe and how to read
//! that condition failing. The same names as on Lambda
//! (`shared::UnitOfWork`, `shared::Write`), so the two read side by side.
//!
//! A write's condition is SQL's own: the write must change at least one
//! row (an `UPDATE ... WHERE available >= ?1` that matches nothing, an
//! `INSERT OR IGNORE` of a row that exists). When it changes none, the D1
//! batch it is in fails as a whole, and the toolkit reads the stored row
//! with the write's [`read`](Write::read) statement (D1's stand-in for
//! DynamoDB's `ReturnValuesOnConditionCheckFailure`) and asks the write's
//! verdict ([`reject_with`](Write::reject_with),
//! [`on_condition_failed`](Write::on_condition_failed)).

use std::rc::Rc;

use shared_core::batch::{Outcome, RecordError};
use shared_core::plan::Verdict;

use crate::d1::{Row, Statement};

type ReadFailure = Rc<dyn Fn(Option<&Row>) -> Verdict>;

/// One write of a unit of work: a statement, guarded unless made
/// [`unconditional`](Self::unconditional).
#[derive(Clone)]
pub struct Write {
    pub(crate) statement: Statement,
    pub(crate) guarded: bool,
    pub(crate) read: Option<Statement>,
    pub(crate) on_condition_failed: ReadFailure,
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Write")
            .field("statement", &self.statement)
            .field("guarded", &self.guarded)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl Write {
    /// A write whose condition is that it changes at least one row: when it
    /// changes none, nothing of its batch applies and its verdict decides
    /// the record (by default, rejected). Write an insert whose row may
    /// exist as `INSERT OR IGNORE`: a constraint's error does not say which
    /// write it stopped, so it is read as another writer's race and retried.
    pub fn new(statement: Statement) -> Self {
        let reject: ReadFailure = Rc::new(|_| Verdict::Reject("a condition of its write failed".into()));
        Self { statement, guarded: true, read: None, on_condition_failed: reject }
    }

    /// A write without a condition: whatever it changes, the unit goes on.
    pub fn unconditional(statement: Statement) -> Self {
        Self { guarded: false, ..Self::new(statement) }
    }

    /// The statement that reads the stored row when the condition fails
    /// (its first row, or none, is what the verdict gets).
    pub fn read(mut self, statement: Statement) -> Self {
        self.read = Some(statement);
        self
    }

    /// Rejects the record when the condition fails, with the reason
    /// `reason` gives from the stored row (absent when there is none):
    /// the common case of [`on_condition_failed`](Self::on_condition_failed).
    pub fn reject_with(self, reason: impl Fn(Option<&Row>) -> String + 'static) -> Self {
        self.on_condition_failed(move |stored| Verdict::Reject(reason(stored)))
    }

    /// How to read the condition failing, from the stored row: the effect
    /// is there already ([`Verdict::Duplicate`]), the stored state is newer
    /// ([`Verdict::Stale`]), the record can never apply
    /// ([`Verdict::Reject`]), or another writer got in the way
    /// ([`Verdict::Retry`]).
    pub fn on_condition_failed(mut self, read: impl Fn(Option<&Row>) -> Verdict + 'static) -> Self {
        self.on_condition_failed = Rc::new(read);
        self
    }
}

/// Where a unit's idempotency key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Derive {
    /// The message's identity (`IDEMPOTENCY_KEY_SOURCE`).
    Record,
    /// `{prefix}#{kind}#{identity}`.
    Named { kind: String, identity: String },
    /// No marker.
    None,
}

/// One record's effect: its idempotency marker and its writes, committed
/// in one D1 batch or not at all.
///
/// ```
/// use shared_workers::d1::Statement;
/// use shared_workers::{UnitOfWork, Write};
///
/// let unit = UnitOfWork::keyed("reservation", "r-1").write(
///     Write::new(Statement::new("UPDATE inventory SET available = available - ?1 WHERE sku = ?2 AND available >= ?1").bind(3u32).bind("A-1"))
///         .read(Statement::new("SELECT available FROM inventory WHERE sku = ?1").bind("A-1"))
///         .reject_with(|stored| match stored {
///             None => "sku A-1: no such item".to_owned(),
///             Some(row) => format!("sku A-1: 3 requested, {} available", row["available"]),
///         }),
/// );
/// # let _ = unit;
/// ```
#[derive(Debug, Clone)]
pub struct UnitOfWork {
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) derive: Derive,
    pub(crate) fingerprint: Option<String>,
    pub(crate) writes: Vec<Write>,
    pub(crate) counted: Outcome,
    pub(crate) remember_rejection: bool,
}

impl UnitOfWork {
    fn with(derive: Derive) -> Self {
        Self { derive, fingerprint: None, writes: Vec::new(), counted: Outcome::Applied, remember_rejection: false }
    }

    /// The record's writes, exactly once per message: the key is the
    /// message's identity (`IDEMPOTENCY_KEY_SOURCE`: by default its id, or
    /// a JSON pointer into the body such as `/eventId`). A redelivery
    /// changes nothing.
    pub fn for_record() -> Self {
        Self::with(Derive::Record)
    }

    /// Exactly once per `identity` of `kind` (a reservation id): the key
    /// `{prefix}#{kind}#{identity}`, so a producer's resend in another
    /// message is caught too. The body's JSON meaning is the fingerprint
    /// unless [`fingerprint`](Self::fingerprint) says otherwise, so the
    /// same identity with another payload is a reused key (quarantined).
    pub fn keyed(kind: impl Into<String>, identity: impl Into<String>) -> Self {
        Self::with(Derive::Named { kind: kind.into(), identity: identity.into() })
    }

    /// Writes without a marker: for effects whose conditions alone make
    /// them idempotent.
    pub fn unkeyed() -> Self {
        Self::with(Derive::None)
    }

    /// The payload's fingerprint ([`shared_core::key::fingerprint`] of
    /// what identifies the record's content).
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }

    /// Adds a write to the effect.
    pub fn write(mut self, write: Write) -> Self {
        self.writes.push(write);
        self
    }

    /// Makes a rejection final: the marker is committed with the reason,
    /// and every later record with the key is quarantined as `rejected
    /// before: <reason>` without being evaluated. By default (as in
    /// Powertools, and on Lambda) a rejected record leaves no marker and a
    /// later one with its key is evaluated again.
    pub fn remember_rejection(mut self) -> Self {
        self.remember_rejection = true;
        self
    }

    /// How the record counts when the unit commits (default
    /// [`Outcome::Applied`]).
    pub fn counted_as(mut self, outcome: Outcome) -> Self {
        self.counted = outcome;
        self
    }
}

/// What a planner may return for one record: a [`UnitOfWork`], `Option`
/// of one (`None`: nothing to do, counted as ignored), or a `Result` whose
/// error is [`shared_core::batch::Invalid`] (quarantined with its reason)
/// or [`RecordError`] (a transient one is retried).
pub trait IntoPlan {
    /// The record's unit, `None` to ignore it, or why it has none.
    fn into_plan(self) -> Result<Option<UnitOfWork>, RecordError>;
}

impl IntoPlan for UnitOfWork {
    fn into_plan(self) -> Result<Option<UnitOfWork>, RecordError> {
        Ok(Some(self))
    }
}

impl IntoPlan for Option<UnitOfWork> {
    fn into_plan(self) -> Result<Option<UnitOfWork>, RecordError> {
        Ok(self)
    }
}

impl<P: IntoPlan, E: Into<RecordError>> IntoPlan for Result<P, E> {
    fn into_plan(self) -> Result<Option<UnitOfWork>, RecordError> {
        self.map_err(Into::into)?.into_plan()
    }
}
