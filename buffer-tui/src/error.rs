//! The one error type of `buffer-tui`'s library.

use std::path::PathBuf;

/// What can stop the dashboard or the demo.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Error {
    /// The terminal could not be set up or drawn on.
    #[error("terminal: {0}")]
    Terminal(#[source] std::io::Error),
    /// A call to Redis failed where the dashboard cannot carry on without it.
    #[error(transparent)]
    Buffer(#[from] buffer_core::Error),
    /// The demo's persister could not run.
    #[error(transparent)]
    Persist(#[from] buffer_persist::Error),
    /// The demo needs `redis-server` and it is not installed.
    #[error(
        "`{binary}` was not found: the demo starts its own private Redis. Install Redis \
         (Debian/Ubuntu: `sudo apt-get install redis-server`, Fedora: `sudo dnf install redis`, \
         macOS: `brew install redis`) or set BUFFER_REDIS_SERVER to the redis-server binary"
    )]
    RedisServerNotFound {
        /// The binary that was looked for.
        binary: String,
    },
    /// The demo's `redis-server` did not start.
    #[error("redis-server did not start: {reason}; its log says:\n{log}")]
    RedisServerStart {
        reason: String,
        /// The end of its log.
        log: String,
    },
    /// A file system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error from the operating system.
        #[source]
        source: std::io::Error,
    },
}

impl From<buffer_core::local_server::LocalServerError> for Error {
    fn from(err: buffer_core::local_server::LocalServerError) -> Self {
        use buffer_core::local_server::LocalServerError as E;
        match err {
            E::NotFound { binary } => Self::RedisServerNotFound {
                binary: binary.display().to_string(),
            },
            E::DidNotStart { reason, log } => Self::RedisServerStart { reason, log },
            E::Io {
                action,
                path,
                source,
            } => Self::Io {
                action,
                path,
                source,
            },
            // The enum is non-exhaustive: a future failure still reaches the person whole.
            other => Self::RedisServerStart {
                reason: other.to_string(),
                log: String::new(),
            },
        }
    }
}

/// A `Result` whose error is [`Error`].
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
