//! Pipelined pushes: many pushes, to any stores, in one round trip.
//!
//! A [`PushPipeline`] collects pushes; [`PushPipeline::execute`] sends them all in one Redis
//! pipeline holding one MULTI/EXEC block per push, each block exactly the transaction
//! [`Buffer::push`] sends (`Buffer::push_transaction` builds both, `transaction` checks both).
//! So each push stays atomic on its own and fails on its own: a WRONGTYPE inside one block
//! fails that push only. Each push gives a [`PushHandle`] that holds its own result once the
//! pipeline ran; handles are independent of the pipeline, so a function can add pushes to a
//! caller's pipeline and read its own results after the caller executed it.

use std::sync::{Arc, OnceLock};

use redis::Value;
use serde::Serialize;

use crate::buffer::Buffer;
use crate::error::{Error, Result};
use crate::name::StoreName;
use crate::push::{PushReceipt, PushReplies};
use crate::record::EncodedRecord;
use crate::replicas::ReplicaWait;
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
    records: Vec<EncodedRecord>,
    slot: Slot,
}

/// A push sent in a pipeline, waiting for its replies.
struct Sent {
    store: StoreName,
    block: Block,
    replies: PushReplies,
    slot: Slot,
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
        S: TryInto<StoreName, Error = Error>,
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
        S: TryInto<StoreName, Error = Error>,
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
        S: TryInto<StoreName, Error = Error>,
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
        encode: impl FnOnce(&Buffer, &StoreName) -> Result<Vec<EncodedRecord>>,
    ) -> PushHandle
    where
        S: TryInto<StoreName, Error = Error>,
    {
        let slot = Slot::default();
        let encoded = store
            .try_into()
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
        let mut sent = Vec::with_capacity(pushes.len());
        // With `wait_replicas`, a WAIT after each block, not one at the end: on a cluster the
        // blocks go to different nodes, and each WAIT travels with its block to its node.
        let wait = ReplicaWait::of(&buffer);
        for push in pushes {
            match buffer.push_transaction(&push.store, push.records, now) {
                Ok((commands, replies)) => sent.push(Sent {
                    block: {
                        let block = transaction::queue(&mut pipe, commands);
                        if let Some(wait) = wait {
                            wait.queue(&mut pipe);
                        }
                        block
                    },
                    store: push.store,
                    replies,
                    slot: push.slot,
                }),
                Err(err) => {
                    let _ = push.slot.set(Err(err));
                }
            }
        }
        if sent.is_empty() {
            return Ok(());
        }
        let mut conn = buffer.conn();
        let outcome: Result<Vec<Value>> = buffer
            .run("push", "", async move { pipe.query_async(&mut conn).await })
            .await;
        let waits = usize::from(wait.is_some());
        let expected: usize = sent.iter().map(|push| push.block.replies() + waits).sum();
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
        // Each block's replies are the next `replies()` of the list, in the order queued.
        let mut replies = replies.into_iter();
        for push in sent {
            let own: Vec<Value> = replies.by_ref().take(push.block.replies()).collect();
            let wait_reply = wait.map(|wait| (wait, replies.next().unwrap_or(Value::Nil)));
            let result = push
                .block
                .check("push", push.store.as_str(), own)
                .and_then(|results| {
                    if let Some((wait, reply)) = wait_reply {
                        wait.check("push", push.store.as_str(), reply)?;
                    }
                    push.replies.read(&push.store, &results)
                });
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
    /// would have returned it: invalid input (nothing of it was sent), [`Error::WrongType`]
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
