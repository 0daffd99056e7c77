//! The one error type of `buffer-persist`.

use std::path::PathBuf;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while persisting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A call to Redis failed.
    #[error(transparent)]
    Buffer(#[from] buffer_core::Error),
    /// A file system operation failed; the batch stays in Redis and no partial file is published.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The error from the operating system.
        #[source]
        source: std::io::Error,
    },
    /// The file written for a batch did not hold the batch's record count; it was not published.
    #[error(
        "batch {batch} of store {store:?}: wrote {written} records but the batch has {expected}"
    )]
    CountMismatch {
        /// The store.
        store: String,
        /// The batch id.
        batch: String,
        /// Records written.
        written: u64,
        /// Records the batch holds.
        expected: u64,
    },
    /// The target file of a batch already exists with different contents; the batch is kept.
    #[error("{} already exists and does not hold batch {batch} of store {store:?}", path.display())]
    Conflict {
        /// The store.
        store: String,
        /// The batch id.
        batch: String,
        /// The existing file.
        path: PathBuf,
    },
    /// A request to the object store failed (after its own retries); the batch stays in Redis
    /// and no partial object is published.
    #[error("{action} {object}: {source}")]
    ObjectStore {
        /// What was being done.
        action: &'static str,
        /// The object concerned (`s3://bucket/key`).
        object: String,
        /// The object store client's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// A record could not be written in the chosen format.
    #[error("batch {batch} of store {store:?}: record {index} could not be encoded: {reason}")]
    Encode {
        /// The store.
        store: String,
        /// The batch id.
        batch: String,
        /// The record's position in the batch.
        index: u64,
        /// Why the encoder refused it (for CSV, a value that is not a scalar, say).
        reason: String,
    },
    /// A Parquet file whose column types were inferred from its batch's first page met a
    /// later value its column's type does not hold. The persister handles it itself: it
    /// writes the file again with the types of the whole batch (`ParquetLayout::of_batch`),
    /// so it is never a batch's outcome.
    #[error(
        "batch {batch} of store {store:?}: record {index} does not fit the column types of the batch's first page: {reason}"
    )]
    SampleMisfit {
        /// The store.
        store: String,
        /// The batch id.
        batch: String,
        /// The record's position in the batch.
        index: u64,
        /// Which value does not fit which type.
        reason: String,
    },
    /// The output directory was set up by persisters with another format or compression.
    #[error("{}: {reason}", path.display())]
    OutputMismatch {
        /// The marker file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// Shutdown was requested while the batch was being written; it stays prepared.
    #[error("batch {batch} of store {store:?} abandoned for shutdown; it stays prepared")]
    Abandoned {
        /// The store.
        store: String,
        /// The batch id.
        batch: String,
    },
    /// The bucket of `--out s3://bucket/...` does not exist (S3 answered 404 NoSuchBucket).
    #[error(
        "the bucket {bucket} does not exist (S3 answered 404 NoSuchBucket); create it, or correct --out"
    )]
    NoBucket {
        /// The bucket.
        bucket: String,
    },
    /// A background task of the persister panicked or was cancelled (a bug, not an
    /// operating condition); the batch stays prepared.
    #[error("internal task failed: {0}")]
    Task(String),
    /// PostgreSQL refused or failed an operation of the PostgreSQL output, or a record could
    /// not be mapped to its table. The transaction is rolled back: nothing of the batch is
    /// applied, and it stays in Redis.
    #[error("PostgreSQL: {action}: {message}")]
    Postgres {
        /// What was being done (connecting, loading table "t", …).
        action: String,
        /// PostgreSQL's SQLSTATE, when the server answered with an error.
        sqlstate: Option<String>,
        /// The server's message with its detail and context (which names the row for a COPY),
        /// or the client's.
        message: String,
        /// True when waiting may help (the server unreachable, restarting or overloaded).
        transient: bool,
    },
    /// An argument or setting was invalid.
    #[error("invalid setting: {0}")]
    Config(String),
    /// Persisting a batch prepared by this attempt failed; the batch stays prepared. Says which
    /// batch, so its failure is recorded against it (the attempt started from a live store).
    #[error("{error}")]
    InBatch {
        /// The store.
        store: buffer_core::StoreName,
        /// The batch that was prepared.
        batch: buffer_core::BatchId,
        /// What went wrong (its message is this error's message).
        error: Box<Error>,
    },
}

impl Error {
    /// True when this persister lost its lock (another one took the batch over).
    pub fn is_lock_lost(&self) -> bool {
        match self {
            Self::Buffer(err) => err.is_lock_lost(),
            Self::InBatch { error, .. } => error.is_lock_lost(),
            _ => false,
        }
    }

    /// True when a write (a batch's prepare, or a recovery's lock, which confirms that
    /// prepare) was not confirmed by the replicas `--wait-replicas` asks for: the batch is
    /// not written until it is.
    pub fn is_replicas_not_confirmed(&self) -> bool {
        match self {
            Self::Buffer(err) => matches!(err, buffer_core::Error::ReplicasNotConfirmed { .. }),
            Self::InBatch { error, .. } => error.is_replicas_not_confirmed(),
            _ => false,
        }
    }

    /// True when the batch was abandoned for shutdown (not a failure of the batch).
    pub fn is_abandoned(&self) -> bool {
        match self {
            Self::Abandoned { .. } => true,
            Self::InBatch { error, .. } => error.is_abandoned(),
            _ => false,
        }
    }

    /// True when retrying later may succeed (Redis or the object store away, disk full, lost
    /// lock).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Buffer(err) => err.is_transient() || err.is_lock_lost(),
            Self::Io { .. } | Self::ObjectStore { .. } | Self::Abandoned { .. } => true,
            Self::Postgres { transient, .. } => *transient,
            Self::InBatch { error, .. } => error.is_transient(),
            _ => false,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}
