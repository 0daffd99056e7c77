//! Finding work and inspecting live stores from the per-group indexes, never by listing the
//! keyspace: [`Buffer::stores`], `get_old`, `get_large`, `get_prepared`, and the live stores'
//! keys and latest records.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use redis::{FromRedisValue, RedisError, Value};
use serde::Serialize;

use crate::batch::{BatchId, serialize_display};
use crate::buffer::{Buffer, millis};
use crate::error::{Error, Result};
use crate::name::StoreName;

/// A live store as the indexes describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StoreSummary {
    /// The store.
    #[serde(serialize_with = "serialize_display")]
    pub store: StoreName,
    /// When its first live record was pushed (Unix ms).
    pub first_write_ms: u64,
    /// Size of its live records in bytes.
    pub bytes: u64,
    /// Number of live records.
    pub records: u64,
}

impl StoreSummary {
    /// A summary of `store` with no records (first write 0, no bytes): the indexes make these,
    /// and a dashboard's tests make their own and set the public fields by name.
    pub fn new(store: StoreName) -> Self {
        Self {
            store,
            first_write_ms: 0,
            bytes: 0,
            records: 0,
        }
    }
}

/// A prepared batch as the indexes describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PreparedSummary {
    /// The store it came from.
    #[serde(serialize_with = "serialize_display")]
    pub store: StoreName,
    /// Its id (which carries its creation time).
    #[serde(serialize_with = "serialize_display")]
    pub id: BatchId,
}

impl PreparedSummary {
    /// The summary of batch `id` of `store`.
    pub fn new(store: StoreName, id: BatchId) -> Self {
        Self { store, id }
    }
}

/// What a read of every slot group found when some groups' master did not answer: the
/// results of the groups that did, and one error per distinct failure. On a Redis Cluster a
/// master that is down or frozen hides only its own groups' stores and batches; on one server
/// a read answers whole or fails.
#[derive(Debug)]
#[non_exhaustive]
pub struct Partial<T> {
    /// What the groups that answered hold.
    pub found: T,
    /// Why the other groups were not read (empty when every group answered).
    pub missed: Vec<Error>,
}

impl<T> Partial<T> {
    /// True when every group answered.
    pub fn is_complete(&self) -> bool {
        self.missed.is_empty()
    }

    /// What was found, logging what was missed: the tolerant reads (`stores`, `get_old`, …).
    pub(crate) fn tolerated(self, op: &str) -> T {
        for err in &self.missed {
            warn_missed(op, err);
        }
        self.found
    }
}

/// How often the same missed read (operation and error) is logged as a warning; the repeats
/// in between go to debug. A persister polls several times a second and each poll makes
/// four tolerant reads: a master down for a minute used to write thousands of identical
/// warnings, burying the one line that says it went down.
const MISSED_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Logs that `op` left out the slot groups `err` kept it from reading: a warning the first
/// time, and again at most every [`MISSED_WARNING_EVERY`] with how many repeats it
/// summarizes.
fn warn_missed(op: &str, err: &Error) {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    use std::time::Instant;
    /// (operation, error text) → when it was last warned about, and the repeats since.
    type Warned = HashMap<(String, String), (Instant, u64)>;
    static LAST: LazyLock<Mutex<Warned>> = LazyLock::new(Default::default);
    let key = (op.to_owned(), err.to_string());
    let now = Instant::now();
    let repeats = {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        last.retain(|_, (at, _)| now.duration_since(*at) < MISSED_WARNING_EVERY * 10);
        match last.get_mut(&key) {
            Some((at, repeats)) if now.duration_since(*at) < MISSED_WARNING_EVERY => {
                *repeats += 1;
                None
            }
            Some((at, repeats)) => {
                let summarized = *repeats;
                (*at, *repeats) = (now, 0);
                Some(summarized)
            }
            None => {
                last.insert(key, (now, 0));
                Some(0)
            }
        }
    };
    match repeats {
        Some(repeats) => tracing::warn!(op, error = %err, repeats_since_last_warning = repeats,
            "some slot groups were not read; their stores are left out of this read"),
        None => tracing::debug!(op, error = %err,
            "some slot groups were not read; their stores are left out of this read"),
    }
}

/// The replies of a pipeline of `per_group` reads for each slot group: each group's
/// replies, or `None` where one of them failed.
pub(crate) struct GroupReplies {
    groups: Vec<Option<Vec<Value>>>,
    pub(crate) missed: Vec<Error>,
}

impl GroupReplies {
    /// Each answering group's replies converted to `T` (`None` for the others).
    pub(crate) fn converted<T: FromRedisValue>(&self) -> Result<Vec<Option<Vec<T>>>> {
        self.groups
            .iter()
            .map(|group| {
                group
                    .as_ref()
                    .map(|replies| {
                        replies
                            .iter()
                            .map(|reply| {
                                redis::from_redis_value_ref(reply).map_err(|err| Error::Corrupt {
                                    what: format!("a slot group index: {err}"),
                                })
                            })
                            .collect()
                    })
                    .transpose()
            })
            .collect()
    }
}

impl Buffer {
    /// Sends `pipe` (`per_group` single-command reads per slot group, in group order) and
    /// sorts its replies by group, leaving out the groups whose master failed.
    ///
    /// # Errors
    /// The first failure when no group answered.
    pub(crate) async fn read_groups(
        &self,
        op: &'static str,
        per_group: usize,
        pipe: &redis::Pipeline,
    ) -> Result<GroupReplies> {
        let mut replies = self.run_each(op, pipe).await?.into_iter();
        let mut groups = Vec::new();
        let mut missed: Vec<Error> = Vec::new();
        loop {
            let chunk: Vec<Result<Value>> = replies.by_ref().take(per_group.max(1)).collect();
            if chunk.is_empty() {
                break;
            }
            let mut values = Vec::with_capacity(chunk.len());
            let mut failed = None;
            for reply in chunk {
                match reply {
                    Ok(Value::ServerError(err)) => {
                        failed = Some(Error::from_redis(op, "", RedisError::from(err)));
                    }
                    Ok(value) => values.push(value),
                    Err(err) => failed = Some(err),
                }
            }
            match failed {
                Some(err) => {
                    if !missed.iter().any(|m| m.to_string() == err.to_string()) {
                        missed.push(err);
                    }
                    groups.push(None);
                }
                None => groups.push(Some(values)),
            }
        }
        if !missed.is_empty() && groups.iter().all(Option::is_none) {
            return Err(missed.swap_remove(0));
        }
        Ok(GroupReplies { groups, missed })
    }

    /// How many unique top-level keys each live store has (exact: one SCARD each, in one
    /// pipelined round trip), in the order given; 0 for a store with no live records.
    ///
    /// # Errors
    /// Transient errors; a Redis error (`is_wrong_type()`) when a key was tampered with.
    pub async fn store_key_counts(&self, stores: &[StoreName]) -> Result<Vec<u64>> {
        if stores.is_empty() {
            return Ok(Vec::new());
        }
        let layout = self.layout();
        let mut pipe = redis::pipe();
        for store in stores {
            pipe.scard(layout.live(store).keys);
        }
        let mut conn = self.conn();
        self.run("count keys", "", async move {
            pipe.query_async(&mut conn).await
        })
        .await
    }

    /// Up to `limit` of the unique top-level keys of a live store, sorted.
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`]; transient errors.
    pub async fn store_keys<S>(&self, store: S, limit: usize) -> Result<BTreeSet<String>>
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
    {
        let store = store.try_into()?;
        let key = self.layout().live(&store).keys;
        self.scan_set(&store, key, limit).await
    }

    /// The last `count` records pushed to a live store, oldest first, as JSON texts.
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`]; transient errors.
    pub async fn latest_records<S>(&self, store: S, count: usize) -> Result<Vec<String>>
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
    {
        let store = store.try_into()?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let key = self.layout().live(&store).records;
        let mut conn = self.conn();
        let start = -i64::try_from(count).unwrap_or(i64::MAX);
        self.run("latest_records", store.as_str(), async move {
            redis::cmd("LRANGE")
                .arg(key)
                .arg(start)
                .arg(-1)
                .query_async(&mut conn)
                .await
        })
        .await
    }

    /// Every live store, with its first-write time, bytes and records, from the group indexes.
    /// Index entries that are not encoded names (foreign writes) are skipped with a warning.
    /// On a cluster, the groups of a master that does not answer are left out, with a
    /// warning: [`Buffer::stores_partial`] says which were.
    ///
    /// # Errors
    /// Transient errors when no group could be read.
    pub async fn stores(&self) -> Result<Vec<StoreSummary>> {
        Ok(self.stores_partial().await?.tolerated("stores"))
    }

    /// Every live store of the groups that answered, and why the others did not (see
    /// [`Partial`]).
    ///
    /// # Errors
    /// Transient errors when no group could be read.
    pub async fn stores_partial(&self) -> Result<Partial<Vec<StoreSummary>>> {
        let layout = self.layout();
        let mut pipe = redis::pipe();
        for g in 0..layout.groups() {
            let group = layout.group(g);
            pipe.zrange_withscores(&group.stores, 0, -1)
                .zrange_withscores(&group.bytes, 0, -1)
                .zrange_withscores(&group.count, 0, -1);
        }
        let read = self.read_groups("stores", 3, &pipe).await?;
        let mut out = Vec::new();
        for chunk in read
            .converted::<Vec<(String, f64)>>()?
            .into_iter()
            .flatten()
        {
            let [stores, bytes, counts] = chunk.as_slice() else {
                continue;
            };
            let bytes: HashMap<&str, f64> = bytes.iter().map(|(m, s)| (m.as_str(), *s)).collect();
            let counts: HashMap<&str, f64> = counts.iter().map(|(m, s)| (m.as_str(), *s)).collect();
            for (member, first) in stores {
                let Some(store) = index_entry(member) else {
                    continue;
                };
                out.push(StoreSummary {
                    store,
                    first_write_ms: score(*first),
                    bytes: bytes.get(member.as_str()).copied().map_or(0, score),
                    records: counts.get(member.as_str()).copied().map_or(0, score),
                });
            }
        }
        out.sort_by(|a, b| a.store.cmp(&b.store));
        Ok(Partial {
            found: out,
            missed: read.missed,
        })
    }

    /// The live stores whose first write is at least `older_than` ago, oldest first.
    ///
    /// # Errors
    /// As [`Buffer::stores`].
    pub async fn get_old(&self, older_than: Duration) -> Result<Vec<StoreSummary>> {
        let cutoff = self.stamp_ms().await?.saturating_sub(millis(older_than));
        self.select_by_score(Selector::FirstWriteAtMost(cutoff))
            .await
    }

    /// When the oldest live store's first record was pushed (Unix ms), or `None` when no store
    /// has live records. One `ZRANGE <stores> 0 0 WITHSCORES` per group in one pipeline, so
    /// it costs the same with ten stores or ten thousand (the persister's lag gauge).
    ///
    /// # Errors
    /// Transient errors.
    pub async fn oldest_first_write_ms(&self) -> Result<Option<u64>> {
        let layout = self.layout();
        let mut pipe = redis::pipe();
        for g in 0..layout.groups() {
            pipe.zrange_withscores(layout.group(g).stores, 0, 0);
        }
        let read = self.read_groups("oldest store", 1, &pipe).await?;
        let oldest = read
            .converted::<Vec<(String, f64)>>()?
            .into_iter()
            .flatten()
            .flatten()
            .flatten()
            .map(|(_member, first)| score(first))
            .min();
        Ok(Partial {
            found: oldest,
            missed: read.missed,
        }
        .tolerated("oldest store"))
    }

    /// The live stores holding at least `min_bytes` bytes or at least `min_records` records.
    ///
    /// # Errors
    /// As [`Buffer::stores`].
    pub async fn get_large(
        &self,
        min_bytes: Option<u64>,
        min_records: Option<u64>,
    ) -> Result<Vec<StoreSummary>> {
        let mut found: Vec<StoreSummary> = Vec::new();
        if let Some(min) = min_bytes {
            found.extend(self.select_by_score(Selector::BytesAtLeast(min)).await?);
        }
        if let Some(min) = min_records {
            found.extend(self.select_by_score(Selector::RecordsAtLeast(min)).await?);
        }
        found.sort_by(|a, b| a.store.cmp(&b.store));
        found.dedup_by(|a, b| a.store == b.store);
        Ok(found)
    }

    async fn select_by_score(&self, selector: Selector) -> Result<Vec<StoreSummary>> {
        let layout = self.layout();
        let mut pipe = redis::pipe();
        for g in 0..layout.groups() {
            let group = layout.group(g);
            let (key, min, max) = match selector {
                Selector::FirstWriteAtMost(cutoff) => {
                    (group.stores, "-inf".to_owned(), cutoff.to_string())
                }
                Selector::BytesAtLeast(min) => (group.bytes, min.to_string(), "+inf".to_owned()),
                Selector::RecordsAtLeast(min) => (group.count, min.to_string(), "+inf".to_owned()),
            };
            pipe.cmd("ZRANGE").arg(key).arg(min).arg(max).arg("BYSCORE");
        }
        let read = self.read_groups("select stores", 1, &pipe).await?;
        let members = read.converted::<Vec<String>>()?;
        // Second round trip: the three scores of just the selected stores.
        let mut selected = Vec::new();
        let mut pipe = redis::pipe();
        for (g, members) in (0..layout.groups()).zip(members) {
            let group = layout.group(g);
            for member in members.into_iter().flatten().flatten() {
                pipe.zscore(&group.stores, &member)
                    .zscore(&group.bytes, &member)
                    .zscore(&group.count, &member);
                selected.push(member);
            }
        }
        for err in &read.missed {
            warn_missed("select stores", err);
        }
        if selected.is_empty() {
            return Ok(Vec::new());
        }
        let scores = self.read_groups("select stores", 3, &pipe).await?;
        let scores = scores.converted::<Option<f64>>()?;
        let mut out = Vec::with_capacity(selected.len());
        for (member, scores) in selected.iter().zip(scores) {
            // The master of this store's group stopped answering between the two reads.
            let Some(scores) = scores else { continue };
            let [first, bytes, records] = scores.as_slice() else {
                continue;
            };
            // A store prepared between the two round trips has no first-write entry: skip it.
            let Some(first) = first else { continue };
            let Some(store) = index_entry(member) else {
                continue;
            };
            out.push(StoreSummary {
                store,
                first_write_ms: score(*first),
                bytes: bytes.map_or(0, score),
                records: records.map_or(0, score),
            });
        }
        out.sort_by_key(|s| s.first_write_ms);
        Ok(out)
    }

    /// Every prepared batch waiting to be persisted, oldest first, from the group indexes.
    /// Malformed entries (foreign writes) are skipped with a warning.
    ///
    /// # Errors
    /// Transient errors.
    pub async fn get_prepared(&self) -> Result<Vec<PreparedSummary>> {
        Ok(self.get_prepared_partial().await?.tolerated("get_prepared"))
    }

    /// Every prepared batch of the groups that answered, and why the others did not (see
    /// [`Partial`]).
    ///
    /// # Errors
    /// Transient errors when no group could be read.
    pub async fn get_prepared_partial(&self) -> Result<Partial<Vec<PreparedSummary>>> {
        let layout = self.layout();
        let mut pipe = redis::pipe();
        for g in 0..layout.groups() {
            pipe.zrange(layout.group(g).prepared, 0, -1);
        }
        let read = self.read_groups("get_prepared", 1, &pipe).await?;
        let mut out = Vec::new();
        for member in read
            .converted::<Vec<String>>()?
            .into_iter()
            .flatten()
            .flatten()
            .flatten()
        {
            let parsed = member.split_once(':').and_then(|(id, encoded)| {
                Some(PreparedSummary {
                    id: id.parse().ok()?,
                    store: index_entry(encoded)?,
                })
            });
            match parsed {
                Some(summary) => out.push(summary),
                None => {
                    tracing::warn!(entry = %member, "skipping a malformed prepared-index entry")
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Partial {
            found: out,
            missed: read.missed,
        })
    }
}

#[derive(Clone, Copy)]
enum Selector {
    FirstWriteAtMost(u64),
    BytesAtLeast(u64),
    RecordsAtLeast(u64),
}

/// Decodes a store name from an index. A malformed entry (only a foreign writer can make one)
/// is skipped with a warning, so one bad entry cannot hide every other store.
fn index_entry(encoded: &str) -> Option<StoreName> {
    match StoreName::from_encoded(encoded) {
        Ok(store) => Some(store),
        Err(err) => {
            tracing::warn!(entry = %encoded, error = %err, "skipping a malformed index entry");
            None
        }
    }
}

fn score(value: f64) -> u64 {
    // Scores are integers we wrote (ms, byte and record counts), exact below 2^53.
    if value.is_finite() && value > 0.0 {
        value as u64
    } else {
        0
    }
}
