//! Background tasks that read Redis through `buffer-core` and feed the app [`Action`]s.
//!
//! The poller reads the cheap index data for every store (`stores`, `get_prepared`), then
//! details (key counts, locks) only for the rows on screen and the selected store, so a
//! refresh costs the same with 10 stores or 10 000. It never writes to Redis.

use std::collections::HashMap;
use std::time::Duration;

use buffer_core::{Buffer, LockTarget, PreparedSummary, StoreName};
use futures::StreamExt;
use futures::future::{join_all, try_join_all};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::app::{Action, ViewRequest};
use crate::snapshot::{
    BatchDetail, BatchSize, FocusDetail, HeldLock, KeyCount, Snapshot, StoreDetail,
};

/// Key counts are read with SSCAN up to this many; more shows as "1000+".
const KEY_COUNT_LIMIT: usize = 1000;
/// Keys listed for the selected store.
const FOCUS_KEYS: usize = 200;
/// Latest records shown for the selected store.
const LATEST_RECORDS: usize = 8;
/// Batches of one visible store whose locks are read (a persister works on few at once).
const BATCH_LOCKS_PER_STORE: usize = 4;
/// Batches of the selected store that are detailed.
const FOCUS_BATCHES: usize = 20;
/// A persister silent for longer than this is not counted (it announces at every poll, and a
/// poll can take a while when batches are big).
const PERSISTER_SILENCE_MS: u64 = 60_000;
/// The shortest time between two polls, when the rows on screen change quickly.
const MIN_GAP: Duration = Duration::from_millis(150);

/// Polls Redis every `interval`, and soon after the rows on screen change, until `shutdown`.
///
/// Sends `Action::Snapshot` or `Action::PollFailed` on `actions`; stops early when the
/// receiver is gone. `view` is written by the dashboard loop after every update.
pub async fn poll_loop(
    buffer: Buffer,
    interval: Duration,
    mut view: watch::Receiver<ViewRequest>,
    actions: mpsc::UnboundedSender<Action>,
    shutdown: CancellationToken,
) {
    loop {
        let request = view.borrow_and_update().clone();
        let action = match tokio::select! {
            () = shutdown.cancelled() => return,
            result = poll_once(&buffer, &request) => result,
        } {
            Ok(snapshot) => Action::Snapshot(Box::new(snapshot)),
            Err(err) => Action::PollFailed {
                error: err.to_string(),
                at_ms: buffer.now_ms(),
            },
        };
        if actions.send(action).is_err() {
            return;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            changed = view.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::time::sleep(MIN_GAP).await;
            }
        }
    }
}

/// One poll: everything the dashboard shows for `request`.
///
/// # Errors
/// The first Redis error; a poll is all or nothing, so the app never mixes old and new data.
pub async fn poll_once(
    buffer: &Buffer,
    request: &ViewRequest,
) -> Result<Snapshot, buffer_core::Error> {
    let taken_at_ms = buffer.now_ms();
    let (server, stores, prepared, persisters) = futures::try_join!(
        buffer.server_info(),
        buffer.stores(),
        buffer.get_prepared(),
        buffer.persisters(PERSISTER_SILENCE_MS),
    )?;
    let mut batches_of: HashMap<&StoreName, Vec<&PreparedSummary>> = HashMap::new();
    for batch in &prepared {
        batches_of.entry(&batch.store).or_default().push(batch);
    }

    // Locks of the visible stores and of their first few batches, in one round trip.
    let mut targets = Vec::new();
    for store in &request.visible {
        targets.push(LockTarget::Store(store.clone()));
        for batch in batches_of
            .get(store)
            .into_iter()
            .flatten()
            .take(BATCH_LOCKS_PER_STORE)
        {
            targets.push(LockTarget::Batch(store.clone(), batch.id.clone()));
        }
    }
    let key_counts = join_all(
        request
            .visible
            .iter()
            .map(|store| buffer.store_keys(store, KEY_COUNT_LIMIT)),
    );
    let (locks, key_counts, focus) = futures::join!(
        buffer.lock_infos(&targets),
        key_counts,
        focus_detail(buffer, request.selected.as_ref(), &batches_of)
    );
    let locks = locks?;
    let focus = focus?;

    // A store's lock, or else the first held lock of one of its batches.
    let mut held: HashMap<&StoreName, HeldLock> = HashMap::new();
    for (target, lock) in targets.iter().zip(locks) {
        let Some(lock) = lock else { continue };
        let (store, batch) = match target {
            LockTarget::Store(store) => (store, None),
            LockTarget::Batch(store, batch) => (store, Some(batch.clone())),
        };
        held.entry(store)
            .or_insert_with(|| HeldLock::new(lock, batch));
    }
    let mut details = HashMap::new();
    for (store, keys) in request.visible.iter().zip(key_counts) {
        let keys = keys?;
        details.insert(
            store.clone(),
            StoreDetail {
                unique_keys: key_count(keys.len(), KEY_COUNT_LIMIT),
                lock: held.remove(store),
            },
        );
    }
    Ok(Snapshot {
        taken_at_ms,
        server,
        stores,
        prepared,
        details,
        focus,
        persisters,
    })
}

fn key_count(found: usize, limit: usize) -> KeyCount {
    if found >= limit {
        KeyCount::AtLeast(found as u64)
    } else {
        KeyCount::Exact(found as u64)
    }
}

async fn focus_detail(
    buffer: &Buffer,
    store: Option<&StoreName>,
    batches_of: &HashMap<&StoreName, Vec<&PreparedSummary>>,
) -> Result<Option<FocusDetail>, buffer_core::Error> {
    let Some(store) = store else {
        return Ok(None);
    };
    let batches: Vec<&PreparedSummary> = batches_of
        .get(store)
        .into_iter()
        .flatten()
        .take(FOCUS_BATCHES)
        .copied()
        .collect();
    let targets: Vec<LockTarget> = batches
        .iter()
        .map(|b| LockTarget::Batch(store.clone(), b.id.clone()))
        .collect();
    let (keys, latest, infos, locks) = futures::try_join!(
        buffer.store_keys(store, FOCUS_KEYS),
        buffer.latest_records(store, LATEST_RECORDS),
        try_join_all(batches.iter().map(|b| buffer.batch_info(store, &b.id))),
        buffer.lock_infos(&targets),
    )?;
    // The count is exact below the listing limit; above it, count on to the counting limit.
    let key_count = if keys.len() >= FOCUS_KEYS {
        key_count(
            buffer.store_keys(store, KEY_COUNT_LIMIT).await?.len(),
            KEY_COUNT_LIMIT,
        )
    } else {
        KeyCount::Exact(keys.len() as u64)
    };
    let batches = batches
        .iter()
        .zip(infos)
        .zip(locks)
        .map(|((summary, info), lock)| BatchDetail {
            id: summary.id.clone(),
            size: info.map(|b| BatchSize {
                records: b.records,
                bytes: b.bytes,
                keys: b.keys,
            }),
            lock,
        })
        .collect();
    Ok(Some(FocusDetail {
        store: store.clone(),
        keys: keys.into_iter().collect(),
        key_count,
        latest,
        batches,
    }))
}

/// Follows the persister's events channel until `shutdown`, resubscribing when the
/// connection drops (events published in between are missed: pub/sub keeps no history).
pub async fn follow_events(
    buffer: Buffer,
    actions: mpsc::UnboundedSender<Action>,
    shutdown: CancellationToken,
) {
    loop {
        let subscribed = tokio::select! {
            () = shutdown.cancelled() => return,
            result = buffer.subscribe_events() => result,
        };
        match subscribed {
            Ok(stream) => {
                if actions.send(Action::EventsLive).is_err() {
                    return;
                }
                let mut stream = std::pin::pin!(stream);
                loop {
                    let next = tokio::select! {
                        () = shutdown.cancelled() => return,
                        next = stream.next() => next,
                    };
                    let Some(event) = next else { break };
                    if actions.send(Action::Event(event)).is_err() {
                        return;
                    }
                }
                let lost = Action::EventsLost {
                    error: "connection closed".into(),
                };
                if actions.send(lost).is_err() {
                    return;
                }
            }
            Err(err) => {
                let lost = Action::EventsLost {
                    error: err.to_string(),
                };
                if actions.send(lost).is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
