//! The exactly-once plan: which records' writes may share one atomic commit.
//!
//! Each record's unit of work is its idempotency marker plus the writes that
//! are its effect; marker and effect commit together or not at all. Units
//! share a commit (a DynamoDB `TransactWriteItems`, a D1 `batch`) while the
//! commit stays within its action limit and touches every item at most once
//! (DynamoDB rejects two actions on one item in one transaction). Units keep
//! their order: a unit that would touch an item a second time starts the
//! next commit, which runs after this one, so effects on any one item happen
//! in record order.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use crate::batch::Outcome;

/// DynamoDB TransactWriteItems limit on actions per transaction.
pub const MAX_TRANSACT_ITEMS: usize = 100;

/// What the planner needs to know of one unit of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitShape {
    /// Actions the unit takes (its marker included).
    pub actions: usize,
    /// Identities of the items its actions touch (table and key, in any
    /// stable text form), its marker's included.
    pub items: Vec<String>,
}

/// Why units cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// One unit alone is over the commit's limit.
    #[error("unit {unit} takes {actions} actions, over the limit of {limit} per atomic commit")]
    TooLarge {
        /// The unit's position.
        unit: usize,
        /// Its actions.
        actions: usize,
        /// The limit.
        limit: usize,
    },
    /// One unit touches an item twice.
    #[error("unit {unit} touches item {item} twice; one commit may write an item once")]
    SameItemTwice {
        /// The unit's position.
        unit: usize,
        /// The item.
        item: String,
    },
}

/// Splits `units` into consecutive commits of at most `limit` actions each,
/// none touching an item twice.
///
/// ```
/// use shared_core::plan::{UnitShape, commits};
///
/// let unit = |items: &[&str]| UnitShape { actions: items.len(), items: items.iter().map(|i| i.to_string()).collect() };
/// // Three units; the third touches item `x` again, so it starts a new commit.
/// let units = [unit(&["m1", "x"]), unit(&["m2", "y"]), unit(&["m3", "x"])];
/// assert_eq!(commits(&units, 100).unwrap(), vec![0..2, 2..3]);
/// ```
pub fn commits(units: &[UnitShape], limit: usize) -> Result<Vec<Range<usize>>, PlanError> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut actions = 0;
    let mut items: HashSet<&str> = HashSet::new();
    for (i, unit) in units.iter().enumerate() {
        if unit.actions > limit {
            return Err(PlanError::TooLarge { unit: i, actions: unit.actions, limit });
        }
        let mut own: HashSet<&str> = HashSet::with_capacity(unit.items.len());
        for item in &unit.items {
            if !own.insert(item) {
                return Err(PlanError::SameItemTwice { unit: i, item: item.clone() });
            }
        }
        let collides = own.iter().any(|item| items.contains(item));
        if i > start && (actions + unit.actions > limit || collides) {
            out.push(start..i);
            start = i;
            actions = 0;
            items.clear();
        }
        actions += unit.actions;
        items.extend(own);
    }
    if start < units.len() {
        out.push(start..units.len());
    }
    Ok(out)
}

/// Decides the records whose idempotency key repeats an earlier record's key
/// in the same batch: a duplicate when the fingerprints agree, a reused key
/// when they differ. `None` for the first record of each key (to commit).
pub fn repeated_keys(keys: &[(&str, Option<&str>)]) -> Vec<Option<Outcome>> {
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
    keys.iter()
        .enumerate()
        .map(|(i, (key, fingerprint))| match first.get(key) {
            Some(&f) if keys[f].1 == *fingerprint => Some(Outcome::Duplicate),
            Some(_) => Some(Outcome::KeyReused),
            None => {
                first.insert(key, i);
                None
            }
        })
        .collect()
}

/// [`repeated_keys`] of every unit of a batch, keyed or not (`(key,
/// fingerprint)`, the key `None` for a unit without a marker): one entry
/// per unit, `None` for an unkeyed unit and for the first of each key.
///
/// ```
/// use shared_core::batch::Outcome;
/// use shared_core::plan::repeated_keys_of;
///
/// let units = [(Some("k"), Some("f")), (None, None), (Some("k"), Some("f"))];
/// assert_eq!(repeated_keys_of(&units), [None, None, Some(Outcome::Duplicate)]);
/// ```
pub fn repeated_keys_of(units: &[(Option<&str>, Option<&str>)]) -> Vec<Option<Outcome>> {
    let keyed: Vec<(usize, (&str, Option<&str>))> =
        units.iter().enumerate().filter_map(|(i, (key, f))| key.map(|k| (i, (k, *f)))).collect();
    let keys: Vec<(&str, Option<&str>)> = keyed.iter().map(|(_, k)| *k).collect();
    let mut out = vec![None; units.len()];
    for ((i, _), repeated) in keyed.iter().zip(repeated_keys(&keys)) {
        out[*i] = repeated;
    }
    out
}

/// How to read a write's condition failing, from the stored item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The effect is already there (for example, the stored version is this
    /// record's): the record is a duplicate and changes nothing.
    Duplicate,
    /// The stored state is newer than the record: counted as stale; its
    /// marker is still written, so a replay is seen as a duplicate.
    Stale,
    /// The record can never be applied: quarantined with this reason.
    Reject(String),
    /// Another writer got in the way: send the unit again (after a back-off,
    /// within the deadline).
    Retry,
}

/// One unit of an atomic commit while its cancellations are read: what it
/// still has to send, how it counts if that commits, and its result once
/// decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its idempotency marker is still to be written.
    pub marker: bool,
    /// Its writes are still to be sent.
    pub writes: bool,
    /// How it counts if what it still sends commits.
    pub counted: Outcome,
    /// Its result, once decided: an outcome, or the reason it is rejected.
    pub decided: Option<Result<Outcome, String>>,
    /// A rejection is remembered: its marker is written with the reason,
    /// and a later record with the key is rejected again without being
    /// evaluated. Otherwise (the default, as in Powertools) a rejected
    /// record leaves no marker and a later one with its key is evaluated
    /// again.
    pub remember_rejection: bool,
    /// The reason a remembered rejection's marker carries, once read.
    pub rejection: Option<String>,
}

impl Pending {
    /// A unit with everything still to send, counted as `counted` if it commits.
    pub fn new(marker: bool, counted: Outcome) -> Self {
        Self { marker, writes: true, counted, decided: None, remember_rejection: false, rejection: None }
    }
}

/// What one action's failed condition said, read from the item it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// The unit's marker exists: the unit was committed before; `reused`
    /// when the stored fingerprint differs from the unit's.
    Marker {
        /// The stored fingerprint is not the unit's.
        reused: bool,
        /// The marker remembers a rejection, with its reason.
        rejected: Option<String>,
    },
    /// One of the unit's writes failed its condition; its verdict.
    Write(Verdict),
    /// The commit's final write (an object's manifest) failed its condition.
    Final,
}

/// What to do after reading a cancelled commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send the undecided rest again at once: the readings decided something.
    Resend,
    /// Nothing was decided (throttling, a conflict, a [`Verdict::Retry`]):
    /// wait, then send the same again.
    BackOff,
    /// The final write's condition failed: another writer moved its item;
    /// the commit cannot go on.
    FinalConflict,
}

/// Reads a cancelled commit's failed conditions, each given with the
/// position of its unit in `units` (`usize::MAX` for the final write's), and
/// decides what they can: a unit whose marker exists is a duplicate (or a
/// reused key, or rejected again when the marker remembers a rejection),
/// whatever its writes said; a write's verdict decides the rest. A unit that
/// is decided sends nothing more; a unit whose write was found applied or
/// superseded still writes its marker, so that a replay is decided by the
/// marker alone, as does a rejected unit that remembers its rejection.
///
/// ```
/// use shared_core::batch::Outcome;
/// use shared_core::plan::{Next, Pending, Reading, Verdict, read_cancellation};
///
/// let mut units = vec![Pending::new(true, Outcome::Applied), Pending::new(true, Outcome::Applied)];
/// // Unit 0's order is newer in the table; unit 1's marker exists.
/// let readings = [(0, Reading::Write(Verdict::Stale)), (1, Reading::Marker { reused: false, rejected: None })];
/// assert_eq!(read_cancellation(&mut units, readings), Next::Resend);
/// assert_eq!((units[0].marker, units[0].writes, units[0].counted), (true, false, Outcome::Stale));
/// assert_eq!(units[1].decided, Some(Ok(Outcome::Duplicate)));
/// ```
pub fn read_cancellation(units: &mut [Pending], readings: impl IntoIterator<Item = (usize, Reading)>) -> Next {
    let readings: Vec<(usize, Reading)> = readings.into_iter().collect();
    if readings.iter().any(|(_, r)| *r == Reading::Final) {
        return Next::FinalConflict;
    }
    let mut progress = false;
    // Markers first: a unit whose marker exists is decided by it alone.
    for (unit, reading) in &readings {
        if let (Reading::Marker { reused, rejected }, Some(pending)) = (reading, units.get_mut(*unit)) {
            progress = true;
            pending.decided = Some(match rejected {
                Some(reason) => Err(format!("rejected before: {reason}")),
                None => Ok(if *reused { Outcome::KeyReused } else { Outcome::Duplicate }),
            });
        }
    }
    for (unit, reading) in readings {
        let (Reading::Write(verdict), Some(pending)) = (reading, units.get_mut(unit)) else { continue };
        if pending.decided.is_some() {
            continue;
        }
        match verdict {
            Verdict::Duplicate | Verdict::Stale => {
                progress = true;
                pending.writes = false;
                pending.counted = if verdict == Verdict::Stale { Outcome::Stale } else { Outcome::Duplicate };
                if !pending.marker {
                    pending.decided = Some(Ok(pending.counted));
                }
            }
            Verdict::Reject(reason) if pending.remember_rejection && pending.marker => {
                progress = true;
                pending.writes = false;
                pending.rejection = Some(reason);
            }
            Verdict::Reject(reason) => {
                progress = true;
                pending.decided = Some(Err(reason));
            }
            Verdict::Retry => {}
        }
    }
    for pending in units.iter_mut().filter(|p| p.decided.is_some()) {
        pending.marker = false;
        pending.writes = false;
    }
    if progress { Next::Resend } else { Next::BackOff }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shape(items: &[&str]) -> UnitShape {
        UnitShape { actions: items.len(), items: items.iter().map(|s| (*s).to_owned()).collect() }
    }

    #[test]
    fn commits_fill_to_the_limit() {
        let units: Vec<UnitShape> = (0..250).map(|i| shape(&[&format!("m{i}")])).collect();
        assert_eq!(commits(&units, 100).unwrap(), vec![0..100, 100..200, 200..250]);
        assert_eq!(commits(&[], 100).unwrap(), Vec::<Range<usize>>::new());
    }

    #[test]
    fn oversized_units_and_self_collisions_are_errors() {
        assert!(matches!(commits(&[shape(&["a", "b", "c"])], 2), Err(PlanError::TooLarge { unit: 0, .. })));
        assert!(matches!(commits(&[shape(&["a", "a"])], 5), Err(PlanError::SameItemTwice { unit: 0, .. })));
    }

    #[test]
    fn repeated_keys_are_duplicates_or_reused() {
        let decided = repeated_keys(&[("k1", Some("f")), ("k1", Some("f")), ("k1", Some("g")), ("k2", None)]);
        assert_eq!(decided, vec![None, Some(Outcome::Duplicate), Some(Outcome::KeyReused), None]);
    }

    fn verdict() -> impl Strategy<Value = Verdict> {
        prop_oneof![
            Just(Verdict::Duplicate),
            Just(Verdict::Stale),
            Just(Verdict::Retry),
            "[a-z]{1,4}".prop_map(Verdict::Reject),
        ]
    }

    fn reading() -> impl Strategy<Value = Reading> {
        prop_oneof![
            4 => (any::<bool>(), proptest::option::of("[a-z]{1,4}")).prop_map(|(reused, rejected)| Reading::Marker { reused, rejected }),
            8 => verdict().prop_map(Reading::Write),
            1 => Just(Reading::Final),
        ]
    }

    /// What one unit ends as, by the rules in words: its marker decides;
    /// else its writes' verdicts in order (a rejection decides; a write
    /// found applied or superseded decides a unit without a marker, and
    /// sets how a unit with one counts).
    fn expected(
        marker: bool,
        remember: bool,
        readings: &[Reading],
    ) -> (Option<Result<Outcome, String>>, Option<Outcome>, Option<String>) {
        if let Some((reused, rejected)) = readings.iter().find_map(|r| match r {
            Reading::Marker { reused, rejected } => Some((*reused, rejected.clone())),
            _ => None,
        }) {
            let decided = match rejected {
                Some(reason) => Err(format!("rejected before: {reason}")),
                None => Ok(if reused { Outcome::KeyReused } else { Outcome::Duplicate }),
            };
            return (Some(decided), None, None);
        }
        let mut counted = None;
        let mut rejection = None;
        for r in readings {
            match r {
                Reading::Write(Verdict::Reject(reason)) if remember && marker => {
                    // Remembered: the marker is still to write, with the reason.
                    rejection = Some(reason.clone());
                }
                Reading::Write(Verdict::Reject(reason)) => return (Some(Err(reason.clone())), None, None),
                Reading::Write(v @ (Verdict::Duplicate | Verdict::Stale)) => {
                    let outcome = if *v == Verdict::Stale { Outcome::Stale } else { Outcome::Duplicate };
                    if !marker {
                        return (Some(Ok(outcome)), None, None);
                    }
                    counted = Some(outcome);
                }
                _ => {}
            }
        }
        (None, counted, rejection)
    }

    #[test]
    fn a_write_found_applied_keeps_its_marker_pending() {
        let mut units = vec![Pending::new(true, Outcome::Applied), Pending::new(false, Outcome::Applied)];
        let next = read_cancellation(
            &mut units,
            [(0, Reading::Write(Verdict::Duplicate)), (1, Reading::Write(Verdict::Stale))],
        );
        assert_eq!(next, Next::Resend);
        assert_eq!((units[0].marker, units[0].writes, units[0].counted), (true, false, Outcome::Duplicate));
        assert_eq!(units[0].decided, None);
        assert_eq!(units[1].decided, Some(Ok(Outcome::Stale)));
        assert_eq!(read_cancellation(&mut units, [(0, Reading::Write(Verdict::Retry))]), Next::BackOff);
        assert_eq!(read_cancellation(&mut units, [(usize::MAX, Reading::Final)]), Next::FinalConflict);
    }

    proptest! {
        /// Any cancellation, read against the rules stated per unit: each
        /// unit ends as its marker or its first deciding write says; decided
        /// units send nothing more; a final write's failure stops
        /// everything; and the commit backs off exactly when nothing was
        /// decided.
        #[test]
        fn cancellations_decide_each_unit_by_the_rules(
            markers in proptest::collection::vec((any::<bool>(), any::<bool>()), 1..6),
            readings in proptest::collection::vec((0usize..6, reading()), 0..12),
        ) {
            let mut units: Vec<Pending> = markers
                .iter()
                .map(|(m, remember)| Pending { remember_rejection: *remember, ..Pending::new(*m, Outcome::Applied) })
                .collect();
            // A unit has one marker action, so at most one marker reading.
            let mut marked = HashSet::new();
            let readings: Vec<(usize, Reading)> = readings
                .into_iter()
                .filter(|(u, r)| *u < units.len() && (!matches!(r, Reading::Marker { .. }) || marked.insert(*u)))
                .collect();
            let next = read_cancellation(&mut units, readings.clone());
            if readings.iter().any(|(_, r)| *r == Reading::Final) {
                prop_assert_eq!(next, Next::FinalConflict);
                return Ok(());
            }
            let mut any_decided = false;
            for (u, pending) in units.iter().enumerate() {
                let own: Vec<Reading> = readings.iter().filter(|(i, _)| *i == u).map(|(_, r)| r.clone()).collect();
                let (marker, remember) = markers[u];
                let (decided, counted, rejection) = expected(marker, remember, &own);
                any_decided |= decided.is_some() || counted.is_some() || rejection.is_some();
                prop_assert_eq!(&pending.decided, &decided, "unit {} after {:?}", u, own);
                prop_assert_eq!(&pending.rejection, &rejection, "unit {} after {:?}", u, own);
                if decided.is_some() {
                    prop_assert!(!pending.marker && !pending.writes);
                } else {
                    prop_assert_eq!(pending.marker, marker);
                    prop_assert_eq!(pending.writes, counted.is_none() && rejection.is_none());
                    prop_assert_eq!(pending.counted, counted.unwrap_or(Outcome::Applied));
                }
            }
            prop_assert_eq!(next, if any_decided { Next::Resend } else { Next::BackOff });
        }

        /// Any units: the commits cover them in order, each within the limit,
        /// none touching an item twice, and each commit is as long as it may
        /// be (the next unit would break a rule).
        #[test]
        fn commits_are_ordered_bounded_and_greedy(
            units in proptest::collection::vec(proptest::collection::btree_set(0u8..12, 1..4), 0..60),
            limit in 3usize..10,
        ) {
            let shapes: Vec<UnitShape> = units
                .iter()
                .map(|items| UnitShape { actions: items.len(), items: items.iter().map(|i| i.to_string()).collect() })
                .collect();
            let plan = commits(&shapes, limit).unwrap();
            let mut next = 0;
            for range in &plan {
                prop_assert_eq!(range.start, next);
                prop_assert!(range.end > range.start);
                let actions: usize = shapes[range.clone()].iter().map(|u| u.actions).sum();
                prop_assert!(actions <= limit);
                let mut seen = HashSet::new();
                for unit in &shapes[range.clone()] {
                    for item in &unit.items {
                        prop_assert!(seen.insert(item.clone()), "item {} twice in one commit", item);
                    }
                }
                if let Some(following) = shapes.get(range.end) {
                    let fits = actions + following.actions <= limit && following.items.iter().all(|i| !seen.contains(i));
                    prop_assert!(!fits, "commit {:?} could have taken the next unit", range);
                }
                next = range.end;
            }
            prop_assert_eq!(next, shapes.len());
        }
    }
}
