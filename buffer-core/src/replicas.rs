//! Replica acknowledgement ([`crate::BufferConfig::wait_replicas`]): `WAIT` after the writes
//! that must survive a failover, and the script calls that carry it.
//!
//! `WAIT n timeout` blocks until `n` replicas acknowledged every write sent before it *on the
//! same connection*. So it is appended to the very round trip of the write (after its EXEC,
//! or after its EVALSHA): it runs on the connection, and the node, that took the write. The
//! cluster connection keeps a `WAIT` with the unit before it (`connection.rs`), so a redirect
//! or retry sends both together to the node that owns the slot.
//!
//! What each `WAIT` protects is in ARCHITECTURE.md ("Replica acknowledgement").

use std::time::Duration;

use redis::{
    Cmd, FromRedisValue, Pipeline, RedisError, Script, ServerErrorKind, ToRedisArgs, Value,
};

use crate::buffer::Buffer;
use crate::error::{Error, Result};
use crate::transaction;

/// The replicas a write waits for: how many, and how long.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReplicaWait {
    replicas: u32,
    timeout: Duration,
}

impl ReplicaWait {
    /// The wait `buffer` is configured with, or `None` when it waits for no replica.
    pub(crate) fn of(buffer: &Buffer) -> Option<Self> {
        buffer
            .config()
            .wait_replicas
            .map(|(replicas, timeout)| Self { replicas, timeout })
    }

    /// Appends `WAIT` to `pipe`. Its reply comes right after the replies of what it follows.
    pub(crate) fn queue(self, pipe: &mut Pipeline) {
        pipe.cmd("WAIT").arg(self.replicas).arg(
            u64::try_from(self.timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
    }

    /// Checks `WAIT`'s reply: the number of replicas that acknowledged the write.
    ///
    /// # Errors
    /// [`Error::ReplicasNotConfirmed`] when fewer than asked for did; the server's own error
    /// (`WAIT` refused) as [`Error::Redis`].
    pub(crate) fn check(self, op: &'static str, store: &str, reply: Value) -> Result<()> {
        let confirmed = match reply {
            Value::Int(count) => u64::try_from(count).unwrap_or(0),
            Value::ServerError(err) => {
                return Err(Error::from_redis(op, store, RedisError::from(err)));
            }
            other => {
                return Err(Error::Corrupt {
                    what: format!("{op}: WAIT replied {other:?}"),
                });
            }
        };
        if confirmed < u64::from(self.replicas) {
            return Err(Error::ReplicasNotConfirmed {
                op,
                store: store.to_owned(),
                wanted: self.replicas,
                confirmed,
                timeout: self.timeout,
            });
        }
        Ok(())
    }
}

/// [`transaction::exec`], followed by `WAIT` when `buffer` waits for replicas: a push.
///
/// # Errors
/// As [`transaction::exec`]; then as [`ReplicaWait::check`] (the transaction was applied).
pub(crate) async fn exec(
    buffer: &Buffer,
    op: &'static str,
    store: &str,
    commands: Vec<Cmd>,
) -> Result<Vec<Value>> {
    let Some(wait) = ReplicaWait::of(buffer) else {
        return transaction::exec(buffer, op, store, commands).await;
    };
    let mut pipe = redis::pipe();
    let block = transaction::queue(&mut pipe, commands);
    wait.queue(&mut pipe);
    let mut conn = buffer.conn();
    let mut replies: Vec<Value> = buffer
        .run(op, store, async move { pipe.query_async(&mut conn).await })
        .await?;
    if replies.len() != block.replies() + 1 {
        return Err(Error::Corrupt {
            what: format!(
                "{op} on store {store:?}: expected {} replies, got {}",
                block.replies() + 1,
                replies.len()
            ),
        });
    }
    let wait_reply = replies.pop().unwrap_or(Value::Nil);
    let results = block.check(op, store, replies)?;
    wait.check(op, store, wait_reply)?;
    Ok(results)
}

/// One call of a Lua script (`EVALSHA`), followed by `WAIT` when the buffer waits for
/// replicas. Built like `redis::ScriptInvocation` (keys, then arguments), which cannot put a
/// command after its call in the same round trip.
pub(crate) struct ScriptCall<'a> {
    script: &'a Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl<'a> ScriptCall<'a> {
    pub(crate) fn new(script: &'a Script) -> Self {
        Self {
            script,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Adds a key (`KEYS[i]` in the script).
    pub(crate) fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Adds an argument (`ARGV[i]` in the script).
    pub(crate) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// Appends the call's `EVALSHA` to `pipe`, alone: a caller building its own pipeline (the
    /// push pipeline) loads the script first and queues any `WAIT` itself.
    pub(crate) fn queue(&self, pipe: &mut Pipeline) {
        pipe.cmd("EVALSHA")
            .arg(self.script.get_hash())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
    }

    fn pipeline(&self, wait: Option<ReplicaWait>) -> Pipeline {
        let mut pipe = redis::pipe();
        self.queue(&mut pipe);
        if let Some(wait) = wait {
            wait.queue(&mut pipe);
        }
        pipe.ignore_errors();
        pipe
    }

    /// Runs the script (loading it first if the server does not have it) and, when `buffer`
    /// waits for replicas, `WAIT` right after it.
    ///
    /// # Errors
    /// The script's error mapped as [`Error::from_redis`]; transient errors; then as
    /// [`ReplicaWait::check`] (the script ran).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        buffer: &Buffer,
        op: &'static str,
        store: &str,
    ) -> Result<T> {
        let wait = ReplicaWait::of(buffer);
        let pipe = self.pipeline(wait);
        let mut loaded = false;
        loop {
            let mut conn = buffer.conn();
            let sent = &pipe;
            let replies: Vec<Value> = buffer
                .run(op, store, async move { sent.query_async(&mut conn).await })
                .await?;
            let mut replies = replies.into_iter();
            let (Some(reply), wait_reply) = (replies.next(), replies.next()) else {
                return Err(Error::Corrupt {
                    what: format!("{op} on store {store:?}: no reply to the script"),
                });
            };
            if let Value::ServerError(err) = reply {
                let err = RedisError::from(err);
                // NOSCRIPT: the script did not run (a restarted or failed-over server has an
                // empty script cache); load it where the key lives and call it again, once.
                if !loaded && err.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) {
                    loaded = true;
                    let mut conn = buffer.conn();
                    buffer
                        .run(
                            op,
                            store,
                            async move { self.script.load_async(&mut conn).await },
                        )
                        .await?;
                    continue;
                }
                return Err(Error::from_redis(op, store, err));
            }
            if let Some(wait) = wait {
                wait.check(op, store, wait_reply.unwrap_or(Value::Nil))?;
            }
            return redis::from_redis_value(reply).map_err(|err| Error::Corrupt {
                what: format!("{op} on store {store:?}: unexpected script reply: {err}"),
            });
        }
    }
}
