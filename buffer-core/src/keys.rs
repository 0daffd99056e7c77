//! The Redis key layout. This module is the only place that knows how keys are spelled.
//!
//! ```text
//! <ns>:{<ns>:<g>}:s:<enc>:records|first|keys|bytes|runs  live store (LIST, STRING ms, SET,
//!                                                         STRING, LIST "<count>:<bytes>:<max>")
//! <ns>:{<ns>:<g>}:p:<T>:<enc>:records|...|runs            prepared batch T of the store
//! <ns>:{<ns>:<g>}:stores                                ZSET enc -> first-write ms
//! <ns>:{<ns>:<g>}:bytes / :count                        ZSET enc -> live bytes / records
//! <ns>:{<ns>:<g>}:prepared                              ZSET "<T>:<enc>" -> T's ms
//! <ns>:{<ns>:<g>}:failures                              HASH "<T>:<enc>" | "<enc>" -> failure JSON
//! <ns>:{<ns>:<g>}:lock:<enc> / :lock:<T>:<enc>          locks, value "<holder>:<token>"
//! <ns>:{<ns>:<g>}:limits                                HASH enc -> "records=N,bytes=N,rate=N"
//! <ns>:{<ns>:<g>}:rate:<enc>                            STRING "<unix s>:<records>", PX 2 s
//! <ns>:{<ns>:<g>}:s:<enc>:entities|rows              a coalescing store's entities and rows
//! <ns>:{<ns>:<g>}:coalesce                              HASH enc -> coalescing rules JSON
//! <ns>:events                                           pub/sub channel
//! <ns>:persisters                                       HASH holder -> announcement JSON
//! ```
//!
//! `g` is the store's slot group; the hash tag `{<ns>:<g>}` puts a store, its batches, its
//! locks and its group's indexes in one Redis Cluster slot. `enc` never contains `:`, `{`,
//! `}` or glob characters (see [`crate::StoreName`]) and `T` is `<digits>-<hex>`, so no store
//! can spell another store's key.

use crate::batch::BatchId;
use crate::name::{Namespace, StoreName};

/// Number of slot groups used unless configured otherwise.
pub const DEFAULT_GROUPS: u16 = 256;

/// The five keys that hold one store's (or one batch's) data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DataKeys {
    pub records: String,
    pub first: String,
    pub keys: String,
    pub bytes: String,
    /// One entry `<count>:<bytes>:<max record bytes>` per push, in push order, so the run list
    /// describes the records list exactly and a reader can size its pages by bytes before
    /// reading them (see `BatchReader`).
    pub runs: String,
    /// A coalescing store's entities (LIST of each entity's key as JSON text, in the order
    /// they were first written), see `crate::coalesce`.
    pub entities: String,
    /// A coalescing store's rows (HASH `<entity JSON>` → its packed row), see
    /// `crate::coalesce`.
    pub rows: String,
}

impl DataKeys {
    fn new(prefix: String) -> Self {
        Self {
            records: format!("{prefix}:records"),
            first: format!("{prefix}:first"),
            keys: format!("{prefix}:keys"),
            bytes: format!("{prefix}:bytes"),
            runs: format!("{prefix}:runs"),
            entities: format!("{prefix}:entities"),
            rows: format!("{prefix}:rows"),
        }
    }

    /// Every data key of a store or batch, appended and coalesced, in the order the prepare
    /// script takes them (the five of `all`, then entities, rows).
    pub fn all_data(&self) -> [&str; 7] {
        [
            &self.records,
            &self.first,
            &self.keys,
            &self.bytes,
            &self.runs,
            &self.entities,
            &self.rows,
        ]
    }

    /// The data keys of appended records, in the order the push scripts take them (records,
    /// first, keys, bytes, runs).
    pub fn all(&self) -> [&str; 5] {
        [
            &self.records,
            &self.first,
            &self.keys,
            &self.bytes,
            &self.runs,
        ]
    }
}

/// The index keys of one slot group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupKeys {
    pub stores: String,
    pub bytes: String,
    pub count: String,
    pub prepared: String,
    /// Failure records of the group's batches and stores (see `crate::failures`).
    pub failures: String,
    /// The group's stores' limits (see `crate::limits`).
    pub limits: String,
    /// The group's coalescing stores' rules (see `crate::coalesce`).
    pub coalesce: String,
    /// The group's paused stores: enc → when paused (Unix ms) (see `crate::operator`).
    pub paused: String,
}

/// Spells every key of a namespace.
#[derive(Clone, Debug)]
pub(crate) struct KeyLayout {
    namespace: Namespace,
    groups: u16,
}

impl KeyLayout {
    pub fn new(namespace: Namespace, groups: u16) -> Self {
        Self { namespace, groups }
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    pub fn groups(&self) -> u16 {
        self.groups
    }

    fn tag(&self, group: u16) -> String {
        let ns = self.namespace.as_str();
        format!("{ns}:{{{ns}:{group}}}")
    }

    pub fn group_of(&self, store: &StoreName) -> u16 {
        store.group(self.groups)
    }

    pub fn group(&self, group: u16) -> GroupKeys {
        let tag = self.tag(group);
        GroupKeys {
            stores: format!("{tag}:stores"),
            bytes: format!("{tag}:bytes"),
            count: format!("{tag}:count"),
            prepared: format!("{tag}:prepared"),
            failures: format!("{tag}:failures"),
            limits: format!("{tag}:limits"),
            coalesce: format!("{tag}:coalesce"),
            paused: format!("{tag}:paused"),
        }
    }

    pub fn group_for(&self, store: &StoreName) -> GroupKeys {
        self.group(self.group_of(store))
    }

    pub fn live(&self, store: &StoreName) -> DataKeys {
        let tag = self.tag(self.group_of(store));
        DataKeys::new(format!("{tag}:s:{}", store.encoded()))
    }

    pub fn batch(&self, store: &StoreName, batch: &BatchId) -> DataKeys {
        let tag = self.tag(self.group_of(store));
        DataKeys::new(format!("{tag}:p:{batch}:{}", store.encoded()))
    }

    pub fn store_lock(&self, store: &StoreName) -> String {
        format!(
            "{}:lock:{}",
            self.tag(self.group_of(store)),
            store.encoded()
        )
    }

    pub fn batch_lock(&self, store: &StoreName, batch: &BatchId) -> String {
        format!(
            "{}:lock:{batch}:{}",
            self.tag(self.group_of(store)),
            store.encoded()
        )
    }

    /// The marker of a push made with an idempotency id (see `Buffer::push_once`).
    pub fn push_id(&self, store: &StoreName, push_id: &str) -> String {
        format!(
            "{}:id:{}:{push_id}",
            self.tag(self.group_of(store)),
            store.encoded()
        )
    }

    /// The counter of a store's pushed records in the current one-second window of its rate
    /// limit (see `crate::limits`).
    pub fn rate(&self, store: &StoreName) -> String {
        format!(
            "{}:rate:{}",
            self.tag(self.group_of(store)),
            store.encoded()
        )
    }

    /// The member of a group's `prepared` ZSET that stands for one batch.
    pub fn prepared_member(store: &StoreName, batch: &BatchId) -> String {
        format!("{batch}:{}", store.encoded())
    }

    pub fn events_channel(&self) -> String {
        format!("{}:events", self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_a_store_share_one_hash_tag() {
        let layout = KeyLayout::new(Namespace::default(), DEFAULT_GROUPS);
        let store = StoreName::new("orders").unwrap();
        let g = layout.group_of(&store);
        let tag = format!("{{buf:{g}}}");
        let batch = BatchId::new(1);
        let mut keys: Vec<String> = layout.live(&store).all().map(str::to_owned).into();
        keys.extend(layout.batch(&store, &batch).all().map(str::to_owned));
        keys.push(layout.store_lock(&store));
        keys.push(layout.batch_lock(&store, &batch));
        keys.push(layout.rate(&store));
        let group = layout.group_for(&store);
        keys.extend([
            group.stores,
            group.bytes,
            group.count,
            group.prepared,
            group.failures,
            group.limits,
        ]);
        for key in keys {
            assert!(key.starts_with(&format!("buf:{tag}:")), "{key}");
        }
        assert_eq!(
            layout.live(&store).records,
            format!("buf:{tag}:s:orders:records")
        );
    }
}

#[cfg(test)]
mod no_keys_command {
    /// Every source file of this crate: no command use of KEYS may appear in any of them.
    /// Every source file of this crate, read at test time (recursively), so a new file is
    /// checked without being listed anywhere.
    fn sources() -> Vec<(std::path::PathBuf, String)> {
        let mut pending = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        let mut found = Vec::new();
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.extension().is_some_and(|ext| ext == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    found.push((path, text));
                }
            }
        }
        found
    }

    #[test]
    fn the_keys_command_is_never_sent() {
        let forbidden = [
            concat!("cmd(\"", "KEYS\")"),
            concat!("call('", "KEYS'"),
            concat!("call(\"", "KEYS\""),
        ];
        let sources = sources();
        assert!(sources.len() > 10, "found only {} sources", sources.len());
        for (path, source) in sources {
            for pattern in forbidden {
                assert!(
                    !source.contains(pattern),
                    "found {pattern} in {}",
                    path.display()
                );
            }
        }
    }
}
