//! The persister: finds stores to flush and batches to recover, and writes each batch to its
//! file exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use buffer_core::{
    Backoff, BatchId, BatchReader, Buffer, Event, EventKind, FailingWork, LockGuard, Page,
    PersisterInfo, PreparedBatch, StoreName,
};
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing::field::{Empty, display};

use crate::config::{Format, PersistConfig};
use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::histograms::BatchHistograms;
use crate::output::Output;
use crate::parquet::ParquetLayout;
use crate::writer::{self, FileLayout, Published, SinkFactory};

/// The longest a failing batch waits between two attempts. Its first retry waits one poll
/// interval, and each failure after that doubles the wait up to this.
pub(crate) const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(300);

/// Counters of what a persister did since it started.
#[derive(Debug, Default)]
struct Counters {
    batches_persisted: AtomicU64,
    records_persisted: AtomicU64,
    bytes_persisted: AtomicU64,
    files_written: AtomicU64,
    batches_recovered: AtomicU64,
    errors: AtomicU64,
    /// Failed attempts at batches (or at preparing stores) that were recorded for backoff.
    batch_failures: AtomicU64,
    /// Polls made by `run`.
    polls: AtomicU64,
    /// Batches and stores whose retry was not due at the last poll.
    in_backoff: AtomicU64,
    /// Age in ms of the oldest live store at the last poll (the persister's lag).
    oldest_store_age_ms: AtomicU64,
    /// Prepared batches waiting at the last poll.
    prepared_waiting: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Batches written and emptied.
    pub batches_persisted: u64,
    /// Records in those batches.
    pub records_persisted: u64,
    /// Bytes of record JSON in those batches.
    pub bytes_persisted: u64,
    /// Files this persister published itself (a batch found already written is not counted).
    pub files_written: u64,
    /// Batches left prepared by an earlier run and picked up by this one.
    pub batches_recovered: u64,
    /// Failed batch attempts, failed polls and lost locks.
    pub errors: u64,
    /// Failed attempts at batches (or at preparing stores), each recorded in Redis for backoff
    /// (a lost lock or a shutdown is not one).
    pub batch_failures: u64,
    /// Polls made by `run`.
    pub polls: u64,
    /// Batches and stores waiting for their retry (backing off after failures) at the last poll.
    pub in_backoff: u64,
    /// Age of the oldest live store at the last poll, in ms.
    pub oldest_store_age_ms: u64,
    /// Prepared batches waiting at the last poll.
    pub prepared_waiting: u64,
}

/// The counters as a log line reads them: `3 batches (120 records, 4.5 KiB) persisted,
/// 3 files written, 0 recovered, 0 errors, 12 polls`.
impl std::fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::units::{bytes, count};
        write!(
            f,
            "{} ({}, {}) persisted, {} written, {} recovered, {}, {}",
            count(self.batches_persisted, "batch", "batches"),
            count(self.records_persisted, "record", "records"),
            bytes(self.bytes_persisted),
            count(self.files_written, "file", "files"),
            self.batches_recovered,
            count(self.errors, "error", "errors"),
            count(self.polls, "poll", "polls"),
        )
    }
}

/// What one batch attempt ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Written (or found already written) and emptied.
    Persisted {
        /// Records in the batch.
        records: u64,
        /// The batch's file under `OUT` (written now, or an identical one found in place); for
        /// an object output, `s3://bucket/key` of its object (of its first part when it was
        /// published as several).
        path: std::path::PathBuf,
    },
    /// Someone else holds the lock (another persister, a library user, or another task of
    /// this persister still working on it); left to them.
    Busy,
    /// Nothing to do (an empty store, or a batch already emptied).
    Nothing,
    /// Not started: the persister is shutting down.
    Shutdown,
    /// Left alone: the store is paused (`buffer-persist pause`, [`Buffer::pause`]).
    Paused,
}

impl BatchOutcome {
    const PERSISTED: &'static str = "persisted";

    /// A word for logs: `persisted`, `busy`, `nothing`, `shutdown` or `paused`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Persisted { .. } => Self::PERSISTED,
            Self::Busy => "busy",
            Self::Nothing => "nothing",
            Self::Shutdown => "shutdown",
            Self::Paused => "paused",
        }
    }
}

/// What a `drain` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    /// Batches persisted.
    pub batches: u64,
    /// Records persisted.
    pub records: u64,
    /// One message per store or batch of the drain's snapshot that was not persisted (each
    /// stays in Redis): it failed, or was still locked by another persister at the deadline.
    pub failures: Vec<String>,
    /// True when the drain's shutdown token stopped it before it was done
    /// ([`Persister::drain_until`]).
    pub interrupted: bool,
    /// After a shutdown, one line per store or batch of the snapshot left in Redis for the
    /// next drain or run: a batch abandoned mid-write (it stays prepared, its lock released),
    /// or work not started. None of it is locked by this drain.
    pub left: Vec<String>,
    /// One line per store or batch of the snapshot left alone because its store is paused
    /// (not a failure: it is written once the store is resumed).
    pub paused: Vec<String>,
}

/// A persister. Cheap to clone; clones share counters.
#[derive(Clone)]
pub struct Persister {
    buffer: Buffer,
    config: Arc<PersistConfig>,
    counters: Arc<Counters>,
    /// The histograms of persisted batches, shared with the metrics endpoint.
    histograms: BatchHistograms,
    /// Opens temporary files; replaced in tests to simulate a full disk.
    open_sink: Arc<SinkFactory>,
    /// Where batches land, made from the configuration at the first use (`run`, `drain` or a
    /// test hook) and shared by clones.
    output: Arc<OnceLock<Output>>,
    /// Stores and batches this process is working on, so one poll does not start a store
    /// twice while an earlier task still holds it. Entries are removed by the task that added
    /// them, when it ends.
    in_flight: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for Persister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persister")
            .field("config", &self.config)
            .finish()
    }
}

impl Persister {
    /// A persister draining `buffer` as `config` says.
    pub fn new(buffer: Buffer, config: PersistConfig) -> Self {
        Self {
            buffer,
            config: Arc::new(config),
            counters: Arc::default(),
            histograms: BatchHistograms::default(),
            open_sink: Arc::new(writer::open_file_sink),
            output: Arc::default(),
            in_flight: Arc::default(),
        }
    }

    /// The output, made from the configuration when first needed.
    fn output(&self) -> Result<&Output> {
        if let Some(output) = self.output.get() {
            return Ok(output);
        }
        let made = Output::new(&self.config, self.open_sink.clone())?;
        // Two tasks racing here make the same output from the same configuration; the first
        // one set is used by both.
        let _ = self.output.set(made);
        self.output
            .get()
            .ok_or_else(|| Error::Task("the output was not set".into()))
    }

    /// Replaces how temporary files are opened (a test double for a full disk, say). A test
    /// hook: compiled in only with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    pub fn with_sink_factory(mut self, open: Arc<SinkFactory>) -> Self {
        self.open_sink = open;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &PersistConfig {
        &self.config
    }

    /// The buffer it drains.
    pub fn buffer(&self) -> &Buffer {
        &self.buffer
    }

    /// The histograms of persisted batches (clones share their buckets).
    pub(crate) fn histograms(&self) -> &BatchHistograms {
        &self.histograms
    }

    /// The counters now.
    pub fn stats(&self) -> StatsSnapshot {
        let c = &self.counters;
        StatsSnapshot {
            batches_persisted: c.batches_persisted.load(Ordering::Relaxed),
            records_persisted: c.records_persisted.load(Ordering::Relaxed),
            bytes_persisted: c.bytes_persisted.load(Ordering::Relaxed),
            files_written: c.files_written.load(Ordering::Relaxed),
            batches_recovered: c.batches_recovered.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            batch_failures: c.batch_failures.load(Ordering::Relaxed),
            polls: c.polls.load(Ordering::Relaxed),
            in_backoff: c.in_backoff.load(Ordering::Relaxed),
            oldest_store_age_ms: c.oldest_store_age_ms.load(Ordering::Relaxed),
            prepared_waiting: c.prepared_waiting.load(Ordering::Relaxed),
        }
    }

    /// The PostgreSQL output's counters (rows, transactions, ledger hits), when the output is
    /// a PostgreSQL database and has been used (by `run`, `drain` or a batch).
    pub fn postgres_stats(&self) -> Option<crate::PostgresStats> {
        self.output.get().and_then(Output::postgres_stats)
    }

    /// Runs until `shutdown` is cancelled: at once and then every `interval`, recovers prepared
    /// batches whose lock is free and flushes the stores over a threshold. On shutdown it stops
    /// selecting, abandons the batches in hand (they stay prepared, their temp files are
    /// removed, their locks released) and returns `Ok`.
    ///
    /// Errors of one batch or one poll are logged, counted and retried at the next poll; they
    /// never end the loop.
    ///
    /// An output it cannot reach at start (the object store down, say) is waited for: set-up
    /// is tried again with a capped backoff, each failure logged, until it works or `shutdown`
    /// is cancelled (then it returns `Ok`).
    ///
    /// # Errors
    /// [`Error::Config`] for invalid settings; [`Error::OutputMismatch`] when the output was
    /// set up with other settings.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        self.config.validate()?;
        if let crate::config::OutputLocation::Postgres(url) = self.config.output_location()? {
            crate::output::postgres::PostgresOutput::check(&url, &self.config)?;
        }
        if !self
            .output()?
            .prepare_until_ready(&self.config, &shutdown)
            .await?
        {
            tracing::info!("shutdown before the output was ready; persister stopped");
            return Ok(());
        }
        tracing::info!(
            out = %self.config.out_display(),
            max_age = %crate::units::duration(self.config.max_age),
            max_bytes = %crate::units::optional(self.config.max_bytes, crate::units::bytes),
            max_records = %crate::units::optional(self.config.max_records, |n| n.to_string()),
            format = %self.config.format,
            compression = %self.config.compression,
            path_template = %self.config.path_template,
            "persister started"
        );
        while !shutdown.is_cancelled() {
            if let Err(err) = self.poll(&shutdown).await {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "poll failed; retrying at the next interval");
            }
            self.announce().await;
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(self.config.interval) => {}
            }
        }
        if let Err(err) = self.buffer.retire_persister(self.buffer.holder_id()).await {
            tracing::debug!(error = %err, "could not remove the persister announcement");
        }
        tracing::info!(stats = %self.stats(), "persister stopped");
        Ok(())
    }

    /// Tells dashboards who this persister is, its thresholds and that it is alive. Losing an
    /// announcement only makes a dashboard show less.
    async fn announce(&self) {
        let stats = self.stats();
        let info = PersisterInfo {
            holder: self.buffer.holder_id().to_owned(),
            max_age: self.config.max_age,
            max_bytes: self.config.max_bytes,
            max_records: self.config.max_records,
            out: self.config.out_display(),
            heartbeat_ms: self.buffer.now_ms(),
            batches_persisted: stats.batches_persisted,
            records_persisted: stats.records_persisted,
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            interval: Some(self.config.interval),
        };
        if let Err(err) = self.buffer.announce_persister(&info).await {
            tracing::debug!(error = %err, "could not announce the persister");
        }
    }

    /// One poll: recover prepared batches, then flush stores over a threshold. Batches and
    /// stores whose recorded failures say to wait are left for a later poll.
    async fn poll(&self, shutdown: &CancellationToken) -> Result<()> {
        self.counters.polls.fetch_add(1, Ordering::Relaxed);
        let failing = self.failing_work().await;
        let now = self.buffer.now_ms();
        let due = |work: &Work| !failing.get(&work.key()).is_some_and(|f| f.backing_off(now));
        self.counters.in_backoff.store(
            failing.values().filter(|f| f.backing_off(now)).count() as u64,
            Ordering::Relaxed,
        );

        // Paused stores are left alone: their live records are not prepared (the prepare
        // script refuses them too, should one be paused after this read) and their prepared
        // batches not written.
        let paused: HashSet<StoreName> = self
            .buffer
            .paused_stores()
            .await?
            .into_iter()
            .map(|(store, _)| store)
            .collect();
        let running = |work: &Work| !paused.contains(work.subject().0);

        let prepared = self.buffer.get_prepared().await?;
        self.counters
            .prepared_waiting
            .store(prepared.len() as u64, Ordering::Relaxed);
        let recoveries = prepared
            .into_iter()
            .map(|p| Work::Recover(p.store, p.id))
            .filter(|work| due(work) && running(work));
        self.process(recoveries.collect(), &failing, shutdown).await;
        if shutdown.is_cancelled() {
            return Ok(());
        }

        let stores = self.select().await?;
        let flushes = stores
            .into_iter()
            .map(Work::Flush)
            .filter(|work| due(work) && running(work));
        self.process(flushes.collect(), &failing, shutdown).await;
        Ok(())
    }

    /// The failure records of batches and stores that still exist, by work key; records of
    /// batches emptied meanwhile are removed. Best effort: when they cannot be read, the poll
    /// goes on without backoff rather than not at all.
    async fn failing_work(&self) -> HashMap<String, FailingWork> {
        let entries = match self.buffer.failures().await {
            Ok(entries) => entries,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read failure records; retrying every failing batch now");
                return HashMap::new();
            }
        };
        let entries = match self.buffer.forget_stale_failures(entries.clone()).await {
            Ok(kept) => kept,
            Err(err) => {
                tracing::debug!(error = %err, "cannot forget stale failure records");
                entries
            }
        };
        entries
            .into_iter()
            .map(|f| (work_key(&f.store, f.batch.as_ref()), f))
            .collect()
    }

    /// The stores over a threshold now, and the lag gauge.
    async fn select(&self) -> Result<Vec<StoreName>> {
        let mut selected: Vec<StoreName> = self
            .buffer
            .get_old(self.config.max_age)
            .await?
            .into_iter()
            .map(|s| s.store)
            .collect();
        if self.config.max_bytes.is_some() || self.config.max_records.is_some() {
            let large = self
                .buffer
                .get_large(self.config.max_bytes, self.config.max_records)
                .await?;
            selected.extend(large.into_iter().map(|s| s.store));
        }
        selected.sort();
        selected.dedup();
        // The lag: age of the oldest live store (selected or not), read with one command per
        // group whatever the number of stores.
        let oldest = self.buffer.oldest_first_write_ms().await?;
        let now = self.buffer.now_ms();
        let lag = oldest.map_or(0, |first| now.saturating_sub(first));
        self.counters
            .oldest_store_age_ms
            .store(lag, Ordering::Relaxed);
        Ok(selected)
    }

    /// Runs the work items, `concurrency` at a time. A failure is recorded (for backoff, and
    /// for `stores` and dashboards to show); a success removes the record `failing` knew of.
    async fn process(
        &self,
        work: Vec<Work>,
        failing: &HashMap<String, FailingWork>,
        shutdown: &CancellationToken,
    ) -> Vec<(Work, Result<BatchOutcome>)> {
        futures::stream::iter(work)
            .map(|item| {
                // One span per attempt, so every line of it (JSON logs included) carries the
                // store and batch; a flush learns its batch and records at the prepare.
                let (store, batch) = item.subject();
                let span = tracing::info_span!(
                    "batch",
                    store = %store,
                    batch = Empty,
                    records = Empty,
                    outcome = Empty,
                );
                if let Some(batch) = batch {
                    span.record("batch", display(batch));
                }
                self.attempt(item, failing, shutdown).instrument(span)
            })
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await
    }

    /// One attempt at a work item, in its batch span: does it, records a failure or clears
    /// the old one, and records the outcome on the span.
    async fn attempt(
        &self,
        item: Work,
        failing: &HashMap<String, FailingWork>,
        shutdown: &CancellationToken,
    ) -> (Work, Result<BatchOutcome>) {
        let result = self.do_work(&item, shutdown).await;
        let outcome = match &result {
            Ok(outcome) => outcome.label(),
            Err(err) if err.is_abandoned() => "abandoned",
            Err(err) if err.is_lock_lost() => "lock-lost",
            Err(_) => "failed",
        };
        // Recorded before the failure is logged, so the failure's lines carry it too.
        tracing::Span::current().record("outcome", outcome);
        tracing::debug!("batch attempt ended");
        match &result {
            Err(err) => self.report_failure(&item, err).await,
            Ok(BatchOutcome::Busy | BatchOutcome::Shutdown | BatchOutcome::Paused) => {}
            Ok(BatchOutcome::Persisted { .. } | BatchOutcome::Nothing) => {
                if failing.contains_key(&item.key()) {
                    let (store, batch) = item.subject();
                    if let Err(err) = self.buffer.clear_failure(store, batch).await {
                        // The next poll's sweep removes it once the batch is gone.
                        tracing::debug!(error = %err, "cannot clear a failure record");
                    }
                }
            }
        }
        (item, result)
    }

    async fn do_work(&self, work: &Work, shutdown: &CancellationToken) -> Result<BatchOutcome> {
        if shutdown.is_cancelled() {
            return Ok(BatchOutcome::Shutdown);
        }
        let key = work.key();
        let inserted = self
            .in_flight
            .lock()
            .map(|mut set| set.insert(key.clone()))
            .unwrap_or(false);
        if !inserted {
            return Ok(BatchOutcome::Busy);
        }
        let result = match work {
            Work::Recover(store, batch) => self.recover(store, batch, shutdown).await,
            Work::Flush(store) => self.flush(store, shutdown).await,
        };
        if let Ok(mut set) = self.in_flight.lock() {
            set.remove(&key);
        }
        result
    }

    /// Logs a failed attempt, records it in Redis (attempts, error, next retry) and publishes
    /// a `failed` event. A shutdown is not a failure; a lost lock is not the batch's failure
    /// (another persister has the batch) and is not recorded.
    async fn report_failure(&self, work: &Work, err: &Error) {
        if err.is_abandoned() {
            tracing::info!(%err, "abandoned for shutdown");
            return;
        }
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        // A flush that prepared a batch and then failed concerns that batch, not the store.
        let (store, batch) = match err {
            Error::InBatch { store, batch, .. } => (store, Some(batch)),
            _ => work.subject(),
        };
        let batch_text = batch.map(ToString::to_string).unwrap_or_default();
        if err.is_lock_lost() {
            tracing::warn!(%err, "lost the lock; another persister has the batch");
        } else if err.is_replicas_not_confirmed() {
            // Not the batch's failure: its prepare (or the recovery's check of it) is not yet
            // on the replicas, so it is not written now. It stays prepared, its lock released,
            // and is recovered at the next poll, which checks the replicas again.
            self.counters.batch_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %err, "not written: the batch's prepare is not confirmed by the replicas yet; it stays prepared and is retried at the next poll");
        } else {
            self.counters.batch_failures.fetch_add(1, Ordering::Relaxed);
            let backoff = Backoff {
                base: self.config.interval,
                cap: MAX_RETRY_BACKOFF,
            };
            let message = err.to_string();
            match self
                .buffer
                .record_failure(store, batch, &message, backoff)
                .await
            {
                Ok(Some(record)) => {
                    let retry_in =
                        Duration::from_millis(record.next_retry_ms.saturating_sub(record.last_ms));
                    tracing::error!(
                        error = %err,
                        attempts = record.attempts,
                        retry_in = %crate::units::duration(retry_in),
                        "batch failed; it stays prepared and is retried after a backoff"
                    );
                }
                Ok(None) => {
                    tracing::info!(error = %err, "batch failed; its failure was not recorded because the batch (or store) is gone from Redis since: another persister finished it, or it was prepared meanwhile");
                }
                Err(record_err) => {
                    tracing::error!(
                        error = %err,
                        record_error = %record_err,
                        "batch failed; it stays prepared (the failure could not be recorded, so it is retried at the next poll)"
                    );
                }
            }
        }
        self.publish(
            EventKind::Failed,
            store.as_str(),
            &batch_text,
            0,
            0,
            Some(err.to_string()),
        )
        .await;
    }

    /// Locks a live store, prepares it (the lock moves to the batch) and persists the batch.
    pub(crate) async fn flush(
        &self,
        store: &StoreName,
        shutdown: &CancellationToken,
    ) -> Result<BatchOutcome> {
        let Some(mut guard) = self.buffer.lock(store, None, self.config.lock_ttl).await? else {
            return Ok(BatchOutcome::Busy);
        };
        let locked_at = Instant::now();
        // The heartbeat keeps the lock alive from here to the empty (it moves with the lock
        // from the store to the batch), however slow writing and publishing are.
        if let Err(err) = guard.keep_alive() {
            let _ = guard.release().await;
            return Err(err.into());
        }
        failpoint("after-lock");
        let batch = match guard.prepare().await {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                guard.release().await?;
                return Ok(BatchOutcome::Nothing);
            }
            Err(err) if err.is_paused() => {
                guard.release().await?;
                return Ok(BatchOutcome::Paused);
            }
            Err(err) => {
                let _ = guard.release().await;
                return Err(err.into());
            }
        };
        failpoint("after-prepare");
        tracing::Span::current()
            .record("batch", display(&batch.id))
            .record("records", batch.records);
        tracing::debug!("prepared");
        self.publish(
            EventKind::Prepared,
            store.as_str(),
            &batch.id.to_string(),
            batch.records,
            batch.bytes,
            None,
        )
        .await;
        // The batch's id goes with any error, so the failure is recorded against the batch.
        self.persist_locked(guard, &batch, locked_at, shutdown)
            .await
            .map_err(|error| Error::InBatch {
                store: store.clone(),
                batch: batch.id.clone(),
                error: Box::new(error),
            })
    }

    /// Locks a prepared batch left by an earlier run and persists it.
    pub(crate) async fn recover(
        &self,
        store: &StoreName,
        batch: &BatchId,
        shutdown: &CancellationToken,
    ) -> Result<BatchOutcome> {
        let Some(mut guard) = self
            .buffer
            .lock(store, Some(batch), self.config.lock_ttl)
            .await?
        else {
            // Another persister, or a library user holding it from `prepare_to_persist`.
            return Ok(BatchOutcome::Busy);
        };
        let locked_at = Instant::now();
        if let Err(err) = guard.keep_alive() {
            let _ = guard.release().await;
            return Err(err.into());
        }
        let info = match self.buffer.batch_info(store, batch).await {
            Ok(info) => info,
            Err(err) => {
                // Released so the next attempt need not wait out the TTL.
                let _ = guard.release().await;
                return Err(err.into());
            }
        };
        let Some(info) = info else {
            // Emptied already (a crash between deleting the data and its index entry):
            // finish the cleanup, under the lock like every delete.
            guard.empty_batch().await?;
            return Ok(BatchOutcome::Nothing);
        };
        tracing::Span::current().record("records", info.records);
        tracing::info!("recovering prepared batch");
        self.publish(
            EventKind::Recovered,
            store.as_str(),
            &batch.to_string(),
            info.records,
            info.bytes,
            None,
        )
        .await;
        let outcome = self
            .persist_locked(guard, &info, locked_at, shutdown)
            .await?;
        self.counters
            .batches_recovered
            .fetch_add(1, Ordering::Relaxed);
        Ok(outcome)
    }

    /// Writes a batch whose lock `guard` holds (kept alive by its heartbeat), then empties it.
    /// The heartbeat's view is checked between pages; the lock itself is checked in Redis
    /// right before the file is published and again by the delete: a persister that lost its
    /// lock does neither.
    async fn persist_locked(
        &self,
        guard: LockGuard,
        batch: &PreparedBatch,
        locked_at: Instant,
        shutdown: &CancellationToken,
    ) -> Result<BatchOutcome> {
        let result = self.write_batch(&guard, batch, shutdown).await;
        let published = match result {
            Ok(published) => published,
            Err(err) => {
                // Release so another attempt (ours or another persister's) can start at once;
                // a lost lock is left to its new holder.
                let _ = guard.release().await;
                return Err(err);
            }
        };
        guard.empty_batch().await?;
        failpoint("after-delete");
        if self.output()?.is_local()
            && let Some(dir) = published.path().parent()
        {
            writer::remove_stale_temps(dir, &batch.id);
        }
        let c = &self.counters;
        c.batches_persisted.fetch_add(1, Ordering::Relaxed);
        c.records_persisted
            .fetch_add(batch.records, Ordering::Relaxed);
        c.bytes_persisted.fetch_add(batch.bytes, Ordering::Relaxed);
        // A PostgreSQL output writes transactions, not files (its own counters count them).
        if matches!(published, Published::Written { .. }) && self.postgres_stats().is_none() {
            c.files_written.fetch_add(1, Ordering::Relaxed);
        }
        let since_prepare = self.buffer.now_ms().saturating_sub(batch.id.created_ms());
        self.histograms.observe(
            locked_at.elapsed(),
            batch.records,
            batch.bytes,
            Duration::from_millis(since_prepare),
        );
        let path = published.path().to_path_buf();
        // The batch's last info line: it carries the outcome.
        tracing::Span::current().record("outcome", BatchOutcome::PERSISTED);
        tracing::info!(file = %path.display(), "persisted");
        self.publish(
            EventKind::Persisted,
            batch.store.as_str(),
            &batch.id.to_string(),
            batch.records,
            batch.bytes,
            Some(path.display().to_string()),
        )
        .await;
        Ok(BatchOutcome::Persisted {
            records: batch.records,
            path,
        })
    }

    async fn write_batch(
        &self,
        guard: &LockGuard,
        batch: &PreparedBatch,
        shutdown: &CancellationToken,
    ) -> Result<Published> {
        let config = &self.config;
        if let Output::Postgres(database) = self.output()? {
            return database
                .write_batch(&self.buffer, guard, batch, config.lock_ttl, shutdown)
                .await;
        }
        let mut reader = self.buffer.reader(batch);
        // A Parquet file's column types come from the batch's first page, which is then
        // written first, so the batch is read once, when the file is published only once
        // complete (a local file): a later record that does not fit them starts the file
        // again with the types of the whole batch, which a full pass reads. Object parts are
        // published as they fill, before the last page is seen: their types come from a full
        // pass first.
        let (layout, first) = if config.format == Format::Parquet && self.output()?.is_local() {
            let first = reader.next_records().await?;
            let sample = first.unwrap_or_else(|| Page::from_strings::<&str>(&[]));
            let (layout, sample) =
                ParquetLayout::of_sample(&self.buffer, batch, config.csv_max_columns, sample)
                    .await?;
            (FileLayout::Parquet(layout), Some(sample))
        } else {
            let layout =
                FileLayout::of_batch(&self.buffer, batch, config.format, config.csv_max_columns)
                    .await?;
            (layout, None)
        };
        match self
            .write_pages(guard, batch, layout, reader, first, shutdown)
            .await
        {
            Err(Error::SampleMisfit { index, reason, .. }) => {
                tracing::info!(
                    index,
                    reason,
                    "a value does not fit the Parquet column types of the batch's first page: \
                     writing the file again with the types of the whole batch"
                );
                let layout = FileLayout::of_batch(
                    &self.buffer,
                    batch,
                    config.format,
                    config.csv_max_columns,
                )
                .await?;
                let reader = self.buffer.reader(batch);
                self.write_pages(guard, batch, layout, reader, None, shutdown)
                    .await
            }
            other => other,
        }
    }

    /// Writes `batch` laid out as `layout` from `reader`, after `first` (the page already
    /// read from it, if any), and publishes it.
    async fn write_pages(
        &self,
        guard: &LockGuard,
        batch: &PreparedBatch,
        layout: FileLayout,
        reader: BatchReader,
        first: Option<Page>,
        shutdown: &CancellationToken,
    ) -> Result<Published> {
        let config = &self.config;
        // Every name the batch gets is a pure function of the batch (its store, id and frozen
        // first write), so every attempt, by any persister, before or after a crash, writes
        // the same file or objects.
        let mut file = self.output()?.start(config, batch, layout).await?;
        // Pages are fetched one ahead: while a page is encoded on a blocking thread, the next
        // LRANGE is already on its way.
        let fetch = |mut reader: BatchReader| {
            tokio::spawn(async move {
                let page = reader.next_records().await;
                (reader, page)
            })
        };
        let mut first = first;
        let mut next = Some(fetch(reader));
        while let Some(fetching) = next.take() {
            let page = match first.take() {
                // The page read before: the fetch just started reads the one after it.
                Some(page) => {
                    next = Some(fetching);
                    page
                }
                None => {
                    let (reader, page) = fetching
                        .await
                        .map_err(|err| Error::Task(format!("page reader: {err}")))?;
                    let Some(page) = page? else { break };
                    next = Some(fetch(reader));
                    page
                }
            };
            if shutdown.is_cancelled() {
                file.discard();
                return Err(Error::Abandoned {
                    store: batch.store.to_string(),
                    batch: batch.id.to_string(),
                });
            }
            file = file.write_page(page, guard, config.lock_ttl).await?;
            // The heartbeat keeps the lock alive; stop writing as soon as it says the lock is
            // gone (the temp file is removed, the parts in memory freed, when `file` drops).
            guard.check_held()?;
        }
        failpoint("after-temp-write");
        // The lock is checked in Redis (extended) right before anything is published.
        file.finish(batch.records, guard, config.lock_ttl).await
    }

    /// Persists every prepared batch and every live store there is when it starts, whatever
    /// their age or size and whatever their backoff, then returns. Work that other persisters
    /// hold is waited for (up to `drain_wait`): a batch they finish meanwhile is done, and so
    /// is a store they prepare and persist. Records pushed after the start are left for the
    /// next run rather than chased for ever.
    ///
    /// # Errors
    /// As [`Persister::run`]; failures of single batches are listed in the report instead,
    /// one line per store or batch, as is work still locked by others at the deadline.
    pub async fn drain(&self) -> Result<DrainReport> {
        // A token nobody cancels: the drain runs to its end.
        self.drain_until(CancellationToken::new()).await
    }

    /// [`Persister::drain`], stopped early when `shutdown` is cancelled: no work is started
    /// after that, the batch in hand is abandoned at its next page (it stays prepared, nothing
    /// partial is published, its lock is released, token-checked), the wait for work that
    /// others hold ends, and the report says `interrupted` and lists in `left` what stays in
    /// Redis. Nothing is left locked by this drain, so the next drain or run starts on it at
    /// once.
    ///
    /// # Errors
    /// As [`Persister::drain`].
    pub async fn drain_until(&self, shutdown: CancellationToken) -> Result<DrainReport> {
        self.config.validate()?;
        if let crate::config::OutputLocation::Postgres(url) = self.config.output_location()? {
            crate::output::postgres::PostgresOutput::check(&url, &self.config)?;
        }
        self.output()?.prepare(&self.config).await?;
        let wait = self.config.drain_wait.unwrap_or(self.config.lock_ttl * 2);
        let deadline = Instant::now() + wait;
        let mut report = DrainReport::default();
        let failing = self.failing_work().await;
        // The snapshot: live stores first, then prepared batches, so a store prepared by
        // another persister between the two reads is found as its batch.
        let live = self.buffer.stores_partial().await?;
        let prepared = self.buffer.get_prepared_partial().await?;
        // Groups on a master that did not answer (a cluster node down or frozen) are drained
        // no further than what answered; each is a failure line, so the drain does not exit
        // 0 having skipped them.
        for err in live.missed.iter().chain(&prepared.missed) {
            report.failures.push(format!(
                "stores on an unreachable master were not drained: {err}"
            ));
        }
        let (live, prepared) = (live.found, prepared.found);
        let paused: HashSet<StoreName> = self
            .buffer
            .paused_stores()
            .await?
            .into_iter()
            .map(|(store, _)| store)
            .collect();
        let mut known: HashSet<String> = HashSet::new();
        let mut pending: Vec<Work> = Vec::new();
        let recoveries = prepared
            .into_iter()
            .map(|batch| Work::Recover(batch.store, batch.id));
        for work in recoveries.chain(live.into_iter().map(|s| Work::Flush(s.store))) {
            if paused.contains(work.subject().0) {
                report
                    .paused
                    .push(format!("{}: store paused", work.describe()));
                continue;
            }
            known.insert(work.key());
            pending.push(work);
        }
        while !pending.is_empty() {
            let results = self
                .process(std::mem::take(&mut pending), &failing, &shutdown)
                .await;
            let mut settled: HashSet<StoreName> = HashSet::new();
            for (item, result) in results {
                match result {
                    Ok(BatchOutcome::Persisted { records, .. }) => {
                        report.batches += 1;
                        report.records += records;
                        if let Work::Flush(store) = item {
                            settled.insert(store);
                        }
                    }
                    Ok(BatchOutcome::Nothing) => {
                        if let Work::Flush(store) = item {
                            settled.insert(store);
                        }
                    }
                    // Held by another persister (or taken over by one after our lock expired):
                    // theirs to finish; look again until it is done or the deadline passes.
                    Ok(BatchOutcome::Busy) => pending.push(item),
                    // Not started: the work stays as it was, unlocked.
                    Ok(BatchOutcome::Shutdown) => report.left.push(item.left_as_it_was()),
                    // Paused after the drain read the paused stores.
                    Ok(BatchOutcome::Paused) => {
                        report
                            .paused
                            .push(format!("{}: store paused", item.describe()));
                    }
                    // Stopped between two pages: the batch stays prepared, its lock released
                    // (`persist_locked` releases on every error).
                    Err(Error::InBatch {
                        store,
                        batch,
                        error,
                    }) if error.is_abandoned() => report
                        .left
                        .push(Work::Recover(store, batch).left_as_it_was()),
                    Err(err) if err.is_abandoned() => report.left.push(item.left_as_it_was()),
                    Err(err) if err.is_lock_lost() => pending.push(item),
                    Err(err) => {
                        let what = match &err {
                            Error::InBatch { store, batch, .. } => {
                                Work::Recover(store.clone(), batch.clone()).describe()
                            }
                            _ => item.describe(),
                        };
                        report.failures.push(format!("{what}: {err}"));
                    }
                }
            }
            // A store's records at the start may have been prepared by another persister
            // before this one took the store's lock: those batches are in the index now, and
            // are part of the drain (batches prepared later hold only newer records, but
            // cannot be told apart; they are few, and being persisted anyway).
            if shutdown.is_cancelled() {
                // What is still pending was held by another persister at its last attempt:
                // theirs to finish, not waited for any more.
                report.interrupted = true;
                report.left.extend(
                    pending
                        .iter()
                        .map(|item| format!("{}: held by another persister", item.describe())),
                );
                break;
            }
            if !settled.is_empty() {
                for batch in self.buffer.get_prepared().await? {
                    if !settled.contains(&batch.store) || paused.contains(&batch.store) {
                        continue;
                    }
                    let work = Work::Recover(batch.store, batch.id);
                    if known.insert(work.key()) {
                        pending.push(work);
                    }
                }
            }
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for item in pending {
                    report.failures.push(format!(
                        "{}: still locked by another persister after waiting {wait:?}",
                        item.describe()
                    ));
                }
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        report.interrupted |= shutdown.is_cancelled();
        Ok(report)
    }

    async fn publish(
        &self,
        kind: EventKind,
        store: &str,
        batch: &str,
        records: u64,
        bytes: u64,
        detail: Option<String>,
    ) {
        let event = Event {
            kind,
            store: store.to_owned(),
            batch: batch.to_owned(),
            records,
            bytes,
            at_ms: self.buffer.now_ms(),
            holder: self.buffer.holder_id().to_owned(),
            detail,
        };
        // Events are for watching; losing one must never fail a batch.
        if let Err(err) = self.buffer.publish_event(&event).await {
            tracing::debug!(error = %err, "could not publish event");
        }
    }
}

/// One thing a poll does.
#[derive(Debug, Clone)]
enum Work {
    /// Persist a batch that is already prepared.
    Recover(StoreName, BatchId),
    /// Prepare a live store and persist the batch.
    Flush(StoreName),
}

impl Work {
    /// Names the work in `in_flight` and in the map of failure records.
    fn key(&self) -> String {
        let (store, batch) = self.subject();
        work_key(store, batch)
    }

    /// The store, and the batch for a recovery.
    fn subject(&self) -> (&StoreName, Option<&BatchId>) {
        match self {
            Self::Recover(store, batch) => (store, Some(batch)),
            Self::Flush(store) => (store, None),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Recover(store, batch) => format!("batch {batch} of store {store:?}"),
            Self::Flush(store) => format!("store {store:?}"),
        }
    }

    /// The line for work a shutdown left in Redis, unlocked.
    fn left_as_it_was(&self) -> String {
        match self {
            Self::Recover(..) => format!("{} (prepared, not locked)", self.describe()),
            Self::Flush(..) => format!("{} (live, not locked)", self.describe()),
        }
    }
}

/// The key of the work on a batch (`Some`) or live store.
fn work_key(store: &StoreName, batch: Option<&BatchId>) -> String {
    match batch {
        Some(batch) => format!("b:{batch}:{}", store.encoded()),
        None => format!("s:{}", store.encoded()),
    }
}

/// Test hooks: one protocol step at a time, for the suites that race two persisters over one
/// batch. Compiled in only with the `test-hooks` feature; embedders use `run` and `drain`.
#[cfg(feature = "test-hooks")]
impl Persister {
    /// Locks the live `store`, prepares it and persists the batch, as one work item of `run`.
    ///
    /// # Errors
    /// As `run`'s work items: Redis, I/O or encoding errors, wrapped in [`Error::InBatch`]
    /// once the batch is prepared.
    pub async fn flush_store(
        &self,
        store: &StoreName,
        shutdown: &CancellationToken,
    ) -> Result<BatchOutcome> {
        self.flush(store, shutdown).await
    }

    /// Locks the prepared `batch` of `store` and persists it, as one work item of `run`.
    ///
    /// # Errors
    /// As `run`'s work items: Redis, I/O or encoding errors.
    pub async fn recover_batch(
        &self,
        store: &StoreName,
        batch: &BatchId,
        shutdown: &CancellationToken,
    ) -> Result<BatchOutcome> {
        self.recover(store, batch, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use buffer_tests::RedisServer;

    /// Issue 13: work not started because the persister is shutting down is reported as
    /// `Shutdown`, not as `Busy` (nobody else holds it), and is left untouched.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_not_started_for_shutdown_is_shutdown_not_busy() {
        let server = RedisServer::start();
        let out = tempfile::tempdir().unwrap();
        let buffer = server.buffer().await;
        buffer
            .push("s", &serde_json::json!({"a": 1}))
            .await
            .unwrap();
        let persister = Persister::new(buffer.clone(), PersistConfig::new(out.path()));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let store = StoreName::new("s").unwrap();
        let results = persister
            .process(vec![Work::Flush(store)], &HashMap::new(), &shutdown)
            .await;
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].1.as_ref().unwrap(), &BatchOutcome::Shutdown);
        assert_eq!(buffer.stores().await.unwrap()[0].records, 1);
        assert!(buffer.get_prepared().await.unwrap().is_empty());
    }
}
