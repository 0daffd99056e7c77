//! What a push returns: [`PushReceipt`] and [`PushOnceOutcome`] (plain data, a leaf module, so
//! `push` and `limits` both make them without depending on each other).

use serde::Serialize;

/// What a push returns: the live store's state right after the push, read in the same
/// transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PushReceipt {
    /// Total size of the store's records, in bytes of compact JSON.
    pub bytes: u64,
    /// Number of records in the store.
    pub records: u64,
    /// Number of distinct top-level keys seen across the store's records.
    pub keys: u64,
    /// When the first record of the current live buffer was pushed (Unix ms).
    pub first_write_ms: u64,
}

impl PushReceipt {
    /// Reads the totals a push script returns (`totals` in `scripts.rs`): whether its push id
    /// was applied before, then records, bytes, keys and first write; `None` for any other
    /// shape.
    pub(crate) fn from_totals(reply: &[i64]) -> Option<(Self, bool)> {
        let counts: Vec<u64> = reply
            .iter()
            .map(|n| u64::try_from(*n).ok())
            .collect::<Option<_>>()?;
        let [duplicate, records, bytes, keys, first] = <[u64; 5]>::try_from(counts).ok()?;
        Some((
            Self {
                bytes,
                records,
                keys,
                first_write_ms: first,
            },
            duplicate == 1,
        ))
    }
}

/// What [`crate::Buffer::push_once`] returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PushOnceOutcome {
    /// The store's state after the call.
    pub receipt: PushReceipt,
    /// True when a push with this id had already been applied, so nothing was added now.
    pub duplicate: bool,
}
