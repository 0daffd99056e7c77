//! MULTI/EXEC with every reply checked by this crate.
//!
//! EXEC does not roll back: a command that fails inside it (WRONGTYPE) leaves the others
//! applied, and Redis may also refuse a whole transaction, at queue time or at EXEC time
//! (OOM, EXECABORT). A transaction is a success only when MULTI answered OK, every command
//! was QUEUED, and EXEC returned an array without a single error in it.

use redis::{Cmd, Pipeline, RedisError, Value};

use crate::buffer::Buffer;
use crate::error::{Error, Result};

/// Runs `commands` in one MULTI/EXEC round trip and returns their replies, in order.
///
/// # Errors
/// The first error reply found (queued, EXEC-level or inside the EXEC array), mapped so that
/// WRONGTYPE and OOM are recognisable; [`Error::Corrupt`] for a reply of the wrong shape.
pub(crate) async fn exec(
    buffer: &Buffer,
    op: &'static str,
    store: &str,
    commands: Vec<Cmd>,
) -> Result<Vec<Value>> {
    let mut pipe = redis::pipe();
    let block = queue(&mut pipe, commands);
    let mut conn = buffer.conn();
    let replies: Vec<Value> = buffer
        .run(op, store, async move { pipe.query_async(&mut conn).await })
        .await?;
    block.check(op, store, replies)
}

/// Appends `commands` to `pipe` as one MULTI/EXEC block and returns what it takes to check
/// that block's replies. A pipeline may hold several blocks (`crate::PushPipeline`): each is
/// its own transaction, and each block's replies are checked alone by [`Block::check`].
///
/// The pipeline is set to return error replies as values, to be checked here: the
/// multiplexed connection writes a whole pipeline at once, so no other request of this
/// connection can come between a MULTI and its EXEC.
pub(crate) fn queue(pipe: &mut Pipeline, commands: Vec<Cmd>) -> Block {
    let count = commands.len();
    pipe.cmd("MULTI");
    for command in commands {
        pipe.add_command(command);
    }
    pipe.cmd("EXEC");
    pipe.ignore_errors();
    Block { count }
}

/// One MULTI/EXEC block queued by [`queue`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block {
    /// The number of commands between MULTI and EXEC.
    count: usize,
}

impl Block {
    /// How many replies the block takes in its pipeline's reply list: MULTI's, one per
    /// queued command, and EXEC's.
    pub(crate) fn replies(self) -> usize {
        self.count + 2
    }

    /// Checks the block's replies (exactly [`Block::replies`] of them) and returns the
    /// results inside EXEC, in order.
    ///
    /// # Errors
    /// As [`exec`].
    pub(crate) fn check(
        self,
        op: &'static str,
        store: &str,
        replies: Vec<Value>,
    ) -> Result<Vec<Value>> {
        check(op, store, self.count, replies)
    }
}

fn check(
    op: &'static str,
    store: &str,
    count: usize,
    mut replies: Vec<Value>,
) -> Result<Vec<Value>> {
    let shape = |what: String| Error::Corrupt {
        what: format!("{op} on store {store:?}: {what}"),
    };
    if replies.len() != count + 2 {
        return Err(shape(format!(
            "expected {} replies to MULTI/EXEC, got {}",
            count + 2,
            replies.len()
        )));
    }
    let exec_reply = replies.pop().unwrap_or(Value::Nil);
    // A refusal at queue time (OOM, a syntax error) names the real cause; EXEC then only
    // says EXECABORT. Report the cause.
    for reply in &replies {
        if let Value::ServerError(err) = reply {
            return Err(Error::from_redis(op, store, RedisError::from(err.clone())));
        }
    }
    match exec_reply {
        Value::Array(results) if results.len() == count => {
            for result in &results {
                if let Value::ServerError(err) = result {
                    return Err(Error::from_redis(op, store, RedisError::from(err.clone())));
                }
            }
            Ok(results)
        }
        Value::Array(results) => Err(shape(format!(
            "EXEC returned {} results for {count} commands",
            results.len()
        ))),
        Value::ServerError(err) => Err(Error::from_redis(op, store, RedisError::from(err))),
        Value::Nil => Err(shape("the transaction was aborted".into())),
        other => Err(shape(format!("unexpected EXEC reply {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(text: &str) -> Value {
        let value = redis::parse_redis_value(format!("-{text}\r\n").as_bytes()).unwrap();
        assert!(matches!(value, Value::ServerError(_)));
        value
    }

    fn queued(n: usize) -> Vec<Value> {
        let mut replies = vec![Value::Okay];
        replies.extend((0..n).map(|_| Value::SimpleString("QUEUED".into())));
        replies
    }

    #[test]
    fn an_error_inside_exec_fails_the_transaction() {
        let mut replies = queued(2);
        replies.push(Value::Array(vec![
            Value::Int(1),
            server_error("WRONGTYPE Operation against a key"),
        ]));
        assert!(check("push", "s", 2, replies).unwrap_err().is_wrong_type());
    }

    #[test]
    fn oom_at_exec_time_is_out_of_memory() {
        let mut replies = queued(2);
        replies.push(server_error(
            "OOM command not allowed when used memory > 'maxmemory'.",
        ));
        assert!(
            check("push", "s", 2, replies)
                .unwrap_err()
                .is_out_of_memory()
        );
    }

    #[test]
    fn oom_at_queue_time_is_reported_instead_of_execabort() {
        let mut replies = vec![
            Value::Okay,
            server_error("OOM command not allowed"),
            Value::SimpleString("QUEUED".into()),
        ];
        replies.push(server_error(
            "EXECABORT Transaction discarded because of previous errors.",
        ));
        assert!(
            check("push", "s", 2, replies)
                .unwrap_err()
                .is_out_of_memory()
        );
    }

    #[test]
    fn a_clean_exec_returns_the_results() {
        let mut replies = queued(2);
        replies.push(Value::Array(vec![Value::Int(1), Value::Int(2)]));
        assert_eq!(
            check("push", "s", 2, replies).unwrap(),
            vec![Value::Int(1), Value::Int(2)]
        );
        let mut short = queued(2);
        short.push(Value::Array(vec![Value::Int(1)]));
        assert!(matches!(
            check("push", "s", 2, short),
            Err(Error::Corrupt { .. })
        ));
    }
}
