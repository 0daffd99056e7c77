//! Rendering snapshots at 120x40 and 80x24. Time is injected (`T0`), so they are stable.

use std::time::Duration;

use buffer_core::{
    Event, EventKind, FailingWork, FailureRecord, LockInfo, MasterHealth, MasterStatus,
    PersisterInfo, PreparedSummary, ServerInfo, StoreLimits, StoreName, StoreSummary,
};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use crate::app::{Action, App, AppConfig};
use crate::snapshot::{
    BatchDetail, BatchSize, CoalescedFocus, FocusDetail, HeldLock, LimitUse, Snapshot, StoreDetail,
};

const T0: u64 = 1_700_000_000_000;
const SIZES: [(u16, u16); 2] = [(120, 40), (80, 24)];

fn name(text: &str) -> StoreName {
    StoreName::new(text).unwrap()
}

fn batch_id(ms: u64, nonce: u64) -> buffer_core::BatchId {
    format!("{ms:013}-{nonce:016x}").parse().unwrap()
}

fn new_app(width: u16, height: u16) -> App {
    let mut app = App::new(AppConfig {
        address: "redis://default:***@127.0.0.1:6379/0".into(),
        namespace: "buf".into(),
        max_age: Some(Duration::from_secs(60)),
        demo_out: None,
        now_ms: T0,
        read_only: false,
        no_color: false,
    });
    fit(&mut app, width, height);
    app
}

/// What the dashboard loop does after every batch of actions: tell the app its table's size.
fn fit(app: &mut App, width: u16, height: u16) {
    if let Some(viewport) = crate::layout::viewport(app, width, height) {
        app.update(viewport);
    }
}

fn server() -> ServerInfo {
    let mut info = ServerInfo::default();
    info.version = "7.2.4".into();
    info.mode = "standalone".into();
    info.used_memory = 3 * 1024 * 1024 + 300 * 1024;
    info.maxmemory = 0;
    info.ops_per_sec = 1234;
    info.clients = 5;
    info
}

fn store(text: &str, records: u64, bytes: u64, age_ms: u64) -> StoreSummary {
    let mut summary = StoreSummary::new(name(text));
    summary.first_write_ms = T0 - age_ms;
    summary.bytes = bytes;
    summary.records = records;
    summary
}

/// The record of a batch whose file cannot be written: three attempts, retried in 3.5 s.
fn failing_record() -> FailureRecord {
    let mut record = FailureRecord::default();
    record.attempts = 3;
    record.last_error =
        "create file out/orders/1699999998000-000000000000ef56.jsonl: Is a directory (os error 21)"
            .into();
    record.last_ms = T0 - 500;
    record.next_retry_ms = T0 + 5_000;
    record.holder = "persist-1/4242".into();
    record
}

/// Several stores: one locked by a persister, one with prepared batches (one of them
/// failing), one only prepared.
fn populated(width: u16, height: u16) -> App {
    let mut app = new_app(width, height);
    let stores = vec![
        store("audit log", 12, 4_800, 58_200),
        store("clicks", 48_210, 9_400_000, 12_000),
        store("metrics/cpu", 730, 88_000, 31_000),
        store("orders", 1_520, 402_000, 75_000),
        store("signups", 3, 410, 2_000),
    ];
    let orders_batch = batch_id(T0 - 4_000, 0xab12);
    let flushing_batch = batch_id(T0 - 1_500, 0xcd34);
    let prepared = vec![
        PreparedSummary::new(name("orders"), orders_batch.clone()),
        PreparedSummary::new(name("orders"), batch_id(T0 - 2_000, 0xef56)),
        PreparedSummary::new(name("clicks-archive"), flushing_batch.clone()),
    ];
    let mut snapshot = Snapshot {
        taken_at_ms: T0,
        server: server(),
        stores,
        prepared,
        persisters: vec![PersisterInfo {
            holder: "persist-1/4242".into(),
            max_age: Duration::from_secs(60),
            max_bytes: None,
            max_records: Some(50_000),
            out: "/var/lib/buffer".into(),
            heartbeat_ms: T0,
            batches_persisted: 10,
            records_persisted: 30_000,
            version: None,
            interval: None,
        }],
        failures: vec![
            FailingWork::new(
                name("orders"),
                Some(batch_id(T0 - 2_000, 0xef56)),
                failing_record(),
            ),
            // A record that outlived its batch: not counted.
            FailingWork::new(
                name("signups"),
                Some(batch_id(T0 - 90_000, 0x9999)),
                failing_record(),
            ),
        ],
        ..Snapshot::default()
    };
    let detail = |keys, lock: Option<HeldLock>| StoreDetail {
        unique_keys: keys,
        lock,
        node: None,
        merged_writes: None,
    };
    for (store, keys) in [("audit log", 5), ("metrics/cpu", 4), ("signups", 4)] {
        snapshot.details.insert(name(store), detail(keys, None));
    }
    snapshot.details.insert(
        name("clicks"),
        StoreDetail {
            unique_keys: 1000,
            lock: None,
            node: None,
            merged_writes: None,
        },
    );
    snapshot.details.insert(
        name("orders"),
        detail(
            6,
            Some(HeldLock {
                holder: "persist-1/4242".into(),
                ttl_ms: Some(27_400),
                batch: Some(orders_batch.clone()),
            }),
        ),
    );
    snapshot.details.insert(
        name("clicks-archive"),
        detail(
            0,
            Some(HeldLock {
                holder: "persist-2/977".into(),
                ttl_ms: Some(9_000),
                batch: Some(flushing_batch),
            }),
        ),
    );
    app.update(Action::Snapshot(Box::new(snapshot.clone())));
    // Select "orders" and give it its details.
    while app.selected.as_ref().map(StoreName::as_str) != Some("orders") {
        app.update(Action::Down);
    }
    snapshot.taken_at_ms = T0 + 1_000;
    snapshot.stores[1].records += 900;
    snapshot.focus = Some(FocusDetail {
        store: name("orders"),
        keys: ["at", "currency", "customer", "id", "items", "total"]
            .map(String::from)
            .to_vec(),
        key_count: 6,
        latest: vec![
            r#"{"id":1519,"customer":"c-4411","total":42.5,"currency":"EUR","items":[{"sku":"SKU-0042","qty":2}],"at":1699999999000}"#.into(),
            r#"{"id":1520,"customer":"c-1002","total":7.25,"currency":"USD","items":[{"sku":"SKU-0007","qty":1}],"at":1700000000000}"#.into(),
        ],
        batches: vec![
            BatchDetail {
                id: orders_batch,
                size: Some(BatchSize {
                    records: 3_000,
                    bytes: 812_000,
                    keys: 6,
                }),
                lock: Some(LockInfo::new("persist-1/4242", Some(Duration::from_millis(27_400)))),
                failure: None,
            },
            BatchDetail {
                id: batch_id(T0 - 2_000, 0xef56),
                size: Some(BatchSize {
                    records: 120,
                    bytes: 31_000,
                    keys: 6,
                }),
                lock: None,
                failure: Some(failing_record()),
            },
        ],
        failure: None,
        limits: None,
        node: None,
        coalesced: None,
    });
    app.update(Action::Snapshot(Box::new(snapshot)));
    app.update(Action::EventsLive);
    let event = |kind, store: &str, records, ago_ms, detail: Option<&str>| Event {
        kind,
        store: store.into(),
        batch: format!("{:013}-{:016x}", T0 - ago_ms, 1),
        records,
        bytes: records * 250,
        at_ms: T0 + 1_000 - ago_ms,
        holder: "persist-1/4242".into(),
        detail: detail.map(String::from),
    };
    for e in [
        event(EventKind::Prepared, "clicks", 3_000, 9_000, None),
        event(
            EventKind::Persisted,
            "clicks",
            3_000,
            8_000,
            Some("demo-out/clicks/1699999991000-0000000000000001.jsonl"),
        ),
        event(
            EventKind::Failed,
            "audit log",
            0,
            5_000,
            Some("write demo-out/audit%20log: No space left on device (os error 28)"),
        ),
        event(EventKind::Recovered, "orders", 120, 3_000, None),
        event(EventKind::Prepared, "orders", 3_000, 2_000, None),
    ] {
        app.update(Action::Event(e));
    }
    // Rates: ten seconds of samples.
    for i in 0..10u64 {
        app.rates.push.push_back(300 + (i * 37) % 200);
        app.rates
            .persist
            .push_back(if i % 3 == 0 { 3_000 } else { 0 });
    }
    app.update(Action::Tick { now_ms: T0 + 1_500 });
    app
}

fn draw(app: &mut App, width: u16, height: u16) -> String {
    fit(app, width, height);
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| super::render(app, frame)).unwrap();
    terminal.backend().to_string()
}

fn check(name: &str, make: impl Fn(u16, u16) -> App) {
    for (width, height) in SIZES {
        let mut app = make(width, height);
        insta::assert_snapshot!(
            format!("{name}_{width}x{height}"),
            draw(&mut app, width, height)
        );
    }
}

#[test]
fn connecting() {
    check("connecting", new_app);
}

#[test]
fn empty_namespace() {
    check("empty", |w, h| {
        let mut app = new_app(w, h);
        app.update(Action::Snapshot(Box::new(Snapshot {
            taken_at_ms: T0,
            server: server(),
            ..Snapshot::default()
        })));
        app
    });
}

#[test]
fn stores_with_a_locked_store_and_prepared_batches() {
    check("populated", populated);
}

#[test]
fn disconnected_banner() {
    check("disconnected", |w, h| {
        let mut app = populated(w, h);
        app.update(Action::PollFailed {
            error: "the connection was refused: nothing listens there (is redis-server running?)"
                .into(),
            at_ms: T0 + 2_000,
        });
        app.update(Action::EventsLost {
            error: "closed".into(),
        });
        app.update(Action::Tick {
            now_ms: T0 + 14_000,
        });
        app
    });
}

#[test]
fn filtering() {
    check("filter", |w, h| {
        let mut app = populated(w, h);
        app.update(Action::FilterStart);
        for c in "CLI".chars() {
            app.update(Action::FilterInput(c));
        }
        app
    });
    check("filter_no_match", |w, h| {
        let mut app = populated(w, h);
        app.update(Action::FilterStart);
        app.update(Action::FilterInput('z'));
        app.update(Action::FilterAccept);
        app
    });
}

/// The selected store has limits: records at 76 % (plain), bytes at 98 % (attention), the
/// rate full (failing).
#[test]
fn a_limited_store_shows_its_use_of_each_limit() {
    check("limited", |w, h| {
        let mut app = populated(w, h);
        let focus = app.focus.as_mut().unwrap();
        focus.limits = Some(LimitUse {
            limits: StoreLimits {
                max_records: Some(2_000),
                max_bytes: Some(400 * 1024),
                max_rate: Some(50),
            },
            rate_now: Some(50),
        });
        app
    });
}

#[test]
fn sorted_by_records() {
    check("sorted_records", |w, h| {
        let mut app = populated(w, h);
        app.update(Action::SortNext);
        app
    });
}

#[test]
fn store_screen() {
    check("store", |w, h| {
        let mut app = populated(w, h);
        app.update(Action::Enter);
        app
    });
}

#[test]
fn help() {
    check("help", |w, h| {
        let mut app = populated(w, h);
        app.update(Action::Help);
        app
    });
}

#[test]
fn many_stores_scroll() {
    check("many", |w, h| {
        let mut app = new_app(w, h);
        let stores = (0..10_000)
            .map(|i| {
                store(
                    &format!("tenant-{i:05}"),
                    i % 997,
                    (i % 997) * 180,
                    1_000 + i,
                )
            })
            .collect();
        app.update(Action::Snapshot(Box::new(Snapshot {
            taken_at_ms: T0,
            server: server(),
            stores,
            ..Snapshot::default()
        })));
        for _ in 0..25 {
            app.update(Action::Down);
        }
        app
    });
}

#[test]
fn demo_header() {
    check("demo", |w, h| {
        let mut app = App::new(AppConfig {
            address: "redis://127.0.0.1:41234/0".into(),
            namespace: "buf".into(),
            max_age: Some(Duration::from_secs(10)),
            demo_out: Some("demo-out".into()),
            now_ms: T0,
            read_only: false,
            no_color: false,
        });
        fit(&mut app, w, h);
        app.update(Action::Snapshot(Box::new(Snapshot {
            taken_at_ms: T0,
            server: server(),
            stores: vec![store("clicks", 2_400, 150_000, 4_000)],
            ..Snapshot::default()
        })));
        app.update(Action::Demo(crate::app::DemoStats {
            pushed: 15_400,
            persisted: 12_000,
            files: 14,
        }));
        app
    });
}

/// `count` masters on ports 7000, 7001, …; those in `down` do not answer.
fn masters(count: u16, down: &[u16]) -> Vec<MasterStatus> {
    (0..count)
        .map(|i| {
            let address = format!("10.0.0.{}:{}", i + 1, 7000 + i);
            let health = if down.contains(&i) {
                MasterHealth::Down("refused".into())
            } else {
                let mut info = server();
                info.mode = "cluster".into();
                info.used_memory = (1 + u64::from(i)) * 1024 * 1024 + 100 * 1024;
                info.ops_per_sec = 400 + u64::from(i) * 11;
                MasterHealth::Up(info)
            };
            MasterStatus::new(address, health)
        })
        .collect()
}

/// The populated dashboard on a cluster of `count` masters, `down` of them not answering;
/// each store with details is on the master its position says.
fn on_cluster(mut app: App, count: u16, down: &[u16]) -> App {
    let masters = masters(count, down);
    if let Some(server) = app.server.as_mut() {
        server.mode = "cluster".into();
    }
    for (i, row) in app.rows.iter_mut().enumerate() {
        if let Some(detail) = row.detail.as_mut() {
            detail.node = Some(masters[i % masters.len()].address.clone());
        }
    }
    let selected = app.selected.clone();
    if let Some(focus) = app.focus.as_mut() {
        let row = app
            .rows
            .iter()
            .find(|row| Some(&row.name) == selected.as_ref());
        focus.node = row.and_then(|row| row.detail.as_ref()?.node.clone());
    }
    app.update(Action::Masters(masters));
    app
}

/// A cluster of three masters, the one holding the selected store (`orders`) not answering:
/// the header lists each master with its health, the table gets a node column where it fits,
/// and the store panel names its node, down.
#[test]
fn cluster_header_with_a_master_down() {
    check("cluster", |w, h| on_cluster(populated(w, h), 3, &[1]));
    check("cluster_store", |w, h| {
        let mut app = on_cluster(populated(w, h), 3, &[1]);
        app.update(Action::Enter);
        app
    });
}

/// Ten masters do not take over the screen: three header lines at most, the rest summed up.
#[test]
fn many_masters_are_summed_up_after_three_lines() {
    check("cluster_many", |w, h| {
        on_cluster(populated(w, h), 10, &[2, 9])
    });
}

#[test]
fn a_tiny_terminal_says_so() {
    let mut app = new_app(30, 8);
    insta::assert_snapshot!("tiny_30x8", draw(&mut app, 30, 8));
}

#[test]
fn hostile_names_cannot_reach_the_terminal() {
    let mut app = new_app(80, 24);
    app.update(Action::Snapshot(Box::new(Snapshot {
        taken_at_ms: T0,
        server: server(),
        stores: vec![store("evil\u{1b}[2J\nname", 1, 10, 0)],
        ..Snapshot::default()
    })));
    let screen = draw(&mut app, 80, 24);
    assert!(!screen.contains('\u{1b}'));
    assert!(screen.contains("evil\u{fffd}[2J\u{fffd}name"), "{screen}");
}

/// The lines of a drawn screen, without the quotes the test backend puts around them.
fn screen_lines(screen: &str) -> Vec<String> {
    screen
        .lines()
        .map(|line| line.trim_matches('"').to_owned())
        .collect()
}

/// A single server that refuses connections, before any poll succeeded: the dashboard says
/// where Redis is, that it is unreachable and why, in words, and no internal step name.
#[test]
fn an_unreachable_server_is_named_with_the_reason_in_words() {
    let refused = "the connection was refused: nothing listens there (is redis-server running?)";
    check("unreachable", |w, h| {
        let mut app = new_app(w, h);
        app.update(Action::PollFailed {
            error: refused.into(),
            at_ms: T0,
        });
        app.update(Action::Tick { now_ms: T0 + 4_000 });
        app
    });
    for (width, height) in SIZES {
        let mut app = new_app(width, height);
        app.update(Action::PollFailed {
            error: refused.into(),
            at_ms: T0,
        });
        let screen = draw(&mut app, width, height);
        let lines = screen_lines(&screen);
        // The banner says it whole too, on two lines when one is not enough.
        let banner = if lines[3].starts_with('┌') {
            lines[2].trim().to_owned()
        } else {
            format!("{} {}", lines[2].trim(), lines[3].trim())
        };
        assert!(
            banner.starts_with(&format!(
                "Redis at redis://default:***@127.0.0.1:6379/0 is unreachable: {refused}"
            )),
            "{banner:?}\n{screen}"
        );
        // The table says it whole, wrapped, whatever the width.
        let flat: String = lines
            .iter()
            .map(|l| l.trim_matches(['│', ' ']))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            flat.contains("nothing listens there (is redis-server running?)."),
            "{screen}"
        );
        assert!(!screen.contains("cluster mode"), "{screen}");
    }
}

/// At 80 columns the header and footer leave parts out (the least useful first) instead of
/// cutting a word: `persisters 1` and `? help` are whole on every screen.
#[test]
fn header_and_footer_fit_80_columns_without_a_cut_word() {
    let screens: Vec<(&str, App)> = vec![
        ("populated", populated(80, 24)),
        ("cluster", on_cluster(populated(80, 24), 3, &[1])),
        ("filter kept", {
            let mut app = populated(80, 24);
            app.update(Action::FilterStart);
            app.update(Action::FilterInput('c'));
            app.update(Action::FilterAccept);
            app
        }),
        ("store screen", {
            let mut app = populated(80, 24);
            app.update(Action::Enter);
            app
        }),
    ];
    for (what, mut app) in screens {
        let screen = draw(&mut app, 80, 24);
        let lines = screen_lines(&screen);
        let footer = lines.last().unwrap();
        for line in [&lines[0], &lines[1], footer] {
            assert!(!line.contains('…'), "{what}: cut line {line:?}\n{screen}");
            // Whatever is left out, the last column is never the middle of a word.
            assert!(line.ends_with(' ') || line.len() < 80, "{what}: {line:?}");
        }
        assert!(lines[1].contains("persisters 1"), "{what}: {screen}");
        assert!(lines[1].contains("failing 1"), "{what}: {screen}");
        assert!(footer.contains("? help"), "{what}: {screen}");
    }
    // At 120 columns nothing is left out.
    let mut app = populated(120, 40);
    let screen = draw(&mut app, 120, 40);
    assert!(screen.contains("Redis 7.2.4 standalone"), "{screen}");
    assert!(screen.contains("clients 5"), "{screen}");
    assert!(screen.contains("max-age 1m00s"), "{screen}");
}

/// The store screen shows a failing batch's last error whole, wrapped over as many lines as
/// it needs, at 80 columns too.
#[test]
fn the_store_screen_shows_a_failing_batchs_error_whole() {
    for (width, height) in SIZES {
        let mut app = populated(width, height);
        app.update(Action::Enter);
        let screen = draw(&mut app, width, height);
        let lines = screen_lines(&screen);
        let start = lines
            .iter()
            .position(|l| l.contains("batch …0000ef56 ✗3 retry 4s, last error:"))
            .unwrap_or_else(|| panic!("no failure heading\n{screen}"));
        let column = lines[start].chars().take_while(|c| *c != 'b').count();
        // The error's lines are indented two columns under the heading.
        let text: String = lines[start + 1..]
            .iter()
            .map(|l| l.chars().skip(column).collect::<String>())
            .take_while(|l| l.starts_with("  ") && !l.trim().is_empty())
            .map(|l| l.trim_end_matches('│').trim().to_owned())
            .collect::<Vec<_>>()
            .concat();
        assert_eq!(
            text.replace(' ', ""),
            failing_record().last_error.replace(' ', ""),
            "{screen}"
        );
        assert!(
            !lines[start + 1..].iter().any(|l| l.contains("…")),
            "{screen}"
        );
    }
}

/// The store screen shows each limit of the store with its use and percentage, and what a
/// full one means; a store without limits says it has none.
#[test]
fn the_store_screen_shows_the_stores_limits_and_their_use() {
    check("store_limited", |w, h| {
        let mut app = populated(w, h);
        app.focus.as_mut().unwrap().limits = Some(LimitUse {
            limits: StoreLimits {
                max_records: Some(2_000),
                max_bytes: Some(400 * 1024),
                max_rate: Some(50),
            },
            rate_now: Some(50),
        });
        app.update(Action::Enter);
        app
    });
    for (width, height) in SIZES {
        let mut app = populated(width, height);
        app.focus.as_mut().unwrap().limits = Some(LimitUse {
            limits: StoreLimits {
                max_records: Some(2_000),
                max_bytes: Some(400 * 1024),
                max_rate: Some(50),
            },
            rate_now: Some(50),
        });
        app.update(Action::Enter);
        let screen = draw(&mut app, width, height);
        assert!(screen.contains(" Limits "), "{screen}");
        assert!(screen.contains("records 1520 of 2000  76%"), "{screen}");
        assert!(
            screen.contains("bytes   393 KiB of 400 KiB  98%"),
            "{screen}"
        );
        assert!(
            screen.contains("rate    50 of 50/s  100%  full: refusing pushes"),
            "{screen}"
        );

        let mut app = populated(width, height);
        app.update(Action::Enter);
        let screen = draw(&mut app, width, height);
        assert!(screen.contains("Limits  none set "), "{screen}");
    }
}

/// `populated`, with "orders" a coalescing store (page views: two summed fields, the top
/// list by `ms`, one sum beyond 2^53): 1 520 entities merged from 41 870 writes.
fn coalescing(width: u16, height: u16) -> App {
    use buffer_core::{CoalesceRules, CoalescedView, MergeRule, TopEntity};
    let mut app = populated(width, height);
    for row in &mut app.rows {
        if row.name.as_str() == "orders" {
            row.detail.as_mut().unwrap().merged_writes = Some(41_870);
        }
    }
    let rules = CoalesceRules::new("page")
        .with("views", MergeRule::Sum)
        .with("ms", MergeRule::Sum)
        .with("last_seen", MergeRule::Max)
        .with("referrers", MergeRule::Union);
    let mut view = CoalescedView::default();
    view.writes = 41_870;
    view.field = Some("ms".into());
    view.top = vec![
        TopEntity::new(r#""/pricing""#, "9007199254740993"),
        TopEntity::new(r#""/docs""#, "88120"),
        TopEntity::new("404", "310"),
    ];
    view.top_exact = true;
    app.focus.as_mut().unwrap().coalesced = Some(CoalescedFocus {
        rules,
        view,
        sum_fields: 2,
    });
    app
}

/// A coalescing store: its entities beside its merged writes in the table, its rules and top
/// entities in the panel and on its screen (in place of the latest records, which a
/// coalescing store does not have), and `t` in the store screen's footer.
#[test]
fn a_coalescing_store_shows_its_rules_writes_and_top_entities() {
    check("coalescing", coalescing);
    check("store_coalescing", |w, h| {
        let mut app = coalescing(w, h);
        app.update(Action::Enter);
        app
    });
    for (width, height) in SIZES {
        let mut app = coalescing(width, height);
        let screen = draw(&mut app, width, height);
        assert!(screen.contains("1520 (41.9k)"), "{screen}");
        assert!(
            screen.contains("coalescing key=page sum=ms,views"),
            "{screen}"
        );
        assert!(screen.contains("top by ms"), "{screen}");
        // Every entity of the top list, ranked, at 80×24 too (the panel then takes the
        // whole width: the rates and events give way).
        for ranked in ["1 /pricing 9007199254740993", "2 /docs", "3 404"] {
            assert!(screen.contains(ranked), "{ranked:?} in\n{screen}");
        }
        assert_eq!(
            screen.contains("Rates, records/s"),
            height >= 40,
            "{screen}"
        );
        app.update(Action::Enter);
        let screen = draw(&mut app, width, height);
        for text in [
            "1520 entities",
            "41.9k writes",
            "sum   ms,views",
            "union referrers",
            "Top 3 entities by ms",
            "/pricing",
            "9007199254740993",
            "t top by",
        ] {
            assert!(screen.contains(text), "{text:?} in\n{screen}");
        }
        assert!(!screen.contains("Latest"), "{screen}");
        // `t` asks for the next summed field: the list is read again at the next poll.
        app.update(Action::NextTopField);
        assert_eq!(app.view_request().top_by, 1);
        let screen = draw(&mut app, width, height);
        assert!(screen.contains("reading…"), "{screen}");
    }
}

/// The announced persisters' output gets a header line of its own: a database URL as the
/// persister announces it (its password `***`), each output once, with what they persisted
/// since they started; when the line is short of room the counts go first, then the outputs
/// are cut.
#[test]
fn the_persisters_output_is_on_a_header_line_of_its_own() {
    let announce = |holder: &str, out: &str, records, batches| PersisterInfo {
        holder: holder.into(),
        max_age: Duration::from_secs(60),
        max_bytes: None,
        max_records: None,
        out: out.into(),
        heartbeat_ms: T0,
        batches_persisted: batches,
        records_persisted: records,
        version: None,
        interval: None,
    };
    let database = "postgres://app:***@db.internal:5432/shop";
    for (width, height) in SIZES {
        let mut app = populated(width, height);
        draw(&mut app, width, height);
        let rows_with_one = app.page();
        app.persisters = vec![
            announce("persist-1/4242", database, 30_000, 10),
            announce("persist-2/977", database, 12_000, 4),
        ];
        let screen = draw(&mut app, width, height);
        let lines = screen_lines(&screen);
        assert_eq!(
            lines[2].trim_end(),
            " out postgres://app:***@db.internal:5432/shop  persisted 42.0k in 14 batches",
            "{screen}"
        );
        assert!(lines[1].contains("persisters 2"), "{screen}");
        assert_eq!(
            app.page(),
            rows_with_one,
            "one line, however many persisters"
        );

        // Two outputs, each once; at 80 columns the counts make room for them.
        app.persisters
            .push(announce("persist-3/1", "s3://lake/buffer", 5, 1));
        let screen = draw(&mut app, width, height);
        let line = screen_lines(&screen)[2].trim_end().to_owned();
        if width >= 120 {
            assert_eq!(
                line,
                " out postgres://app:***@db.internal:5432/shop, s3://lake/buffer  persisted 42.0k in 15 batches"
            );
        } else {
            assert_eq!(
                line,
                " out postgres://app:***@db.internal:5432/shop, s3://lake/buffer"
            );
        }
    }

    // No persister announced: no line, the table gets the row back.
    let mut app = populated(80, 24);
    draw(&mut app, 80, 24);
    let with_line = app.page();
    app.persisters.clear();
    let screen = draw(&mut app, 80, 24);
    assert!(!screen.contains(" out "), "{screen}");
    assert_eq!(app.page(), with_line + 1);
}

/// The sizes the operator console is checked at: the smallest terminal and a big one.
const CONSOLE_SIZES: [(u16, u16); 2] = [(80, 24), (200, 50)];

fn check_console(name: &str, make: impl Fn(u16, u16) -> App) {
    for (width, height) in CONSOLE_SIZES {
        let mut app = make(width, height);
        insta::assert_snapshot!(
            format!("{name}_{width}x{height}"),
            draw(&mut app, width, height)
        );
    }
}

/// The populated dashboard of a Redis user that may act, with "metrics/cpu" paused, two
/// persisters (one silent for a minute) and the locks they hold.
fn operator(width: u16, height: u16) -> App {
    let mut app = populated(width, height);
    app.update(Action::Access(crate::app::Access::ReadWrite));
    let mut snapshot = Snapshot {
        taken_at_ms: T0 + 1_000,
        server: server(),
        stores: vec![
            store("audit log", 12, 4_800, 59_200),
            store("clicks", 48_210, 9_400_000, 13_000),
            store("metrics/cpu", 730, 88_000, 95_000),
            store("orders", 1_520, 402_000, 76_000),
            store("signups", 3, 410, 3_000),
        ],
        paused: vec![name("metrics/cpu")],
        persisters: vec![
            PersisterInfo {
                holder: "persist-1/4242".into(),
                max_age: Duration::from_secs(60),
                max_bytes: Some(64 << 20),
                max_records: Some(50_000),
                out: "s3://warehouse/buffer".into(),
                heartbeat_ms: T0,
                batches_persisted: 10,
                records_persisted: 30_000,
                version: Some("0.1.0".into()),
                interval: Some(Duration::from_secs(1)),
            },
            PersisterInfo {
                holder: "persist-2/77".into(),
                max_age: Duration::from_secs(30),
                max_bytes: None,
                max_records: None,
                out: "/var/lib/buffer".into(),
                heartbeat_ms: T0 - 60_000,
                batches_persisted: 3,
                records_persisted: 900,
                version: Some("0.1.0".into()),
                interval: Some(Duration::from_secs(1)),
            },
        ],
        held: vec![
            crate::snapshot::HeldBy {
                store: name("orders"),
                lock: HeldLock {
                    holder: "persist-1/4242".into(),
                    ttl_ms: Some(27_400),
                    batch: Some(batch_id(T0 - 4_000, 0xab12)),
                },
            },
            crate::snapshot::HeldBy {
                store: name("clicks"),
                lock: HeldLock {
                    holder: "app-server/12".into(),
                    ttl_ms: Some(9_000),
                    batch: None,
                },
            },
        ],
        ..Snapshot::default()
    };
    snapshot.prepared = vec![PreparedSummary::new(
        name("orders"),
        batch_id(T0 - 4_000, 0xab12),
    )];
    app.update(Action::Snapshot(Box::new(snapshot)));
    app.update(Action::Tick { now_ms: T0 + 1_500 });
    app
}

#[test]
fn a_paused_store_is_marked_in_the_table_and_the_actions_are_in_the_footer() {
    check_console("operator", operator);
    let mut app = operator(80, 24);
    let screen = draw(&mut app, 80, 24);
    assert!(screen.contains("‖ metrics/cpu"), "{screen}");
    assert!(screen.contains("paused"), "{screen}");
    let footer = screen_lines(&screen).pop().unwrap();
    for hint in ["f flush", "p pause", "? help"] {
        assert!(footer.contains(hint), "{footer}");
    }
}

#[test]
fn an_action_waits_behind_a_confirmation_that_says_what_will_happen() {
    check_console("confirm_flush", |w, h| {
        let mut app = operator(w, h);
        app.update(Action::Flush);
        app
    });
    let mut app = operator(80, 24);
    app.update(Action::Top);
    for _ in 0..10 {
        if app.selected.as_ref().map(StoreName::as_str) == Some("metrics/cpu") {
            break;
        }
        app.update(Action::Down);
    }
    app.update(Action::PauseResume);
    let screen = draw(&mut app, 80, 24);
    assert!(screen.contains("Resume \"metrics/cpu\""), "{screen}");
    assert!(screen.contains("y or Enter do it"), "{screen}");
    app.update(Action::Confirm);
    assert_eq!(
        app.take_commands(),
        [buffer_persist::OperatorAction::Resume(name("metrics/cpu"))]
    );
    app.update(Action::Done {
        text: "metrics/cpu: resumed".into(),
        failed: false,
    });
    let screen = draw(&mut app, 80, 24);
    assert!(
        screen_lines(&screen)
            .pop()
            .unwrap()
            .contains("metrics/cpu: resumed"),
        "the outcome is in the footer: {screen}"
    );
}

#[test]
fn the_limits_form_edits_the_selected_stores_limits() {
    check_console("limits_form", |w, h| {
        let mut app = operator(w, h);
        app.update(Action::EditLimits);
        for c in "2000".chars() {
            app.update(Action::FormInput(c));
        }
        app.update(Action::FormNext);
        app.update(Action::FormInput('x'));
        app.update(Action::FormSubmit);
        app
    });
}

#[test]
fn the_persisters_screen_lists_each_persister_its_locks_and_marks_a_silent_one() {
    check_console("persisters", |w, h| {
        let mut app = operator(w, h);
        app.update(Action::Persisters);
        app
    });
    let mut app = operator(80, 24);
    app.update(Action::Persisters);
    let screen = draw(&mut app, 80, 24);
    for shown in [
        "persist-1/4242",
        "s3://warehouse/buffer",
        "max-age 1m00s",
        "holds batch …0000ab12 of orders",
        "SILENT for 1m",
        "app-server/12",
    ] {
        assert!(screen.contains(shown), "{shown}: {screen}");
    }
    assert!(
        screen_lines(&screen)[1].contains("persisters 1"),
        "the silent one is not counted: {screen}"
    );
}

#[test]
fn read_only_shows_no_action_anywhere() {
    let mut app = populated(80, 24);
    app.update(Action::Access(crate::app::Access::ReadOnly(
        "the Redis user lacks write rights".into(),
    )));
    app.update(Action::Flush);
    app.update(Action::EditLimits);
    assert_eq!(app.mode, crate::app::Mode::Normal, "nothing asked");
    assert!(app.take_commands().is_empty());
    let table = draw(&mut app, 80, 24);
    app.update(Action::Help);
    let help = draw(&mut app, 80, 24);
    for screen in [&table, &help] {
        for action in [
            "f flush",
            "p pause",
            "l limits",
            "flush now",
            "pause persisting",
            "its limits",
            "retry its",
        ] {
            assert!(!screen.contains(action), "{action} shown: {screen}");
        }
    }
    assert!(table.contains("read-only"), "{table}");
    // The same dashboard allowed to act lists every action in its help, at 80x24.
    let mut app = populated(80, 24);
    app.update(Action::Access(crate::app::Access::ReadWrite));
    app.update(Action::Help);
    let help = draw(&mut app, 80, 24);
    for action in [
        "flush now",
        "retry its failing batch",
        "pause persisting",
        "its limits (a form)",
    ] {
        assert!(help.contains(action), "{action}: {help}");
    }
}

#[test]
fn no_color_draws_without_a_single_colour() {
    let mut app = operator(80, 24);
    app.no_color = true;
    app.update(Action::PollFailed {
        error: "refused".into(),
        at_ms: T0,
    });
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    fit(&mut app, 80, 24);
    terminal.draw(|frame| super::render(&app, frame)).unwrap();
    let buffer = terminal.backend().buffer();
    use ratatui::style::{Color, Modifier};
    assert!(
        buffer
            .content()
            .iter()
            .all(|cell| cell.fg == Color::Reset && cell.bg == Color::Reset)
    );
    assert!(
        buffer
            .content()
            .iter()
            .any(|cell| cell.modifier.contains(Modifier::REVERSED)),
        "the selection and the banner stay visible"
    );
    // Without NO_COLOR the same screen has colours.
    app.no_color = false;
    terminal.draw(|frame| super::render(&app, frame)).unwrap();
    assert!(
        terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .any(|cell| cell.fg != Color::Reset)
    );
}

/// A click on a table row selects that store; clicks elsewhere (the border, the header row,
/// below the last store, another screen) select nothing; the wheel moves the selection.
#[test]
fn a_click_selects_the_row_under_it_and_the_wheel_scrolls() {
    let mut app = operator(80, 24);
    let screen = draw(&mut app, 80, 24);
    let lines = screen_lines(&screen);
    let y = lines
        .iter()
        .position(|l| l.contains("metrics/cpu"))
        .unwrap() as u16;
    let row = crate::layout::table_row_at(&app, (80, 24), 10, y).expect("a row");
    app.update(Action::ClickRow(row));
    assert_eq!(app.selected.as_ref().unwrap().as_str(), "metrics/cpu");
    let header = lines.iter().position(|l| l.contains("Store▲")).unwrap() as u16;
    assert_eq!(
        crate::layout::table_row_at(&app, (80, 24), 10, header),
        None
    );
    assert_eq!(
        crate::layout::table_row_at(&app, (80, 24), 0, y),
        None,
        "the border"
    );
    let below = lines.iter().position(|l| l.contains("signups")).unwrap() as u16 + 1;
    assert_eq!(crate::layout::table_row_at(&app, (80, 24), 10, below), None);
    app.update(Action::Scroll(3));
    assert_eq!(
        app.selected.as_ref().unwrap().as_str(),
        "signups",
        "clamped at the end"
    );
    app.update(Action::Scroll(-3));
    assert_eq!(
        app.selected.as_ref().unwrap().as_str(),
        "clicks",
        "three rows up"
    );
    app.update(Action::Enter);
    assert_eq!(
        crate::layout::table_row_at(&app, (80, 24), 10, y),
        None,
        "store screen"
    );
}
