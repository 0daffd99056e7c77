//! The operator's actions on a running buffer, one code path for the CLI (`buffer-persist
//! flush|retry|pause|resume|limits`) and the dashboard (a key, a confirmation line, the
//! outcome line): each action says what it will do ([`OperatorAction::confirmation`]), does
//! it through buffer-core ([`OperatorAction::execute`]) and says what it did.
//!
//! Every action is one atomic step on the server or a lock-respecting composition (see
//! buffer-core's `Buffer::pause`, `flush_now`, `retry_now`, `set_limits`), so none loses or
//! duplicates a record under any concurrency with producers and persisters.

use std::time::Duration;

use buffer_core::{BatchId, Buffer, FlushOutcome, LimitKind, RetryOutcome, StoreLimits, StoreName};

/// How long a flush holds the store lock it prepares under (released at once after the
/// prepare; should this process die in between, the batch's lock expires after this and a
/// persister writes it then).
pub const FLUSH_LOCK_TTL: Duration = Duration::from_secs(30);

/// One thing an operator does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorAction {
    /// Prepare the store now, so running persisters write it at their next poll.
    Flush(StoreName),
    /// Clear the backoff of a failing batch (`None`: of the live store, when it could not be
    /// prepared), so persisters try it at their next poll.
    Retry(StoreName, Option<BatchId>),
    /// Stop preparing and writing the store (pushes go on, limits too).
    Pause(StoreName),
    /// Persist the store again.
    Resume(StoreName),
    /// Set the store's limits, replacing any it had.
    SetLimits(StoreName, StoreLimits),
    /// Remove the store's limits.
    ClearLimits(StoreName),
}

impl OperatorAction {
    /// The store it acts on.
    pub fn store(&self) -> &StoreName {
        match self {
            Self::Flush(store)
            | Self::Retry(store, _)
            | Self::Pause(store)
            | Self::Resume(store)
            | Self::SetLimits(store, _)
            | Self::ClearLimits(store) => store,
        }
    }

    /// What it will do, in one line, for the person to confirm.
    pub fn confirmation(&self) -> String {
        match self {
            Self::Flush(store) => format!(
                "Flush {store:?} now: its live records become one prepared batch, written by the running persisters at their next poll"
            ),
            Self::Retry(store, Some(batch)) => format!(
                "Retry batch {batch} of {store:?} now: its backoff is cleared and the persisters try it at their next poll"
            ),
            Self::Retry(store, None) => format!(
                "Retry {store:?} now: its backoff is cleared and the persisters try to prepare it at their next poll"
            ),
            Self::Pause(store) => format!(
                "Pause {store:?}: persisters stop preparing and writing it (pushes and limits go on) until it is resumed"
            ),
            Self::Resume(store) => format!(
                "Resume {store:?}: persisters prepare and write it again from their next poll"
            ),
            Self::SetLimits(store, limits) => format!(
                "Set the limits of {store:?} to {}: a push that would go over them is refused",
                limits_text(limits)
            ),
            Self::ClearLimits(store) => {
                format!("Remove the limits of {store:?}: every push is taken again")
            }
        }
    }

    /// Does it, and says what it did in one line.
    ///
    /// # Errors
    /// buffer-core's errors: transient ones, [`buffer_core::Error::StorePaused`] for a flush
    /// of a paused store, invalid limits.
    pub async fn execute(&self, buffer: &Buffer) -> Result<String, buffer_core::Error> {
        Ok(match self {
            Self::Flush(store) => match buffer.flush_now(store.clone(), FLUSH_LOCK_TTL).await? {
                FlushOutcome::Prepared(batch) => format!(
                    "{store}: prepared batch {} ({} records); the persisters write it at their next poll",
                    batch.id, batch.records
                ),
                FlushOutcome::Empty => format!("{store}: no live records, nothing to flush"),
                FlushOutcome::Busy { holder } => {
                    format!("{store}: {holder} holds its lock and is preparing it now")
                }
                _ => format!("{store}: flushed"),
            },
            Self::Retry(store, batch) => {
                let what = match batch {
                    Some(batch) => format!("batch {batch} of {store}"),
                    None => store.to_string(),
                };
                match buffer.retry_now(store.clone(), batch.as_ref()).await? {
                    RetryOutcome::Cleared(record) => format!(
                        "{what}: backoff cleared after {} failed attempts; tried at the next poll",
                        record.attempts
                    ),
                    RetryOutcome::NotFailing => {
                        format!("{what}: not failing (written, or no longer there)")
                    }
                    _ => format!("{what}: retried"),
                }
            }
            Self::Pause(store) => {
                if buffer.pause(store.clone()).await? {
                    format!("{store}: paused")
                } else {
                    format!("{store}: was paused already")
                }
            }
            Self::Resume(store) => {
                if buffer.resume(store.clone()).await? {
                    format!("{store}: resumed")
                } else {
                    format!("{store}: was not paused")
                }
            }
            Self::SetLimits(store, limits) => {
                buffer.set_limits(store.as_str(), *limits).await?;
                format!("{store}: {}", limits_text(limits))
            }
            Self::ClearLimits(store) => {
                if buffer.clear_limits(store.as_str()).await? {
                    format!("{store}: limits removed")
                } else {
                    format!("{store}: had no limits")
                }
            }
        })
    }
}

/// `max-records=1000 max-bytes=1048576 max-rate=500/s`, the limits that are set.
pub(crate) fn limits_text(limits: &StoreLimits) -> String {
    [LimitKind::Records, LimitKind::Bytes, LimitKind::Rate]
        .into_iter()
        .filter_map(|kind| {
            limits.get(kind).map(|max| match kind {
                LimitKind::Rate => format!("{kind}={max}/s"),
                _ => format!("{kind}={max}"),
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_say_what_happens_to_which_store() {
        let store = StoreName::new("orders").unwrap();
        let limits = StoreLimits {
            max_records: Some(10),
            max_bytes: None,
            max_rate: Some(5),
        };
        let cases = [
            (OperatorAction::Flush(store.clone()), "next poll"),
            (
                OperatorAction::Pause(store.clone()),
                "pushes and limits go on",
            ),
            (
                OperatorAction::SetLimits(store.clone(), limits),
                "max-records=10 max-rate=5/s",
            ),
            (
                OperatorAction::ClearLimits(store.clone()),
                "Remove the limits",
            ),
        ];
        for (action, says) in cases {
            let line = action.confirmation();
            assert!(line.contains("\"orders\""), "{line}");
            assert!(line.contains(says), "{line}");
        }
    }
}
