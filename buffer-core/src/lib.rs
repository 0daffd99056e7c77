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
//! - `failures`: [`FailureRecord`]s of batches that failed to persist (attempts, last error,
//!   next retry), so persisters back off across processes and operators see them.
//! - `events`, `info`, `persisters`: persister events on pub/sub, server facts and the
//!   persisters' announcements (thresholds, heartbeat), for dashboards.
//! - `clock`: [`Clock`], so time-dependent logic is tested without sleeping.
//! - `local_server` (feature `local-server`, off by default): `local_server::LocalRedis`, a
//!   private `redis-server` on a free port, killed on drop; the demo and the tests use it.
//!
//! # Examples
//! ```no_run
//! # async fn demo() -> Result<(), buffer_core::Error> {
//! use buffer_core::{Buffer, BufferConfig};
//!
//! let buffer = Buffer::connect(BufferConfig::new("redis://127.0.0.1:6379")).await?;
//! buffer.push("clicks", &serde_json::json!({"page": "/", "ms": 12})).await?;
//! for store in buffer.stores().await? {
//!     println!("{}: {} records", store.store, store.records);
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod batch;
mod buffer;
mod clock;
mod config;
mod connection;
mod consumer;
mod discovery;
mod error;
mod events;
mod failures;
mod info;
mod keys;
#[cfg(feature = "local-server")]
mod local_cluster;
#[cfg(feature = "local-server")]
pub mod local_server;
mod lock;
mod name;
mod persisters;
mod pipeline;
mod prepare;
mod push;
mod reader;
mod record;
mod replicas;
mod scripts;
mod transaction;

/// The README's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

pub use batch::{BatchId, PreparedBatch};
pub use buffer::Buffer;
pub use clock::{Clock, ManualClock, SystemClock, millis};
pub use config::{BufferConfig, redact_url};
pub use discovery::{PreparedSummary, StoreSummary};
pub use error::{Error, Result};
pub use events::{Event, EventKind};
pub use failures::{Backoff, FailingWork, FailureRecord, MAX_FAILURE_ERROR_BYTES};
pub use info::ServerInfo;
pub use keys::DEFAULT_GROUPS;
pub use lock::{LockGuard, LockInfo, LockTarget, LockedBatch};
pub use name::{MAX_NAMESPACE_BYTES, MAX_STORE_NAME_BYTES, Namespace, StoreName};
pub use persisters::{FORGET_SILENT_PERSISTERS_AFTER, PersisterInfo};
pub use pipeline::{PushHandle, PushPipeline};
pub use push::{PushOnceOutcome, PushReceipt};
pub use reader::{BatchContents, BatchReader, FirstKeys};
