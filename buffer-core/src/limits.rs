//! Per-store limits, shared by every producer: live records, live bytes, and a push rate.
//!
//! Limits live in Redis, so every producer (in any language) obeys the same ones: one HASH per
//! slot group, `<ns>:{<ns>:<g>}:limits`, whose field is the store's encoded name and whose
//! value is compact text, `records=N,bytes=N,rate=N` (any of them left out). The rate is
//! counted in a fixed one-second window of Redis's own clock (`TIME`), in the store's counter
//! `<ns>:{<ns>:<g>}:rate:<enc>` (`"<unix s>:<records>"`, expiring after two seconds). Both keys
//! carry the store's hash tag, so the script that checks them and appends the records touches
//! one Redis Cluster slot.
//!
//! # How a push obeys them
//! A push to a store that may have limits runs `scripts::PUSH_LIMITED`: it checks the limits
//! and appends in one atomic step, or writes nothing and the push is refused whole with
//! [`Error::LimitExceeded`]. A push to a store known to have none is today's single
//! MULTI/EXEC, with one `HEXISTS` of the store's limits field added at its end.
//!
//! Which of the two a producer sends is decided per store by `LimitCache` (`limit_cache.rs`), learned from the
//! replies of the producer's own pushes, so it costs no extra round trip and no timer: a store
//! starts unknown (script), every script reply says whether the store has limits, and every
//! MULTI/EXEC reply says so too (the `HEXISTS`). A new limit is therefore obeyed by a producer
//! from the first push it *sends* after one of its pushes *saw* the limit; only pushes already
//! in flight at that moment, at most one per store for a producer that pushes one at a time,
//! go unchecked. That is the whole overshoot bound (see docs/producing.md, "Limits and
//! backpressure"). Pushes that go through the script never overshoot together, however many
//! producers run them.

use redis::{Cmd, Value};
use serde::Serialize;

use crate::buffer::Buffer;
use crate::error::{Error, Result};
use crate::name::StoreName;
use crate::receipt::PushReceipt;
use crate::record::EncodedRecords;
use crate::replicas::ScriptCall;
use crate::scripts;
use crate::store_settings::StoreSetting;

/// The largest value a limit may have: Lua, which checks the limits, counts in doubles, exact
/// up to 2^53.
pub const MAX_LIMIT: u64 = 1 << 53;

/// The limits of one store. `None` means no limit of that kind; at least one is set.
///
/// A push of `n` records and `b` bytes is admitted only if the live store then holds at most
/// `max_records` records and `max_bytes` bytes, and at most `max_rate` records were admitted
/// in the current second of Redis's clock, this push included. Records already prepared into
/// batches (being persisted) do not count: they leave Redis as soon as they are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StoreLimits {
    /// The most records the live store may hold.
    pub max_records: Option<u64>,
    /// The most bytes (of compact JSON) the live store may hold.
    pub max_bytes: Option<u64>,
    /// The most records that may be pushed per second (a fixed one-second window).
    pub max_rate: Option<u64>,
}

impl StoreLimits {
    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        self.max_records.is_none() && self.max_bytes.is_none() && self.max_rate.is_none()
    }

    /// The limit of `kind`, if set.
    pub fn get(&self, kind: LimitKind) -> Option<u64> {
        match kind {
            LimitKind::Records => self.max_records,
            LimitKind::Bytes => self.max_bytes,
            LimitKind::Rate => self.max_rate,
        }
    }

    /// The text stored in Redis: `records=N,bytes=N,rate=N`, only the limits that are set.
    fn to_text(self) -> String {
        LimitKind::ALL
            .iter()
            .filter_map(|kind| self.get(*kind).map(|max| format!("{}={max}", kind.field())))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Reads the stored text back; `None` when it is not of that form.
    fn parse(text: &str) -> Option<Self> {
        let mut limits = Self::default();
        for part in text.split(',') {
            let (field, value) = part.split_once('=')?;
            let value: u64 = value.parse().ok()?;
            let slot = match field {
                "records" => &mut limits.max_records,
                "bytes" => &mut limits.max_bytes,
                "rate" => &mut limits.max_rate,
                _ => return None,
            };
            *slot = Some(value);
        }
        (!limits.is_empty()).then_some(limits)
    }
}

/// Which limit refused a push (see [`Error::LimitExceeded`]). Non-exhaustive: a kind of
/// limit may be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum LimitKind {
    /// [`StoreLimits::max_records`].
    Records,
    /// [`StoreLimits::max_bytes`].
    Bytes,
    /// [`StoreLimits::max_rate`].
    Rate,
}

impl LimitKind {
    const ALL: [Self; 3] = [Self::Records, Self::Bytes, Self::Rate];

    /// The name of the field in the stored text.
    fn field(self) -> &'static str {
        match self {
            Self::Records => "records",
            Self::Bytes => "bytes",
            Self::Rate => "rate",
        }
    }

    /// The code the push scripts reply with.
    fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Self::Records),
            2 => Some(Self::Bytes),
            3 => Some(Self::Rate),
            _ => None,
        }
    }
}

impl std::fmt::Display for LimitKind {
    /// The CLI's flag names: `max-records`, `max-bytes`, `max-rate`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Records => "max-records",
            Self::Bytes => "max-bytes",
            Self::Rate => "max-rate",
        })
    }
}

/// The commands a MULTI/EXEC push ends with, so its results tell whether the store has limits
/// and when Redis executed it: `HEXISTS` of the store's limits field, then `TIME`.
pub(crate) fn probe(buffer: &Buffer, store: &StoreName) -> [Cmd; 2] {
    let limits = buffer.layout().group_for(store).limits;
    [
        redis::Cmd::hexists(limits, store.encoded()),
        redis::cmd("TIME"),
    ]
}

/// Reads the probe's results (the last two of a push's MULTI/EXEC results) into the cache.
pub(crate) fn observe_probe(buffer: &Buffer, store: &StoreName, results: &[Value]) {
    let observed = match results {
        [.., exists, time] => {
            let exists: Option<bool> = redis::from_redis_value(exists.clone()).ok();
            let time: Option<(u64, u64)> = redis::from_redis_value(time.clone()).ok();
            exists.zip(time)
        }
        _ => None,
    };
    match observed {
        Some((limited, (secs, micros))) => {
            buffer
                .limit_cache()
                .observe(store, limited, secs * 1_000_000 + micros);
        }
        // Cannot happen (the transaction's replies were checked); the script is always right.
        None => buffer.limit_cache().forget(store),
    }
}

/// The `PUSH_LIMITED` invocation of a push of `records`, stamped `now`.
pub(crate) fn invocation(
    buffer: &Buffer,
    store: &StoreName,
    records: EncodedRecords,
    now: u64,
) -> ScriptCall<'static> {
    let layout = buffer.layout();
    let live = layout.live(store);
    let group = layout.group_for(store);
    let mut invocation = ScriptCall::new(&scripts::PUSH_LIMITED);
    for key in live.all() {
        invocation.key(key);
    }
    invocation
        .key(&group.stores)
        .key(&group.bytes)
        .key(&group.count)
        .key(&group.limits)
        .key(layout.rate(store))
        .arg(now)
        .arg(store.encoded())
        .arg(records.bytes())
        .arg(records.len())
        .arg(records.keys().len());
    for key in records.keys() {
        invocation.arg(key);
    }
    for text in records.texts() {
        invocation.arg(text);
    }
    invocation
}

/// The receipt in a `PUSH_LIMITED` reply, or the refusal it holds; records in the cache
/// whether the store has limits.
///
/// # Errors
/// [`Error::LimitExceeded`] for a refusal, [`Error::Corrupt`] for a reply of another shape.
pub(crate) fn read_reply(buffer: &Buffer, store: &StoreName, reply: Value) -> Result<PushReceipt> {
    let corrupt = || Error::Corrupt {
        what: format!("push to store {store:?}: the limited push script replied {reply:?}"),
    };
    let numbers: Vec<i64> = redis::from_redis_value(reply.clone()).map_err(|_| corrupt())?;
    let count = |n: i64| u64::try_from(n).map_err(|_| corrupt());
    match numbers[..] {
        [0, records, bytes, keys, first, limited, at_us] => {
            buffer
                .limit_cache()
                .observe(store, limited == 1, count(at_us)?);
            Ok(PushReceipt {
                records: count(records)?,
                bytes: count(bytes)?,
                keys: count(keys)?,
                first_write_ms: count(first)?,
            })
        }
        [-1, _, _, _, _, at_us] => {
            buffer.limit_cache().observe(store, true, count(at_us)?);
            Err(refusal(store, &numbers).unwrap_or_else(corrupt))
        }
        _ => Err(corrupt()),
    }
}

/// The error a `{-1, limit, max, current, requested, time}` script reply stands for.
pub(crate) fn refusal(store: &StoreName, reply: &[i64]) -> Option<Error> {
    let [-1, code, max, current, requested, _] = reply[..] else {
        return None;
    };
    Some(Error::LimitExceeded {
        store: store.to_string(),
        limit: LimitKind::from_code(code)?,
        max: u64::try_from(max).ok()?,
        current: u64::try_from(current).ok()?,
        requested: u64::try_from(requested).ok()?,
    })
}

impl Buffer {
    /// Sets a store's limits, replacing any it had. Every producer obeys them: a producer
    /// that knew the store to be unlimited checks them from its next push after one of its
    /// pushes saw them (see docs/producing.md, "Limits and backpressure", for the overshoot bound).
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`]; [`Error::Config`] when no limit is set (use
    /// [`Buffer::clear_limits`]) or one is above [`MAX_LIMIT`]; transient errors.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(buffer: buffer_core::Buffer) -> Result<(), buffer_core::Error> {
    /// use buffer_core::StoreLimits;
    ///
    /// let limits = StoreLimits { max_records: Some(100_000), max_rate: Some(500), ..Default::default() };
    /// buffer.set_limits("clicks", limits).await?;
    /// match buffer.push("clicks", &serde_json::json!({"page": "/"})).await {
    ///     Err(err) if err.is_backpressure() => eprintln!("slow down: {err}"),
    ///     other => { other?; }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn set_limits<S>(&self, store: S, limits: StoreLimits) -> Result<()>
    where
        S: TryInto<StoreName, Error = Error>,
    {
        let store = store.try_into()?;
        if limits.is_empty() {
            return Err(Error::Config(format!(
                "limits of store {store:?}: set at least one of max records, max bytes and \
                 max rate (clear_limits removes them)"
            )));
        }
        for kind in LimitKind::ALL {
            if let Some(max) = limits.get(kind).filter(|max| *max > MAX_LIMIT) {
                return Err(Error::Config(format!(
                    "limits of store {store:?}: {kind} {max} is above the largest limit, {MAX_LIMIT}"
                )));
            }
        }
        let key = self.layout().group_for(&store).limits;
        let mut conn = self.conn();
        let text = limits.to_text();
        let field = store.encoded().to_owned();
        let (_, (secs, micros)): (u64, (u64, u64)) = self
            .run("set_limits", store.as_str(), async move {
                redis::pipe()
                    .atomic()
                    .hset(key, field, text)
                    .cmd("TIME")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        // This producer obeys the limit from its very next push.
        self.limit_cache()
            .observe(&store, true, secs * 1_000_000 + micros);
        Ok(())
    }

    /// A store's limits, `None` when it has none.
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`]; [`Error::Corrupt`] when the stored text is not of the
    /// form this crate writes; transient errors.
    pub async fn limits<S>(&self, store: S) -> Result<Option<StoreLimits>>
    where
        S: TryInto<StoreName, Error = Error>,
    {
        let store = store.try_into()?;
        let text = self
            .store_setting(StoreSetting::Limits, "limits", &store)
            .await?;
        text.map(|text| {
            StoreLimits::parse(&text).ok_or_else(|| Error::Corrupt {
                what: format!("limits of store {store:?}: {text:?}"),
            })
        })
        .transpose()
    }

    /// Every store that has limits, sorted by name: one `HGETALL` per slot group, in one
    /// round trip (never a scan of the keyspace). An entry that does not decode (only a
    /// foreign writer can make one) is skipped with a warning.
    ///
    /// # Errors
    /// Transient errors.
    pub async fn all_limits(&self) -> Result<Vec<(StoreName, StoreLimits)>> {
        self.all_store_settings(StoreSetting::Limits, "all_limits", |text| {
            StoreLimits::parse(text)
                .ok_or_else(|| "not of the form records=N,bytes=N,rate=N".to_owned())
        })
        .await
    }

    /// Removes a store's limits. Returns whether it had any.
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`]; transient errors.
    pub async fn clear_limits<S>(&self, store: S) -> Result<bool>
    where
        S: TryInto<StoreName, Error = Error>,
    {
        let store = store.try_into()?;
        let group = self.layout().group_for(&store);
        let rate = self.layout().rate(&store);
        let mut conn = self.conn();
        let field = store.encoded().to_owned();
        let (removed, _): (u64, u64) = self
            .run("clear_limits", store.as_str(), async move {
                redis::pipe()
                    .hdel(group.limits, field)
                    .del(rate)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        // The next push goes through the script, whose reply says the store is unlimited now.
        self.limit_cache().forget(&store);
        Ok(removed == 1)
    }

    /// The records admitted in the current one-second window of each store's rate limit,
    /// for dashboards: one `GET` per store, in one round trip. 0 for a store with no count in
    /// the current window of Redis's clock.
    ///
    /// # Errors
    /// Transient errors.
    pub async fn rate_in_window(&self, stores: &[StoreName]) -> Result<Vec<u64>> {
        if stores.is_empty() {
            return Ok(Vec::new());
        }
        let layout = self.layout();
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        for store in stores {
            pipe.get(layout.rate(store));
        }
        let mut conn = self.conn();
        let (time, counters): ((String, String), Vec<Option<String>>) = {
            let mut replies: Vec<Value> = self
                .run("rate_in_window", "", async move {
                    pipe.query_async(&mut conn).await
                })
                .await?;
            let corrupt = |what: String| Error::Corrupt { what };
            if replies.is_empty() {
                return Err(corrupt("rate_in_window: no reply".into()));
            }
            let time = redis::from_redis_value(replies.remove(0))
                .map_err(|err| corrupt(format!("TIME replied: {err}")))?;
            let counters = replies
                .into_iter()
                .map(redis::from_redis_value)
                .collect::<std::result::Result<_, _>>()
                .map_err(|err| corrupt(format!("a rate counter: {err}")))?;
            (time, counters)
        };
        let window = time.0;
        Ok(counters
            .into_iter()
            .map(|counter| {
                counter
                    .as_deref()
                    .and_then(|c| c.split_once(':'))
                    .filter(|(w, _)| *w == window)
                    .and_then(|(_, n)| n.parse().ok())
                    .unwrap_or(0)
            })
            .collect())
    }

    /// A push of `records` through the limits script (see the module doc).
    pub(crate) async fn push_limited(
        &self,
        store: &StoreName,
        records: EncodedRecords,
        now: u64,
    ) -> Result<PushReceipt> {
        // One script call, then WAIT on the same connection when the buffer waits for
        // replicas (a refusal wrote nothing, and its WAIT returns at once).
        let reply: Value = invocation(self, store, records, now)
            .invoke(self, "push", store.as_str())
            .await?;
        read_reply(self, store, reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit_cache::LimitCache;

    #[test]
    fn limits_round_trip_through_their_text() {
        let all = StoreLimits {
            max_records: Some(1000),
            max_bytes: Some(1 << 20),
            max_rate: Some(0),
        };
        assert_eq!(all.to_text(), "records=1000,bytes=1048576,rate=0");
        assert_eq!(StoreLimits::parse(&all.to_text()), Some(all));
        let rate = StoreLimits {
            max_rate: Some(5),
            ..Default::default()
        };
        assert_eq!(rate.to_text(), "rate=5");
        assert_eq!(StoreLimits::parse("rate=5"), Some(rate));
        for bad in [
            "",
            "records=",
            "records=-1",
            "speed=3",
            "records=1,",
            "rate=1.5",
        ] {
            assert_eq!(StoreLimits::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn refusals_name_their_limit() {
        let store = StoreName::new("orders").unwrap();
        let err = refusal(&store, &[-1, 3, 10, 9, 2, 0]).unwrap();
        assert!(err.is_backpressure());
        let text = err.to_string();
        assert!(
            text.contains("orders") && text.contains("max-rate"),
            "{text}"
        );
        assert!(refusal(&store, &[-1, 7, 10, 9, 2, 0]).is_none());
        assert!(refusal(&store, &[0, 1, 10, 9, 2, 0]).is_none());
    }

    #[test]
    fn an_older_observation_never_replaces_a_newer_one() {
        let cache = LimitCache::default();
        let store = StoreName::new("orders").unwrap();
        assert!(cache.needs_script(&store), "unknown stores use the script");
        cache.observe(&store, false, 100);
        assert!(!cache.needs_script(&store));
        cache.observe(&store, true, 200);
        // The late reply of a push executed before the limit was set.
        cache.observe(&store, false, 150);
        assert!(cache.needs_script(&store));
        cache.observe(&store, false, 200);
        assert!(cache.needs_script(&store), "on a tie, limited wins");
        cache.observe(&store, false, 201);
        assert!(!cache.needs_script(&store));
        cache.forget(&store);
        assert!(cache.needs_script(&store));
    }
}
