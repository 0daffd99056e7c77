//! Group commit of coalescing pushes (ARCHITECTURE.md, `coalesce_group.rs`).
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

use crate::buffer::Buffer;
use crate::coalesce::{Merged, PushOps, is_small_integer_text};
use crate::error::{Error, Result};
use crate::name::StoreName;
use crate::replicas::ScriptCall;

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
        self.count(&push);
        for record in push.records {
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
        self.count(&push);
        for record in push.records {
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

    fn count(&mut self, push: &PushOps) {
        self.names.extend(push.names.iter().cloned());
        self.bytes += push.bytes;
        self.records += push.records.len() as u64;
        self.pushes += 1;
    }

    /// The entries' arguments, as `scripts::COALESCE_PUSH` reads them.
    pub(crate) fn write_entries(&self, script: &mut ScriptCall<'_>) {
        for entry in &self.entries {
            let ops: usize = entry.fields.iter().map(|field| field.values.len()).sum();
            script.arg(&entry.entity).arg(entry.writes).arg(ops);
            for field in &entry.fields {
                for value in &field.values {
                    script.arg(field.op).arg(&field.name).arg(value);
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
    fn answers_one_push(&self) -> bool {
        self.pushes == 1 && self.entries.len() as u64 == self.records
    }
}

/// The group commits of one `Buffer` (and its clones): a queue per coalescing store pushed to.
#[derive(Default)]
pub(crate) struct GroupCommits {
    stores: Mutex<HashMap<StoreName, Arc<Mutex<Queue>>>>,
}

impl GroupCommits {
    fn queue(&self, store: &StoreName) -> Arc<Mutex<Queue>> {
        let mut stores = lock(&self.stores);
        Arc::clone(stores.entry(store.clone()).or_default())
    }
}

/// A store's group commit: whether a merge script is in flight, and the groups formed behind
/// it, in the order they will be sent.
#[derive(Default)]
struct Queue {
    busy: bool,
    forming: VecDeque<Group>,
}

/// Pushes merged into one script while they wait: the rules they were made under, their
/// records merged by entity, and how to answer each.
struct Group {
    /// The stored rules' text the operations were made under.
    rules: Arc<str>,
    call: MergeCall,
    members: Vec<oneshot::Sender<Verdict>>,
}

enum Verdict {
    Done(Result<Merged>),
    /// Send the push on its own.
    Alone,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a queue was locked leaves it consistent (every change is one statement).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sends `ops` (one push to `store`, made under the rules `rules`) with the store's group
/// commit; `None` when the push must be sent on its own (`Buffer::merge_alone`).
///
/// The push is merged into the last group formed behind the script in flight, by the caller's
/// task and while that script runs in Redis, so the next group is ready when it returns. A
/// new group starts when the rules differ or the last one holds `coalesce_group_entities`
/// entities.
pub(crate) async fn submit(
    buffer: &Buffer,
    store: &StoreName,
    rules: Arc<str>,
    ops: PushOps,
) -> Option<Result<Merged>> {
    let cap = buffer.config().coalesce_group_entities;
    let queue = buffer.group_commits().queue(store);
    let (reply, verdict) = oneshot::channel();
    let start = {
        let mut queue = lock(&queue);
        let joins = queue
            .forming
            .back()
            .is_some_and(|group| group.rules == rules && group.call.entities() < cap);
        if !joins {
            queue.forming.push_back(Group {
                rules,
                call: MergeCall::default(),
                members: Vec::new(),
            });
        }
        let group = queue.forming.back_mut().expect("a group was just ensured");
        group.call.merge_records(ops);
        group.members.push(reply);
        let full = group.call.entities() >= cap;
        if !std::mem::replace(&mut queue.busy, true) {
            Start::Sender
        } else if full {
            Start::Full(queue.forming.pop_back().expect("the group just joined"))
        } else {
            Start::Nothing
        }
    };
    // Tasks of their own, so a caller that stops waiting (a timeout around its push) does not
    // stop the group the others wait on.
    match start {
        Start::Sender => {
            tokio::spawn(send_groups(buffer.clone(), store.clone(), queue));
        }
        Start::Full(group) => {
            let (buffer, store) = (buffer.clone(), store.clone());
            tokio::spawn(async move { send_group(&buffer, &store, group).await });
        }
        Start::Nothing => {}
    }
    match verdict.await {
        Ok(Verdict::Done(result)) => Some(result),
        Ok(Verdict::Alone) => None,
        // The sending task was dropped (its runtime shut down) after the push joined a group:
        // the group may or may not have been applied.
        Err(_) => Some(Err(Error::Redis {
            op: "push",
            store: store.as_str().to_owned(),
            source: redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the task sending this push's group commit stopped (its runtime shut down)",
            )),
        })),
    }
}

/// What a push that joined a group starts.
enum Start {
    /// The queue was idle: a `send_groups` task, which sends the group now.
    Sender,
    /// The group is full while a script is in flight: this group is sent now, beside it.
    Full(Group),
    /// Nothing: the group waits for the script in flight.
    Nothing,
}

/// Marks the queue idle if the sending task is dropped while it runs, so later pushes start a
/// new one; the pushes waiting then learn it from their dropped replies.
struct IdleOnDrop {
    queue: Arc<Mutex<Queue>>,
    armed: bool,
}

impl Drop for IdleOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let mut queue = lock(&self.queue);
            queue.busy = false;
            queue.forming.clear();
        }
    }
}

/// Sends the store's groups, one script at a time, until none is waiting (a full group is
/// sent at once by the push that filled it, see `submit`).
async fn send_groups(buffer: Buffer, store: StoreName, queue: Arc<Mutex<Queue>>) {
    let mut idle = IdleOnDrop {
        queue: Arc::clone(&queue),
        armed: true,
    };
    loop {
        let group = {
            let mut queue = lock(&queue);
            let Some(group) = queue.forming.pop_front() else {
                queue.busy = false;
                idle.armed = false;
                return;
            };
            group
        };
        send_group(&buffer, &store, group).await;
    }
}

/// Sends one group as one script and answers its members.
async fn send_group(buffer: &Buffer, store: &StoreName, group: Group) {
    let Group {
        rules,
        call,
        members,
    } = group;
    let outcome = match buffer.stamp_ms().await {
        Ok(now) => buffer.run_merge_call(store, &rules, &call, now, None).await,
        Err(err) => Err(err),
    };
    let answers: Box<dyn Fn() -> Verdict + Send> = match outcome {
        Ok(MergeOutcome::Applied(merged)) => Box::new(move || Verdict::Done(Ok(merged.clone()))),
        Ok(MergeOutcome::Refused(err)) if call.answers_one_push() => {
            Box::new(move || Verdict::Done(Err(err.clone())))
        }
        Ok(MergeOutcome::Refused(_) | MergeOutcome::RulesChanged) => Box::new(|| Verdict::Alone),
        Err(err) => Box::new(move || Verdict::Done(Err(err.clone()))),
    };
    // The call's memory is given back before the members run again.
    drop(call);
    for member in members {
        // A member that stopped waiting is not told.
        let _ = member.send(answers());
    }
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
