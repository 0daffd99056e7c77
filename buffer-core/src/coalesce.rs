//! Coalescing stores: their rules, kept in Redis so every producer, persister and dashboard
//! agrees on them.
//!
//! A store is declared coalescing by its rules: the field that identifies an entity (`key`)
//! and, per other field, how a write merges into the entity's row ([`MergeRule`]; a field no
//! rule names is last-write-wins). The rules live in one HASH per slot group,
//! `<ns>:{<ns>:<g>}:coalesce`, field = the store's encoded name, value = the rules as JSON
//! (`{"key":"page","fields":{"views":"sum"}}`), next to `limits` and under the same hash tag,
//! so the script that merges a push reads them in the slot it writes.
//!
//! Rules change only while the store holds no records, live or prepared
//! (`scripts::COALESCE_SET` checks it in the step that writes them): rows merged under one
//! set of rules are always written under them.
//!
//! A push to a coalescing store (`push`, `push_many`, `push_json`, `push_once`) is one
//! `scripts::COALESCE_PUSH` call: this module turns each record into its entity (the key
//! field's JSON text) and one operation per field, refusing a record a rule cannot take
//! before anything is sent ([`Error::CoalesceRecordRefused`]); the script computes every
//! merge first and writes only when none was refused. The rows live in the store's `rows`
//! hash, one field per entity (`<entity>` → its packed row, see [`render_row`]: one entry per
//! entity keeps the hash small, and a merge reads and writes its entity once), and the
//! entities, in the order first written, in its `entities` list; prepare renames both with the other data keys, so it stays a fixed number
//! of RENAMEs. A batch's rows are read by the `BatchReader` in pages of whole entities
//! ([`render_row`] makes each row one JSON object).
//!
//! Each row also holds [`WRITES_FIELD`] (how many writes were merged into it),
//! [`FIRST_WRITE_FIELD`] and [`LAST_WRITE_FIELD`] (Unix ms on Redis's clock).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde_json::value::RawValue;

use serde::{Deserialize, Serialize};

use crate::buffer::Buffer;
use crate::coalesce_group::{
    EntryArg, MergeCall, MergeOutcome, Merged, PushOps, RecordOps, is_integer_text,
};
use crate::error::{Error, Result};
use crate::name::StoreName;
use crate::receipt::PushReceipt;
use crate::record::EncodedRecords;
use crate::replicas::ScriptCall;
use crate::scripts;
use crate::store_settings::StoreSetting;

/// The row field counting the writes merged into it.
pub const WRITES_FIELD: &str = "_writes";
/// The row field holding its first write's time (Unix ms, Redis's clock).
pub const FIRST_WRITE_FIELD: &str = "_first_write";
/// The row field holding its last write's time (Unix ms, Redis's clock).
pub const LAST_WRITE_FIELD: &str = "_last_write";
const METADATA: [&str; 3] = [WRITES_FIELD, FIRST_WRITE_FIELD, LAST_WRITE_FIELD];
/// How many entities [`CoalescedView::top`] lists at most: the merge script keeps as many per
/// summed field.
pub const TOP_ENTITIES: usize = 10;
/// The rows-hash field counting the writes merged into the live rows (no entity's field
/// starts with `\x1f`: an entity is a non-empty JSON text).
const TOTAL_WRITES: &str = "\x1fwrites";

/// The rows-hash field holding the top entities by the summed `field`.
fn top_field(field: &str) -> String {
    format!("\x1ftop\x1f{field}")
}

/// What a dashboard shows of a coalescing store's live rows, read in one round trip whatever
/// the number of entities ([`Buffer::coalesced_view`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoalescedView {
    /// Writes merged into the live rows (since the store was last prepared).
    pub writes: u64,
    /// The summed field `top` ranks by, when one was asked for.
    pub field: Option<String>,
    /// The entities with the largest sums of `field`, largest first (ties by entity), at most
    /// [`TOP_ENTITIES`].
    pub top: Vec<TopEntity>,
    /// Whether `top` is exactly the largest sums. It is while sums only grow; once a
    /// negative number was added to an entity of a full list, an entity outside the list may
    /// have passed it, and this stays `false` until the store is next prepared.
    pub top_exact: bool,
}

/// One entity of a [`CoalescedView::top`] list.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopEntity {
    /// The entity's key as JSON text (`"/home"`, `42`).
    pub entity: String,
    /// Its sum as the exact JSON text of the row (an integer beyond 2^53 included).
    pub sum: String,
}

impl TopEntity {
    /// An entity and its sum, both JSON texts.
    pub fn new(entity: impl Into<String>, sum: impl Into<String>) -> Self {
        Self {
            entity: entity.into(),
            sum: sum.into(),
        }
    }
}

/// Orders two sums' JSON texts: exactly when both are integers, else as doubles.
fn sum_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<i128>(), b.parse::<i128>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => {
            let x: f64 = a.parse().unwrap_or(f64::NAN);
            let y: f64 = b.parse().unwrap_or(f64::NAN);
            x.total_cmp(&y)
        }
    }
}

/// Reads a top list's text (see `scripts::COALESCE_PUSH`): `=` or `~`, then
/// `\n<entity>\x1f<sum>` per entity. `None` when it is not one.
fn parse_top(text: &str) -> Option<(bool, Vec<TopEntity>)> {
    let exact = match text.as_bytes().first()? {
        b'=' => true,
        b'~' => false,
        _ => return None,
    };
    let mut top = Vec::new();
    for entry in text[1..].split('\n').skip(1) {
        let (entity, sum) = entry.split_once('\x1f')?;
        if entity.is_empty() || !is_number_text(sum) {
            return None;
        }
        top.push(TopEntity::new(entity, sum));
    }
    if !text[1..].is_empty() && !text[1..].starts_with('\n') {
        return None;
    }
    top.sort_by(|a, b| sum_order(&b.sum, &a.sum).then_with(|| a.entity.cmp(&b.entity)));
    Some((exact, top))
}

/// The operations of `records` under `rules`, or the error naming the first record, field
/// and rule that refuse one.
pub(crate) fn push_ops(
    store: &StoreName,
    rules: &CoalesceRules,
    records: &EncodedRecords,
) -> Result<PushOps> {
    let mut names = BTreeSet::new();
    let records_ops = records
        .texts()
        .enumerate()
        .map(|(index, text)| {
            let text = std::str::from_utf8(text).map_err(|err| Error::Corrupt {
                what: format!("an encoded record is not UTF-8: {err}"),
            })?;
            record_ops(store, rules, index, text, &mut names)
        })
        .collect::<Result<Vec<_>>>()?;
    names.extend(METADATA.iter().map(|name| (*name).to_owned()));
    Ok(PushOps {
        records: records_ops,
        names,
        bytes: records.bytes() as u64,
    })
}

fn is_number_text(text: &str) -> bool {
    text.starts_with('-') || text.starts_with(|c: char| c.is_ascii_digit())
}

/// Turns one record into its merge operations under `rules`, or the error naming the record,
/// field and rule that refuse it.
fn record_ops(
    store: &StoreName,
    rules: &CoalesceRules,
    index: usize,
    json: &str,
    names: &mut BTreeSet<String>,
) -> Result<RecordOps> {
    let refuse = |field: &str, rule: &str, reason: String| Error::CoalesceRecordRefused {
        store: store.as_str().to_owned(),
        index,
        field: field.to_owned(),
        rule: rule.to_owned(),
        reason,
    };
    let fields: Vec<(String, &RawValue)> =
        serde_json::from_str::<BTreeMap<String, &RawValue>>(json)
            .map_err(|err| refuse("", "key", format!("not a JSON object: {err}")))?
            .into_iter()
            .collect();
    let entity = match fields.iter().find(|(name, _)| *name == rules.key) {
        None => {
            return Err(refuse(
                &rules.key,
                "key",
                "the record has no key field".to_owned(),
            ));
        }
        Some((_, value)) => {
            let text = value.get();
            if text.starts_with('"') || is_integer_text(text) {
                text.to_owned()
            } else {
                return Err(refuse(
                    &rules.key,
                    "key",
                    format!(
                        "the key must be a string or an integer, not {}",
                        shorten(text)
                    ),
                ));
            }
        }
    };
    let mut ops = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        let text = value.get();
        if name.contains([ROW_SEPARATOR, NAME_SEPARATOR]) {
            return Err(refuse(
                &name,
                "name",
                "the name holds the control character U+001E or U+001F, which a coalesced \
                 row uses to separate its fields"
                    .to_owned(),
            ));
        }
        if METADATA.contains(&name.as_str()) {
            return Err(refuse(
                &name,
                "metadata",
                "the name is kept for the row's metadata".to_owned(),
            ));
        }
        if name == rules.key {
            ops.push(("l", name.clone(), text.to_owned()));
            names.insert(name);
            continue;
        }
        let rule = rules.rule_of(&name);
        match rule {
            MergeRule::Sum => {
                if !is_number_text(text) {
                    return Err(refuse(
                        &name,
                        "sum",
                        format!("not a number: {}", shorten(text)),
                    ));
                }
                if is_integer_text(text) {
                    let n: i64 = text.parse().map_err(|_| {
                        refuse(
                            &name,
                            "sum",
                            format!("the integer {text} is beyond a 64-bit integer"),
                        )
                    })?;
                    ops.push(("s", name.clone(), n.to_string()));
                } else {
                    ops.push(("s", name.clone(), text.to_owned()));
                }
            }
            MergeRule::Max | MergeRule::Min => {
                if !is_number_text(text) {
                    return Err(refuse(
                        &name,
                        rule.name(),
                        format!("not a number: {}", shorten(text)),
                    ));
                }
                let op = if rule == MergeRule::Max { "x" } else { "n" };
                ops.push((op, name.clone(), text.to_owned()));
            }
            MergeRule::First => ops.push(("1", name.clone(), text.to_owned())),
            MergeRule::Last => ops.push(("l", name.clone(), text.to_owned())),
            MergeRule::Union => {
                if text.starts_with('[') {
                    let elements: Vec<&RawValue> = serde_json::from_str(text).map_err(|err| {
                        refuse(&name, "union", format!("not a JSON array: {err}"))
                    })?;
                    ops.push(("u", name.clone(), String::new()));
                    for element in elements {
                        ops.push(("u", name.clone(), element.get().to_owned()));
                    }
                } else {
                    ops.push(("u", name.clone(), text.to_owned()));
                }
            }
        }
        names.insert(name);
    }
    Ok(RecordOps { entity, ops })
}

fn shorten(text: &str) -> String {
    crate::name::shorten(text)
}

/// Separates the fields of a packed row (`scripts::COALESCE_PUSH`).
const ROW_SEPARATOR: char = '\x1e';
/// Separates a packed row's field name from its value, and the row's header values.
const NAME_SEPARATOR: char = '\x1f';

/// A packed row (`<writes>\x1f<first ms>\x1f<last ms>` then `\x1e<name>\x1f<value>` per
/// field, as `scripts::COALESCE_PUSH` writes it) as one JSON object: its fields in the order of
/// their names, the metadata fields among them, a union's state (`\n`-separated element
/// texts) as a JSON array. `None` when the text is not a packed row.
pub(crate) fn render_row(packed: &str) -> Option<String> {
    let mut parts = packed.split(ROW_SEPARATOR);
    let mut header = parts.next()?.split(NAME_SEPARATOR);
    let (writes, first, last) = (header.next()?, header.next()?, header.next()?);
    if header.next().is_some()
        || ![writes, first, last]
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut fields: Vec<(&str, &str)> = vec![
        (WRITES_FIELD, writes),
        (FIRST_WRITE_FIELD, first),
        (LAST_WRITE_FIELD, last),
    ];
    for part in parts {
        let (name, value) = part.split_once(NAME_SEPARATOR)?;
        if value.is_empty() {
            return None;
        }
        fields.push((name, value));
    }
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut row = String::with_capacity(packed.len() + 16 * fields.len());
    row.push('{');
    for (name, value) in fields {
        if row.len() > 1 {
            row.push(',');
        }
        row.push_str(&serde_json::to_string(name).ok()?);
        row.push(':');
        if let Some(elements) = value.strip_prefix('\n') {
            row.push('[');
            let elements = elements.strip_suffix('\n').unwrap_or(elements);
            row.push_str(&elements.replace('\n', ","));
            row.push(']');
        } else {
            row.push_str(value);
        }
    }
    row.push('}');
    Some(row)
}

/// Reads the `HEXISTS` of the store's rules in a MULTI/EXEC push's results (third from the
/// end, before the limits probe): rules set since this producer read them make it read them
/// again before its next push.
pub(crate) fn observe_rules_probe(buffer: &Buffer, store: &StoreName, results: &[redis::Value]) {
    if let Some(redis::Value::Int(1)) = results.len().checked_sub(3).map(|at| &results[at]) {
        buffer.rules_cache().forget(store);
    }
}

/// How a pushed field merges into its entity's row. Non-exhaustive: a rule may be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum MergeRule {
    /// Adds numbers: integers exactly within i64 (overflow is an error), floats as doubles.
    Sum,
    /// Keeps the largest number, as the exact JSON text it was pushed with.
    Max,
    /// Keeps the smallest number, as the exact JSON text it was pushed with.
    Min,
    /// Keeps the first value pushed.
    First,
    /// Keeps the last value pushed (the rule of every field no rule names).
    Last,
    /// Keeps the distinct JSON values seen, as an array; a pushed array adds its elements.
    Union,
}

impl MergeRule {
    /// Every rule, in the order the CLI lists them.
    pub const ALL: [Self; 6] = [
        Self::Sum,
        Self::Max,
        Self::Min,
        Self::First,
        Self::Last,
        Self::Union,
    ];

    /// The rule's name: `sum`, `max`, `min`, `first`, `last`, `union`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sum => "sum",
            Self::Max => "max",
            Self::Min => "min",
            Self::First => "first",
            Self::Last => "last",
            Self::Union => "union",
        }
    }
}

impl fmt::Display for MergeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MergeRule {
    type Err = String;

    /// Parses a rule's name; the error names the unknown rule and the ones there are.
    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|rule| rule.name() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|rule| rule.name()).collect();
                format!("unknown rule {text:?}: the rules are {}", known.join(", "))
            })
    }
}

/// The rules of a coalescing store: the entity's key field and each merged field's rule.
///
/// ```
/// use buffer_core::{CoalesceRules, MergeRule};
///
/// let rules = CoalesceRules::new("page")
///     .with("views", MergeRule::Sum)
///     .with("last_seen", MergeRule::Max)
///     .with("referrers", MergeRule::Union);
/// assert_eq!(rules.rule_of("views"), MergeRule::Sum);
/// assert_eq!(rules.rule_of("title"), MergeRule::Last);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoalesceRules {
    /// The field that identifies the entity (its value a string or an integer).
    pub key: String,
    /// The rule of each field that has one; every other field is [`MergeRule::Last`].
    #[serde(default)]
    pub fields: BTreeMap<String, MergeRule>,
}

impl CoalesceRules {
    /// Rules keyed by `key` with no field rule yet (every field last-write-wins).
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            fields: BTreeMap::new(),
        }
    }

    /// These rules with `field` merged by `rule` (replacing a rule given to it before).
    #[must_use]
    pub fn with(mut self, field: impl Into<String>, rule: MergeRule) -> Self {
        self.fields.insert(field.into(), rule);
        self
    }

    /// The rule `field` merges by: its own, or [`MergeRule::Last`]. The key field is never
    /// merged (it is the same in every write of an entity) and reads as `Last`.
    pub fn rule_of(&self, field: &str) -> MergeRule {
        self.fields.get(field).copied().unwrap_or(MergeRule::Last)
    }

    /// The fields merged by `rule`, sorted.
    pub fn fields_with(&self, rule: MergeRule) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(move |(_, r)| **r == rule)
            .map(|(field, _)| field.as_str())
    }

    /// Checks the rules: a non-empty key field that has no rule, field names that are not
    /// empty and do not start with `_` (the row's metadata fields do).
    ///
    /// # Errors
    /// [`Error::InvalidCoalesceRules`] naming the field.
    pub fn validate(&self, store: &StoreName) -> Result<()> {
        let refuse = |reason: String| Error::InvalidCoalesceRules {
            store: store.as_str().to_owned(),
            reason,
        };
        if self.key.is_empty() {
            return Err(refuse("the key field's name is empty".to_owned()));
        }
        if self.key.starts_with('_') {
            return Err(refuse(format!(
                "the key field {:?} starts with '_', which is kept for the row's metadata fields",
                self.key
            )));
        }
        if let Some(rule) = self.fields.get(&self.key) {
            return Err(refuse(format!(
                "the key field {:?} cannot also have a rule ({rule}): it identifies the entity",
                self.key
            )));
        }
        for field in self.fields.keys() {
            if field.is_empty() {
                return Err(refuse("a field's name is empty".to_owned()));
            }
            if field.starts_with('_') {
                return Err(refuse(format!(
                    "field {field:?} starts with '_', which is kept for the row's metadata fields"
                )));
            }
        }
        Ok(())
    }

    /// Builds rules from per-rule field lists (as the CLI's `--sum a,b --max c` gives them).
    ///
    /// # Errors
    /// [`Error::InvalidCoalesceRules`] when a field is named under two rules, or the rules are
    /// invalid ([`CoalesceRules::validate`]).
    pub fn from_lists<'a>(
        store: &StoreName,
        key: &str,
        lists: impl IntoIterator<Item = (MergeRule, &'a [String])>,
    ) -> Result<Self> {
        let mut rules = Self::new(key);
        for (rule, fields) in lists {
            for field in fields {
                if let Some(other) = rules.fields.insert(field.clone(), rule)
                    && other != rule
                {
                    return Err(Error::InvalidCoalesceRules {
                        store: store.as_str().to_owned(),
                        reason: format!(
                            "field {field:?} is named under two rules, {other} and {rule}"
                        ),
                    });
                }
            }
        }
        rules.validate(store)?;
        Ok(rules)
    }

    /// The JSON text stored in Redis.
    fn to_text(&self) -> String {
        // A struct of strings and a map of string to unit enum always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads rules as stored in Redis, or says what is wrong with the text, naming the
    /// field and rule (a foreign writer, or someone's `HSET`, may have put anything there).
    fn parse_stored(text: &str) -> std::result::Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Stored {
            key: String,
            #[serde(default)]
            fields: BTreeMap<String, String>,
        }
        let stored: Stored = serde_json::from_str(text).map_err(|err| {
            format!("not rules as JSON {{\"key\":…,\"fields\":{{field: rule}}}}: {err}")
        })?;
        let mut rules = Self::new(stored.key);
        for (field, rule) in stored.fields {
            let rule: MergeRule = rule
                .parse()
                .map_err(|err: String| format!("field {field:?}: {err}"))?;
            rules.fields.insert(field, rule);
        }
        // The store's name is not needed to check the rules themselves.
        let placeholder = StoreName::new("rules").map_err(|err| err.to_string())?;
        rules.validate(&placeholder).map_err(|err| match err {
            Error::InvalidCoalesceRules { reason, .. } => reason,
            other => other.to_string(),
        })?;
        Ok(rules)
    }

    /// The error for rules stored for `store` that cannot be read.
    fn unreadable(store: &StoreName, text: &str, reason: &str) -> Error {
        Error::Corrupt {
            what: format!(
                "the coalescing rules of store {:?} (its field {:?} in the group's coalesce hash) \
                 are {:?}: {reason}; pushes to the store are refused until they are rules again",
                store.as_str(),
                store.encoded(),
                shorten(text)
            ),
        }
    }
}

impl fmt::Display for CoalesceRules {
    /// `key=page sum=views,hits max=last_seen`, the rules in [`MergeRule::ALL`]'s order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key={}", self.key)?;
        for rule in MergeRule::ALL {
            let fields: Vec<&str> = self.fields_with(rule).collect();
            if !fields.is_empty() {
                write!(f, " {rule}={}", fields.join(","))?;
            }
        }
        Ok(())
    }
}

impl Buffer {
    /// The store's rules as this producer knows them (read once, then cached; see
    /// `RulesCache`), with their stored text.
    async fn known_rules(&self, store: &StoreName) -> Result<Option<(Arc<str>, CoalesceRules)>> {
        let text = match self.rules_cache().get(store) {
            Some(text) => text,
            None => {
                let text = self
                    .store_setting(StoreSetting::CoalesceRules, "coalesce_rules", store)
                    .await?;
                let text: Option<Arc<str>> = text.map(Arc::from);
                self.rules_cache().set(store, text.clone());
                text
            }
        };
        let Some(text) = text else { return Ok(None) };
        let rules = CoalesceRules::parse_stored(&text).map_err(|reason| {
            // Read again at the next push: rules put right must be seen at once.
            self.rules_cache().forget(store);
            CoalesceRules::unreadable(store, &text, &reason)
        })?;
        Ok(Some((text, rules)))
    }

    /// Whether `store` is coalescing, as this producer knows it (read once, then cached).
    pub(crate) async fn is_coalescing(&self, store: &StoreName) -> Result<bool> {
        Ok(self.known_rules(store).await?.is_some())
    }

    /// Merges `records` into `store`'s rows if it is a coalescing store; `None` when it is not
    /// (the caller appends). With `push_id`, at most once per id, as `push_once`.
    ///
    /// A push without an id joins the store's group commit (`crate::coalesce_group`): while
    /// one merge script of this producer is in flight for the store, the pushes that arrive
    /// wait and are sent together, their records merged by entity first. A group refused as a
    /// whole (a record Redis refuses, a limit) sends each of its pushes on its own again, so
    /// each push is still applied or refused whole and by itself.
    pub(crate) async fn merge_if_coalescing(
        &self,
        store: &StoreName,
        records: &EncodedRecords,
        now: u64,
        push_id: Option<&str>,
    ) -> Result<Option<Merged>> {
        let Some((text, rules)) = self.known_rules(store).await? else {
            return Ok(None);
        };
        if push_id.is_none() && self.config().coalesce_group_entities > 0 {
            let ops = push_ops(store, &rules, records)?;
            if let Some(result) = crate::coalesce_send::submit(self, store, text, ops).await {
                return result.map(Some);
            }
        }
        self.merge_alone(store, records, now, push_id).await
    }

    /// One push as one merge script of its own, each record one entry (so a refusal names the
    /// record); the rules read again and the push made again when they changed meanwhile.
    async fn merge_alone(
        &self,
        store: &StoreName,
        records: &EncodedRecords,
        now: u64,
        push_id: Option<&str>,
    ) -> Result<Option<Merged>> {
        for _attempt in 0..4 {
            let Some((text, rules)) = self.known_rules(store).await? else {
                return Ok(None);
            };
            let mut call = MergeCall::default();
            call.add_records(push_ops(store, &rules, records)?);
            match self
                .run_merge_call(store, &text, &call, now, push_id)
                .await?
            {
                MergeOutcome::Applied(merged) => return Ok(Some(merged)),
                MergeOutcome::RulesChanged => continue,
                MergeOutcome::Refused(err) => return Err(err),
            }
        }
        Err(Error::Corrupt {
            what: format!("the coalescing rules of store {store:?} kept changing during a push"),
        })
    }

    /// Sends one merge script of `call`'s entries made under the rules `text`, and reads its
    /// reply. `RulesChanged` forgets the cached rules.
    pub(crate) async fn run_merge_call(
        &self,
        store: &StoreName,
        text: &str,
        call: &MergeCall,
        now: u64,
        push_id: Option<&str>,
    ) -> Result<MergeOutcome> {
        let layout = self.layout();
        let live = layout.live(store);
        let group = layout.group_for(store);
        let mut script = ScriptCall::new(&scripts::COALESCE_PUSH);
        script
            .key(&live.entities)
            .key(&live.first)
            .key(&live.keys)
            .key(&live.bytes)
            .key(&live.runs)
            .key(&group.stores)
            .key(&group.bytes)
            .key(&group.count)
            .key(&group.limits)
            .key(layout.rate(store))
            .key(&live.rows)
            .key(&group.coalesce)
            .key(layout.push_id(store, push_id.unwrap_or("-")))
            .arg(now)
            .arg(store.encoded())
            .arg(call.bytes())
            .arg(call.records())
            .arg(text)
            .arg(match push_id {
                Some(_) => crate::buffer::millis(self.config().push_id_ttl)
                    .max(1)
                    .to_string(),
                None => String::new(),
            })
            .arg(call.names().len())
            .arg(call.names());
        call.write_entries(|arg| {
            match arg {
                EntryArg::Text(text) => script.arg(text),
                EntryArg::Count(count) => script.arg(count),
            };
        });
        let op = if push_id.is_some() {
            "push_once"
        } else {
            "push"
        };
        let reply: redis::Value = script.invoke(self, op, store.as_str()).await?;
        let items: Vec<redis::Value> =
            redis::from_redis_value(reply.clone()).map_err(|err| Error::Corrupt {
                what: format!("merge script replied {reply:?}: {err}"),
            })?;
        let code: i64 = items
            .first()
            .and_then(|v| redis::from_redis_value(v.clone()).ok())
            .unwrap_or(i64::MIN);
        match code {
            -3 => {
                // The rules changed since this producer read them: read them again.
                self.rules_cache().forget(store);
                return Ok(MergeOutcome::RulesChanged);
            }
            -4 => {
                let text = |i: usize| -> String {
                    items
                        .get(i)
                        .and_then(|v| redis::from_redis_value(v.clone()).ok())
                        .unwrap_or_default()
                };
                let index: i64 = items
                    .get(1)
                    .and_then(|v| redis::from_redis_value(v.clone()).ok())
                    .unwrap_or(0);
                return Ok(MergeOutcome::Refused(Error::CoalesceRecordRefused {
                    store: store.as_str().to_owned(),
                    index: usize::try_from(index).unwrap_or(0),
                    field: text(2),
                    rule: text(3),
                    reason: text(4),
                }));
            }
            _ => {}
        }
        let numbers: Vec<i64> =
            redis::from_redis_value(reply.clone()).map_err(|err| Error::Corrupt {
                what: format!("merge script replied {reply:?}: {err}"),
            })?;
        if let Some(refused) = crate::limits::refusal(store, &numbers) {
            return Ok(MergeOutcome::Refused(refused));
        }
        // For a coalescing store, `records` counts its entities.
        match PushReceipt::from_totals(&numbers) {
            Some(merged) => Ok(MergeOutcome::Applied(merged)),
            None => Err(Error::Corrupt {
                what: format!("merge script replied {numbers:?}"),
            }),
        }
    }

    /// Records `rules` as `store`'s coalescing rules (or replaces them). From then on every
    /// push to the store merges each record into its entity's row.
    ///
    /// # Errors
    /// [`Error::InvalidCoalesceRules`]; [`Error::CoalesceStoreNotEmpty`] when the store holds
    /// records, live or prepared (appended records or rows merged under other rules); nothing
    /// is changed then. Transient errors.
    pub async fn set_coalesce<S>(&self, store: S, rules: &CoalesceRules) -> Result<()>
    where
        S: TryInto<StoreName, Error = Error>,
    {
        let store = store.try_into()?;
        rules.validate(&store)?;
        self.change_coalesce(&store, "set_coalesce", rules.to_text())
            .await
            .map(drop)
    }

    /// Makes `store` an append store again. Returns whether it had rules.
    ///
    /// # Errors
    /// [`Error::CoalesceStoreNotEmpty`] when the store holds records, live or prepared;
    /// nothing is changed then. Transient errors.
    pub async fn clear_coalesce<S>(&self, store: S) -> Result<bool>
    where
        S: TryInto<StoreName, Error = Error>,
    {
        let store = store.try_into()?;
        self.change_coalesce(&store, "clear_coalesce", String::new())
            .await
    }

    async fn change_coalesce(
        &self,
        store: &StoreName,
        op: &'static str,
        text: String,
    ) -> Result<bool> {
        let layout = self.layout();
        let group = layout.group_for(store);
        let mut invocation = scripts::COALESCE_SET.key(&group.coalesce);
        invocation
            .key(&layout.live(store).records)
            .key(&group.prepared)
            .key(&layout.live(store).entities)
            .arg(store.encoded())
            .arg(text);
        let mut conn = self.conn();
        // Whatever the outcome, this producer reads the rules again before its next push.
        self.rules_cache().forget(store);
        let reply: Vec<i64> = self
            .run(op, store.as_str(), async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        match reply.as_slice() {
            [1, changed] => Ok(*changed == 1),
            [-1, live, batches] => Err(Error::CoalesceStoreNotEmpty {
                store: store.as_str().to_owned(),
                live: u64::try_from(*live).unwrap_or(0),
                batches: u64::try_from(*batches).unwrap_or(0),
            }),
            other => Err(Error::Corrupt {
                what: format!("{op} script replied {other:?}"),
            }),
        }
    }

    /// A store's coalescing rules, `None` for an append store.
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`]; [`Error::Corrupt`] when the stored text is not rules this
    /// crate can read; transient errors.
    pub async fn coalesce_rules<S>(&self, store: S) -> Result<Option<CoalesceRules>>
    where
        S: TryInto<StoreName, Error = Error>,
    {
        let store = store.try_into()?;
        let text = self
            .store_setting(StoreSetting::CoalesceRules, "coalesce_rules", &store)
            .await?;
        text.map(|text| {
            CoalesceRules::parse_stored(&text)
                .map_err(|reason| CoalesceRules::unreadable(&store, &text, &reason))
        })
        .transpose()
    }

    /// What a dashboard shows of a coalescing store's live rows: the writes merged into them
    /// and, with `sum_field`, the top [`TOP_ENTITIES`] entities by that summed field. One
    /// `HMGET` of two fields that every merge keeps up to date, so it takes the same time
    /// with ten entities or ten million. An append store (or a field that is not summed)
    /// reads as no writes and no entities.
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`]; [`Error::Corrupt`] naming the store and field when a
    /// stored value is not what the merge script writes; transient errors.
    pub async fn coalesced_view<S>(
        &self,
        store: S,
        sum_field: Option<&str>,
    ) -> Result<CoalescedView>
    where
        S: TryInto<StoreName, Error = Error>,
    {
        let store = store.try_into()?;
        let key = self.layout().live(&store).rows;
        let mut conn = self.conn();
        let fields = [TOTAL_WRITES.to_owned(), top_field(sum_field.unwrap_or(""))];
        let (writes, top): (Option<String>, Option<String>) = self
            .run("coalesced_view", store.as_str(), async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg(&fields[..])
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let corrupt = |what: &str, text: &str| Error::Corrupt {
            what: format!(
                "{what} of coalescing store {:?}: {:?}",
                store.as_str(),
                shorten(text)
            ),
        };
        let writes = match writes {
            None => 0,
            Some(text) => text
                .parse()
                .map_err(|_| corrupt("the count of merged writes", &text))?,
        };
        let (top_exact, top) = match (sum_field, top) {
            (Some(field), Some(text)) => parse_top(&text)
                .ok_or_else(|| corrupt(&format!("the top entities by field {field:?}"), &text))?,
            _ => (true, Vec::new()),
        };
        Ok(CoalescedView {
            writes,
            field: sum_field.map(str::to_owned),
            top,
            top_exact,
        })
    }

    /// The writes merged into each store's live rows (0 for an append store), in one
    /// pipeline of `HGET`s.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the store when a count is not a number; transient errors.
    pub async fn coalesced_writes(&self, stores: &[StoreName]) -> Result<Vec<u64>> {
        if stores.is_empty() {
            return Ok(Vec::new());
        }
        let layout = self.layout();
        let mut pipe = redis::pipe();
        for store in stores {
            pipe.hget(layout.live(store).rows, TOTAL_WRITES);
        }
        let mut conn = self.conn();
        let counts: Vec<Option<String>> = self
            .run("coalesced_writes", "", async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        stores
            .iter()
            .zip(counts)
            .map(|(store, count)| match count {
                None => Ok(0),
                Some(text) => text.parse().map_err(|_| Error::Corrupt {
                    what: format!(
                        "the count of merged writes of coalescing store {:?}: {:?}",
                        store.as_str(),
                        shorten(&text)
                    ),
                }),
            })
            .collect()
    }

    /// Every coalescing store and its rules, sorted by name: one `HGETALL` per slot group in
    /// one round trip (never a scan of the keyspace). An entry that does not decode (only a
    /// foreign writer can make one) is skipped with a warning.
    ///
    /// # Errors
    /// Transient errors.
    pub async fn all_coalesce_rules(&self) -> Result<Vec<(StoreName, CoalesceRules)>> {
        self.all_store_settings(
            StoreSetting::CoalesceRules,
            "all_coalesce_rules",
            CoalesceRules::parse_stored,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> StoreName {
        StoreName::new("views").unwrap()
    }

    #[test]
    fn rules_round_trip_through_their_text() {
        let rules = CoalesceRules::new("page")
            .with("views", MergeRule::Sum)
            .with("seen", MergeRule::Max)
            .with("refs", MergeRule::Union);
        let text = rules.to_text();
        assert_eq!(
            text,
            r#"{"key":"page","fields":{"refs":"union","seen":"max","views":"sum"}}"#
        );
        assert_eq!(CoalesceRules::parse_stored(&text), Ok(rules.clone()));
        assert_eq!(rules.to_string(), "key=page sum=views max=seen union=refs");
        for (stored, reason) in [
            (
                r#"{"key":"p","fields":{"a":"avg"}}"#,
                r#"field "a": unknown rule "avg": the rules are sum"#,
            ),
            (r#"{"key":"p","fields":{"a":7}}"#, "invalid type"),
            (r#"{"key":"p","extra":1}"#, "unknown field `extra`"),
            ("junk", "not rules as JSON"),
            (r#"{"key":"_p"}"#, "starts with '_'"),
        ] {
            let err = CoalesceRules::parse_stored(stored).unwrap_err();
            assert!(err.contains(reason), "{stored}: {err}");
        }
    }

    #[test]
    fn top_lists_are_read_largest_first_and_garbage_is_refused() {
        let text =
            "=\n\"/a\"\x1f5\n\"/b\"\x1f9223372036854775807\n7\x1f9223372036854775806\n\"/c\"\x1f5";
        let (exact, top) = parse_top(text).unwrap();
        assert!(exact);
        let order: Vec<(&str, &str)> = top
            .iter()
            .map(|t| (t.entity.as_str(), t.sum.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                ("\"/b\"", "9223372036854775807"),
                ("7", "9223372036854775806"),
                ("\"/a\"", "5"),
                ("\"/c\"", "5"),
            ]
        );
        assert_eq!(parse_top("~"), Some((false, Vec::new())));
        assert_eq!(parse_top("=\n1\x1f2.5\n2\x1f10").unwrap().1[0].entity, "2");
        for garbage in ["", "x", "=junk", "=\nno-separator", "=\n1\x1fmany"] {
            assert_eq!(parse_top(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn packed_rows_render_as_one_object_in_name_order() {
        let packed = "3\x1f100\x1f250\x1epage\x1f\"/a\"\x1eviews\x1f7\x1erefs\x1f\n\"x\"\n1\n\
                      \x1eB\x1f{\"k\":[1]}\x1eq\\\"\x1f\n";
        assert_eq!(
            render_row(packed).unwrap(),
            r#"{"B":{"k":[1]},"_first_write":100,"_last_write":250,"_writes":3,"page":"/a","q\\\"":[],"refs":["x",1],"views":7}"#
        );
        assert_eq!(
            render_row("1\x1f2\x1f3").unwrap(),
            r#"{"_first_write":2,"_last_write":3,"_writes":1}"#
        );
        for garbage in [
            "",
            "1\x1f2",
            "1\x1f2\x1f3\x1f4",
            "x\x1f2\x1f3",
            "1\x1f2\x1f3\x1enovalue",
            "1\x1f2\x1f3\x1eempty\x1f",
        ] {
            assert_eq!(render_row(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn unknown_rules_are_named() {
        assert_eq!("union".parse::<MergeRule>(), Ok(MergeRule::Union));
        let err = "avg".parse::<MergeRule>().unwrap_err();
        assert!(err.contains("\"avg\"") && err.contains("sum, max"), "{err}");
    }

    #[test]
    fn bad_rules_are_refused_naming_the_field() {
        let cases = [
            (CoalesceRules::new(""), "key field's name is empty"),
            (CoalesceRules::new("_id"), "\"_id\" starts with '_'"),
            (
                CoalesceRules::new("page").with("page", MergeRule::Sum),
                "key field \"page\" cannot also have a rule (sum)",
            ),
            (
                CoalesceRules::new("page").with("_n", MergeRule::Sum),
                "field \"_n\" starts with '_'",
            ),
        ];
        for (rules, expected) in cases {
            let err = rules.validate(&store()).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        let twice = ["a".to_owned()];
        let err = CoalesceRules::from_lists(
            &store(),
            "page",
            [(MergeRule::Sum, &twice[..]), (MergeRule::Max, &twice[..])],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("\"a\" is named under two rules, sum and max"),
            "{err}"
        );
    }
}
