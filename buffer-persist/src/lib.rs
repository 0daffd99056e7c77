//! `buffer-persist`: the persister job that drains buffer stores into files exactly once, and
//! the operator CLI around it.
//!
//! # Layout
//! - [`Persister`]: the loop (`run`), the one-shot `drain`, and the per-batch protocol
//!   lock → prepare → write → fsync → publish → empty → release.
//! - `output`: where batches land — a local directory (`output::local`) or an object store
//!   (`output::object`, `--out s3://bucket/prefix`, conditional creates, parts) — behind one
//!   interface the persister writes through.
//! - `writer`: the format encoders and compression every output writes through, and one batch
//!   to one local file, durably, without clobbering.
//! - `parquet`: the Parquet encoder: a batch's column types inferred from its records, then
//!   the records written through the Arrow writer into any `Write` sink (the writer's
//!   encoder for `--format parquet`, in every output).
//! - `paths`: [`PathTemplate`], the pure function (store, batch) → file path, confined to the
//!   output directory.
//! - `marker`: the output's record of format, compression, path template (and part size).
//! - `config`: [`PersistConfig`], [`Format`], [`Compression`], size and duration parsing.
//! - `metrics`: the `/metrics` endpoint (prometheus-client on hyper) and the batch histograms.
//! - `cli`: the `buffer-persist` command line (`run`, `drain`, `push`, `stores`, `limits`,
//!   `flush`, `retry`, `pause`, `resume`, `coalesce`, `serve`).
//! - `operator`: [`OperatorAction`], what an operator does to a running buffer (flush,
//!   retry, pause, resume, limits), one code path for the CLI and the dashboard.
//! - `serve`: the HTTP ingest API (`buffer-persist serve`, docs/http.md) on hyper.
//! - `store_report`: what `stores` and `GET /v1/stores` show.
//! - `json_text`: a JSON record compacted as `push_json` stores it.
//! - `units`: sizes, durations and counts as messages and logs print them (`8 MiB`, `60 s`,
//!   `1 batch`).
//! - `failpoint`: crash points for the fault-injection suite (feature `failpoints`).
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cli;
mod columns;
mod config;
mod error;
mod failpoint;
mod format;
mod histograms;
mod json_text;
mod marker;
mod metrics;
mod operator;
mod output;
mod parquet;
mod paths;
mod persister;
mod serve;
mod store_report;
mod units;
mod writer;

pub use config::{
    Compression, DEFAULT_CSV_MAX_COLUMNS, DEFAULT_LEDGER_TABLE, DEFAULT_PART_SIZE,
    DEFAULT_TABLE_TEMPLATE, Format, PersistConfig,
};
pub use error::{Error, Result};
pub use marker::MARKER_FILE;
pub use metrics::serve_metrics;
pub use operator::{FLUSH_LOCK_TTL, OperatorAction};
pub use output::postgres::PostgresStats;
pub use paths::{DEFAULT_PATH_TEMPLATE, PathTemplate};
pub use persister::{BatchOutcome, DrainReport, Persister, StatsSnapshot};

/// The API boundary holds (ARCHITECTURE.md, "API boundaries"): the protocol steps and the
/// writer's internals are not reachable from outside the crate.
/// Each block must fail to compile; its error code says why (stable rustdoc does not check
/// the code, nightly does).
///
/// ```compile_fail,E0624
/// let _ = buffer_persist::Persister::flush;
/// ```
/// ```compile_fail,E0624
/// let _ = buffer_persist::Persister::recover;
/// ```
/// ```compile_fail,E0624
/// let _ = buffer_persist::Persister::persist_locked;
/// ```
/// ```compile_fail,E0603
/// use buffer_persist::cli::spawn_signal_handler;
/// ```
/// ```compile_fail,E0432
/// use buffer_persist::open_file_sink;
/// ```
/// ```compile_fail,E0432
/// use buffer_persist::extension;
/// ```
/// ```compile_fail,E0425
/// let _ = buffer_persist::parse_size("1MiB");
/// ```
#[cfg(doctest)]
struct PrivateSurface;

// Test hooks: what the integration suites need to simulate a full disk and to find and read
// the files a batch became. Not part of the embedder API; only the `test-hooks` feature, which
// the test-support crate `buffer-tests` enables, compiles them in.
#[cfg(feature = "test-hooks")]
pub use paths::{batch_file_name, batch_path, store_dir};
#[cfg(feature = "test-hooks")]
pub use writer::{FileSink, SinkFactory, open_decoded};
// The PostgreSQL output's COPY text encoding, for the bench (its baseline's COPY file and its
// text-against-binary figure use the persister's own).
#[cfg(feature = "test-hooks")]
pub use output::copy_text::{CopyTextEncoder, RowError, escape_copy_text};
