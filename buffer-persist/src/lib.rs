//! `buffer-persist`: the persister job that drains buffer stores into files exactly once, and
//! the operator CLI around it.
//!
//! # Layout
//! - [`Persister`]: the loop (`run`), the one-shot `drain`, and the per-batch protocol
//!   lock → prepare → write → fsync → publish → empty → release.
//! - `writer`: one batch to one file, durably, without clobbering; formats and compression.
//! - `paths`: [`PathTemplate`], the pure function (store, batch) → file path, confined to the
//!   output directory.
//! - `marker`: the output directory's record of format, compression and path template.
//! - `config`: [`PersistConfig`], [`Format`], [`Compression`], size and duration parsing.
//! - `metrics`: the `/metrics` endpoint (prometheus-client on hyper) and the batch histograms.
//! - `cli`: the `buffer-persist` command line (`run`, `drain`, `push`, `stores`).
//! - `failpoint`: crash points for the fault-injection suite (feature `failpoints`).
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cli;
mod config;
mod error;
mod failpoint;
mod marker;
mod metrics;
mod paths;
mod persister;
mod writer;

pub use config::{
    Compression, DEFAULT_CSV_MAX_COLUMNS, Format, PersistConfig, parse_duration, parse_size,
};
pub use error::{Error, Result};
pub use marker::MARKER_FILE;
pub use metrics::serve_metrics;
pub use paths::{
    DEFAULT_PATH_TEMPLATE, PathTemplate, batch_file_name, batch_path, extension, store_dir,
};
pub use persister::{BatchOutcome, DrainReport, Persister, StatsSnapshot};
pub use writer::{FileSink, SinkFactory, open_decoded, open_file_sink};
