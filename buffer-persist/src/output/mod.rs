//! Where batches land: a local directory or an object store, behind one interface.
//!
//! The persister hands a batch's pages to a [`BatchWrite`] and asks it to finish; what
//! "publish" means is the output's business:
//! - [`local`]: a temporary file beside the target, fsync, no-clobber `link`, fsync of the
//!   directory (the writer in `writer.rs`);
//! - [`object`]: the batch encoded into parts held in memory, each published with a
//!   conditional create (`PutMode::Create`, S3's `If-None-Match: *`).
//!
//! Both write every format and compression through the same `EncodedStream` (`writer.rs`), so
//! a format added there lands in every output unchanged. In both, a batch's names are a pure
//! function of the batch under the path template, so every attempt, by any persister on any
//! machine, targets the same names, and a name already taken counts as written only when it
//! holds exactly this batch's records (else [`Error::Conflict`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use buffer_core::{Backoff, LockGuard, Page, PreparedBatch};
use tokio_util::sync::CancellationToken;

use crate::config::{OutputLocation, PersistConfig};
use crate::error::{Error, Result};
use crate::writer::{self, BatchFile, FileLayout, Published, SinkFactory};

pub(crate) mod copy_text;
pub(crate) mod local;
pub(crate) mod object;
pub(crate) mod postgres;
pub(crate) mod postgres_tls;

pub(crate) use object::ObjectOutput;

/// How long a persister that cannot set its output up at start waits before trying again:
/// one second after the first failure, doubling up to 30 s. Each try of an object store
/// also has the client's own retries (`object::ObjectOutput::s3_from_env`).
pub(crate) const PREPARE_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(30),
};

/// A persister's output, made once from its configuration.
pub(crate) enum Output {
    /// A local (or mounted) directory.
    Local {
        /// The directory.
        out: PathBuf,
        /// Opens temporary files (tests replace it to simulate a full disk).
        open: Arc<SinkFactory>,
    },
    /// A bucket and prefix of an object store.
    Object(Arc<ObjectOutput>),
    /// A PostgreSQL database: batches are applied as transactions, not written as files
    /// (`Persister::write_batch` hands them to [`postgres::PostgresOutput::write_batch`]).
    Postgres(Arc<postgres::PostgresOutput>),
}

impl Output {
    /// The output `config` names: a directory, or an S3 client built from the environment.
    ///
    /// # Errors
    /// [`Error::Config`] for an `--out` that is not a directory or an `s3://` URL, or when the
    /// S3 client cannot be built from the environment.
    pub(crate) fn new(config: &PersistConfig, open: Arc<SinkFactory>) -> Result<Self> {
        Ok(match config.output_location()? {
            OutputLocation::Local(out) => Self::Local { out, open },
            OutputLocation::S3 { bucket, prefix } => {
                Self::Object(Arc::new(ObjectOutput::s3_from_env(&bucket, &prefix)?))
            }
            OutputLocation::Postgres(url) => {
                Self::Postgres(Arc::new(postgres::PostgresOutput::new(&url, config)?))
            }
        })
    }

    /// Sets the output up for `config` before any batch: publishes its `.buffer-persist`
    /// marker, or checks the one there.
    ///
    /// # Errors
    /// [`Error::OutputMismatch`] when the output was set up with other settings; I/O or object
    /// store errors when it cannot be reached.
    pub(crate) async fn prepare(&self, config: &PersistConfig) -> Result<()> {
        match self {
            Self::Local { .. } => {
                let config = config.clone();
                blocking(move || crate::marker::check_or_write(&config)).await
            }
            Self::Object(object) => object.check_or_write_marker(config).await,
            Self::Postgres(database) => database.prepare().await,
        }
    }

    /// [`Output::prepare`] until it succeeds, for a persister that must wait for its output
    /// rather than exit (`Persister::run`): an output it cannot reach yet (an object store
    /// that is down, a directory on a mount not there yet: [`Error::is_transient`]) is tried
    /// again after [`PREPARE_BACKOFF`], each failure logged with what failed and when the next
    /// try is. Returns `false` when `shutdown` is cancelled first, also mid-attempt.
    ///
    /// # Errors
    /// What cannot get better by waiting: [`Error::OutputMismatch`] (the output was set up
    /// with other settings), [`Error::Config`].
    pub(crate) async fn prepare_until_ready(
        &self,
        config: &PersistConfig,
        shutdown: &CancellationToken,
    ) -> Result<bool> {
        let mut failures: u32 = 0;
        loop {
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return Ok(false),
                attempt = self.prepare(config) => attempt,
            };
            match attempt {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(
                            out = %config.out_display(),
                            failed_attempts = failures,
                            "the output is ready"
                        );
                    }
                    return Ok(true);
                }
                Err(err) if err.is_transient() => {
                    failures = failures.saturating_add(1);
                    let delay = PREPARE_BACKOFF.delay(failures);
                    tracing::warn!(
                        out = %config.out_display(),
                        error = %with_causes(&err),
                        attempt = failures,
                        retry_in = %humantime::format_duration(delay),
                        "cannot set up the output; trying again"
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(false),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Starts writing `batch` laid out as `layout` ([`FileLayout::of_batch`]).
    ///
    /// # Errors
    /// [`Error::Config`] for a bad path template; I/O errors creating a local file.
    pub(crate) async fn start(
        &self,
        config: &PersistConfig,
        batch: &PreparedBatch,
        layout: FileLayout,
    ) -> Result<BatchWrite> {
        let template = config.path_template()?;
        match self {
            Self::Local { out, open } => {
                let file =
                    local::create(out.clone(), open.clone(), &template, config, batch, layout)
                        .await?;
                Ok(BatchWrite::File(Box::new(file)))
            }
            Self::Object(object) => Ok(BatchWrite::Object(Box::new(object::ObjectBatch::new(
                object.clone(),
                template,
                config,
                batch,
                layout,
            )?))),
            Self::Postgres(_) => Err(Error::Task(
                "a PostgreSQL output applies batches as transactions, not files".into(),
            )),
        }
    }

    /// The PostgreSQL output's counters, when this is one.
    pub(crate) fn postgres_stats(&self) -> Option<postgres::PostgresStats> {
        match self {
            Self::Postgres(database) => Some(database.stats()),
            _ => None,
        }
    }

    /// True for a local directory (where crashed writers may leave temporary files).
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Self::Local { .. })
    }
}

/// One batch being written to an output.
pub(crate) enum BatchWrite {
    /// To a temporary file, published by `link`. Boxed like the other: the enum moves to a
    /// blocking thread and back at every page.
    File(Box<BatchFile>),
    /// To object parts in memory, each published once complete.
    Object(Box<object::ObjectBatch>),
}

impl BatchWrite {
    /// Encodes a page of records (on a blocking thread). An object output publishes the parts
    /// the page completed, each after checking in Redis that the lock is still held.
    ///
    /// # Errors
    /// Encoding, I/O, object store or lost-lock errors; nothing partial is published.
    pub(crate) async fn write_page(
        self,
        page: Page,
        guard: &LockGuard,
        lock_ttl: Duration,
    ) -> Result<Self> {
        match self {
            Self::File(mut file) => {
                blocking(move || file.write_page(&page).map(|()| Self::File(file))).await
            }
            Self::Object(mut object) => {
                let mut object =
                    blocking(move || object.encode_page(&page).map(|()| object)).await?;
                object.publish_complete_parts(guard, lock_ttl).await?;
                Ok(Self::Object(object))
            }
        }
    }

    /// Ends the batch: checks that exactly `expected` records were written, then publishes
    /// what is left (the file, or the last object), after checking in Redis that the lock is
    /// still held. Returns the published file or object (the first part of a batch published
    /// as several).
    ///
    /// # Errors
    /// [`Error::CountMismatch`], [`Error::Conflict`], I/O, object store or lost-lock errors.
    pub(crate) async fn finish(
        self,
        expected: u64,
        guard: &LockGuard,
        lock_ttl: Duration,
    ) -> Result<Published> {
        match self {
            Self::File(file) => {
                let synced = blocking(move || file.finish(expected)).await?;
                // The check before publishing, in Redis rather than from the heartbeat's last
                // word: extend (which fails when the lock is lost). The heartbeat keeps the
                // lock alive through the publish and delete that follow.
                guard.extend(lock_ttl).await?;
                blocking(move || synced.publish()).await
            }
            Self::Object(mut object) => {
                let mut object = blocking(move || object.end(expected).map(|()| object)).await?;
                object.publish_complete_parts(guard, lock_ttl).await?;
                object.published()
            }
        }
    }

    /// Drops the batch unpublished (on abandon): a temporary file is removed, object parts
    /// not yet published are freed.
    pub(crate) fn discard(self) {
        match self {
            Self::File(file) => file.discard(),
            Self::Object(object) => drop(object),
        }
    }
}

/// `err`'s message followed by those of its causes that it does not already include: what
/// an object store request met ("operation timed out", "connection refused") is a cause of
/// the client's "error sending request".
fn with_causes(err: &Error) -> String {
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(current) = cause {
        let line = current.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = current.source();
    }
    text
}

/// Runs file and encoding work on the blocking pool so slow disks and compression never stall
/// the async workers. A batch file dropped by `work` (on an error) is dropped right there
/// (`writer::off_worker`), so its temporary file is gone when this returns.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(move || writer::off_worker(work))
        .await
        .map_err(|err| Error::Task(format!("file writer: {err}")))?
}
