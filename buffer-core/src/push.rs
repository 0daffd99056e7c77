//! Pushing records: [`Buffer::push`], `push_many`, `push_json` and `push_once`, and the one
//! place a push's MULTI/EXEC is spelled (`Buffer::push_transaction`, also sent by the pipeline).

use redis::{Cmd, Value};
use serde::Serialize;

use crate::buffer::{Buffer, millis};
use crate::error::{Error, Result};
use crate::name::StoreName;
pub use crate::receipt::{PushOnceOutcome, PushReceipt};
use crate::record::{self, EncodedRecords};
use crate::replicas::{self, ScriptCall};
use crate::scripts;

/// Where a push's totals are among the results of its MULTI/EXEC (which depends on whether
/// it added keys), and the stamp it wrote as first-write time if the store had none.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PushReplies {
    adds_keys: bool,
    now: u64,
}

impl PushReplies {
    /// The receipt in `results`, the replies inside EXEC of the push's transaction.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when a result does not have the expected type.
    pub(crate) fn read(self, store: &StoreName, results: &[Value]) -> Result<PushReceipt> {
        let reply = |index: usize| results.get(index).cloned().unwrap_or(Value::Nil);
        let keys_at = if self.adds_keys { 3 } else { 2 };
        let parse_error = |err: redis::ParsingError| Error::Corrupt {
            what: format!("push to store {store:?}: unexpected reply: {err}"),
        };
        let records: u64 = redis::from_redis_value(reply(0)).map_err(parse_error)?;
        let previous_first: Option<u64> = redis::from_redis_value(reply(1)).map_err(parse_error)?;
        let keys: u64 = redis::from_redis_value(reply(keys_at)).map_err(parse_error)?;
        let bytes: u64 = redis::from_redis_value(reply(keys_at + 1)).map_err(parse_error)?;
        Ok(PushReceipt {
            bytes,
            records,
            keys,
            first_write_ms: previous_first.unwrap_or(self.now),
        })
    }
}

impl Buffer {
    /// Appends one record to a store.
    ///
    /// The record must serialize to a JSON object. One MULTI/EXEC appends it, records the
    /// first-write time if this is the store's first record, adds its top-level keys to the
    /// store's key set, counts its bytes, updates the group indexes and reads the store's
    /// totals back. The push is acknowledged (`Ok`) only when EXEC succeeded and every reply
    /// inside it was a success of the expected type. A store that has (or may have) limits
    /// gets one script instead, which checks them and does the same (see
    /// [`Buffer::set_limits`]).
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`], [`Error::InvalidRecord`], [`Error::RecordTooLarge`] before
    /// anything is sent; [`Error::LimitExceeded`] when a limit of the store refused the push
    /// (nothing of it was stored); [`Error::WrongType`] or [`Error::OutOfMemory`] when Redis
    /// refused a command of the transaction; transient errors when Redis is unreachable or slow. After
    /// a timeout the push may or may not have been applied.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(buffer: buffer_core::Buffer) -> Result<(), buffer_core::Error> {
    /// #[derive(serde::Serialize)]
    /// struct Order { id: u64, total: f64 }
    /// let receipt = buffer.push("orders", &Order { id: 7, total: 12.5 }).await?;
    /// assert!(receipt.records >= 1);
    /// # Ok(()) }
    /// ```
    pub async fn push<S, T>(&self, store: S, record: &T) -> Result<PushReceipt>
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
        T: Serialize + ?Sized,
    {
        let store = store.try_into()?;
        let encoded = self.encode_record(&store, record)?;
        self.push_encoded(&store, encoded).await
    }

    /// Appends several records to a store in one transaction: all of them or none.
    ///
    /// # Errors
    /// As [`Buffer::push`]; every record is checked before anything is sent, and the error
    /// names the index of the first bad one. [`Error::NoRecords`] for an empty slice.
    pub async fn push_many<S, T>(&self, store: S, records: &[T]) -> Result<PushReceipt>
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
        T: Serialize,
    {
        let store = store.try_into()?;
        let encoded = self.encode_records(&store, records)?;
        self.push_encoded(&store, encoded).await
    }

    /// Appends records given as JSON texts (one object each, as in a JSON Lines file), in one
    /// transaction.
    ///
    /// # Errors
    /// As [`Buffer::push_many`]; a text that is not a JSON object is [`Error::InvalidRecord`].
    pub async fn push_json<S, J>(&self, store: S, texts: &[J]) -> Result<PushReceipt>
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
        J: AsRef<str>,
    {
        let store = store.try_into()?;
        let encoded = self.parse_records(&store, texts)?;
        self.push_encoded(&store, encoded).await
    }

    /// Appends records at most once per `push_id`: retrying with the same id after an error
    /// whose outcome is unknown ([`Error::is_outcome_unknown`]) never stores them twice. The
    /// id is remembered for the configured push-id TTL (default 24 h), also after the store
    /// is prepared or persisted. One atomic script: all records or none.
    ///
    /// # Errors
    /// As [`Buffer::push_many`]; [`Error::InvalidPushId`] unless the id is 1..=128 bytes of
    /// `[A-Za-z0-9._-]`.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(buffer: buffer_core::Buffer) -> Result<(), buffer_core::Error> {
    /// let records = [serde_json::json!({"order": 17})];
    /// let outcome = loop {
    ///     match buffer.push_once("orders", "order-17", &records).await {
    ///         Err(err) if err.is_outcome_unknown() => continue, // safe to retry
    ///         other => break other?,
    ///     }
    /// };
    /// println!("duplicate: {}", outcome.duplicate);
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(level = "debug", skip_all, fields(push_id = push_id, records = records.len()))]
    pub async fn push_once<S, T>(
        &self,
        store: S,
        push_id: &str,
        records: &[T],
    ) -> Result<PushOnceOutcome>
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
        T: Serialize,
    {
        let store = store.try_into()?;
        let id_ok = (1..=128).contains(&push_id.len())
            && push_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !id_ok {
            return Err(Error::InvalidPushId {
                id: crate::name::shorten(push_id),
            });
        }
        let records = record::encode_all(&store, records, self.config().max_record_bytes)?;
        let now = self.stamp_ms().await?;
        if let Some((receipt, duplicate)) = self
            .merge_if_coalescing(&store, &records, now, Some(push_id))
            .await?
        {
            return Ok(PushOnceOutcome { receipt, duplicate });
        }
        let layout = self.layout();
        let live = layout.live(&store);
        let group = layout.group_for(&store);
        let mut invocation = ScriptCall::new(&scripts::PUSH_ONCE);
        for key in live.all() {
            invocation.key(key);
        }
        invocation
            .key(&group.stores)
            .key(&group.bytes)
            .key(&group.count)
            .key(layout.push_id(&store, push_id))
            .key(&group.limits)
            .key(layout.rate(&store))
            .arg(now)
            .arg(store.encoded())
            .arg(records.bytes())
            .arg(records.len())
            .arg(millis(self.config().push_id_ttl).max(1))
            .arg(records.keys().len());
        for key in records.keys() {
            invocation.arg(key);
        }
        for text in records.texts() {
            invocation.arg(text);
        }
        let reply: Vec<i64> = invocation.invoke(self, "push_once", store.as_str()).await?;
        if let Some(refused) = crate::limits::refusal(&store, &reply) {
            return Err(refused);
        }
        let Some((receipt, duplicate)) = PushReceipt::from_totals(&reply) else {
            return Err(Error::Corrupt {
                what: format!("push_once script replied {reply:?}"),
            });
        };
        Ok(PushOnceOutcome { receipt, duplicate })
    }

    #[tracing::instrument(
        level = "debug",
        name = "push",
        skip_all,
        fields(store = %store, records = records.len())
    )]
    pub(crate) async fn push_encoded(
        &self,
        store: &StoreName,
        records: EncodedRecords,
    ) -> Result<PushReceipt> {
        let now = self.stamp_ms().await?;
        if let Some((receipt, _)) = self.merge_if_coalescing(store, &records, now, None).await? {
            return Ok(receipt);
        }
        if self.limit_cache().needs_script(store) {
            return self.push_limited(store, records, now).await;
        }
        let (commands, receipt) = self.push_transaction(store, records, now);
        let replies = replicas::exec(self, "push", store.as_str(), commands).await?;
        crate::limits::observe_probe(self, store, &replies);
        crate::coalesce::observe_rules_probe(self, store, &replies);
        receipt.read(store, &replies)
    }

    /// The encoded record of a `push`, checked before anything is sent.
    pub(crate) fn encode_record<T: Serialize + ?Sized>(
        &self,
        store: &StoreName,
        record: &T,
    ) -> Result<EncodedRecords> {
        record::encode_one(store, record, self.config().max_record_bytes)
    }

    /// The encoded records of a `push_many`, every one checked before anything is sent.
    pub(crate) fn encode_records<T: Serialize>(
        &self,
        store: &StoreName,
        records: &[T],
    ) -> Result<EncodedRecords> {
        record::encode_all(store, records, self.config().max_record_bytes)
    }

    /// The encoded records of a `push_json`, every text checked before anything is sent.
    pub(crate) fn parse_records<J: AsRef<str>>(
        &self,
        store: &StoreName,
        texts: &[J],
    ) -> Result<EncodedRecords> {
        record::parse_all(store, texts, self.config().max_record_bytes)
    }

    /// The commands of one push's MULTI/EXEC, stamped `now`, and how to read its receipt
    /// from their results. The one place a push is spelled: [`Buffer::push`] and
    /// [`crate::PushPipeline`] both send exactly this, so their receipts agree.
    pub(crate) fn push_transaction(
        &self,
        store: &StoreName,
        records: EncodedRecords,
        now: u64,
    ) -> (Vec<Cmd>, PushReplies) {
        let layout = self.layout();
        let live = layout.live(store);
        let group = layout.group_for(store);
        let bytes = records.bytes();
        let count = records.len();
        let run = format!("{count}:{bytes}:{}", records.max_len());
        let add_keys = (records.keys().len() > 0).then(|| {
            let mut add_keys = redis::cmd("SADD");
            add_keys.arg(&live.keys);
            for key in records.keys() {
                add_keys.arg(key);
            }
            add_keys
        });
        // One allocation for the command's arguments, the record texts copied once into it.
        let mut append = Cmd::with_capacity(count + 2, 5 + live.records.len() + bytes);
        append.arg("RPUSH").arg(&live.records);
        for text in records.texts() {
            append.arg(text);
        }

        let mut set_first = redis::cmd("SET");
        set_first.arg(&live.first).arg(now).arg("NX").arg("GET");
        let mut add_to_index = redis::cmd("ZADD");
        add_to_index
            .arg(&group.stores)
            .arg("NX")
            .arg(now)
            .arg(store.encoded());
        let mut commands = vec![
            append,
            set_first,
            redis::Cmd::scard(&live.keys),
            redis::Cmd::incr(&live.bytes, bytes),
            add_to_index,
            redis::Cmd::zincr(&group.bytes, store.encoded(), bytes),
            redis::Cmd::zincr(&group.count, store.encoded(), count),
            // After the totals, so the replies read below keep their places: this push's entry
            // in the run list that lets readers size pages by bytes (see `BatchReader`).
            redis::Cmd::rpush(&live.runs, run),
        ];
        // Whether the store has become coalescing (read by `push_encoded`), then last: whether
        // the store has limits, and when Redis ran this, so the producer's next push to it goes
        // through the limits script once it has (see `crate::limits`).
        commands.push(redis::Cmd::hexists(&group.coalesce, store.encoded()));
        commands.extend(crate::limits::probe(self, store));
        let adds_keys = add_keys.is_some();
        if let Some(add_keys) = add_keys {
            // Before SCARD, so the count includes this push's keys.
            commands.insert(2, add_keys);
        }
        (commands, PushReplies { adds_keys, now })
    }
}
