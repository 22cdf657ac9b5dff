//! D1 statements as values, and what a failed D1 batch says.
//!
//! A [`Statement`] is SQL with its bound [`Param`]s, built before it meets
//! the binding, so what a batch will do can be planned and unit-tested
//! natively. `Db` (wasm32) sends statements as one D1 `batch`, which D1
//! runs as one SQL transaction: every statement applies, or none does.
//! <https://developers.cloudflare.com/d1/worker-api/d1-database/#batch>
//!
//! D1 reports a failed batch with one message and no index, so the
//! toolkit makes the statements that can fail name themselves: a
//! [`guard`] after a write fails the batch with its label when the write
//! changed no row (the write's condition failed), and [`DbError`] reads the
//! label back.

use serde_json::Value;
use shared_core::quarantine::Quarantined;

/// A row as D1 returns it: column name to value.
pub type Row = serde_json::Map<String, Value>;

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// TEXT.
    Text(String),
    /// INTEGER. D1 numbers cross JavaScript: exact to 2^53.
    Int(i64),
    /// REAL.
    Real(f64),
    /// NULL.
    Null,
}

impl From<&str> for Param {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

impl From<String> for Param {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<&String> for Param {
    fn from(s: &String) -> Self {
        Self::Text(s.clone())
    }
}

impl From<i64> for Param {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

impl From<i32> for Param {
    fn from(n: i32) -> Self {
        Self::Int(n.into())
    }
}

impl From<u32> for Param {
    fn from(n: u32) -> Self {
        Self::Int(n.into())
    }
}

impl From<u64> for Param {
    /// Saturates at `i64::MAX` (far above what JavaScript carries exactly).
    fn from(n: u64) -> Self {
        Self::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<f64> for Param {
    fn from(x: f64) -> Self {
        Self::Real(x)
    }
}

impl From<bool> for Param {
    fn from(b: bool) -> Self {
        Self::Int(b.into())
    }
}

impl<T: Into<Param>> From<Option<T>> for Param {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// One SQL statement and its parameters.
///
/// ```
/// use shared_workers::d1::{Param, Statement};
///
/// let s = Statement::new("UPDATE inventory SET available = available - ?1 WHERE sku = ?2").bind(3u32).bind("A-1");
/// assert_eq!(s.params(), [Param::Int(3), Param::Text("A-1".into())]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    sql: String,
    params: Vec<Param>,
}

impl Statement {
    /// A statement with no parameters yet (`?`, or `?1`, `?2`... by position).
    pub fn new(sql: impl Into<String>) -> Self {
        Self { sql: sql.into(), params: Vec::new() }
    }

    /// Binds the next parameter.
    pub fn bind(mut self, param: impl Into<Param>) -> Self {
        self.params.push(param.into());
        self
    }

    /// A statement with these parameters.
    pub fn with_params(sql: impl Into<String>, params: Vec<Param>) -> Self {
        Self { sql: sql.into(), params }
    }

    /// The SQL.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The bound parameters, in order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }
}

/// The most parameters one D1 statement takes.
/// <https://developers.cloudflare.com/d1/platform/limits/>
pub const MAX_PARAMS: usize = 100;

/// `SELECT {columns} FROM {table} WHERE {id} IN (...)` of these ids, in
/// statements of at most [`MAX_PARAMS`] ids each.
///
/// ```
/// let ids: Vec<String> = (0..250).map(|i| format!("o{i}")).collect();
/// let statements = shared_workers::d1::select_in("id, n", "t", "id", ids.iter());
/// assert_eq!(statements.iter().map(|s| s.params().len()).collect::<Vec<_>>(), [100, 100, 50]);
/// ```
pub fn select_in<'a>(
    columns: &str,
    table: &str,
    id: &str,
    ids: impl IntoIterator<Item = &'a String>,
) -> Vec<Statement> {
    let ids: Vec<&String> = ids.into_iter().collect();
    ids.chunks(MAX_PARAMS)
        .map(|chunk| {
            let marks = vec!["?"; chunk.len()].join(", ");
            Statement::with_params(
                format!("SELECT {columns} FROM {table} WHERE {id} IN ({marks})"),
                chunk.iter().map(|s| Param::from(*s)).collect(),
            )
        })
        .collect()
}

/// What marks a guard's label in the error D1 returns.
const GUARD_PREFIX: &str = "guard#";

/// A statement that fails its batch, naming `label`, when the statement
/// just before it changed no row. SQLite's `changes()` counts the rows the
/// last INSERT, UPDATE or DELETE changed, and `json_extract` refuses a
/// path that does not start with `$` with an error that quotes it (`bad
/// JSON path: 'guard#...'`): the one failure whose message carries a value
/// of ours, so a failed batch says which guard stopped it.
///
/// ```
/// let g = shared_workers::d1::guard("3.0");
/// assert_eq!(g.sql(), "SELECT json_extract('{}', ?1) WHERE changes() = 0");
/// let error = shared_workers::d1::DbError::new("D1_ERROR: bad JSON path: 'guard#3.0': SQLITE_ERROR");
/// assert_eq!(error.guard(), Some("3.0"));
/// ```
pub fn guard(label: &str) -> Statement {
    Statement::new("SELECT json_extract('{}', ?1) WHERE changes() = 0").bind(format!("{GUARD_PREFIX}{label}"))
}

/// The row of a quarantined record in `table` (`source`, `record_id`,
/// `reason`, `raw`, `quarantined_at`): kept once per source and id, so a
/// record quarantined again (a redelivery) changes nothing.
pub fn quarantine(table: &str, q: &Quarantined, now: &str) -> Statement {
    Statement::new(format!(
        "INSERT OR IGNORE INTO {table} (source, record_id, reason, raw, quarantined_at) VALUES (?, ?, ?, ?, ?)"
    ))
    .bind(&q.source)
    .bind(&q.record_id)
    .bind(&q.reason)
    .bind(&q.raw)
    .bind(now)
}

/// A failed D1 request, by its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DbError {
    message: String,
}

/// How a failed batch is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A [`guard`] stopped it: a write's condition failed.
    Guard,
    /// A constraint (a primary key, NOT NULL) refused a write: another
    /// writer got there between the read and the batch.
    Constraint,
    /// The schema is not there (no such table or column): nothing can work
    /// until it is migrated.
    Schema,
    /// Anything else (overload, a reset, a timeout): retry.
    Transient,
}

impl DbError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }

    /// The label of the [`guard`] that failed the batch, if one did.
    pub fn guard(&self) -> Option<&str> {
        let start = self.message.find(GUARD_PREFIX)? + GUARD_PREFIX.len();
        let rest = &self.message[start..];
        Some(&rest[..rest.find('\'').unwrap_or(rest.len())])
    }

    /// What the failure means.
    pub fn failure(&self) -> Failure {
        if self.guard().is_some() {
            Failure::Guard
        } else if self.message.contains("constraint failed") {
            Failure::Constraint
        } else if self.message.contains("no such table") || self.message.contains("no such column") {
            Failure::Schema
        } else {
            Failure::Transient
        }
    }

    /// A write saw another writer: read again and decide again.
    pub fn is_conflict(&self) -> bool {
        matches!(self.failure(), Failure::Guard | Failure::Constraint)
    }
}

#[cfg(target_arch = "wasm32")]
pub use binding::{Db, Results};

#[cfg(target_arch = "wasm32")]
mod binding {
    use std::cell::Cell;

    use serde::de::DeserializeOwned;
    use wasm_bindgen::{JsCast, JsValue};
    use worker::{D1Database, D1PreparedStatement};

    use super::{DbError, Param, Row, Statement};

    /// A D1 binding, counting the statements and round trips it sends
    /// (the summary line reports them).
    #[derive(Debug)]
    pub struct Db {
        db: D1Database,
        statements: Cell<u64>,
        round_trips: Cell<u64>,
    }

    /// The results of one statement of a batch.
    #[derive(Debug)]
    pub struct Results(worker::D1Result);

    impl Results {
        /// Its rows, each read as a `T`.
        pub fn rows<T: DeserializeOwned>(&self) -> Result<Vec<T>, DbError> {
            self.0.results::<T>().map_err(|e| DbError::new(format!("a D1 row does not read back: {e}")))
        }

        /// Its rows as column maps.
        pub fn maps(&self) -> Result<Vec<Row>, DbError> {
            self.rows::<Row>()
        }
    }

    impl Db {
        /// Counts what is sent to `db`.
        pub fn new(db: D1Database) -> Self {
            Self { db, statements: Cell::new(0), round_trips: Cell::new(0) }
        }

        /// Statements and round trips sent so far.
        pub fn sent(&self) -> (u64, u64) {
            (self.statements.get(), self.round_trips.get())
        }

        /// Runs `statements` as one D1 batch (one transaction): the results
        /// of each, or why the batch failed (then nothing of it applied).
        pub async fn run(&self, statements: &[Statement]) -> Result<Vec<Results>, DbError> {
            if statements.is_empty() {
                return Ok(Vec::new());
            }
            let prepared = statements.iter().map(|s| self.prepare(s)).collect::<Result<Vec<_>, _>>()?;
            self.statements.set(self.statements.get() + statements.len() as u64);
            self.round_trips.set(self.round_trips.get() + 1);
            match self.db.batch(prepared).await {
                Ok(results) => Ok(results.into_iter().map(Results).collect()),
                Err(e) => Err(DbError::new(message(&e))),
            }
        }

        fn prepare(&self, s: &Statement) -> Result<D1PreparedStatement, DbError> {
            let params: Vec<JsValue> = s
                .params()
                .iter()
                .map(|p| match p {
                    Param::Text(t) => JsValue::from_str(t),
                    // D1 numbers are JavaScript numbers: exact to 2^53.
                    Param::Int(i) => JsValue::from_f64(*i as f64),
                    Param::Real(x) => JsValue::from_f64(*x),
                    Param::Null => JsValue::NULL,
                })
                .collect();
            self.db.prepare(s.sql()).bind(&params).map_err(|e| DbError::new(format!("binding {}: {e}", s.sql())))
        }
    }

    /// The text of a failed batch: the JavaScript error's message and its
    /// cause (`D1_ERROR: ...`), which worker's `Display` wraps in a Debug
    /// form.
    fn message(e: &worker::Error) -> String {
        match e {
            worker::Error::D1(d1) => {
                let error: &js_sys::Error = d1.as_ref();
                let mut text = String::from(error.message());
                if let Some(cause) = error.cause().dyn_ref::<js_sys::Error>() {
                    text.push_str(": ");
                    text.push_str(&String::from(cause.message()));
                }
                text
            }
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_read_from_d1_messages() {
        let read = |m: &str| DbError::new(m).failure();
        assert_eq!(read("D1_ERROR: bad JSON path: 'guard#7.1': SQLITE_ERROR"), Failure::Guard);
        assert_eq!(DbError::new("D1_ERROR: bad JSON path: 'guard#7.1': SQLITE_ERROR").guard(), Some("7.1"));
        assert_eq!(read("D1_ERROR: UNIQUE constraint failed: idempotency.key: SQLITE_CONSTRAINT"), Failure::Constraint);
        assert_eq!(read("D1_ERROR: no such table: inventory: SQLITE_ERROR"), Failure::Schema);
        assert_eq!(read("D1_ERROR: Network connection lost."), Failure::Transient);
        assert!(DbError::new("UNIQUE constraint failed: t.k").is_conflict());
        assert!(!DbError::new("overloaded").is_conflict());
    }

    #[test]
    fn quarantine_rows_keep_the_cores_record() {
        let q = Quarantined::new("queue/q", "m-1", "bad", "raw");
        let s = quarantine("quarantine", &q, "now");
        assert!(s.sql().starts_with("INSERT OR IGNORE INTO quarantine"));
        assert_eq!(s.params()[..3], [Param::from("queue/q"), Param::from("m-1"), Param::from("bad")]);
    }
}
