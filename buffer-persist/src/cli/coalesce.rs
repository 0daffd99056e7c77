//! `buffer-persist coalesce set|list|clear`: a store's coalescing rules, kept in Redis so
//! every producer merges by them (see docs/coalescing.md).

use std::io::Write;

use buffer_core::{CoalesceRules, MergeRule, StoreName};
use clap::{Args, Subcommand};

use super::RedisArgs;
use super::store_setting::{ClearArgs, ListArgs, Listing};

/// `coalesce`'s arguments.
#[derive(Debug, Args)]
pub struct CoalesceArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: CoalesceAction,
}

/// The `coalesce` subcommands.
#[derive(Debug, Subcommand)]
pub enum CoalesceAction {
    /// Make a store coalescing (or change its rules): refused while it holds records.
    Set(CoalesceSetArgs),
    /// List every coalescing store and its rules.
    List(ListArgs),
    /// Make a store an append store again: refused while it holds records.
    Clear(ClearArgs),
}

/// `coalesce set`'s arguments. Fields no rule names are last-write-wins.
#[derive(Debug, Args)]
pub struct CoalesceSetArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The store.
    pub store: String,
    /// The field that identifies the entity (its value a string or an integer).
    #[arg(long)]
    pub key: String,
    /// Fields whose numbers are added (integers exactly within i64).
    #[arg(long, value_delimiter = ',')]
    pub sum: Vec<String>,
    /// Fields keeping their largest number.
    #[arg(long, value_delimiter = ',')]
    pub max: Vec<String>,
    /// Fields keeping their smallest number.
    #[arg(long, value_delimiter = ',')]
    pub min: Vec<String>,
    /// Fields keeping the first value pushed.
    #[arg(long, value_delimiter = ',')]
    pub first: Vec<String>,
    /// Fields keeping the last value pushed (the default for every other field).
    #[arg(long, value_delimiter = ',')]
    pub last: Vec<String>,
    /// Fields keeping the distinct values pushed, as an array.
    #[arg(long, value_delimiter = ',')]
    pub union: Vec<String>,
}

/// Runs `coalesce`. Returns the exit code.
pub(crate) async fn coalesce(args: CoalesceArgs) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    match args.action {
        CoalesceAction::Set(set) => {
            let store = StoreName::new(&set.store)?;
            let rules = CoalesceRules::from_lists(
                &store,
                &set.key,
                [
                    (MergeRule::Sum, &set.sum[..]),
                    (MergeRule::Max, &set.max[..]),
                    (MergeRule::Min, &set.min[..]),
                    (MergeRule::First, &set.first[..]),
                    (MergeRule::Last, &set.last[..]),
                    (MergeRule::Union, &set.union[..]),
                ],
            )?;
            let buffer = set.redis.connect().await?;
            buffer.set_coalesce(&store, &rules).await?;
            writeln!(out, "{}: {rules}", store.as_str())?;
        }
        CoalesceAction::List(ListArgs { redis, json }) => {
            let all = redis.connect().await?.all_coalesce_rules().await?;
            Listing {
                header: format!("{:<32} RULES", "STORE"),
                none: "(no coalescing stores)",
                json: |store: &StoreName, rules: &CoalesceRules| {
                    serde_json::json!({"store": store.as_str(), "key": rules.key,
                        "fields": rules.fields})
                },
                line: |store: &StoreName, rules: &CoalesceRules| {
                    format!("{:<32} {rules}", store.as_str())
                },
            }
            .print(&mut out, json, &all)?;
        }
        CoalesceAction::Clear(ClearArgs { redis, store }) => {
            if redis
                .connect()
                .await?
                .clear_coalesce(store.as_str())
                .await?
            {
                writeln!(
                    out,
                    "{store}: coalescing rules removed (an append store again)"
                )?;
            } else {
                writeln!(out, "{store}: had no coalescing rules")?;
            }
        }
    }
    Ok(0)
}
