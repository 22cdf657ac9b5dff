//! Exactly-once on D1: a batch's units of work, each with its idempotency
//! marker, committed in one D1 `batch` (one SQL transaction), decided by
//! the core's rules.
//!
//! 1. The markers of the batch's keys are read (one round trip): a key
//!    seen before is a duplicate, a reused key, or a remembered rejection
//!    (the core's [`read_cancellation`] with [`Reading::Marker`]); a key
//!    repeated within the batch is decided by [`repeated_keys_of`].
//! 2. The rest go in one batch: each unit's writes, each guarded write
//!    followed by its [`guard`](crate::d1::guard), then its marker (a plain
//!    INSERT: a marker another invocation wrote since the read fails the
//!    batch on its primary key), and the quarantine rows of the records
//!    decided as rejected.
//! 3. A failed batch applied nothing. A guard names its write: the stored
//!    row is read with the write's `read` statement, its verdict decides
//!    the unit ([`Reading::Write`]), and the undecided rest goes again; a
//!    marker's primary key means the markers are read again; anything else
//!    is retried after a back-off, a few times, then given up (the
//!    messages go back to the queue).
//!
//! Every statement of a unit is in the batch that commits it, so a unit is
//! applied with its marker or not at all, and a redelivered message finds
//! its marker.

use std::collections::HashMap;

use shared_core::batch::Outcome;
use shared_core::plan::{Next, Pending, Reading, read_cancellation, repeated_keys_of};
use shared_core::quarantine::Quarantined;

use crate::d1::{self, DbError, Failure, Row, Statement};
use crate::unit::UnitOfWork;

/// Back-offs of one commit before it gives up (transient failures, or
/// writes whose verdict is [`shared_core::plan::Verdict::Retry`]).
pub(crate) const MAX_BACK_OFFS: u32 = 6;

/// The D1 port: one batch at a time, and a pause between attempts.
pub(crate) trait Database {
    /// Runs `statements` as one transaction: each statement's rows.
    async fn batch(&self, statements: &[Statement]) -> Result<Vec<Vec<Row>>, DbError>;
    /// Waits before back-off `attempt` (1, 2, ...).
    async fn pause(&self, attempt: u32);
}

/// Where a commit writes besides the units' own tables.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tables<'a> {
    /// The idempotency markers (`key` primary key, `fingerprint`,
    /// `outcome`, `rejection`, `recorded_at`).
    pub idempotency: &'a str,
    /// Quarantined records.
    pub quarantine: &'a str,
    /// The records' source, as quarantine rows name it (`queue/<name>`).
    pub source: &'a str,
}

/// One record's unit of work, its key derived.
#[derive(Debug)]
pub(crate) struct Unit<'a> {
    /// The record's id (a message id), for its quarantine row.
    pub record_id: &'a str,
    /// The record as received, for its quarantine row.
    pub raw: &'a str,
    /// Its idempotency key; `None`: no marker.
    pub key: Option<String>,
    /// The fingerprint of its payload.
    pub fingerprint: Option<String>,
    /// What it writes.
    pub work: &'a UnitOfWork,
}

/// What became of one unit: its outcome, or the reason it was rejected
/// (its quarantine row committed with the batch).
pub(crate) type Decided = Result<Outcome, String>;

/// Why nothing of a commit applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CommitFailure {
    /// Retry later.
    #[error("{0}")]
    Transient(String),
    /// The schema is missing: nothing can work until it is migrated.
    #[error("{0}")]
    Fatal(String),
}

const MARKER_COLUMNS: &str = "key, fingerprint, rejection";

#[derive(Debug, serde::Deserialize)]
struct MarkerRow {
    key: String,
    fingerprint: Option<String>,
    rejection: Option<String>,
}

/// The marker's `outcome` column for a unit that commits as `pending` says.
fn outcome_label(pending: &Pending) -> &'static str {
    match (&pending.rejection, pending.counted) {
        (Some(_), _) => "REJECTED",
        (None, Outcome::Applied) => "APPLIED",
        (None, Outcome::Stale) => "STALE",
        (None, Outcome::Duplicate | Outcome::KeyReused) => "DUPLICATE",
    }
}

/// Commits `units` (with the rows of `quarantined`, records refused before
/// they had a unit) in one D1 batch: each unit's outcome or rejection, or
/// why nothing applied.
pub(crate) async fn commit<D: Database>(
    db: &D,
    tables: Tables<'_>,
    units: &[Unit<'_>],
    quarantined: &[Quarantined],
    now: &str,
) -> Result<Vec<Decided>, CommitFailure> {
    let mut pending: Vec<Pending> = units
        .iter()
        .map(|u| Pending {
            remember_rejection: u.work.remember_rejection,
            ..Pending::new(u.key.is_some(), u.work.counted)
        })
        .collect();
    let keys: Vec<(Option<&str>, Option<&str>)> =
        units.iter().map(|u| (u.key.as_deref(), u.fingerprint.as_deref())).collect();
    for (p, repeated) in pending.iter_mut().zip(repeated_keys_of(&keys)) {
        if let Some(outcome) = repeated {
            (p.marker, p.writes, p.decided) = (false, false, Some(Ok(outcome)));
        }
    }
    let mut read_markers = true;
    // The markers are read again after a key refused a write: if they
    // decide nothing, the refusal was another writer's race, or a write of
    // the units' own: back off.
    let mut after_conflict = false;
    let mut back_offs = 0;
    let mut last = String::from("the commit kept conflicting with other writers");
    let rounds = 2 * units.len() + MAX_BACK_OFFS as usize + 4;
    for _ in 0..rounds {
        let mut next = Next::Resend;
        if read_markers {
            match markers(db, tables, units, &pending).await {
                Ok(readings) => {
                    read_markers = false;
                    if !readings.is_empty() {
                        next = read_cancellation(&mut pending, readings);
                    } else if after_conflict {
                        next = Next::BackOff;
                    }
                    after_conflict = false;
                }
                Err(e) => next = failed(&e, &mut last)?,
            }
        } else {
            let statements = statements(tables, units, &pending, quarantined, now);
            if statements.is_empty() {
                return Ok(finish(units, pending));
            }
            match db.batch(&statements).await {
                Ok(_) => {
                    for p in pending.iter_mut().filter(|p| p.decided.is_none()) {
                        p.decided = Some(p.rejection.clone().map_or(Ok(p.counted), Err));
                    }
                    return Ok(finish(units, pending));
                }
                Err(e) => match e.failure() {
                    Failure::Guard => match e.guard().and_then(guard_position) {
                        Some((unit, write)) => match verdict(db, units, unit, write).await {
                            Ok(reading) => next = read_cancellation(&mut pending, [(unit, reading)]),
                            Err(e) => next = failed(&e, &mut last)?,
                        },
                        // A guard of someone else's: another writer's race.
                        None => next = failed(&e, &mut last)?,
                    },
                    // A marker written since the read (or a write of the
                    // units' own refused by a key): read the markers again.
                    Failure::Constraint => {
                        last = e.to_string();
                        (read_markers, after_conflict) = (true, true);
                    }
                    Failure::Schema | Failure::Transient => next = failed(&e, &mut last)?,
                },
            }
        }
        if next == Next::BackOff {
            back_offs += 1;
            if back_offs > MAX_BACK_OFFS {
                break;
            }
            db.pause(back_offs).await;
        }
    }
    Err(CommitFailure::Transient(format!("gave up after {back_offs} retries: {last}")))
}

/// A failed request: the schema's absence stops the commit; anything else
/// backs off.
fn failed(e: &DbError, last: &mut String) -> Result<Next, CommitFailure> {
    if e.failure() == Failure::Schema {
        return Err(CommitFailure::Fatal(e.to_string()));
    }
    *last = e.to_string();
    Ok(Next::BackOff)
}

/// The markers stored for the keys still to write, as readings.
async fn markers<D: Database>(
    db: &D,
    tables: Tables<'_>,
    units: &[Unit<'_>],
    pending: &[Pending],
) -> Result<Vec<(usize, Reading)>, DbError> {
    let mut wanted: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, u) in units.iter().enumerate() {
        if let (Some(key), true) = (u.key.as_deref(), pending[i].marker) {
            wanted.entry(key).or_default().push(i);
        }
    }
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = wanted.keys().map(|k| (*k).to_owned()).collect();
    let results = db.batch(&d1::select_in(MARKER_COLUMNS, tables.idempotency, "key", keys.iter())).await?;
    let mut readings = Vec::new();
    for row in results.into_iter().flatten() {
        let Ok(marker) = serde_json::from_value::<MarkerRow>(serde_json::Value::Object(row)) else { continue };
        for &i in wanted.get(marker.key.as_str()).into_iter().flatten() {
            let reused = matches!((&marker.fingerprint, &units[i].fingerprint), (Some(a), Some(b)) if a != b);
            readings.push((i, Reading::Marker { reused, rejected: marker.rejection.clone() }));
        }
    }
    Ok(readings)
}

/// `unit.write` from a guard's label.
fn guard_position(label: &str) -> Option<(usize, usize)> {
    let (unit, write) = label.split_once('.')?;
    Some((unit.parse().ok()?, write.parse().ok()?))
}

/// The verdict of a write whose guard failed, from the stored row.
async fn verdict<D: Database>(db: &D, units: &[Unit<'_>], unit: usize, write: usize) -> Result<Reading, DbError> {
    let Some(write) = units.get(unit).and_then(|u| u.work.writes.get(write)) else {
        return Err(DbError::new(format!("guard {unit}.{write} names no write of the batch")));
    };
    let stored: Option<Row> = match &write.read {
        Some(read) => db.batch(std::slice::from_ref(read)).await?.into_iter().flatten().next(),
        None => None,
    };
    Ok(Reading::Write((write.on_condition_failed)(stored.as_ref())))
}

/// The batch of what is still to send: each unit's writes (guarded) and
/// marker, and the quarantine rows.
fn statements(
    tables: Tables<'_>,
    units: &[Unit<'_>],
    pending: &[Pending],
    quarantined: &[Quarantined],
    now: &str,
) -> Vec<Statement> {
    let mut out = Vec::new();
    for (i, (unit, p)) in units.iter().zip(pending).enumerate() {
        if p.writes {
            for (w, write) in unit.work.writes.iter().enumerate() {
                out.push(write.statement.clone());
                if write.guarded {
                    out.push(d1::guard(&format!("{i}.{w}")));
                }
            }
        }
        if p.marker {
            out.push(
                Statement::new(format!(
                    "INSERT INTO {} (key, fingerprint, outcome, rejection, recorded_at) VALUES (?, ?, ?, ?, ?)",
                    tables.idempotency
                ))
                .bind(unit.key.clone())
                .bind(unit.fingerprint.clone())
                .bind(outcome_label(p))
                .bind(p.rejection.clone())
                .bind(now),
            );
        }
    }
    let rejected = units.iter().zip(pending).filter_map(|(unit, p)| {
        let reason = match (&p.decided, &p.rejection) {
            (Some(Err(reason)), _) | (None, Some(reason)) => reason.clone(),
            (Some(Ok(Outcome::KeyReused)), _) => reused(unit),
            _ => return None,
        };
        Some(Quarantined::new(tables.source, unit.record_id, reason, unit.raw))
    });
    let rows: Vec<Quarantined> = quarantined.iter().cloned().chain(rejected).collect();
    out.extend(rows.iter().map(|q| d1::quarantine(tables.quarantine, q, now)));
    out
}

fn reused(unit: &Unit<'_>) -> String {
    format!("idempotency key {} was already used with a different payload", unit.key.as_deref().unwrap_or_default())
}

/// Each unit's end: a reused key is a rejection.
fn finish(units: &[Unit<'_>], pending: Vec<Pending>) -> Vec<Decided> {
    units
        .iter()
        .zip(pending)
        .map(|(unit, p)| match p.decided {
            Some(Ok(Outcome::KeyReused)) => Err(reused(unit)),
            Some(decided) => decided,
            None => Err("undecided".into()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use serde_json::json;

    use super::*;
    use crate::unit::Write;

    /// A D1 stand-in: answers each batch with `answer`, recording it.
    struct Fake<F: Fn(&[Statement], usize) -> Result<Vec<Vec<Row>>, DbError>> {
        answer: F,
        sent: RefCell<Vec<Vec<Statement>>>,
    }

    impl<F: Fn(&[Statement], usize) -> Result<Vec<Vec<Row>>, DbError>> Database for Fake<F> {
        async fn batch(&self, statements: &[Statement]) -> Result<Vec<Vec<Row>>, DbError> {
            let n = self.sent.borrow().len();
            self.sent.borrow_mut().push(statements.to_vec());
            (self.answer)(statements, n)
        }

        async fn pause(&self, _: u32) {}
    }

    fn fake<F: Fn(&[Statement], usize) -> Result<Vec<Vec<Row>>, DbError>>(answer: F) -> Fake<F> {
        Fake { answer, sent: RefCell::new(Vec::new()) }
    }

    const TABLES: Tables<'static> = Tables { idempotency: "idempotency", quarantine: "quarantine", source: "queue/q" };

    fn reserve(sku: &str, n: u32) -> UnitOfWork {
        let sku = sku.to_owned();
        UnitOfWork::keyed("reservation", "ignored").write(
            Write::new(
                Statement::new("UPDATE inventory SET available = available - ?1 WHERE sku = ?2").bind(n).bind(&sku),
            )
            .read(Statement::new("SELECT available FROM inventory WHERE sku = ?1").bind(&sku))
            .reject_with(move |stored| match stored {
                None => format!("sku {sku}: no such item"),
                Some(row) => format!("sku {sku}: {n} requested, {} available", row["available"]),
            }),
        )
    }

    fn unit<'a>(id: &'a str, key: &str, fingerprint: &str, work: &'a UnitOfWork) -> Unit<'a> {
        Unit { record_id: id, raw: "{}", key: Some(key.into()), fingerprint: Some(fingerprint.into()), work }
    }

    fn row(value: serde_json::Value) -> Row {
        value.as_object().cloned().unwrap()
    }

    fn sqls(batch: &[Statement]) -> Vec<String> {
        batch.iter().map(|s| s.sql().split(' ').take(3).collect::<Vec<_>>().join(" ")).collect()
    }

    #[test]
    fn new_units_commit_their_writes_guards_and_markers_in_one_batch() {
        let (a, b) = (reserve("A", 1), reserve("B", 2));
        let units = [unit("m1", "k1", "f1", &a), unit("m2", "k2", "f2", &b)];
        let db = fake(|_, _| Ok(vec![]));
        let decided = futures::executor::block_on(commit(&db, TABLES, &units, &[], "now")).unwrap();
        assert_eq!(decided, [Ok(Outcome::Applied), Ok(Outcome::Applied)]);
        let sent = db.sent.borrow();
        assert_eq!(sent.len(), 2, "the markers' read, then one batch");
        assert!(sent[0][0].sql().starts_with("SELECT key, fingerprint, rejection FROM idempotency"));
        assert_eq!(
            sqls(&sent[1]),
            ["UPDATE inventory SET", "SELECT json_extract('{}', ?1)", "INSERT INTO idempotency"].repeat(2)
        );
        assert_eq!(sent[1][1].params(), [d1::Param::from("guard#0.0")]);
    }

    #[test]
    fn stored_markers_decide_duplicates_and_reused_keys_and_repeats_in_the_batch_too() {
        let a = reserve("A", 1);
        let units = [
            unit("m1", "k1", "f1", &a),
            unit("m2", "k2", "other", &a),
            unit("m3", "k3", "f3", &a),
            unit("m4", "k3", "f3", &a),
        ];
        let db = fake(|s, n| match n {
            0 => {
                assert_eq!(s[0].params().len(), 3, "each key read once");
                Ok(vec![vec![
                    row(json!({"key": "k1", "fingerprint": "f1", "rejection": null})),
                    row(json!({"key": "k2", "fingerprint": "f2", "rejection": null})),
                ]])
            }
            _ => Ok(vec![]),
        });
        let decided = futures::executor::block_on(commit(&db, TABLES, &units, &[], "now")).unwrap();
        assert_eq!(decided[0], Ok(Outcome::Duplicate));
        assert_eq!(decided[1], Err("idempotency key k2 was already used with a different payload".into()));
        assert_eq!((decided[2].clone(), decided[3].clone()), (Ok(Outcome::Applied), Ok(Outcome::Duplicate)));
        let sent = db.sent.borrow();
        assert_eq!(
            sqls(&sent[1]),
            ["UPDATE inventory SET", "SELECT json_extract('{}', ?1)", "INSERT INTO idempotency", "INSERT OR IGNORE"]
        );
        assert_eq!(sent[1][3].params()[1], d1::Param::from("m2"), "the reused key's message quarantined");
    }

    #[test]
    fn a_failed_guard_is_read_from_the_stored_row_and_the_rest_commits_without_it() {
        let (a, b) = (reserve("A", 1), reserve("B", 5));
        let units = [unit("m1", "k1", "f1", &a), unit("m2", "k2", "f2", &b)];
        let db = fake(|s, n| match n {
            0 => Ok(vec![vec![]]),
            1 => Err(DbError::new("D1_ERROR: bad JSON path: 'guard#1.0': SQLITE_ERROR")),
            2 => {
                assert_eq!(s[0].params(), [d1::Param::from("B")]);
                Ok(vec![vec![row(json!({"available": 1}))]])
            }
            _ => Ok(vec![]),
        });
        let decided = futures::executor::block_on(commit(&db, TABLES, &units, &[], "now")).unwrap();
        assert_eq!(decided, [Ok(Outcome::Applied), Err("sku B: 5 requested, 1 available".into())]);
        let sent = db.sent.borrow();
        assert_eq!(
            sqls(&sent[3]),
            ["UPDATE inventory SET", "SELECT json_extract('{}', ?1)", "INSERT INTO idempotency", "INSERT OR IGNORE"],
            "unit 1 sends nothing but its quarantine row"
        );
    }

    #[test]
    fn a_remembered_rejection_writes_its_marker_with_the_reason_beside_its_quarantine_row() {
        let work = reserve("Z", 1).remember_rejection();
        let units = [unit("m1", "k1", "f1", &work)];
        let db = fake(|_, n| match n {
            1 => Err(DbError::new("D1_ERROR: bad JSON path: 'guard#0.0': SQLITE_ERROR")),
            _ => Ok(vec![vec![]]),
        });
        let decided = futures::executor::block_on(commit(&db, TABLES, &units, &[], "now")).unwrap();
        assert_eq!(decided, [Err("sku Z: no such item".into())]);
        let last = db.sent.borrow().last().cloned().unwrap();
        assert_eq!(sqls(&last), ["INSERT INTO idempotency", "INSERT OR IGNORE"]);
        assert_eq!(last[0].params()[2..4], [d1::Param::from("REJECTED"), d1::Param::from("sku Z: no such item")]);
    }

    #[test]
    fn transient_failures_back_off_then_give_up_and_a_missing_schema_stops_at_once() {
        let a = reserve("A", 1);
        let units = [unit("m1", "k1", "f1", &a)];
        let flaky =
            fake(|_, n| if n == 1 { Err(DbError::new("D1_ERROR: Network connection lost.")) } else { Ok(vec![]) });
        let decided = futures::executor::block_on(commit(&flaky, TABLES, &units, &[], "now")).unwrap();
        assert_eq!(decided, [Ok(Outcome::Applied)]);
        let down = fake(|_, _| Err(DbError::new("D1_ERROR: overloaded")));
        let failure = futures::executor::block_on(commit(&down, TABLES, &units, &[], "now")).unwrap_err();
        assert!(matches!(failure, CommitFailure::Transient(ref m) if m.contains("overloaded")), "{failure:?}");
        assert_eq!(down.sent.borrow().len(), MAX_BACK_OFFS as usize + 1);
        let missing = fake(|_, _| Err(DbError::new("D1_ERROR: no such table: idempotency: SQLITE_ERROR")));
        let failure = futures::executor::block_on(commit(&missing, TABLES, &units, &[], "now")).unwrap_err();
        assert!(matches!(failure, CommitFailure::Fatal(_)), "{failure:?}");
    }

    #[test]
    fn a_key_refusing_a_write_of_the_units_own_backs_off_and_gives_up() {
        let a = reserve("A", 1);
        let units = [unit("m1", "k1", "f1", &a)];
        let db = fake(|s, _| {
            if s[0].sql().starts_with("SELECT") {
                Ok(vec![vec![]])
            } else {
                Err(DbError::new("D1_ERROR: UNIQUE constraint failed: inventory.sku: SQLITE_CONSTRAINT"))
            }
        });
        let failure = futures::executor::block_on(commit(&db, TABLES, &units, &[], "now")).unwrap_err();
        assert!(matches!(failure, CommitFailure::Transient(ref m) if m.contains("inventory.sku")), "{failure:?}");
        assert!(db.sent.borrow().len() <= 2 * (MAX_BACK_OFFS as usize + 1) + 1, "{}", db.sent.borrow().len());
    }

    #[test]
    fn a_marker_written_meanwhile_is_read_again_and_decides_its_unit() {
        let a = reserve("A", 1);
        let units = [unit("m1", "k1", "f1", &a)];
        let db = fake(|_, n| match n {
            0 => Ok(vec![vec![]]),
            1 => Err(DbError::new("D1_ERROR: UNIQUE constraint failed: idempotency.key: SQLITE_CONSTRAINT")),
            _ => Ok(vec![vec![row(json!({"key": "k1", "fingerprint": "f1", "rejection": null}))]]),
        });
        let decided = futures::executor::block_on(commit(&db, TABLES, &units, &[], "now")).unwrap();
        assert_eq!(decided, [Ok(Outcome::Duplicate)]);
        assert_eq!(db.sent.borrow().len(), 3, "read, batch, read again; nothing left to send");
    }
}
