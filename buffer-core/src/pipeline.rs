//! Pipelined pushes: many pushes, to any stores, in one round trip.
//!
//! A [`PushPipeline`] collects pushes; [`PushPipeline::execute`] sends them all in one Redis
//! pipeline holding one MULTI/EXEC block per push, each block exactly the transaction
//! [`Buffer::push`] sends (`Buffer::push_transaction` builds both, `transaction` checks both).
//! So each push stays atomic on its own and fails on its own: a WRONGTYPE inside one block
//! fails that push only. A push to a store with limits is, as for [`Buffer::push`], one call
//! of the limits script instead (`crate::limits`), loaded by a `SCRIPT LOAD` at the head of
//! the same round trip. Each push gives a [`PushHandle`] that holds its own result once the
//! pipeline ran; handles are independent of the pipeline, so a function can add pushes to a
//! caller's pipeline and read its own results after the caller executed it.

use std::sync::{Arc, OnceLock};

use redis::{RedisError, Value};
use serde::Serialize;

use crate::buffer::Buffer;
use crate::error::{Error, Result};
use crate::limits;
use crate::name::StoreName;
use crate::push::{PushReceipt, PushReplies};
use crate::record::EncodedRecords;
use crate::replicas::ReplicaWait;
use crate::scripts;
use crate::transaction::{self, Block};

/// Where one push's result is kept: written once, by the pipeline when it runs (or when the
/// push is added, for input refused before anything is sent), read by its [`PushHandle`]s.
/// Empty for ever if the pipeline is dropped without being executed.
type Slot = Arc<OnceLock<Result<PushReceipt>>>;

impl Buffer {
    /// A new, empty pipeline of pushes on this buffer's connection.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(buffer: buffer_core::Buffer) -> Result<(), buffer_core::Error> {
    /// use serde_json::json;
    ///
    /// let mut pipeline = buffer.pipeline();
    /// let order = pipeline.push("orders", &json!({"id": 7, "total": 12.5}));
    /// let audit = pipeline.push("audit", &json!({"order": 7, "by": "web"}));
    /// pipeline.execute().await?; // one round trip
    /// println!("orders: {} records", order.receipt()?.records);
    /// println!("audit: {} records", audit.receipt()?.records);
    /// # Ok(()) }
    /// ```
    pub fn pipeline(&self) -> PushPipeline {
        PushPipeline {
            buffer: self.clone(),
            pushes: Vec::new(),
        }
    }
}

/// Pushes to any stores, collected and then sent in one round trip by
/// [`PushPipeline::execute`]. Made by [`Buffer::pipeline`].
///
/// Each push is its own MULTI/EXEC (the very commands of [`Buffer::push`],
/// [`Buffer::push_many`] or [`Buffer::push_json`]), so it is atomic and has its own result;
/// pushes of one pipeline are not atomic together. Dropping a pipeline without executing it
/// sends nothing.
#[must_use = "a pipeline sends nothing until it is executed"]
pub struct PushPipeline {
    /// A clone of the buffer it was made from: its connection, layout and clock.
    buffer: Buffer,
    /// The pushes to send, in the order they were added (input refused when it was added is
    /// not here: its handle already holds the error).
    pushes: Vec<Queued>,
}

/// A push waiting for its pipeline to run.
struct Queued {
    store: StoreName,
    records: EncodedRecords,
    slot: Slot,
}

/// A push sent in a pipeline, waiting for its replies.
struct Sent {
    store: StoreName,
    how: SentAs,
    slot: Slot,
}

/// How a push was sent: as [`Buffer::push`] would send it to that store.
enum SentAs {
    /// The MULTI/EXEC of a store known to have no limits.
    Transaction { block: Block, replies: PushReplies },
    /// One call of the limits script (`crate::limits`), for a store that has or may have
    /// limits: one reply.
    Limited,
}

impl SentAs {
    /// How many replies of the pipeline are this push's.
    fn replies(&self) -> usize {
        match self {
            Self::Transaction { block, .. } => block.replies(),
            Self::Limited => 1,
        }
    }
}

impl std::fmt::Debug for PushPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushPipeline")
            .field("pushes", &self.pushes.len())
            .finish()
    }
}

impl PushPipeline {
    /// Adds a push of one record, as [`Buffer::push`] would send it.
    ///
    /// Input is checked now: a bad store name or record makes the handle hold that error
    /// ([`Error::InvalidStoreName`], [`Error::InvalidRecord`], [`Error::RecordTooLarge`]) and
    /// nothing of this push is sent; the other pushes are unaffected.
    pub fn push<S, T>(&mut self, store: S, record: &T) -> PushHandle
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
        T: Serialize + ?Sized,
    {
        self.add(store, |buffer, store| buffer.encode_record(store, record))
    }

    /// Adds a push of several records in one transaction, as [`Buffer::push_many`] would send
    /// it: all of them or none.
    ///
    /// Input is checked now, as in [`PushPipeline::push`]; no records is
    /// [`Error::NoRecords`].
    pub fn push_many<S, T>(&mut self, store: S, records: &[T]) -> PushHandle
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
        T: Serialize,
    {
        self.add(store, |buffer, store| buffer.encode_records(store, records))
    }

    /// Adds a push of JSON texts (one object each) in one transaction, as
    /// [`Buffer::push_json`] would send it.
    ///
    /// Input is checked now, as in [`PushPipeline::push_many`].
    pub fn push_json<S, J>(&mut self, store: S, texts: &[J]) -> PushHandle
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
        J: AsRef<str>,
    {
        self.add(store, |buffer, store| buffer.parse_records(store, texts))
    }

    /// The number of pushes that will be sent (input refused when added is not counted).
    pub fn len(&self) -> usize {
        self.pushes.len()
    }

    /// True when no push will be sent.
    pub fn is_empty(&self) -> bool {
        self.pushes.is_empty()
    }

    fn add<S>(
        &mut self,
        store: S,
        encode: impl FnOnce(&Buffer, &StoreName) -> Result<EncodedRecords>,
    ) -> PushHandle
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
    {
        let slot = Slot::default();
        let encoded = store
            .try_into()
            .map_err(Error::from)
            .and_then(|store| encode(&self.buffer, &store).map(|records| (store, records)));
        match encoded {
            Ok((store, records)) => {
                let handle = PushHandle {
                    store: store.to_string(),
                    slot: slot.clone(),
                };
                self.pushes.push(Queued {
                    store,
                    records,
                    slot,
                });
                handle
            }
            Err(err) => {
                let store = match &err {
                    Error::InvalidRecord { store, .. }
                    | Error::RecordTooLarge { store, .. }
                    | Error::NoRecords { store } => store.clone(),
                    _ => String::new(),
                };
                // A fresh slot: nothing else can have set it.
                let _ = slot.set(Err(err));
                PushHandle { store, slot }
            }
        }
    }

    /// Sends every push in one round trip (one Redis pipeline of one MULTI/EXEC per push) and
    /// gives each [`PushHandle`] its result. An empty pipeline sends nothing.
    ///
    /// All pushes are stamped with one first-write time, [`Buffer::now_ms`] (on Redis's
    /// clock), as a single push is. The whole round trip is bounded by one response timeout,
    /// as one push is: split a pipeline of more data than Redis takes in that time.
    ///
    /// # Errors
    /// Only a failure of the round trip itself, which every push of the pipeline then holds
    /// too: a timeout or a lost connection (then [`Error::is_outcome_unknown`]: each push may
    /// or may not have been applied), or replies of the wrong shape. A push refused by Redis
    /// (WRONGTYPE, OOM) is not an error here: only its own handle holds it, read it there.
    pub async fn execute(self) -> Result<()> {
        let Self { buffer, pushes } = self;
        if pushes.is_empty() {
            return Ok(());
        }
        // A push to a coalescing store is merged as a `push` is (see `crate::coalesce`: alone,
        // or in its store's group commit with the pushes waiting behind the merge in flight),
        // sent while the pipeline of the other pushes is: its result is in its handle as for
        // any push. Whether a store is coalescing is known from the producer's cache (read
        // once per store).
        let kinds =
            futures::future::join_all(pushes.iter().map(|push| buffer.is_coalescing(&push.store)))
                .await;
        let mut appends = Vec::with_capacity(pushes.len());
        let mut merges = Vec::new();
        for (push, kind) in pushes.into_iter().zip(kinds) {
            match kind {
                Ok(true) => merges.push(push),
                Ok(false) => appends.push(push),
                // The rules could not be read (Redis slow or gone): the push goes with the
                // pipeline, which meets the same fault and reports it as the round trip's; on a
                // coalescing store its reply makes the producer read the rules again, and a
                // record it appended is written as pushed (docs/coalescing.md).
                Err(err) => {
                    tracing::debug!(store = %push.store, %err, "coalescing rules not read; pushing with the pipeline");
                    appends.push(push);
                }
            }
        }
        let merged = futures::future::join_all(merges.into_iter().map(|push| {
            let buffer = buffer.clone();
            async move {
                let result = buffer.push_encoded(&push.store, push.records).await;
                let _ = push.slot.set(result);
            }
        }));
        let (appended, _) = futures::future::join(Self::send(buffer, appends), merged).await;
        appended
    }

    /// Sends the pushes that append in one round trip, as `execute` describes.
    async fn send(buffer: Buffer, pushes: Vec<Queued>) -> Result<()> {
        if pushes.is_empty() {
            return Ok(());
        }
        let now = match buffer.stamp_ms().await {
            Ok(now) => now,
            Err(err) => {
                for push in pushes {
                    let _ = push
                        .slot
                        .set(Err(err.clone().for_store(push.store.as_str())));
                }
                return Err(err);
            }
        };
        let mut pipe = redis::pipe();
        // Error replies come back as values, to be given to their own push only.
        pipe.ignore_errors();
        // The limits script is loaded first in the same round trip when a push needs it, so
        // its EVALSHA never meets a server that does not know it (a restarted one, say).
        let limited = pushes
            .iter()
            .any(|push| buffer.limit_cache().needs_script(&push.store));
        if limited {
            pipe.load_script(&scripts::PUSH_LIMITED);
        }
        let mut sent = Vec::with_capacity(pushes.len());
        // With `wait_replicas`, a WAIT after each block, not one at the end: on a cluster the
        // blocks go to different nodes, and each WAIT travels with its block to its node.
        let wait = ReplicaWait::of(&buffer);
        for push in pushes {
            let how = if buffer.limit_cache().needs_script(&push.store) {
                limits::invocation(&buffer, &push.store, push.records, now).queue(&mut pipe);
                SentAs::Limited
            } else {
                let (commands, replies) = buffer.push_transaction(&push.store, push.records, now);
                SentAs::Transaction {
                    block: transaction::queue(&mut pipe, commands),
                    replies,
                }
            };
            if let Some(wait) = wait {
                wait.queue(&mut pipe);
            }
            sent.push(Sent {
                store: push.store,
                how,
                slot: push.slot,
            });
        }
        let mut conn = buffer.conn();
        let outcome: Result<Vec<Value>> = buffer
            .run("push", "", async move { pipe.query_async(&mut conn).await })
            .await;
        let waits = usize::from(wait.is_some());
        let expected: usize = usize::from(limited)
            + sent
                .iter()
                .map(|push| push.how.replies() + waits)
                .sum::<usize>();
        let replies = outcome.and_then(|replies| {
            if replies.len() == expected {
                Ok(replies)
            } else {
                Err(Error::Corrupt {
                    what: format!(
                        "pipeline of {} pushes: expected {expected} replies, got {}",
                        sent.len(),
                        replies.len()
                    ),
                })
            }
        });
        let replies = match replies {
            Ok(replies) => replies,
            Err(err) => {
                for push in sent {
                    let _ = push
                        .slot
                        .set(Err(err.clone().for_store(push.store.as_str())));
                }
                return Err(err);
            }
        };
        // Each push's replies are the next `replies()` of the list, in the order queued,
        // after the SCRIPT LOAD's (whose failure shows in the EVALSHA replies: NOSCRIPT).
        let mut replies = replies.into_iter().skip(usize::from(limited));
        for push in sent {
            let own: Vec<Value> = replies.by_ref().take(push.how.replies()).collect();
            let wait_reply = wait.map(|wait| (wait, replies.next().unwrap_or(Value::Nil)));
            let store = push.store.as_str();
            let result = match push.how {
                SentAs::Transaction { block, replies } => {
                    block.check("push", store, own).and_then(|results| {
                        limits::observe_probe(&buffer, &push.store, &results);
                        crate::coalesce::observe_rules_probe(&buffer, &push.store, &results);
                        if let Some((wait, reply)) = wait_reply {
                            wait.check("push", store, reply)?;
                        }
                        replies.read(&push.store, &results)
                    })
                }
                SentAs::Limited => match own.into_iter().next() {
                    Some(Value::ServerError(err)) => {
                        Err(Error::from_redis("push", store, RedisError::from(err)))
                    }
                    Some(reply) => {
                        limits::read_reply(&buffer, &push.store, reply).and_then(|receipt| {
                            if let Some((wait, reply)) = wait_reply {
                                wait.check("push", store, reply)?;
                            }
                            Ok(receipt)
                        })
                    }
                    None => Err(Error::Corrupt {
                        what: format!("push to store {store:?}: no reply"),
                    }),
                },
            };
            let _ = push.slot.set(result);
        }
        Ok(())
    }
}

/// One push of a [`PushPipeline`]: holds that push's own result once the pipeline ran.
///
/// Independent of the pipeline (clones share the result), so it can be read after the
/// pipeline was executed and dropped.
#[derive(Clone, Debug)]
#[must_use = "a pipelined push's result (its receipt or its error) is only in its handle"]
pub struct PushHandle {
    /// The store pushed to (empty when the name itself was refused), for the not-executed
    /// error.
    store: String,
    slot: Slot,
}

impl PushHandle {
    /// This push's receipt: the store's state right after it, read in its own transaction,
    /// as [`Buffer::push`] returns it.
    ///
    /// # Errors
    /// [`Error::PipelineNotExecuted`] before the pipeline was executed (or when it was
    /// dropped without being executed); otherwise this push's own error, as [`Buffer::push`]
    /// would have returned it: invalid input (nothing of it was sent),
    /// [`Error::LimitExceeded`] when a limit of its store refused it, [`Error::WrongType`]
    /// or [`Error::OutOfMemory`] in its transaction, or the failure of the whole round trip
    /// ([`Error::is_outcome_unknown`] when it may have been applied).
    pub fn receipt(&self) -> Result<PushReceipt> {
        match self.slot.get() {
            Some(result) => result.clone(),
            None => Err(Error::PipelineNotExecuted {
                store: self.store.clone(),
            }),
        }
    }

    /// True once the result is known: the pipeline ran, or the input was refused.
    pub fn is_ready(&self) -> bool {
        self.slot.get().is_some()
    }
}
