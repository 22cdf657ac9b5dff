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

    proptest! {
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
