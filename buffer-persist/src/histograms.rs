//! [`BatchHistograms`]: the per-batch histograms the persister observes into and the metrics
//! endpoint (`metrics.rs`) encodes. Apart from both, so neither depends on the other for it.

use std::time::Duration;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The histograms of persisted batches. Cheap to clone: clones share their buckets, so the
/// persister observes into the same histograms the endpoint encodes.
#[derive(Clone, Debug)]
pub(crate) struct BatchHistograms {
    /// Seconds from taking a batch in hand (lock) to its delete from Redis.
    flush_seconds: Histogram,
    /// Records per persisted batch.
    records: Histogram,
    /// Bytes of record JSON per persisted batch.
    bytes: Histogram,
    /// Seconds from a batch's prepare (the time in its id) to its delete from Redis.
    prepare_to_persisted_seconds: Histogram,
}

impl Default for BatchHistograms {
    fn default() -> Self {
        Self {
            // 5 ms .. ~80 s.
            flush_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 15)),
            // 1 .. ~1M records.
            records: Histogram::new(exponential_buckets(1.0, 4.0, 11)),
            // 1 KiB .. 1 GiB.
            bytes: Histogram::new(exponential_buckets(1024.0, 4.0, 11)),
            // 10 ms .. ~90 min: a recovered batch may have waited a long time.
            prepare_to_persisted_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 20)),
        }
    }
}

impl BatchHistograms {
    /// Records one persisted batch: how long it took from the lock, its size, and how long it
    /// waited since it was prepared.
    pub(crate) fn observe(
        &self,
        flush: Duration,
        records: u64,
        bytes: u64,
        since_prepare: Duration,
    ) {
        self.flush_seconds.observe(flush.as_secs_f64());
        self.records.observe(records as f64);
        self.bytes.observe(bytes as f64);
        self.prepare_to_persisted_seconds
            .observe(since_prepare.as_secs_f64());
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "flush_duration",
            "Time from locking a batch to deleting it from Redis, per persisted batch.",
            Unit::Seconds,
            self.flush_seconds.clone(),
        );
        registry.register(
            "batch_records",
            "Records per persisted batch.",
            self.records.clone(),
        );
        registry.register_with_unit(
            "batch",
            "Bytes of record JSON per persisted batch.",
            Unit::Bytes,
            self.bytes.clone(),
        );
        registry.register_with_unit(
            "prepare_to_persisted",
            "Time from a batch's prepare to its delete from Redis.",
            Unit::Seconds,
            self.prepare_to_persisted_seconds.clone(),
        );
    }
}
