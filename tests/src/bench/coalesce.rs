//! The coalescing figures (`--only coalesce`): the merge push rate against the raw Redis
//! commands a hand-written write buffer would send for the same records, and Redis memory per
//! entity of the demo's page-view rows.

use std::sync::Arc;

use anyhow::{Result, ensure};
use buffer_core::{Buffer, CoalesceRules, MergeRule};
use buffer_tests::RedisServer;
use serde_json::{Value, json};

use super::figures::{Aggregate, Figure, Run, Sizes, Target, Unit, progress, side_order};
use super::tools;

/// The demo's coalescing store's rules (`buffer-tui --demo`'s `pageviews`).
fn page_view_rules() -> CoalesceRules {
    CoalesceRules::new("page")
        .with("views", MergeRule::Sum)
        .with("seconds", MergeRule::Sum)
        .with("last_seen", MergeRule::Max)
        .with("referrers", MergeRule::Union)
}

const REFERRERS: [&str; 4] = ["google", "news.ycombinator.com", "t.co", "direct"];

/// How the push figure's views fall on its pages.
#[derive(Clone, Copy, PartialEq)]
enum Pages {
    /// Each view on a page drawn at random (a 64-bit mix of its number), as `redis-benchmark
    /// -r` draws the baseline's keys: repeats of a page among a few hundred views are common.
    Random,
    /// Every 1 000 consecutive views on 1 000 different pages: no page repeats within ten
    /// calls, the worst case for group commits.
    Cycling,
}

impl Pages {
    fn of(self, i: usize, pages: usize) -> usize {
        match self {
            // SplitMix64's finalizer: consecutive numbers give independent-looking draws.
            Pages::Random => {
                let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                ((z ^ (z >> 31)) % pages as u64) as usize
            }
            // 761 is prime to 1 000, so i × 761 mod 1 000 visits every page once per 1 000.
            Pages::Cycling => i.wrapping_mul(761) % pages,
        }
    }
}

/// The `i`-th page view of the benchmark, on one of `pages` pages (the demo's shape).
fn page_view(i: usize, page: usize) -> Value {
    json!({
        "page": format!("/page/{page}"),
        "views": 1,
        "seconds": 1 + i % 119,
        "last_seen": 1_700_000_000_000u64 + i as u64,
        "referrers": [REFERRERS[i % REFERRERS.len()]],
    })
}

/// A buffer that waits up to a minute for a reply: 50 tasks' merge scripts of 100 records
/// queue on one Redis, and on a loaded machine one push waited longer than the default 5 s.
async fn connect(server: &RedisServer) -> Result<Buffer> {
    let config = buffer_core::BufferConfig::new(server.url())
        .response_timeout(std::time::Duration::from_secs(60));
    Ok(Buffer::connect(config).await?)
}

/// Where a side's time went: redis-server's user+sys CPU (`INFO cpu`), of it the time inside
/// `EVALSHA` (`INFO commandstats`, reset by `CONFIG RESETSTAT`), and this process's CPU (the
/// client: encoding records, building each script call), all from the moment it is taken.
struct CpuSplit {
    server_s: f64,
    script_us: f64,
    client: std::time::Duration,
}

impl CpuSplit {
    fn take(server: &RedisServer) -> Result<Self> {
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query::<()>(&mut server.conn())?;
        Ok(Self {
            server_s: tools::server_cpu_s(server)?,
            script_us: 0.0,
            client: tools::process_cpu(),
        })
    }

    /// µs per record: (redis-server CPU, of it in EVALSHA, client CPU).
    fn per_record(&self, server: &RedisServer, records: usize) -> Result<(f64, f64, f64)> {
        let records = records.max(1) as f64;
        let server_s = tools::server_cpu_s(server)? - self.server_s;
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut server.conn())?;
        let script_us = stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:"))
            .and_then(|line| {
                line.split(',')
                    .find_map(|part| part.strip_prefix("usec="))
                    .and_then(|usec| usec.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
            - self.script_us;
        let client = tools::process_cpu().saturating_sub(self.client);
        Ok((
            server_s * 1e6 / records,
            script_us / records,
            client.as_secs_f64() * 1e6 / records,
        ))
    }
}

/// Pages the push figure's views fall on.
const PUSH_PAGES: usize = 1_000;

/// The raw commands one page view costs a write buffer that merges with plain Redis commands:
/// each sum an `HINCRBY`, the write count an `HINCRBY`, the rest one `HSET` (overwriting: no
/// max, no union, so it does less than a merge).
fn raw_commands() -> Vec<Vec<String>> {
    let key = "{bench:c}:page:__rand_int__";
    [
        vec!["HINCRBY", key, "views", "1"],
        vec!["HINCRBY", key, "seconds", "37"],
        vec!["HINCRBY", key, "_writes", "1"],
        vec![
            "HSET",
            key,
            "last_seen",
            "1700000000000",
            "referrers",
            "google",
            "_last_write",
            "1700000000000",
        ],
    ]
    .into_iter()
    .map(|command| command.into_iter().map(str::to_owned).collect())
    .collect()
}

/// The coalescing figures: the merge push rate and Redis memory per entity.
///
/// # Errors
/// A push that fails, `redis-benchmark` missing or failing, a server that does not start.
pub async fn coalesce(sizes: &Sizes, runs: usize) -> Result<Vec<Figure>> {
    Ok(vec![
        push(sizes, runs, Grouping::On, Pages::Random).await?,
        push(sizes, runs, Grouping::Off, Pages::Random).await?,
        push(sizes, runs, Grouping::On, Pages::Cycling).await?,
        memory(sizes, runs).await?,
    ])
}

/// Whether the producer's pushes go in group commits (`BufferConfig::coalesce_group_entities`,
/// its default) or each as its own script (0), the design before group commits.
#[derive(Clone, Copy, PartialEq)]
enum Grouping {
    On,
    Off,
}

async fn push(sizes: &Sizes, runs: usize, grouping: Grouping, pages: Pages) -> Result<Figure> {
    let server = RedisServer::start();
    let buffer = match grouping {
        Grouping::On => connect(&server).await?,
        Grouping::Off => {
            let config = buffer_core::BufferConfig::new(server.url())
                .response_timeout(std::time::Duration::from_secs(60))
                .coalesce_group_entities(0);
            Buffer::connect(config).await?
        }
    };
    let calls = sizes.push_many_calls;
    let records = calls * 100;
    let batches: Arc<Vec<Vec<Value>>> = Arc::new(
        (0..100)
            .map(|b| {
                (0..100)
                    .map(|i| {
                        let i = b * 100 + i;
                        page_view(i, pages.of(i, PUSH_PAGES))
                    })
                    .collect()
            })
            .collect(),
    );
    let commands = raw_commands();
    let mut figure = Figure {
        id: "coalesce",
        title: match (grouping, pages) {
            (Grouping::On, Pages::Random) => "coalescing push_many, 100 page views per call",
            (Grouping::Off, _) => "coalescing push_many, group commits off",
            (Grouping::On, Pages::Cycling) => {
                "coalescing push_many, no page repeated within 10 calls"
            }
        },
        unit: Unit::RecordsPerSec,
        baseline_label: "redis-benchmark -c 50 -P 100: HINCRBY ×3 + HSET per record",
        method: format!(
            "Ours: {calls} `Buffer::push_many` calls of 100 page views (the demo's shape: \
             `page`, `views`, `seconds`, `last_seen`, `referrers`; rules `--key page --sum \
             views,seconds --max last_seen --union referrers`) over {PUSH_PAGES} pages into \
             one coalescing store from 50 tokio tasks sharing one `Buffer`{}, {}. Baseline: the raw \
             commands a write buffer merging with plain Redis commands sends per record, each \
             run by `redis-benchmark -c 50 -P 100 -r {PUSH_PAGES} -n {records}` on a hash per \
             page (`HINCRBY views 1`, `HINCRBY seconds 37`, `HINCRBY _writes 1`, `HSET \
             last_seen … referrers … _last_write …`: no max, no union, no index entries); \
             records/s = 1 ÷ Σ(1 ÷ each command's requests/s). FLUSHALL before each side.",
            match grouping {
                Grouping::On => " (group commits on, the default: `coalesce_group_entities` 1000)",
                Grouping::Off => {
                    " with `coalesce_group_entities(0)`: every push its own merge script, \
                     as before group commits"
                }
            },
            match pages {
                Pages::Random => {
                    "each view on a page drawn at random (a 64-bit mix of its number), as the \
                     baseline's `-r` draws its keys"
                }
                Pages::Cycling => {
                    "every 1 000 consecutive views on 1 000 different pages (view i on page \
                     i × 761 mod 1 000), so no group of up to 10 calls merges two views of a page: \
                     the worst case for group commits"
                }
            }
        ),
        target: match (grouping, pages) {
            (Grouping::On, Pages::Random) => Target::RatioAtLeast(0.5),
            _ => Target::Report,
        },
        aggregate: Aggregate::Median,
        runs: Vec::new(),
        weak: match (grouping, pages) {
            (Grouping::On, Pages::Random) => WEAK_COALESCE_PUSH,
            _ => "",
        },
    };
    let rules = page_view_rules();
    for run in 0..runs {
        let mut baseline = 0.0;
        let mut ours = 0.0;
        let mut detail = String::new();
        for side in side_order(run) {
            tools::flush_all(&server)?;
            if side == super::figures::Side::Baseline {
                let mut seconds_per_record = 0.0;
                let mut rates = Vec::new();
                for command in &commands {
                    let mut args: Vec<String> = [
                        "-c",
                        "50",
                        "-P",
                        "100",
                        "-r",
                        &PUSH_PAGES.to_string(),
                        "-n",
                        &records.to_string(),
                    ]
                    .map(str::to_owned)
                    .into();
                    args.extend(command.iter().cloned());
                    let rate = tools::redis_benchmark(server.port(), &args)?[0].requests_per_sec;
                    ensure!(rate > 0.0, "redis-benchmark measured no requests");
                    seconds_per_record += 1.0 / rate;
                    rates.push(format!("{} {:.0}/s", command[0], rate));
                }
                baseline = 1.0 / seconds_per_record;
                detail.push_str(&format!("raw commands: {}; ", rates.join(", ")));
            } else {
                buffer.set_coalesce("pageviews", &rules).await?;
                let cpu = CpuSplit::take(&server)?;
                ours = tools::push_rate(&buffer, "pageviews", batches.clone(), calls, 50).await?;
                let (server_us, script_us, client_us) = cpu.per_record(&server, records)?;
                // Since `CpuSplit::take` reset the counters.
                let scripts = buffer_tests::command_stats(&mut server.conn())
                    .get("evalsha")
                    .map_or(0, |stat| stat.calls);
                detail.push_str(&format!(
                    "{scripts} merge scripts for {calls} pushes; per record: redis-server \
                     {server_us:.1} µs CPU (in EVALSHA {script_us:.1} µs), client \
                     {client_us:.1} µs CPU; "
                ));
                let view = buffer.coalesced_view("pageviews", Some("views")).await?;
                ensure!(
                    view.writes == records as u64,
                    "{} writes merged, {records} pushed",
                    view.writes
                );
            }
        }
        progress(figure.id, run, runs, figure.unit, ours, Some(baseline));
        eprintln!("  {detail}");
        figure.runs.push(Run {
            ours,
            baseline: Some(baseline),
            detail: detail.trim_end_matches("; ").to_owned(),
        });
    }
    Ok(figure)
}

async fn memory(sizes: &Sizes, runs: usize) -> Result<Figure> {
    let entities = (sizes.memory_records / 10).max(1_000);
    const WRITES: usize = 3;
    let mut figure = Figure {
        id: "coalesce",
        title: "Redis memory per coalesced entity, page views",
        unit: Unit::BytesPerEntity,
        baseline_label: "the same rows as one HASH per page",
        method: format!(
            "Ours: on a fresh server, {entities} pages each merged from {WRITES} page views \
             (the demo's shape and rules, `push_many` of 100, 4 tasks); `used_memory` after − \
             before, ÷ {entities}. Baseline: on another fresh server, each page's row (the \
             same field names and merged JSON texts, `_writes`, `_first_write`, `_last_write` \
             included) as one plain HASH per page, HSET in pipelines of 100; same measure."
        ),
        target: Target::Report,
        aggregate: Aggregate::Median,
        runs: Vec::new(),
        weak: "",
    };
    let views: Vec<Value> = (0..entities * WRITES)
        .map(|i| page_view(i, i % entities))
        .collect();
    let batches: Arc<Vec<Vec<Value>>> =
        Arc::new(views.chunks(100).map(<[Value]>::to_vec).collect());
    for run in 0..runs {
        let server = RedisServer::start();
        let buffer = connect(&server).await?;
        buffer.set_coalesce("pageviews", &page_view_rules()).await?;
        let before = tools::used_memory(&server)?;
        tools::push_rate(&buffer, "pageviews", batches.clone(), batches.len(), 4).await?;
        let after = tools::used_memory(&server)?;
        // The rows as the reader renders them: the baseline stores exactly these.
        let batch = buffer
            .prepare_to_persist("pageviews", std::time::Duration::from_secs(600))
            .await?
            .ok_or_else(|| anyhow::anyhow!("nothing was merged"))?;
        let mut reader = buffer.reader(&batch);
        let mut rows: Vec<serde_json::Map<String, Value>> = Vec::new();
        while let Some(page) = reader.next_page().await? {
            for text in page {
                rows.push(serde_json::from_str(&text)?);
            }
        }
        ensure!(rows.len() == entities, "{} rows of {entities}", rows.len());
        drop(buffer);
        drop(server);
        let ours = after.saturating_sub(before) as f64 / entities as f64;

        let server = RedisServer::start();
        let mut conn = server.conn();
        let before_hashes = tools::used_memory(&server)?;
        for chunk in rows.chunks(100) {
            let mut pipe = redis::pipe();
            for row in chunk {
                let key = format!("page:{}", row["page"]);
                let fields: Vec<(String, String)> = row
                    .iter()
                    .map(|(name, value)| (name.clone(), value.to_string()))
                    .collect();
                pipe.hset_multiple(key, &fields).ignore();
            }
            pipe.query::<()>(&mut conn)?;
        }
        let after_hashes = tools::used_memory(&server)?;
        let baseline = after_hashes.saturating_sub(before_hashes) as f64 / entities as f64;
        progress(figure.id, run, runs, figure.unit, ours, Some(baseline));
        figure.runs.push(Run {
            ours,
            baseline: Some(baseline),
            detail: format!(
                "used_memory +{:.1} MiB (coalescing store) vs +{:.1} MiB (hashes)",
                after.saturating_sub(before) as f64 / f64::from(1 << 20),
                after_hashes.saturating_sub(before_hashes) as f64 / f64::from(1 << 20)
            ),
        });
    }
    Ok(figure)
}

const WEAK_COALESCE_PUSH: &str = "Redis's work per merged entity bounds this figure, and \
    group commits divide it by the views a group merges per page. With them, the 50 tasks \
    form about 25 pushes a group (394 scripts for 10 000 pushes): while one group's script \
    runs, the other tasks' pushes merge into the next. A group of 2 500 views holds about 920 \
    of the 1 000 pages, and Redis runs its script in about 12.6 ms (about 13.5 µs an entity: \
    read and unpack its row, about eight operations, pack and write it back) of a cycle of \
    about 15.6 ms; the rest is the client: 0.8 ms to build the call's ~25 000 arguments and \
    about 2 ms while the answered tasks encode their next pushes (timed by instrumenting \
    `send_groups`, 2026-12-07). So Redis spends 5-6 µs of CPU a record, against 11.5-13 µs \
    with group commits off, and the client 3.5-4.7 µs (the runs' details). The merge itself was profiled before \
    group commits (callgrind, 135 000 redis-server instructions a merged record, where a raw \
    `HINCRBY` costs a few thousand: receiving ~20 arguments, unpacking and packing the row, \
    Lua's string and number conversions, the top-10 lists, garbage collection); tried then: \
    packing a row into one hash field (0.16× to about 0.3×, memory per entity 2.9× to 0.8× of \
    a plain HASH), the top lists' numbers kept beside their texts (−7 % instructions), one \
    parts table per push (−2 %). Per entity the script costs about the same in a group as in \
    a push sent alone (12-15 µs: the `no page repeated` row's groups of 1 000 entities against \
    the `group commits off` row's pushes of about 95), so a group gains by the views it merges \
    per entity and nothing else. Levers left: a second script in flight to keep Redis busy during the client's 3 ms (it \
    would split the waiting pushes into smaller groups, with more distinct pages a view), a \
    cheaper Lua merge per entity, or a Redis module instead of Lua.";
