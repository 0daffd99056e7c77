//! The persister: finds stores to flush and batches to recover, and writes each batch to its
//! file exactly once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buffer_core::{
    BatchId, Buffer, Event, EventKind, LockGuard, PersisterInfo, PreparedBatch, StoreName,
};
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::PersistConfig;
use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::writer::{self, BatchFile, Published, SinkFactory};

/// Counters of what a persister did since it started.
#[derive(Debug, Default)]
struct Counters {
    batches_persisted: AtomicU64,
    records_persisted: AtomicU64,
    bytes_persisted: AtomicU64,
    files_written: AtomicU64,
    batches_recovered: AtomicU64,
    errors: AtomicU64,
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
    /// Batches that failed (they stay prepared and are retried).
    pub errors: u64,
    /// Age of the oldest live store at the last poll, in ms.
    pub oldest_store_age_ms: u64,
    /// Prepared batches waiting at the last poll.
    pub prepared_waiting: u64,
}

/// What one batch attempt ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Written (or found already written) and emptied.
    Persisted {
        /// Records in the batch.
        records: u64,
        /// The file.
        path: std::path::PathBuf,
    },
    /// Someone else holds the lock; left to them.
    Busy,
    /// Nothing to do (an empty store, or a batch already emptied).
    Nothing,
}

/// What a `drain` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    /// Batches persisted.
    pub batches: u64,
    /// Records persisted.
    pub records: u64,
    /// Failures, as messages (each batch concerned stays prepared).
    pub failures: Vec<String>,
}

/// A persister. Cheap to clone; clones share counters.
#[derive(Clone)]
pub struct Persister {
    buffer: Buffer,
    config: Arc<PersistConfig>,
    counters: Arc<Counters>,
    /// Opens temporary files; replaced in tests to simulate a full disk.
    open_sink: Arc<SinkFactory>,
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
            open_sink: Arc::new(writer::open_file_sink),
            in_flight: Arc::default(),
        }
    }

    /// Replaces how temporary files are opened (a test double for a full disk, say).
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
            oldest_store_age_ms: c.oldest_store_age_ms.load(Ordering::Relaxed),
            prepared_waiting: c.prepared_waiting.load(Ordering::Relaxed),
        }
    }

    /// Runs until `shutdown` is cancelled: at once and then every `interval`, recovers prepared
    /// batches whose lock is free and flushes the stores over a threshold. On shutdown it stops
    /// selecting, abandons the batches in hand (they stay prepared, their temp files are
    /// removed, their locks released) and returns `Ok`.
    ///
    /// Errors of one batch or one poll are logged, counted and retried at the next poll; they
    /// never end the loop.
    ///
    /// # Errors
    /// [`Error::Config`] for invalid settings; [`Error::Io`] or [`Error::OutputMismatch`] when
    /// the output directory cannot be used.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        self.config.validate()?;
        crate::marker::check_or_write(&self.config)?;
        tracing::info!(
            out = %self.config.out_dir.display(),
            max_age = ?self.config.max_age,
            max_bytes = ?self.config.max_bytes,
            max_records = ?self.config.max_records,
            format = %self.config.format,
            compression = %self.config.compression,
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
        tracing::info!(stats = ?self.stats(), "persister stopped");
        Ok(())
    }

    /// Tells dashboards who this persister is, its thresholds and that it is alive. Losing an
    /// announcement only makes a dashboard show less.
    async fn announce(&self) {
        let stats = self.stats();
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let info = PersisterInfo {
            holder: self.buffer.holder_id().to_owned(),
            max_age_ms: millis(self.config.max_age),
            max_bytes: self.config.max_bytes,
            max_records: self.config.max_records,
            out: self.config.out_dir.display().to_string(),
            heartbeat_ms: self.buffer.now_ms(),
            batches_persisted: stats.batches_persisted,
            records_persisted: stats.records_persisted,
        };
        if let Err(err) = self.buffer.announce_persister(&info).await {
            tracing::debug!(error = %err, "could not announce the persister");
        }
    }

    /// One poll: recover prepared batches, then flush stores over a threshold.
    async fn poll(&self, shutdown: &CancellationToken) -> Result<()> {
        let prepared = self.buffer.get_prepared().await?;
        self.counters
            .prepared_waiting
            .store(prepared.len() as u64, Ordering::Relaxed);
        let recoveries = prepared.into_iter().map(|p| Work::Recover(p.store, p.id));
        self.process(recoveries.collect(), shutdown).await;
        if shutdown.is_cancelled() {
            return Ok(());
        }

        let stores = self.select().await?;
        self.process(stores.into_iter().map(Work::Flush).collect(), shutdown)
            .await;
        Ok(())
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

    /// Runs the work items, `concurrency` at a time.
    async fn process(
        &self,
        work: Vec<Work>,
        shutdown: &CancellationToken,
    ) -> Vec<(Work, Result<BatchOutcome>)> {
        futures::stream::iter(work)
            .map(|item| async move {
                let result = self.do_work(&item, shutdown).await;
                if let Err(err) = &result {
                    self.report_failure(&item, err).await;
                }
                (item, result)
            })
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await
    }

    async fn do_work(&self, work: &Work, shutdown: &CancellationToken) -> Result<BatchOutcome> {
        if shutdown.is_cancelled() {
            return Ok(BatchOutcome::Busy);
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
            Work::Recover(store, batch) => self.recover_batch(store, batch, shutdown).await,
            Work::Flush(store) => self.flush_store(store, shutdown).await,
        };
        if let Ok(mut set) = self.in_flight.lock() {
            set.remove(&key);
        }
        result
    }

    async fn report_failure(&self, work: &Work, err: &Error) {
        if matches!(err, Error::Abandoned { .. }) {
            tracing::info!(%err, "abandoned for shutdown");
            return;
        }
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        if err.is_lock_lost() {
            tracing::warn!(%err, "lost the lock; another persister has the batch");
        } else {
            tracing::error!(error = %err, "batch failed; it stays prepared and will be retried");
        }
        let (store, batch) = match work {
            Work::Recover(store, batch) => (store.to_string(), batch.to_string()),
            Work::Flush(store) => (store.to_string(), String::new()),
        };
        self.publish(
            EventKind::Failed,
            &store,
            &batch,
            0,
            0,
            Some(err.to_string()),
        )
        .await;
    }

    /// Locks a live store, prepares it (the lock moves to the batch) and persists the batch.
    pub async fn flush_store(
        &self,
        store: &StoreName,
        shutdown: &CancellationToken,
    ) -> Result<BatchOutcome> {
        let Some(mut guard) = self.buffer.lock(store, None, self.config.lock_ttl).await? else {
            return Ok(BatchOutcome::Busy);
        };
        failpoint("after-lock");
        let batch = match guard.prepare().await {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                guard.release().await?;
                return Ok(BatchOutcome::Nothing);
            }
            Err(err) => {
                let _ = guard.release().await;
                return Err(err.into());
            }
        };
        failpoint("after-prepare");
        tracing::debug!(store = %store, batch = %batch.id, records = batch.records, "prepared");
        self.publish(
            EventKind::Prepared,
            store.as_str(),
            &batch.id.to_string(),
            batch.records,
            batch.bytes,
            None,
        )
        .await;
        self.persist_locked(guard, &batch, shutdown).await
    }

    /// Locks a prepared batch left by an earlier run and persists it.
    pub async fn recover_batch(
        &self,
        store: &StoreName,
        batch: &BatchId,
        shutdown: &CancellationToken,
    ) -> Result<BatchOutcome> {
        let Some(guard) = self
            .buffer
            .lock(store, Some(batch), self.config.lock_ttl)
            .await?
        else {
            return Ok(BatchOutcome::Busy);
        };
        let Some(info) = self.buffer.batch_info(store, batch).await? else {
            // Emptied already (a crash between deleting the data and its index entry):
            // finish the cleanup.
            self.buffer.empty(store, batch).await?;
            guard.release().await?;
            return Ok(BatchOutcome::Nothing);
        };
        tracing::info!(store = %store, batch = %batch, records = info.records, "recovering prepared batch");
        self.publish(
            EventKind::Recovered,
            store.as_str(),
            &batch.to_string(),
            info.records,
            info.bytes,
            None,
        )
        .await;
        let outcome = self.persist_locked(guard, &info, shutdown).await?;
        self.counters
            .batches_recovered
            .fetch_add(1, Ordering::Relaxed);
        Ok(outcome)
    }

    /// Writes a batch whose lock `guard` holds, then empties it. The lock is extended while the
    /// batch is written and checked before the file is published and before the batch is
    /// deleted: a persister that lost its lock does neither.
    async fn persist_locked(
        &self,
        guard: LockGuard,
        batch: &PreparedBatch,
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
        writer::remove_stale_temps(&self.config.out_dir, &batch.store, &batch.id);
        let c = &self.counters;
        c.batches_persisted.fetch_add(1, Ordering::Relaxed);
        c.records_persisted
            .fetch_add(batch.records, Ordering::Relaxed);
        c.bytes_persisted.fetch_add(batch.bytes, Ordering::Relaxed);
        if matches!(published, Published::Written { .. }) {
            c.files_written.fetch_add(1, Ordering::Relaxed);
        }
        let path = published.path().to_path_buf();
        tracing::info!(store = %batch.store, batch = %batch.id, records = batch.records, file = %path.display(), "persisted");
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
        let columns = match config.format {
            crate::Format::Csv => self.buffer.batch_keys(&batch.store, &batch.id).await?,
            crate::Format::JsonLines => Default::default(),
        };
        let (out, store, id, open) = (
            config.out_dir.clone(),
            batch.store.clone(),
            batch.id.clone(),
            self.open_sink.clone(),
        );
        let (format, compression) = (config.format, config.compression);
        let mut file = blocking(move || {
            BatchFile::create(&out, &store, &id, format, compression, columns, &*open)
        })
        .await?;
        let mut reader = self.buffer.reader(batch);
        let extend_every = config.lock_ttl / 3;
        let mut last_extend = Instant::now();
        // Pages are fetched one ahead: while a page is encoded on a blocking thread, the next
        // LRANGE is already on its way.
        let mut next = Some(tokio::spawn(async move {
            let page = reader.next_page().await;
            (reader, page)
        }));
        while let Some(fetch) = next.take() {
            let (mut reader, page) = fetch
                .await
                .map_err(|err| Error::Task(format!("page reader: {err}")))?;
            let Some(page) = page? else { break };
            if shutdown.is_cancelled() {
                file.discard();
                return Err(Error::Abandoned {
                    store: batch.store.to_string(),
                    batch: batch.id.to_string(),
                });
            }
            next = Some(tokio::spawn(async move {
                let page = reader.next_page().await;
                (reader, page)
            }));
            file = blocking(move || file.write_page(&page).map(|()| file)).await?;
            if last_extend.elapsed() >= extend_every {
                guard.extend(config.lock_ttl).await?;
                last_extend = Instant::now();
            }
        }
        failpoint("after-temp-write");
        let expected = batch.records;
        let synced = blocking(move || file.finish(expected)).await?;
        // The check before publishing: extend (which fails when the lock is lost) so the lock
        // also has a full TTL left for the publish and delete that follow.
        guard.extend(config.lock_ttl).await?;
        blocking(move || synced.publish()).await
    }

    /// Persists every prepared batch and every live store now, whatever their age or size,
    /// then returns. Batches locked by other persisters are waited for (up to `drain_wait`).
    ///
    /// # Errors
    /// As [`Persister::run`]; failures of single batches are listed in the report instead.
    pub async fn drain(&self) -> Result<DrainReport> {
        self.config.validate()?;
        crate::marker::check_or_write(&self.config)?;
        let never = CancellationToken::new();
        let wait = self.config.drain_wait.unwrap_or(self.config.lock_ttl * 2);
        let deadline = Instant::now() + wait;
        let mut report = DrainReport::default();
        // Live stores are taken from one snapshot: records pushed while draining are left
        // for the next run rather than chased for ever. A store locked by someone else stays
        // in the list and is tried again until the deadline.
        let mut live: Vec<StoreName> = self
            .buffer
            .stores()
            .await?
            .into_iter()
            .map(|s| s.store)
            .collect();
        loop {
            let mut work: Vec<Work> = self
                .buffer
                .get_prepared()
                .await?
                .into_iter()
                .map(|p| Work::Recover(p.store, p.id))
                .collect();
            work.extend(live.drain(..).map(Work::Flush));
            if work.is_empty() {
                break;
            }
            let results = self.process(work, &never).await;
            let mut busy = false;
            for (item, result) in results {
                match result {
                    Ok(BatchOutcome::Persisted { records, .. }) => {
                        report.batches += 1;
                        report.records += records;
                    }
                    Ok(BatchOutcome::Busy) => {
                        busy = true;
                        if let Work::Flush(store) = item {
                            live.push(store);
                        }
                    }
                    Ok(BatchOutcome::Nothing) => {}
                    Err(err) => report.failures.push(format!("{}: {err}", item.describe())),
                }
            }
            if !report.failures.is_empty() {
                break;
            }
            if busy {
                if Instant::now() >= deadline {
                    report.failures.push(format!(
                        "gave up after {wait:?} waiting for stores and batches locked by other persisters"
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
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
    fn key(&self) -> String {
        match self {
            Self::Recover(store, batch) => format!("b:{batch}:{}", store.encoded()),
            Self::Flush(store) => format!("s:{}", store.encoded()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Recover(store, batch) => format!("batch {batch} of store {store:?}"),
            Self::Flush(store) => format!("store {store:?}"),
        }
    }
}

/// Runs file work on the blocking pool so slow disks never stall the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::Task(format!("file writer: {err}")))?
}
