//! Group commit of coalescing pushes (ARCHITECTURE.md, `coalesce_group.rs`): the groups'
//! data and how a push's records merge into one; the tasks that send them are in
//! `coalesce_send.rs`.
//!
//! A coalescing store's merge runs in Redis as a Lua script (`scripts::COALESCE_PUSH`), and
//! most of its cost there is per entity: reading the entity's packed row, unpacking it,
//! packing it again and writing it back (BENCHMARKS.md, "coalescing push_many"). So while one
//! merge script of this producer is in flight for a store, the pushes that arrive for that
//! store are merged by entity into the group forming behind it (`MergeCall::merge_records`,
//! by each pushing task, while the script runs in Redis); when it returns, one task sends that
//! group as one script, so Redis reads and writes each entity once for the whole group, with
//! one operation per field where the merge allows it. A push arriving while nothing is in
//! flight is sent at once: grouping adds no wait. One script in flight per store and producer
//! makes the groups as large as the concurrency allows: with 50 tasks pushing, about 25
//! pushes a group (BENCHMARKS.md); two in flight would halve them, and Redis's work per
//! record grows as a group's share of distinct entities does.
//!
//! Each push is still applied or refused whole and by itself: the group is one script, so it
//! is applied whole or not at all, and when Redis refuses it (a sum leaving i64, a limit) or
//! the rules changed, every push of the group is sent again on its own
//! (`Buffer::merge_alone`), where each gets its own answer. A record the rules refuse is
//! refused before its push joins a group. A lost connection or a timeout is every member's
//! answer (its outcome unknown, as for a push alone).
//!
//! What merging first keeps exact: a field's `last` and `first` values, a union's distinct
//! elements in first-seen order, a max or min of integers below 16 characters (they compare
//! exactly as doubles, as the script compares them), and integer sums added in runs of one
//! sign (so a run's partial sums never pass its total: the script refuses exactly what it would
//! refuse one record at a time). Everything else (a float, a long integer in a max, a sum that
//! changes sign) stays one operation per record, in order. One difference is documented
//! (docs/coalescing.md): integers summed into a field that already holds a float are added
//! together first, so the float's rounding may differ in its last digits.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::name::StoreName;
use crate::receipt::PushReceipt;

/// One record's merge: its entity and its operations `(op, field, value)`.
pub(crate) struct RecordOps {
    pub(crate) entity: String,
    pub(crate) ops: Vec<(&'static str, String, String)>,
}

/// A push's records as merge operations, every one checked against the rules before anything
/// is sent, with the field names they write (the metadata fields' included) and their bytes.
pub(crate) struct PushOps {
    pub(crate) records: Vec<RecordOps>,
    pub(crate) names: BTreeSet<String>,
    pub(crate) bytes: u64,
}

pub(crate) fn is_small_integer_text(text: &str) -> bool {
    // Below 16 characters an integer is a double exactly (|n| < 10^15 < 2^53), which is how
    // the merge script compares and adds such texts.
    text.len() < 16 && is_integer_text(text)
}

pub(crate) fn is_integer_text(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// What a merge push did: its receipt, and whether its push id was already applied.
pub(crate) type Merged = (PushReceipt, bool);

/// One argument of a merge script's entries (`MergeCall::write_entries`).
pub(crate) enum EntryArg<'a> {
    Text(&'a str),
    Count(u64),
}

/// What Redis did with a merge script.
pub(crate) enum MergeOutcome {
    /// Applied: the store's totals after it, and whether its push id was applied before.
    Applied(Merged),
    /// Nothing written: the stored rules are not the ones the operations were made under.
    RulesChanged,
    /// Nothing written: a record could not be merged, or a limit refused the push.
    Refused(Error),
}

/// What one field's operations in an entry do: the rule's operation and its values in the
/// order the script applies them.
struct FieldOps {
    op: &'static str,
    name: String,
    values: Vec<String>,
}

impl FieldOps {
    /// Folds one more operation of this field into it, where the result is the one the script
    /// would reach applying them one by one; otherwise the value is appended.
    fn merge(&mut self, value: String) {
        match self.op {
            // last (and the key field): only the last value counts.
            "l" => {
                self.values.clear();
                self.values.push(value);
            }
            // first: only the first value counts, and it is there already.
            "1" => {}
            "x" | "n" => {
                if let Some(held) = self.values.last_mut()
                    && is_small_integer_text(held)
                    && is_small_integer_text(&value)
                {
                    let (held_n, new_n) = (parse_i64(held), parse_i64(&value));
                    let better = if self.op == "x" {
                        new_n > held_n
                    } else {
                        new_n < held_n
                    };
                    // On a tie the earlier value stays, as in the script.
                    if better {
                        *held = value;
                    }
                    return;
                }
                self.values.push(value);
            }
            "s" => {
                if let Some(held) = self.values.last_mut()
                    && let (Ok(a), Ok(b)) = (held.parse::<i64>(), value.parse::<i64>())
                    // Only within a run of one sign, whose partial sums never pass its total.
                    && ((a >= 0 && b >= 0) || (a <= 0 && b <= 0))
                    && let Some(sum) = a.checked_add(b)
                {
                    *held = sum.to_string();
                    return;
                }
                self.values.push(value);
            }
            "u" => {
                if value.is_empty() {
                    // "The field is a union, maybe empty": once, before any element.
                    if self.values.first().is_none_or(|first| !first.is_empty()) {
                        self.values.insert(0, value);
                    }
                } else if !self.values.contains(&value) {
                    self.values.push(value);
                }
            }
            _ => self.values.push(value),
        }
    }
}

fn parse_i64(text: &str) -> i64 {
    // Only called on small integer texts, which always parse.
    text.parse().unwrap_or_default()
}

/// One entry of a merge script: an entity, the writes merged into it, and its fields'
/// operations.
struct Entry {
    entity: String,
    writes: u64,
    fields: Vec<FieldOps>,
}

/// The arguments of one merge script: entries, field names, bytes and records of the pushes it
/// carries.
#[derive(Default)]
pub(crate) struct MergeCall {
    entries: Vec<Entry>,
    /// Entity → its entry, for `merge_records`.
    by_entity: HashMap<String, usize>,
    names: BTreeSet<String>,
    bytes: u64,
    records: u64,
    pushes: usize,
}

impl MergeCall {
    /// Adds a push's records, each as an entry of its own with its operations as they are (a
    /// refusal then names the record).
    pub(crate) fn add_records(&mut self, push: PushOps) {
        for record in self.count(push) {
            self.entries.push(Entry {
                entity: record.entity,
                writes: 1,
                fields: record
                    .ops
                    .into_iter()
                    .map(|(op, name, value)| FieldOps {
                        op,
                        name,
                        values: vec![value],
                    })
                    .collect(),
            });
        }
    }

    /// Adds a push's records merged into their entity's entry, each field's operations folded
    /// where that gives what the script would give applying them one by one.
    pub(crate) fn merge_records(&mut self, push: PushOps) {
        for record in self.count(push) {
            let at = match self.by_entity.get(&record.entity) {
                Some(&at) => at,
                None => {
                    self.by_entity
                        .insert(record.entity.clone(), self.entries.len());
                    self.entries.push(Entry {
                        entity: record.entity,
                        writes: 0,
                        fields: Vec::new(),
                    });
                    self.entries.len() - 1
                }
            };
            let entry = &mut self.entries[at];
            entry.writes += 1;
            for (op, name, value) in record.ops {
                match entry.fields.iter_mut().find(|field| field.name == name) {
                    Some(field) if field.op == op => field.merge(value),
                    // A field has one rule under one rule set, so this is only a safeguard.
                    Some(_) | None => entry.fields.push(FieldOps {
                        op,
                        name,
                        values: vec![value],
                    }),
                }
            }
        }
    }

    /// Counts a push's names, bytes and records into the call, and returns its records.
    fn count(&mut self, push: PushOps) -> Vec<RecordOps> {
        self.names.extend(push.names);
        self.bytes += push.bytes;
        self.records += push.records.len() as u64;
        self.pushes += 1;
        push.records
    }

    /// The entries' arguments, as `scripts::COALESCE_PUSH` reads them, one by one to `arg`
    /// (the caller adds them to its script call).
    pub(crate) fn write_entries(&self, mut arg: impl FnMut(EntryArg<'_>)) {
        for entry in &self.entries {
            let ops: usize = entry.fields.iter().map(|field| field.values.len()).sum();
            arg(EntryArg::Text(&entry.entity));
            arg(EntryArg::Count(entry.writes));
            arg(EntryArg::Count(ops as u64));
            for field in &entry.fields {
                for value in &field.values {
                    arg(EntryArg::Text(field.op));
                    arg(EntryArg::Text(&field.name));
                    arg(EntryArg::Text(value));
                }
            }
        }
    }

    pub(crate) fn names(&self) -> &BTreeSet<String> {
        &self.names
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn records(&self) -> u64 {
        self.records
    }

    /// The distinct entities of its entries (with `add_records`, the records).
    pub(crate) fn entities(&self) -> usize {
        self.entries.len()
    }

    /// Whether a refusal of this call is one push's answer: a single push whose records are
    /// each an entry of their own, so the refusal's index names the record.
    pub(crate) fn answers_one_push(&self) -> bool {
        self.pushes == 1 && self.entries.len() as u64 == self.records
    }
}

/// The group commits of one `Buffer` (and its clones): a queue per coalescing store pushed to.
#[derive(Default)]
pub(crate) struct GroupCommits {
    stores: Mutex<HashMap<StoreName, Arc<Mutex<Queue>>>>,
}

impl GroupCommits {
    pub(crate) fn queue(&self, store: &StoreName) -> Arc<Mutex<Queue>> {
        let mut stores = lock(&self.stores);
        Arc::clone(stores.entry(store.clone()).or_default())
    }
}

/// A store's group commit: whether a merge script is in flight, and the groups formed behind
/// it, in the order they will be sent.
#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) busy: bool,
    pub(crate) forming: VecDeque<Group>,
}

/// Pushes merged into one script while they wait: the rules they were made under, their
/// records merged by entity, and how to answer each.
pub(crate) struct Group {
    /// The stored rules' text the operations were made under.
    pub(crate) rules: Arc<str>,
    pub(crate) call: MergeCall,
    pub(crate) members: Vec<oneshot::Sender<Verdict>>,
}

pub(crate) enum Verdict {
    Done(Result<Merged>),
    /// Send the push on its own.
    Alone,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a queue was locked leaves it consistent (every change is one statement).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folded(op: &'static str, values: &[&str]) -> Vec<String> {
        let mut field = FieldOps {
            op,
            name: "f".to_owned(),
            values: vec![values[0].to_owned()],
        };
        for value in &values[1..] {
            field.merge((*value).to_owned());
        }
        field.values
    }

    #[test]
    fn sums_fold_in_runs_of_one_sign_and_floats_stay_apart() {
        assert_eq!(folded("s", &["1", "2", "3"]), ["6"]);
        assert_eq!(folded("s", &["-1", "-2", "0"]), ["-3"]);
        assert_eq!(folded("s", &["5", "-1", "-1", "2"]), ["5", "-2", "2"]);
        assert_eq!(folded("s", &["1", "0.5", "2", "3"]), ["1", "0.5", "5"]);
        // A run whose total would leave i64 is left to the script, which refuses it.
        let max = i64::MAX.to_string();
        assert_eq!(folded("s", &[&max, "1"]), [max.as_str(), "1"]);
    }

    #[test]
    fn extremes_fold_only_between_small_integers_keeping_the_earlier_on_ties() {
        assert_eq!(folded("x", &["3", "7", "5"]), ["7"]);
        assert_eq!(folded("n", &["3", "7", "-5"]), ["-5"]);
        assert_eq!(folded("x", &["3", "1.5", "9", "2"]), ["3", "1.5", "9"]);
        let long = "12345678901234567";
        assert_eq!(folded("x", &["3", long, "4"]), ["3", long, "4"]);
    }

    #[test]
    fn firsts_lasts_and_unions_keep_what_the_script_would() {
        assert_eq!(folded("l", &["1", "2", "3"]), ["3"]);
        assert_eq!(folded("1", &["1", "2", "3"]), ["1"]);
        assert_eq!(
            folded("u", &["\"a\"", "\"b\"", "\"a\"", "", "\"c\""]),
            ["", "\"a\"", "\"b\"", "\"c\""]
        );
    }
}
