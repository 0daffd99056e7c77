//! `buffer-persist limits set|list|clear`: the per-store limits every producer obeys (see
//! docs/producing.md, "Limits and backpressure").

use std::io::Write;

use anyhow::bail;
use buffer_core::{LimitKind, StoreLimits, StoreName};
use clap::{Args, Subcommand};

use super::store_setting::{ClearArgs, ListArgs, Listing};
use super::{RedisArgs, size};
use crate::operator::OperatorAction;

/// `limits`' arguments.
#[derive(Debug, Args)]
pub struct LimitsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: LimitsAction,
}

/// The `limits` subcommands.
#[derive(Debug, Subcommand)]
pub enum LimitsAction {
    /// Set a store's limits, replacing any it had (at least one flag).
    Set(SetArgs),
    /// List every store that has limits.
    List(ListArgs),
    /// Remove a store's limits.
    Clear(ClearArgs),
}

/// `limits set`'s arguments.
#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The store.
    pub store: String,
    /// The most records the live store may hold.
    #[arg(long)]
    pub max_records: Option<u64>,
    /// The most bytes the live store may hold, e.g. `64MiB`.
    #[arg(long, value_parser = size)]
    pub max_bytes: Option<u64>,
    /// The most records pushed per second, e.g. `500/s` (or `500`).
    #[arg(long, value_parser = rate)]
    pub max_rate: Option<u64>,
}

/// A rate: `N/s` or `N` records per second, at least 1 (a rate of 0 would refuse every push:
/// a store that looks open but takes nothing).
fn rate(text: &str) -> Result<u64, String> {
    let number = text.trim().strip_suffix("/s").unwrap_or(text.trim());
    match number.parse() {
        Ok(0) => Err(
            "a rate of 0 would refuse every push to the store; give at least 1/s, or remove the limit with `limits clear STORE`"
                .to_owned(),
        ),
        Ok(rate) => Ok(rate),
        Err(_) => Err(format!(
            "{text:?} is not a rate; write records per second, e.g. 500/s"
        )),
    }
}

/// Runs `limits`. Returns the exit code.
pub(crate) async fn limits(args: LimitsArgs) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    match args.action {
        LimitsAction::Set(set) => {
            let limits = StoreLimits {
                max_records: set.max_records,
                max_bytes: set.max_bytes,
                max_rate: set.max_rate,
            };
            if limits.is_empty() {
                bail!("give at least one of --max-records, --max-bytes, --max-rate");
            }
            let buffer = set.redis.connect().await?;
            let store = StoreName::new(set.store.as_str())?;
            let done = OperatorAction::SetLimits(store, limits)
                .execute(&buffer)
                .await?;
            writeln!(out, "{done}")?;
        }
        LimitsAction::List(ListArgs { redis, json }) => {
            let all = redis.connect().await?.all_limits().await?;
            Listing {
                header: format!(
                    "{:<32} {:>14} {:>14} {:>12}",
                    "STORE", "MAX-RECORDS", "MAX-BYTES", "MAX-RATE"
                ),
                none: "(no limits)",
                json: |store: &StoreName, limits: &StoreLimits| {
                    serde_json::json!({
                        "store": store.as_str(), "max_records": limits.max_records,
                        "max_bytes": limits.max_bytes, "max_rate": limits.max_rate,
                    })
                },
                line: |store: &StoreName, limits: &StoreLimits| {
                    let cell = |kind: LimitKind| {
                        limits.get(kind).map_or("-".to_owned(), |max| match kind {
                            LimitKind::Rate => format!("{max}/s"),
                            _ => max.to_string(),
                        })
                    };
                    format!(
                        "{:<32} {:>14} {:>14} {:>12}",
                        store.as_str(),
                        cell(LimitKind::Records),
                        cell(LimitKind::Bytes),
                        cell(LimitKind::Rate)
                    )
                },
            }
            .print(&mut out, json, &all)?;
        }
        LimitsAction::Clear(ClearArgs { redis, store }) => {
            let buffer = redis.connect().await?;
            let done = OperatorAction::ClearLimits(StoreName::new(store.as_str())?)
                .execute(&buffer)
                .await?;
            writeln!(out, "{done}")?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_with_or_without_per_second() {
        assert_eq!(rate("500/s"), Ok(500));
        assert_eq!(rate("7"), Ok(7));
        assert!(rate("fast").unwrap_err().contains("fast"));
        assert!(rate("5/min").is_err());
        assert!(rate("0/s").unwrap_err().contains("would refuse every push"));
        assert!(rate("0").unwrap_err().contains("limits clear"));
    }
}
