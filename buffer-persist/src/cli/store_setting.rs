//! What `limits` and `coalesce` share: a setting kept per store in Redis, listed and cleared
//! the same way (`list [--json]`, `clear STORE`).

use std::io::Write;

use buffer_core::StoreName;
use clap::Args;

use super::RedisArgs;

/// `list`'s arguments.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// How to reach Redis.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `clear`'s arguments.
#[derive(Debug, Args)]
pub struct ClearArgs {
    /// How to reach Redis.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The store.
    pub store: String,
}

/// How a setting is listed: as JSON objects, or as a table with a header and a line per
/// store, and what a table of none says.
pub(crate) struct Listing<'a, T> {
    pub(crate) header: String,
    pub(crate) none: &'a str,
    pub(crate) json: fn(&StoreName, &T) -> serde_json::Value,
    pub(crate) line: fn(&StoreName, &T) -> String,
}

impl<T> Listing<'_, T> {
    /// Prints every store's setting: pretty JSON with `--json`, else the table.
    pub(crate) fn print(
        &self,
        out: &mut impl Write,
        json: bool,
        all: &[(StoreName, T)],
    ) -> anyhow::Result<()> {
        if json {
            let entries: Vec<_> = all.iter().map(|(store, t)| (self.json)(store, t)).collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&entries)?)?;
            return Ok(());
        }
        writeln!(out, "{}", self.header)?;
        for (store, setting) in all {
            writeln!(out, "{}", (self.line)(store, setting))?;
        }
        if all.is_empty() {
            writeln!(out, "{}", self.none)?;
        }
        Ok(())
    }
}
