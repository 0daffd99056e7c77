//! `buffer-core`: a multi-store write buffer on Redis.
//!
//! Producers [`Buffer::push`] JSON records into named stores. A consumer freezes a store into
//! a batch with [`Buffer::prepare_to_persist`], which returns it as a [`LockedBatch`]: locked
//! to the caller and kept alive by a heartbeat while held, so no persister takes it meanwhile.
//! It reads the batch page by page with [`Buffer::reader`], writes it out, then deletes it
//! under its lock with [`Buffer::empty`]. The persister does the same with a [`LockGuard`]
//! ([`Buffer::lock`], [`LockGuard::keep_alive`], [`LockGuard::prepare`],
//! [`LockGuard::empty_batch`]). Every batch is created locked. [`Buffer::get_old`],
//! [`Buffer::get_large`] and [`Buffer::get_prepared`] find work from per-group indexes,
//! never by listing the keyspace.
//!
//! This is the only crate of the workspace that speaks Redis commands or knows the key layout.
//!
//! # Layout
//! - `config`: [`BufferConfig`], how to reach Redis and lay out keys.
//! - `buffer`: [`Buffer`], the handle, and its executor (timeouts, error mapping, Redis time).
//! - `push`, `prepare`, `reader`, `discovery`, `consumer`: the data operations, one file per
//!   job: pushing records, the prepare script, reading batches, finding stores and batches
//!   from the group indexes, and the gist's `prepare_to_persist`/`empty` built on locks.
//! - `lock`: [`LockGuard`], token-checked locks on stores and batches with an optional
//!   heartbeat, and [`LockedBatch`], a prepared batch held by its caller.
//! - `keys`: the key layout (private: nothing outside this crate spells a key).
//! - `scripts`: the Lua scripts for the steps that must be conditional and atomic.
//! - `transaction`: MULTI/EXEC with every reply checked (EXEC does not roll back).
//! - `replicas`: `WAIT` after pushes and prepares when [`BufferConfig::wait_replicas`] asks
//!   for replica acknowledgement, sent in the write's own round trip.
//! - `pipeline`: [`PushPipeline`], many pushes (each its own MULTI/EXEC) in one round trip,
//!   each with its own result in a [`PushHandle`].
//! - `name`, `batch`: [`StoreName`] and [`BatchId`], validated and injectively encoded.
//! - `record`: records to compact JSON and their top-level keys.
//! - `limits`: [`StoreLimits`] per store (live records, live bytes, records per second), kept
//!   in Redis and checked atomically with the push; a refused push is
//!   [`Error::LimitExceeded`] ([`Error::is_backpressure`]).
//! - `failures`: [`FailureRecord`]s of batches that failed to persist (attempts, last error,
//!   next retry), so persisters back off across processes and operators see them.
//! - `operator`: what an operator does to a running buffer: [`Buffer::pause`] /
//!   [`Buffer::resume`] a store, [`Buffer::flush_now`], [`Buffer::retry_now`], each atomic or
//!   lock-respecting, so none loses or duplicates a record.
//! - `connection`: the one connection type, to one server or a Redis Cluster (found out from
//!   the server), following redirects and retrying only what provably did not run.
//! - `nodes`: [`MasterInfo`] and [`MasterStatus`], the masters of the deployment, their facts
//!   and their health, and which master holds a store ([`Buffer::node_of`]).
//! - `events`, `info`, `persisters`: persister events on pub/sub, server facts and the
//!   persisters' announcements (thresholds, heartbeat), for dashboards.
//! - `clock`: [`Clock`], so time-dependent logic is tested without sleeping.
//! - `local_server` (feature `local-server`, off by default): `local_server::LocalRedis`, a
//!   private `redis-server` on a free port, killed on drop, and `local_server::LocalCluster`,
//!   a private Redis Cluster of them; the demo and the tests use them.
//!
//! # Produce
//! A service pushes records as it handles requests. A push is one atomic step per store; a
//! [`PushPipeline`] sends pushes to several stores in one round trip; [`Buffer::push_once`]
//! makes a retry after an unknown outcome safe.
//! ```no_run
//! # async fn produce() -> Result<(), buffer_core::Error> {
//! use buffer_core::{Buffer, BufferConfig};
//! use serde_json::json;
//!
//! let config = BufferConfig::new("redis://127.0.0.1:6379").namespace("shop");
//! let buffer = Buffer::connect(config).await?;
//!
//! // One record, then an order and its audit entry in one round trip.
//! buffer.push("clicks", &json!({"page": "/", "ms": 12})).await?;
//! let mut pipeline = buffer.pipeline();
//! let order = pipeline.push("orders", &json!({"id": 17, "total": 9.5}));
//! let audit = pipeline.push("audit", &json!({"order": 17, "by": "web"}));
//! pipeline.execute().await?;
//! println!("orders holds {} records", order.receipt()?.records);
//! audit.receipt()?;
//!
//! // A push that must not land twice, even if it is retried after a timeout.
//! let payment = [json!({"order": 17, "paid": true})];
//! loop {
//!     match buffer.push_once("payments", "order-17-paid", &payment).await {
//!         Err(err) if err.is_outcome_unknown() => continue, // safe to retry: same push id
//!         other => break other.map(drop)?,
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Persist by hand
//! `buffer-persist` does this for every store, with exactly-once files; an embedder that writes
//! somewhere else does the same steps itself. The batch stays locked to the caller (a heartbeat
//! keeps the lock) until it is emptied; if the caller dies, the lock expires and a persister
//! writes the batch.
//! ```no_run
//! # async fn persist(buffer: buffer_core::Buffer) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: u64, total: f64 }
//!
//! for store in buffer.get_old(Duration::from_secs(60)).await? {
//!     let Some(batch) = buffer.prepare_to_persist(store.store, Duration::from_secs(30)).await?
//!     else {
//!         continue; // empty now, or another process is preparing it
//!     };
//!     let mut reader = buffer.reader(batch.batch());
//!     let mut sum = 0.0;
//!     while let Some(orders) = reader.next_page_as::<Order>().await? {
//!         sum += orders.iter().map(|order| order.total).sum::<f64>();
//!     }
//!     println!("batch {} totals {sum}", batch.batch().id);
//!     // Written out (here: printed): delete it, under its lock.
//!     buffer.empty(batch).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Inspect
//! What a dashboard or an operator's script reads: every store's size and age, the batches
//! waiting, who holds which lock, and what is failing.
//! ```no_run
//! # async fn inspect(buffer: buffer_core::Buffer) -> Result<(), buffer_core::Error> {
//! let now = buffer.now_ms();
//! for store in buffer.stores().await? {
//!     let age_s = now.saturating_sub(store.first_write_ms) / 1000;
//!     let lock = buffer.lock_info(&store.store, None).await?;
//!     let holder = lock.map_or("-".to_owned(), |lock| lock.holder);
//!     println!("{}: {} records, {} bytes, {age_s}s old, lock {holder}",
//!         store.store, store.records, store.bytes);
//! }
//! for prepared in buffer.get_prepared().await? {
//!     println!("waiting: batch {} of {}", prepared.id, prepared.store);
//! }
//! for failing in buffer.failures().await? {
//!     println!("failing: {} ({} attempts): {}",
//!         failing.store, failing.record.attempts, failing.record.last_error);
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod batch;
mod buffer;
mod clock;
mod coalesce;
mod coalesce_group;
mod coalesce_send;
mod config;
mod connection;
mod consumer;
mod discovery;
mod error;
mod events;
mod failures;
mod info;
mod keys;
mod limit_cache;
mod limits;
#[cfg(feature = "local-server")]
pub mod local_server;
mod lock;
mod name;
mod nodes;
mod operator;
mod page;
mod page_socket;
mod persisters;
mod pipeline;
mod prepare;
mod push;
mod reader;
mod receipt;
mod record;
mod replicas;
mod scripts;
mod store_settings;
mod transaction;

/// The README's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

/// The Rust examples of the producing chapter, compiled as doctests too.
#[cfg(doctest)]
#[doc = include_str!("../../docs/producing.md")]
struct ProducingExamples;

pub use batch::{BatchId, PreparedBatch};
pub use buffer::Buffer;
pub use clock::{Clock, ManualClock, SystemClock, millis};
pub use coalesce::{CoalesceRules, CoalescedView, MergeRule, TOP_ENTITIES, TopEntity};
pub use config::{BufferConfig, redact_url};
pub use discovery::{Partial, PreparedSummary, StoreSummary};
pub use error::{Error, Result};
pub use events::{Event, EventKind};
pub use failures::{Backoff, FailingWork, FailureRecord, MAX_FAILURE_ERROR_BYTES};
pub use info::ServerInfo;
pub use keys::DEFAULT_GROUPS;
pub use limits::{LimitKind, MAX_LIMIT, StoreLimits};
pub use lock::{LockGuard, LockInfo, LockTarget, LockedBatch};
pub use name::{MAX_NAMESPACE_BYTES, MAX_STORE_NAME_BYTES, Namespace, StoreName};
pub use nodes::{MasterHealth, MasterInfo, MasterStatus};
pub use operator::{FlushOutcome, RetryOutcome};
pub use page::Page;
pub use persisters::{FORGET_SILENT_PERSISTERS_AFTER, PersisterInfo};
pub use pipeline::{PushHandle, PushPipeline};
pub use push::{PushOnceOutcome, PushReceipt};
pub use reader::{BatchContents, BatchReader, FirstKeys};
