//! The one error type of `buffer-core`.

use redis::RedisError;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `buffer-core`.
///
/// Expected outcomes are not errors: a lock held by someone else is `Ok(None)` from
/// [`crate::Buffer::lock`], an empty store is `Ok(None)` from
/// [`crate::Buffer::prepare_to_persist`].
///
/// It is `Clone` so that one failure shared by several operations (a pipeline whose round
/// trip failed) can be handed to each of them.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A store name was refused before anything was sent to Redis.
    #[error("invalid store name {name:?}: {reason}")]
    InvalidStoreName {
        /// The name (shortened when long).
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A namespace was refused.
    #[error("invalid namespace {namespace:?}: {reason}")]
    InvalidNamespace {
        /// The namespace (shortened when long).
        namespace: String,
        /// Why it was refused.
        reason: String,
    },
    /// A batch id did not have the form `<ms>-<16 hex digits>`.
    #[error("invalid batch id {batch:?}: expected <unix ms>-<16 hex digits>")]
    InvalidBatchId {
        /// The text that was given.
        batch: String,
    },
    /// A record was refused before anything was sent to Redis (none of its batch was pushed).
    #[error("record {index} for store {store:?} refused: {reason}")]
    InvalidRecord {
        /// The store it was pushed to.
        store: String,
        /// Its position in the pushed slice (0 for `push`).
        index: usize,
        /// Why it was refused.
        reason: String,
    },
    /// A record was larger than the configured maximum (none of its batch was pushed).
    #[error("record {index} for store {store:?} is {size} bytes, over the limit of {max} bytes")]
    RecordTooLarge {
        /// The store it was pushed to.
        store: String,
        /// Its position in the pushed slice (0 for `push`).
        index: usize,
        /// Its size as JSON, in bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A push id given to `push_once` was not 1..=128 bytes of `[A-Za-z0-9._-]`.
    #[error("invalid push id {id:?}: use 1 to 128 letters, digits, '.', '_' or '-'")]
    InvalidPushId {
        /// The id (shortened when long).
        id: String,
    },
    /// `push_many` was called with no records.
    #[error("push to store {store:?} had no records")]
    NoRecords {
        /// The store it was pushed to.
        store: String,
    },
    /// A push of a [`crate::PushPipeline`] was read before the pipeline ran: it was not
    /// executed yet, or was dropped without being executed (then nothing of it was sent).
    #[error("push to store {store:?} has no result yet: its pipeline has not been executed")]
    PipelineNotExecuted {
        /// The store it was pushed to.
        store: String,
    },
    /// An operation that starts a background task was called outside a Tokio runtime.
    #[error("{op} must be called inside a Tokio runtime: it starts a background task")]
    NoRuntime {
        /// The operation that was refused.
        op: &'static str,
    },
    /// A push was refused whole because it would take its store over one of its limits (see
    /// [`crate::Buffer::set_limits`]); nothing of it was stored. Retrying later may succeed:
    /// once the persisters drained the store, or in the next second for the rate.
    #[error(
        "push to store {store:?} refused: {limit} is {max}, {}",
        limit_use(*limit, *current, *requested)
    )]
    LimitExceeded {
        /// The store it was pushed to.
        store: String,
        /// The limit that refused it (the first one exceeded, in the order records, bytes, rate).
        limit: crate::LimitKind,
        /// The limit's value.
        max: u64,
        /// The store's use of it before the push: live records, live bytes, or records pushed
        /// in the current second.
        current: u64,
        /// What the push would have added: records, or bytes for `max-bytes`.
        requested: u64,
    },
    /// Coalescing rules were refused before anything was written (see
    /// [`crate::Buffer::set_coalesce`]): an empty or `_`-prefixed field name, the key field
    /// given a rule, a field named under two rules, or an unknown rule name.
    #[error("coalescing rules of store {store:?} refused: {reason}")]
    InvalidCoalesceRules {
        /// The store concerned.
        store: String,
        /// What was wrong, naming the field or rule.
        reason: String,
    },
    /// A store's coalescing rules were not changed because the store holds records (live or
    /// in prepared batches): rows merged under one set of rules must be written under them.
    /// Nothing was changed; drain the store first.
    #[error(
        "coalescing rules of store {store:?} not changed: the store holds {live} live records and {batches} prepared batches; drain it first"
    )]
    CoalesceStoreNotEmpty {
        /// The store concerned.
        store: String,
        /// Live records (entities, for a coalescing store).
        live: u64,
        /// Prepared batches not yet persisted.
        batches: u64,
    },
    /// A record pushed to a coalescing store could not be merged: no key field, a key that is
    /// not a string or an integer, a value its field's rule cannot take (a non-number for
    /// `sum`, `max` or `min`; a sum beyond i64), or a field name kept for the row's metadata.
    /// Nothing of the push was applied.
    #[error(
        "record {index} pushed to coalescing store {store:?} refused: field {field:?} (rule {rule}): {reason}; nothing of the push was applied"
    )]
    CoalesceRecordRefused {
        /// The store it was pushed to.
        store: String,
        /// Its position in the pushed slice (0 for `push`).
        index: usize,
        /// The field concerned.
        field: String,
        /// The rule concerned (`key` for the key field, `metadata` for a reserved name).
        rule: String,
        /// Why it was refused.
        reason: String,
    },
    /// The configuration was invalid (a bad URL, zero groups…).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A lock guard was used for an operation that needs the other kind of lock: `prepare`
    /// needs a store lock, `empty_batch` a batch lock.
    #[error("{op} on store {store:?} needs a {needs} lock, not a {held} lock")]
    WrongLockKind {
        /// The operation that was refused.
        op: &'static str,
        /// The store of the guard's lock.
        store: String,
        /// The kind of lock the operation needs (`store` or `batch`).
        needs: &'static str,
        /// The kind the guard holds.
        held: &'static str,
    },
    /// A key of the store held the wrong type of value (someone else wrote to it).
    #[error("{op} on store {store:?}: a key holds the wrong type of value: {detail}")]
    WrongType {
        /// The operation that failed.
        op: &'static str,
        /// The store concerned.
        store: String,
        /// The server's message.
        detail: String,
    },
    /// Redis refused a write because `maxmemory` is reached.
    #[error("{op} on store {store:?}: Redis is out of memory (maxmemory reached): {detail}")]
    OutOfMemory {
        /// The operation that failed.
        op: &'static str,
        /// The store concerned.
        store: String,
        /// The server's message.
        detail: String,
    },
    /// The lock was no longer held by this guard (it expired and may have been taken).
    #[error("lock {key:?} is no longer held by this holder")]
    LockLost {
        /// The lock key.
        key: String,
    },
    /// A store is paused ([`crate::Buffer::pause`]): nothing of it is prepared until it is
    /// resumed. Nothing was changed.
    #[error("store {store:?} is paused: nothing of it is prepared or written until it is resumed")]
    StorePaused {
        /// The store concerned.
        store: String,
    },
    /// A batch did not exist (it was emptied, or never prepared).
    #[error("batch {batch} of store {store:?} does not exist")]
    BatchNotFound {
        /// The store concerned.
        store: String,
        /// The batch id.
        batch: String,
    },
    /// A record cannot be given as a `serde_json::Value` (a number beyond `f64`'s range, such as
    /// `1e400`, or nesting deeper than 128 levels), though it is valid JSON: read its exact
    /// text with [`crate::Buffer::reader`].
    #[error(
        "record {index} of batch {batch} of store {store:?} cannot be a serde_json::Value ({reason}); read its exact text with Buffer::reader"
    )]
    NotAValue {
        /// The store concerned.
        store: String,
        /// The batch id.
        batch: String,
        /// The record's position in the batch.
        index: u64,
        /// What serde_json could not represent.
        reason: String,
    },
    /// A record of a batch did not decode into the type asked of
    /// [`crate::BatchReader::next_page_as`]. The batch is untouched in Redis.
    #[error(
        "record {index} of batch {batch} of store {store:?} does not decode as {type_name}: {reason}"
    )]
    RecordNotDecoded {
        /// The store concerned.
        store: String,
        /// The batch id.
        batch: String,
        /// The record's position in the batch.
        index: u64,
        /// The Rust type it was decoded into.
        type_name: &'static str,
        /// What serde_json reported.
        reason: String,
    },
    /// Data read from Redis did not have the expected shape.
    #[error("unexpected data in Redis: {what}")]
    Corrupt {
        /// What was malformed.
        what: String,
    },
    /// Redis did not answer within the response timeout.
    #[error("{op}{}: Redis did not answer within {} ms", on_store(store), timeout.as_millis())]
    Timeout {
        /// The operation that timed out.
        op: &'static str,
        /// The store concerned (empty for operations on all stores).
        store: String,
        /// How long it waited.
        timeout: std::time::Duration,
    },
    /// A write was applied on the master but `WAIT` confirmed it on fewer replicas than
    /// [`crate::BufferConfig::wait_replicas`] asks for within its timeout: it may be lost if
    /// the master fails now (see docs/operations.md, "What --wait-replicas guarantees and costs").
    #[error(
        "{op}{}: applied on the master but confirmed by {confirmed} of {wanted} replicas within {} ms; it may be lost in a failover",
        on_store(store),
        timeout.as_millis()
    )]
    ReplicasNotConfirmed {
        /// The operation whose write was not replicated in time.
        op: &'static str,
        /// The store concerned (empty for a pipeline's round trip).
        store: String,
        /// How many replicas were asked for.
        wanted: u32,
        /// How many replicas `WAIT` counted.
        confirmed: u64,
        /// How long `WAIT` waited.
        timeout: std::time::Duration,
    },
    /// Any other error from Redis or the connection to it.
    ///
    /// Its `source` is the `redis` crate's `RedisError` (redis 1.x), the one type of that crate
    /// in buffer-core's public API: a major upgrade of `redis` is a major upgrade of
    /// buffer-core. Decide with this type's methods instead ([`Error::is_transient`],
    /// [`Error::is_outcome_unknown`], [`Error::is_wrong_type`], …), which stay stable;
    /// read `source` only for what they do not cover (its error code, for logs).
    #[error("{op}{}: {source}", on_store(store))]
    Redis {
        /// The operation that failed.
        op: &'static str,
        /// The store concerned (empty for operations on all stores).
        store: String,
        /// The error from the client library.
        #[source]
        source: RedisError,
    },
}

impl Error {
    /// True when retrying later may succeed: connection trouble, timeouts, a server that is
    /// loading or out of memory. Invalid input and lost locks are never transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::OutOfMemory { .. } | Self::ReplicasNotConfirmed { .. } => {
                true
            }
            Self::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_timeout()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || source.is_cluster_error()
                    || matches!(
                        source.code(),
                        Some("LOADING" | "BUSY" | "MASTERDOWN" | "READONLY")
                    )
            }
            _ => false,
        }
    }

    /// True when a push was refused by one of its store's limits ([`Error::LimitExceeded`]):
    /// the producer should slow down, buffer on its side or drop, and may retry later.
    pub fn is_backpressure(&self) -> bool {
        matches!(self, Self::LimitExceeded { .. })
    }

    /// True when a [`crate::PushHandle`] was read before its pipeline was executed.
    pub fn is_not_executed(&self) -> bool {
        matches!(self, Self::PipelineNotExecuted { .. })
    }

    /// True when the store is paused ([`Error::StorePaused`]).
    pub fn is_paused(&self) -> bool {
        matches!(self, Self::StorePaused { .. })
    }

    /// True when a lock guard found its lock taken over or expired.
    pub fn is_lock_lost(&self) -> bool {
        matches!(self, Self::LockLost { .. })
    }

    /// True when the caller's input was refused before anything reached Redis.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::InvalidStoreName { .. }
                | Self::InvalidNamespace { .. }
                | Self::InvalidBatchId { .. }
                | Self::InvalidRecord { .. }
                | Self::RecordTooLarge { .. }
                | Self::NoRecords { .. }
                | Self::InvalidPushId { .. }
                | Self::InvalidCoalesceRules { .. }
        )
    }

    /// True when the request may or may not have been applied: it was sent (or may have
    /// been) but its reply was lost to a timeout or a broken connection. Retrying a plain
    /// push after such an error may store its records twice; `Buffer::push_once` with the
    /// same push id may be retried safely. Also true when a write was applied but not
    /// confirmed by enough replicas ([`Error::ReplicasNotConfirmed`]): it stands on the
    /// master, and a failover may still lose it.
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::ReplicasNotConfirmed { .. } => true,
            Self::Redis { source, .. } => {
                !source.is_connection_refusal()
                    && (source.is_io_error()
                        || source.is_timeout()
                        || source.is_connection_dropped())
            }
            _ => false,
        }
    }

    /// True when Redis refused a write for lack of memory.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Self::OutOfMemory { .. })
    }

    /// True when a key held a value of the wrong type.
    pub fn is_wrong_type(&self) -> bool {
        matches!(self, Self::WrongType { .. })
    }

    /// True when the server refused the command itself: not allowed by the user's ACL
    /// (`NOPERM`), or unknown (renamed or disabled).
    pub(crate) fn is_command_refused(&self) -> bool {
        match self {
            Self::Redis { source, .. } => {
                source.code() == Some("NOPERM")
                    || source
                        .to_string()
                        .to_lowercase()
                        .contains("unknown command")
            }
            _ => false,
        }
    }

    /// The same error about `name`: a failure of a round trip shared by several stores (a
    /// pipeline's), given to each store's push.
    pub(crate) fn for_store(mut self, name: &str) -> Self {
        match &mut self {
            Self::Timeout { store, .. }
            | Self::ReplicasNotConfirmed { store, .. }
            | Self::Redis { store, .. }
            | Self::WrongType { store, .. }
            | Self::OutOfMemory { store, .. } => *store = name.to_owned(),
            _ => {}
        }
        self
    }

    /// Turns an error of the client library into ours, recognising the server errors that
    /// callers need to tell apart (WRONGTYPE and OOM, also when they come from inside an EXEC
    /// or a script).
    pub(crate) fn from_redis(op: &'static str, store: &str, err: RedisError) -> Self {
        let detail = err.to_string();
        let codes: Vec<String> = err
            .clone()
            .into_server_errors()
            .map(|errors| errors.iter().map(|(_, e)| e.code().to_owned()).collect())
            .unwrap_or_default();
        let mentions =
            |code: &str| codes.iter().any(|c| c == code) || detail.contains(&format!("{code} "));
        if mentions("WRONGTYPE") {
            Self::WrongType {
                op,
                store: store.to_owned(),
                detail,
            }
        } else if mentions("OOM") {
            Self::OutOfMemory {
                op,
                store: store.to_owned(),
                detail,
            }
        } else {
            Self::Redis {
                op,
                store: store.to_owned(),
                source: err,
            }
        }
    }
}

/// How a refused push stood against its limit, in words.
fn limit_use(limit: crate::LimitKind, current: u64, requested: u64) -> String {
    match limit {
        crate::LimitKind::Records => {
            format!("the store holds {current} records and the push adds {requested}")
        }
        crate::LimitKind::Bytes => {
            format!("the store holds {current} bytes and the push adds {requested}")
        }
        crate::LimitKind::Rate => {
            format!("{current} records were pushed in this second and the push adds {requested}")
        }
    }
}

fn on_store(store: &str) -> String {
    if store.is_empty() {
        String::new()
    } else {
        format!(" on store {store:?}")
    }
}

/// Lets every operation that takes a store name also take a [`crate::StoreName`] by value
/// (its conversion to itself cannot fail).
impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error the client library gives for a reply line as the server sends it
    /// (`-CODE message\r\n`), parsed by the library itself.
    fn server_error(line: &str) -> RedisError {
        redis::parse_redis_value(line.as_bytes())
            .expect("a RESP error line parses")
            .extract_error()
            .expect_err("an error line is an error")
    }

    fn io_error(kind: std::io::ErrorKind) -> RedisError {
        RedisError::from(std::io::Error::new(kind, "test"))
    }

    fn ours(err: RedisError) -> Error {
        Error::from_redis("push", "orders", err)
    }

    #[test]
    fn a_cluster_or_server_in_transition_is_transient_and_never_an_unknown_outcome() {
        // These replies prove the command did not run: retrying later is right, and
        // nothing may be counted as possibly applied.
        for line in [
            "-CLUSTERDOWN The cluster is down\r\n",
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-READONLY You can't write against a read only replica.\r\n",
            "-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n",
            "-BUSY Redis is busy running a script.\r\n",
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            "-MOVED 3999 127.0.0.1:6381\r\n",
            "-ASK 3999 127.0.0.1:6381\r\n",
        ] {
            let err = ours(server_error(line));
            assert!(
                matches!(err, Error::Redis { .. }),
                "{line:?} became {err:?}"
            );
            assert!(err.is_transient(), "{line:?} must be transient");
            assert!(
                !err.is_outcome_unknown(),
                "{line:?} proves the command did not run"
            );
            assert!(!err.is_invalid_input() && !err.is_lock_lost() && !err.is_wrong_type());
        }
    }

    #[test]
    fn a_plain_server_error_is_neither_transient_nor_unknown() {
        for line in [
            "-ERR unknown command 'FOO'\r\n",
            "-NOSCRIPT No matching script.\r\n",
            "-CROSSSLOT Keys in request don't hash to the same slot\r\n",
            "-NOPERM this user has no permissions\r\n",
        ] {
            let err = ours(server_error(line));
            assert!(!err.is_transient(), "{line:?} must not be transient");
            assert!(!err.is_outcome_unknown(), "{line:?} is a known outcome");
        }
        assert!(ours(server_error("-NOPERM no\r\n")).is_command_refused());
        assert!(ours(server_error("-ERR unknown command 'EVALSHA'\r\n")).is_command_refused());
        assert!(!ours(server_error("-CLUSTERDOWN down\r\n")).is_command_refused());
    }

    #[test]
    fn wrongtype_and_oom_are_typed_also_inside_an_exec_reply() {
        let wrongtype = "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
        let oom = "-OOM command not allowed when used memory > 'maxmemory'.\r\n";
        let err = ours(server_error(wrongtype));
        assert!(err.is_wrong_type() && !err.is_transient(), "{err:?}");
        let err = ours(server_error(oom));
        assert!(err.is_out_of_memory() && err.is_transient(), "{err:?}");
        assert!(!err.is_outcome_unknown());
        // EXEC's reply: an array whose second element is the failed command's error.
        for (line, wrong_type) in [(wrongtype, true), (oom, false)] {
            let exec = format!("*3\r\n:1\r\n{line}:2\r\n");
            let err = ours(server_error(&exec));
            assert_eq!(err.is_wrong_type(), wrong_type, "{exec:?} became {err:?}");
            assert_eq!(
                err.is_out_of_memory(),
                !wrong_type,
                "{exec:?} became {err:?}"
            );
            let text = err.to_string();
            assert!(text.contains("push on store \"orders\""), "{text}");
        }
    }

    #[test]
    fn a_lost_connection_is_an_unknown_outcome_but_a_refused_one_is_not() {
        use std::io::ErrorKind::*;
        for kind in [
            ConnectionReset,
            BrokenPipe,
            UnexpectedEof,
            ConnectionAborted,
        ] {
            let err = ours(io_error(kind));
            assert!(err.is_transient(), "{kind:?}");
            assert!(err.is_outcome_unknown(), "{kind:?} may have run");
        }
        let refused = ours(io_error(ConnectionRefused));
        assert!(refused.is_transient());
        assert!(
            !refused.is_outcome_unknown(),
            "a refused connection sent nothing"
        );
        let timeout = Error::Timeout {
            op: "push",
            store: "orders".into(),
            timeout: std::time::Duration::from_millis(300),
        };
        assert!(timeout.is_transient() && timeout.is_outcome_unknown());
        assert_eq!(
            timeout.to_string(),
            "push on store \"orders\": Redis did not answer within 300 ms"
        );
        let replicas = Error::ReplicasNotConfirmed {
            op: "push",
            store: String::new(),
            wanted: 1,
            confirmed: 0,
            timeout: std::time::Duration::from_secs(1),
        };
        assert!(replicas.is_transient() && replicas.is_outcome_unknown());
    }

    #[test]
    fn for_store_names_the_store_of_a_shared_round_trip() {
        let err = Error::from_redis("pipeline", "", io_error(std::io::ErrorKind::BrokenPipe));
        let text = err.for_store("b").to_string();
        assert!(text.starts_with("pipeline on store \"b\": "), "{text}");
        let lock = Error::LockLost { key: "k".into() }.for_store("b");
        assert!(lock.is_lock_lost() && !lock.is_transient() && !lock.is_outcome_unknown());
    }
}
