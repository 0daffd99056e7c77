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
//! This version holds the rules only: the merge on push (one script per push reading the
//! rules), the coalesced batch layout and its reader are not built yet, so a push to a store
//! with rules still appends its records as to any store.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::buffer::Buffer;
use crate::error::{Error, Result};
use crate::name::StoreName;
use crate::scripts;

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

    fn parse(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
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
    /// Records `rules` as `store`'s coalescing rules (or replaces them). Pushes do not merge
    /// by them yet in this version (see the module's documentation): they append.
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
            .arg(store.encoded())
            .arg(text);
        let mut conn = self.conn();
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
        let key = self.layout().group_for(&store).coalesce;
        let mut conn = self.conn();
        let field = store.encoded().to_owned();
        let text: Option<String> = self
            .run("coalesce_rules", store.as_str(), async move {
                redis::cmd("HGET")
                    .arg(key)
                    .arg(field)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        text.map(|text| {
            CoalesceRules::parse(&text).ok_or_else(|| Error::Corrupt {
                what: format!("coalescing rules of store {store:?}: {text:?}"),
            })
        })
        .transpose()
    }

    /// Every coalescing store and its rules, sorted by name: one `HGETALL` per slot group in
    /// one round trip (never a scan of the keyspace). An entry that does not decode (only a
    /// foreign writer can make one) is skipped with a warning.
    ///
    /// # Errors
    /// Transient errors.
    pub async fn all_coalesce_rules(&self) -> Result<Vec<(StoreName, CoalesceRules)>> {
        let layout = self.layout();
        let mut pipe = redis::pipe();
        for g in 0..layout.groups() {
            pipe.hgetall(layout.group(g).coalesce);
        }
        let mut conn = self.conn();
        let groups: Vec<HashMap<String, String>> = self
            .run("all_coalesce_rules", "", async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        let mut out = Vec::new();
        for (field, text) in groups.into_iter().flatten() {
            match (StoreName::from_encoded(&field), CoalesceRules::parse(&text)) {
                (Ok(store), Some(rules)) => out.push((store, rules)),
                _ => tracing::warn!(%field, %text, "skipping a malformed coalescing rules entry"),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
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
        assert_eq!(CoalesceRules::parse(&text), Some(rules.clone()));
        assert_eq!(rules.to_string(), "key=page sum=views max=seen union=refs");
        assert_eq!(
            CoalesceRules::parse(r#"{"key":"p","fields":{"a":"avg"}}"#),
            None
        );
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
