//! Batch identifiers.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::name::StoreName;

/// The id of a prepared batch: `<unix ms>-<16 hex digits of randomness>`.
///
/// The millisecond prefix sorts batches by age and tells the dashboard how old a batch is.
/// The random part makes the id unique for ever within a store, even when the clock steps
/// back or a Redis without persistence forgets every earlier batch: a file named after a batch
/// id can never be mistaken for another batch's file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId {
    created_ms: u64,
    nonce: u64,
}

impl BatchId {
    /// A fresh id for a batch created at `created_ms`.
    pub(crate) fn new(created_ms: u64) -> Self {
        Self {
            created_ms,
            nonce: rand::random(),
        }
    }

    /// When the batch was prepared, in milliseconds since the Unix epoch.
    pub fn created_ms(&self) -> u64 {
        self.created_ms
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:013}-{:016x}", self.created_ms, self.nonce)
    }
}

impl FromStr for BatchId {
    type Err = Error;

    /// Parses the form produced by `Display`.
    fn from_str(text: &str) -> Result<Self> {
        let invalid = || Error::InvalidBatchId {
            batch: crate::name::shorten(text),
        };
        let (ms, nonce) = text.split_once('-').ok_or_else(invalid)?;
        if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) || nonce.len() != 16 {
            return Err(invalid());
        }
        let id = Self {
            created_ms: ms.parse().map_err(|_| invalid())?,
            nonce: u64::from_str_radix(nonce, 16).map_err(|_| invalid())?,
        };
        // Only the canonical spelling is an id, so an id names exactly one set of keys and files.
        if id.to_string() != text {
            return Err(invalid());
        }
        Ok(id)
    }
}

/// A batch made by [`crate::Buffer::prepare_to_persist`] or [`crate::LockGuard::prepare`]: frozen,
/// never changed again, waiting to be written out and emptied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PreparedBatch {
    /// The store it came from.
    #[serde(serialize_with = "serialize_display")]
    pub store: StoreName,
    /// Its id.
    #[serde(serialize_with = "serialize_display")]
    pub id: BatchId,
    /// Number of records.
    pub records: u64,
    /// Total size of the records in bytes.
    pub bytes: u64,
    /// Number of distinct top-level keys.
    pub keys: u64,
    /// When its first record was pushed (Unix ms).
    pub first_write_ms: u64,
}

pub(crate) fn serialize_display<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_time() {
        let a = BatchId::new(1_700_000_000_000);
        let b = BatchId::new(1_700_000_000_001);
        assert_eq!(a.to_string().parse::<BatchId>().unwrap(), a);
        assert!(a < b);
        assert_ne!(BatchId::new(5), BatchId::new(5), "same ms, different nonce");
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "12",
            "12-xyz",
            "abc-0000000000000000",
            "1-00000000000000000",
            "../1-0",
        ] {
            assert!(
                matches!(bad.parse::<BatchId>(), Err(Error::InvalidBatchId { .. })),
                "{bad:?}"
            );
        }
        assert!("0000000000001-00000000000000ff".parse::<BatchId>().is_ok());
        assert!(
            "1-00000000000000ff".parse::<BatchId>().is_err(),
            "not zero-padded"
        );
    }
}
