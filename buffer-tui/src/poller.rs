//! Background tasks that read Redis through `buffer-core` and feed the app [`Action`]s.
//!
//! The poller reads the cheap index data for every store (`stores`, `get_prepared`), then
//! details (key counts, locks) only for the rows on screen and the selected store, so a
//! refresh costs the same with 10 stores or 10 000. It never writes to Redis (the actions a
//! person confirms are run by the dashboard loop, through `buffer_persist::OperatorAction`).

use std::collections::HashMap;
use std::time::Duration;

use buffer_core::{
    BatchId, Buffer, CoalesceRules, FailingWork, FailureRecord, LockTarget, MasterHealth,
    MasterStatus, PreparedSummary, ServerInfo, StoreLimits, StoreName,
};
use futures::StreamExt;
use futures::future::try_join_all;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::app::{Action, ViewRequest};
use crate::snapshot::{
    BatchDetail, BatchSize, CoalescedFocus, FocusDetail, HeldBy, HeldLock, LimitUse, Snapshot,
    StoreDetail,
};
/// Keys listed for the selected store.
const FOCUS_KEYS: usize = 200;
/// Latest records shown for the selected store.
const LATEST_RECORDS: usize = 8;
/// Batches of one visible store whose locks are read (a persister works on few at once).
const BATCH_LOCKS_PER_STORE: usize = 4;
/// Batches of the selected store that are detailed.
const FOCUS_BATCHES: usize = 20;
/// Persisters silent for longer than this are not listed at all (the app marks and leaves out
/// of its thresholds those silent for a few of their intervals): as long as an announcement
/// is kept in Redis.
const PERSISTER_SILENCE: Duration = buffer_core::FORGET_SILENT_PERSISTERS_AFTER;
/// At most this many locks are read for the persisters screen (stores and batches, in name
/// order): one pipeline of GET + PTTL each.
const HELD_LOCKS_READ: usize = 2_000;
/// The shortest time between two polls, when the rows on screen change quickly.
const MIN_GAP: Duration = Duration::from_millis(150);
/// The rest between two attempts to subscribe to events when no node took the last one.
const RESUBSCRIBE_GAP: Duration = Duration::from_secs(1);

/// Polls Redis every `interval`, and soon after the rows on screen change, until `shutdown`.
///
/// Sends `Action::Snapshot` or `Action::PollFailed` on `actions`; stops early when the
/// receiver is gone. `view` is written by the dashboard loop after every update.
pub(crate) async fn poll_loop(
    buffer: Buffer,
    interval: Duration,
    mut view: watch::Receiver<ViewRequest>,
    actions: mpsc::UnboundedSender<Action>,
    shutdown: CancellationToken,
) {
    // The masters of the last round that could list them: when none can be listed, each of
    // them is shown as not answering.
    let mut known_masters: Vec<MasterStatus> = Vec::new();
    loop {
        let request = view.borrow_and_update().clone();
        let round = async {
            // The masters go in an action of their own as soon as they are known, while the
            // rest of the poll may still wait: a master that is gone makes the rest of the
            // poll fail (a cluster refuses every command once a master is lost), and its
            // health must show all the same, without waiting behind the stores.
            let masters = async {
                let masters = poll_masters(&buffer, &mut known_masters).await;
                if let Some(masters) = &masters {
                    // A closed channel is noticed below, when the poll's own action is sent.
                    let _ = actions.send(Action::Masters(masters.clone()));
                }
                masters
            };
            poll_once(&buffer, &request, masters).await
        };
        let action = match tokio::select! {
            () = shutdown.cancelled() => return,
            result = round => result,
        } {
            Ok(snapshot) => Action::Snapshot(Box::new(snapshot)),
            Err(err) => Action::PollFailed {
                error: unreachable_reason(&err),
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

/// Why Redis cannot be polled, in words a person acts on: what happened at the address, not
/// which internal step met it first (`cluster mode`, `stores`…: the same refusal meets
/// whichever read starts first). The dashboard says "Redis at <address> is unreachable: "
/// before it.
pub(crate) fn unreachable_reason(err: &buffer_core::Error) -> String {
    use std::error::Error as _;
    const REFUSED: &str =
        "the connection was refused: nothing listens there (is redis-server running?)";
    match err {
        buffer_core::Error::Timeout { timeout, .. } => format!(
            "no answer within {}",
            crate::format::duration_ms(buffer_core::millis(*timeout))
        ),
        buffer_core::Error::Redis { source, .. } => {
            if source.is_connection_refusal() {
                return REFUSED.into();
            }
            // The operating system's own words, found down the chain, say the rest.
            let mut cause: Option<&(dyn std::error::Error + 'static)> = source.source();
            while let Some(error) = cause {
                if let Some(io) = error.downcast_ref::<std::io::Error>() {
                    match io.kind() {
                        std::io::ErrorKind::ConnectionRefused => return REFUSED.into(),
                        std::io::ErrorKind::TimedOut => return "connecting timed out".into(),
                        std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof => {
                            return "the connection was closed".into();
                        }
                        _ => {}
                    }
                }
                cause = error.source();
            }
            let text = source.to_string();
            if text.contains("failed to lookup address") {
                "the host name does not resolve".into()
            } else if source.is_timeout() {
                "connecting timed out".into()
            } else if source.is_connection_dropped() {
                "the connection was closed".into()
            } else {
                // Without the step's name: the server's or the library's own words.
                text
            }
        }
        other => other.to_string(),
    }
}

/// Each master's health on a cluster; `None` on one server (or while Redis cannot be reached
/// to find out). When the masters cannot be listed (no node of the cluster answers), the
/// masters of the last listing, each not answering with that error.
pub(crate) async fn poll_masters(
    buffer: &Buffer,
    known: &mut Vec<MasterStatus>,
) -> Option<Vec<MasterStatus>> {
    if !buffer.is_cluster().await.ok()? {
        return None;
    }
    match buffer.masters_status().await {
        Ok(masters) => {
            known.clone_from(&masters);
            Some(masters)
        }
        Err(_) if known.is_empty() => None,
        Err(err) => {
            let reason = err.to_string();
            Some(
                known
                    .iter()
                    .map(|master| {
                        MasterStatus::new(
                            master.address.clone(),
                            MasterHealth::Down(reason.clone()),
                        )
                    })
                    .collect(),
            )
        }
    }
}

/// One poll: everything the dashboard shows for `request`. `masters` finds the cluster's
/// masters as [`poll_masters`] does (the server facts are their sum; `None` on one server);
/// it runs at the same time as the index reads, and always to its end, so a master that does
/// not answer costs the poll one timeout, not two in a row.
///
/// # Errors
/// The first Redis error; a poll is all or nothing, so the app never mixes old and new data.
pub(crate) async fn poll_once(
    buffer: &Buffer,
    request: &ViewRequest,
    masters: impl Future<Output = Option<Vec<MasterStatus>>>,
) -> Result<Snapshot, buffer_core::Error> {
    let taken_at_ms = buffer.now_ms();
    let masters_and_server = async {
        let masters = masters.await;
        // On a cluster the facts are the sum over the masters that answered; when none did,
        // the single-server path asks again and gives the error.
        let summed = masters
            .as_deref()
            .and_then(|masters| ServerInfo::total(masters.iter().filter_map(MasterStatus::info)));
        let server = match summed {
            Some(total) => Ok(total),
            None => buffer.server_info().await,
        };
        (masters, server)
    };
    let indexes = async {
        futures::try_join!(
            buffer.stores(),
            buffer.get_prepared(),
            buffer.persisters(PERSISTER_SILENCE),
            buffer.failures(),
            buffer.all_limits(),
            buffer.all_coalesce_rules(),
            buffer.paused_stores(),
        )
    };
    let ((masters, server), indexes) = futures::join!(masters_and_server, indexes);
    let (stores, prepared, persisters, failures, limits, coalescing, paused) = indexes?;
    let rules_of: HashMap<&StoreName, &CoalesceRules> = coalescing
        .iter()
        .map(|(store, rules)| (store, rules))
        .collect();
    let server = server?;
    let masters = masters.as_deref();
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
    // Key counts of the visible rows and of the selected store, in one SCARD pipeline.
    let mut counted = request.visible.clone();
    if let Some(selected) = &request.selected
        && !counted.contains(selected)
    {
        counted.push(selected.clone());
    }
    // Merged writes of the live and the visible coalescing stores, in one HGET pipeline: the
    // rows show them, the push rate counts them. (One per coalescing store, as the rules
    // themselves are read in full every poll.)
    let mut merging: Vec<StoreName> = stores
        .iter()
        .map(|summary| &summary.store)
        .chain(&request.visible)
        .filter(|store| rules_of.contains_key(store))
        .cloned()
        .collect();
    merging.sort();
    merging.dedup();
    // Every lock, for the persisters screen only: the batches in each persister's hands.
    let mut every_lock: Vec<LockTarget> = Vec::new();
    if request.persisters {
        every_lock.extend(
            prepared
                .iter()
                .map(|b| LockTarget::Batch(b.store.clone(), b.id.clone())),
        );
        every_lock.extend(stores.iter().map(|s| LockTarget::Store(s.store.clone())));
        every_lock.truncate(HELD_LOCKS_READ);
    }
    let (locks, key_counts, merged, focus, every_held) = futures::try_join!(
        buffer.lock_infos(&targets),
        buffer.store_key_counts(&counted),
        buffer.coalesced_writes(&merging),
        focus_detail(buffer, request, &batches_of, &failures, &limits, &rules_of,),
        buffer.lock_infos(&every_lock),
    )?;
    let locks_held: Vec<HeldBy> = every_lock
        .iter()
        .zip(every_held)
        .filter_map(|(target, lock)| {
            let (store, batch) = match target {
                LockTarget::Store(store) => (store, None),
                LockTarget::Batch(store, batch) => (store, Some(batch.clone())),
            };
            lock.map(|lock| HeldBy {
                store: store.clone(),
                lock: HeldLock::new(lock, batch),
            })
        })
        .collect();
    let key_count_of: HashMap<&StoreName, u64> = counted.iter().zip(key_counts).collect();
    let merged_of: HashMap<&StoreName, u64> = merging.iter().zip(merged).collect();
    let live: std::collections::HashSet<&StoreName> = stores.iter().map(|s| &s.store).collect();
    let merged_writes: Vec<(StoreName, u64)> = merging
        .iter()
        .filter(|store| live.contains(store))
        .map(|store| (store.clone(), merged_of.get(store).copied().unwrap_or(0)))
        .collect();
    // The node holding each shown store, on a cluster: read from the slot map the masters'
    // listing just refreshed, so it costs no round trip. A slot no master serves (the map
    // being rebuilt) leaves the node unknown rather than failing the poll.
    let node_of = async |store: &StoreName| -> Option<String> {
        match masters {
            Some(_) => buffer.node_of(store).await.ok().flatten(),
            None => None,
        }
    };
    let focus = match focus {
        Some(mut focus) => {
            focus.key_count = key_count_of.get(&focus.store).copied().unwrap_or(0);
            focus.node = node_of(&focus.store).await;
            Some(focus)
        }
        None => None,
    };

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
    for store in &request.visible {
        details.insert(
            store.clone(),
            StoreDetail {
                unique_keys: key_count_of.get(store).copied().unwrap_or(0),
                lock: held.remove(store),
                node: node_of(store).await,
                merged_writes: merged_of.get(store).copied(),
            },
        );
    }
    Ok(Snapshot {
        taken_at_ms,
        server,
        stores,
        prepared,
        failures,
        details,
        focus,
        persisters,
        paused: paused.into_iter().map(|(store, _)| store).collect(),
        held: locks_held,
        merged_writes,
    })
}

async fn focus_detail(
    buffer: &Buffer,
    request: &ViewRequest,
    batches_of: &HashMap<&StoreName, Vec<&PreparedSummary>>,
    failures: &[FailingWork],
    limits: &[(StoreName, StoreLimits)],
    rules_of: &HashMap<&StoreName, &CoalesceRules>,
) -> Result<Option<FocusDetail>, buffer_core::Error> {
    let Some(store) = request.selected.as_ref() else {
        return Ok(None);
    };
    // A coalescing store's merged writes and top entities: one HMGET, whatever its size.
    let rules = rules_of.get(store).copied();
    let coalesced = async {
        let Some(rules) = rules else { return Ok(None) };
        let field = crate::snapshot::top_field(rules, request.top_by);
        let view = buffer.coalesced_view(store, field).await?;
        Ok(Some(CoalescedFocus {
            rules: rules.clone(),
            view,
            sum_fields: rules.fields_with(buffer_core::MergeRule::Sum).count(),
        }))
    };
    let limits = limits
        .iter()
        .find(|(limited, _)| limited == store)
        .map(|(_, limits)| *limits);
    // The rate's use is read only for the selected store, and only when it has a rate limit.
    let rate_of = async {
        match limits {
            Some(limits) if limits.max_rate.is_some() => buffer
                .rate_in_window(std::slice::from_ref(store))
                .await
                .map(|counts| counts.first().copied()),
            _ => Ok(None),
        }
    };
    let failure_of = |batch: Option<&BatchId>| -> Option<FailureRecord> {
        failures
            .iter()
            .find(|f| &f.store == store && f.batch.as_ref() == batch)
            .map(|f| f.record.clone())
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
    let (keys, latest, infos, locks, rate_now, coalesced) = futures::try_join!(
        buffer.store_keys(store, FOCUS_KEYS),
        buffer.latest_records(store, LATEST_RECORDS),
        try_join_all(batches.iter().map(|b| buffer.batch_info(store, &b.id))),
        buffer.lock_infos(&targets),
        rate_of,
        coalesced,
    )?;
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
            failure: failure_of(Some(&summary.id)),
        })
        .collect();
    Ok(Some(FocusDetail {
        store: store.clone(),
        keys: keys.into_iter().collect(),
        // Counted by `poll_once` in the same SCARD pipeline as the visible rows.
        key_count: 0,
        latest,
        batches,
        failure: failure_of(None),
        limits: limits.map(|limits| LimitUse { limits, rate_now }),
        // Found by `poll_once`, with the visible rows' nodes.
        node: None,
        coalesced,
    }))
}

/// Follows the persister's events channel until `shutdown`. When the subscription's stream
/// ends (its node died or froze) it subscribes again at once, which tries every node of a
/// cluster in turn, so events keep coming through whichever node answers; only when no node
/// does is the next attempt a second later. Events published in between are missed: pub/sub
/// keeps no history.
pub(crate) async fn follow_events(
    buffer: Buffer,
    actions: mpsc::UnboundedSender<Action>,
    shutdown: CancellationToken,
) {
    loop {
        let subscribed = tokio::select! {
            () = shutdown.cancelled() => return,
            result = buffer.subscribe_events() => result,
        };
        // What to tell the app, and whether to rest before the next attempt.
        let (lost, rest) = match subscribed {
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
                    error: "connection closed; subscribing again".into(),
                };
                (lost, false)
            }
            Err(err) => {
                let lost = Action::EventsLost {
                    error: err.to_string(),
                };
                (lost, true)
            }
        };
        if actions.send(lost).is_err() {
            return;
        }
        if rest {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RESUBSCRIBE_GAP) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use buffer_core::{Event, EventKind};
    use buffer_tests::RedisServer;
    use serde_json::json;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_stores_are_listed_and_only_visible_rows_are_detailed() {
        let redis = RedisServer::start();
        let buffer = redis.buffer().await;
        let names: Vec<String> = (0..10_000).map(|i| format!("tenant-{i:05}")).collect();
        let record = json!({"a": 1, "b": 2});
        for chunk in names.chunks(500) {
            try_join_all(chunk.iter().map(|name| buffer.push(name.as_str(), &record)))
                .await
                .unwrap();
        }
        let mut guard = buffer
            .lock("tenant-00003", None, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        let batch = guard.prepare().await.unwrap().unwrap();

        let visible: Vec<StoreName> = names[..30]
            .iter()
            .map(|n| StoreName::new(n.as_str()).unwrap())
            .collect();
        let request = ViewRequest {
            visible: visible.clone(),
            selected: Some(visible[3].clone()),
            ..ViewRequest::default()
        };
        let started = Instant::now();
        let snapshot = poll_once(&buffer, &request, async { None }).await.unwrap();
        eprintln!("one poll of 10 000 stores: {:?}", started.elapsed());

        assert_eq!(
            snapshot.stores.len(),
            9_999,
            "tenant-00003 is prepared, not live"
        );
        assert_eq!(snapshot.prepared.len(), 1);
        assert_eq!(
            snapshot.details.len(),
            30,
            "details for the visible rows only"
        );
        assert_eq!(snapshot.details[&visible[0]].unique_keys, 2);
        let lock = snapshot.details[&visible[3]].lock.as_ref().unwrap();
        assert_eq!(
            lock.batch.as_ref(),
            Some(&batch.id),
            "the lock moved to the batch"
        );
        assert_eq!(lock.holder, buffer.holder_id());
        let focus = snapshot.focus.unwrap();
        assert_eq!(focus.batches.len(), 1);
        assert_eq!(focus.batches[0].size.unwrap().records, 1);
        assert!(focus.batches[0].lock.is_some());
        assert_eq!(focus.key_count, 0, "a prepared store has no live keys");

        // A selected store scrolled out of view is counted in the same pipeline, and gets no
        // row details.
        let hidden = StoreName::new("tenant-05000").unwrap();
        let request = ViewRequest {
            visible: visible.clone(),
            selected: Some(hidden.clone()),
            ..ViewRequest::default()
        };
        let snapshot = poll_once(&buffer, &request, async { None }).await.unwrap();
        let focus = snapshot.focus.unwrap();
        assert_eq!(focus.store, hidden);
        assert_eq!(focus.key_count, 2);
        assert_eq!(focus.keys, ["a", "b"]);
        assert!(!snapshot.details.contains_key(&hidden));
        guard.release().await.unwrap();
    }

    /// A coalescing store: its visible row carries its merged writes, the selected one its
    /// rules and top entities by the summed field `top_by` picks (sorted by name, wrapping);
    /// an append store has neither.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_coalescing_store_is_polled_with_its_writes_and_top_entities() {
        use buffer_core::{CoalesceRules, MergeRule};
        let redis = RedisServer::start();
        let buffer = redis.buffer().await;
        let rules = CoalesceRules::new("page")
            .with("views", MergeRule::Sum)
            .with("ms", MergeRule::Sum)
            .with("last_seen", MergeRule::Max);
        buffer.set_coalesce("pageviews", &rules).await.unwrap();
        for (page, views, ms) in [("/", 1, 900), ("/docs", 5, 10), ("/", 2, 50), ("/x", 1, 1)] {
            buffer
                .push(
                    "pageviews",
                    &json!({"page": page, "views": views, "ms": ms}),
                )
                .await
                .unwrap();
        }
        buffer.push("clicks", &json!({"page": "/"})).await.unwrap();
        let stores: Vec<StoreName> = ["clicks", "pageviews"]
            .map(|n| StoreName::new(n).unwrap())
            .to_vec();
        let mut request = ViewRequest {
            visible: stores.clone(),
            selected: Some(stores[1].clone()),
            top_by: 0,
            persisters: false,
        };
        let snapshot = poll_once(&buffer, &request, async { None }).await.unwrap();
        assert_eq!(snapshot.details[&stores[0]].merged_writes, None);
        assert_eq!(snapshot.details[&stores[1]].merged_writes, Some(4));
        let coalesced = snapshot.focus.unwrap().coalesced.unwrap();
        assert_eq!((coalesced.rules, coalesced.sum_fields), (rules, 2));
        let top = |view: &buffer_core::CoalescedView| -> Vec<(String, String)> {
            view.top
                .iter()
                .map(|t| (t.entity.clone(), t.sum.clone()))
                .collect()
        };
        assert_eq!(coalesced.view.field.as_deref(), Some("ms"));
        assert_eq!(
            top(&coalesced.view),
            [("\"/\"", "950"), ("\"/docs\"", "10"), ("\"/x\"", "1")]
                .map(|(e, s)| (e.to_owned(), s.to_owned()))
        );
        request.top_by = 1;
        let snapshot = poll_once(&buffer, &request, async { None }).await.unwrap();
        let view = snapshot.focus.unwrap().coalesced.unwrap().view;
        assert_eq!(view.field.as_deref(), Some("views"));
        assert_eq!(top(&view)[0], ("\"/docs\"".to_owned(), "5".to_owned()));
        request.selected = Some(stores[0].clone());
        let snapshot = poll_once(&buffer, &request, async { None }).await.unwrap();
        assert_eq!(snapshot.focus.unwrap().coalesced, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn persister_events_arrive_as_actions() {
        let redis = RedisServer::start();
        let buffer = redis.buffer().await;
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(follow_events(buffer.clone(), sender, shutdown.clone()));
        let first = tokio::time::timeout(Duration::from_secs(10), receiver.recv()).await;
        assert_eq!(first.unwrap(), Some(Action::EventsLive));
        let event = Event {
            kind: EventKind::Persisted,
            store: "orders".into(),
            batch: "0000000000001-0000000000000001".into(),
            records: 3,
            bytes: 30,
            at_ms: 1,
            holder: "p".into(),
            detail: Some("out/orders/x.jsonl".into()),
        };
        assert_eq!(buffer.publish_event(&event).await.unwrap(), 1);
        let next = tokio::time::timeout(Duration::from_secs(10), receiver.recv()).await;
        assert_eq!(next.unwrap(), Some(Action::Event(event)));
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_that_goes_away_is_reported_and_polling_resumes_when_it_returns() {
        let mut redis = RedisServer::start();
        let config = redis
            .config()
            .response_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_millis(500));
        let buffer = Buffer::connect(config).await.unwrap();
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let (_view_sender, view) = watch::channel(ViewRequest::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(poll_loop(
            buffer.clone(),
            Duration::from_millis(100),
            view,
            sender,
            shutdown.clone(),
        ));
        assert!(matches!(receiver.recv().await, Some(Action::Snapshot(_))));
        redis.kill();
        let failed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match receiver.recv().await {
                    Some(Action::PollFailed { .. }) => break,
                    Some(Action::Snapshot(_)) => continue,
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        failed.await.expect("a failed poll is reported");
        redis.restart();
        let resumed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match receiver.recv().await {
                    Some(Action::Snapshot(_)) => break,
                    Some(Action::PollFailed { .. }) => continue,
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        resumed.await.expect("polling resumes once Redis is back");
        shutdown.cancel();
        task.await.unwrap();
    }

    /// A single server nothing listens on: the poll's error says so in words, without the
    /// internal step that met the refusal first (`cluster mode`, `stores`…).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_connection_is_told_in_words_without_the_step_name() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = buffer_core::BufferConfig::new(format!("redis://127.0.0.1:{port}/0"))
            .connect_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_millis(500));
        let buffer = Buffer::connect_lazy(config).unwrap();
        let mut known = Vec::new();
        let masters = poll_masters(&buffer, &mut known);
        let err = poll_once(&buffer, &ViewRequest::default(), masters)
            .await
            .unwrap_err();
        let reason = unreachable_reason(&err);
        assert_eq!(
            reason, "the connection was refused: nothing listens there (is redis-server running?)",
            "from {err}"
        );
        let direct = buffer.is_cluster().await.unwrap_err();
        assert!(direct.to_string().contains("cluster mode"), "{direct}");
        assert_eq!(unreachable_reason(&direct), reason);
    }
}
