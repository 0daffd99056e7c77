//! `buffer-persist flush|retry|pause|resume`: the operator's actions (the dashboard's too,
//! through the same [`OperatorAction`]; docs/operations.md, "Acting on a running buffer").

use std::io::Write;

use anyhow::bail;
use buffer_core::{BatchId, StoreName};
use clap::Args;

use super::RedisArgs;
use crate::operator::OperatorAction;

/// The arguments of an action on one store.
#[derive(Debug, Args)]
pub struct StoreActionArgs {
    /// How to reach Redis.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The store.
    pub store: String,
}

/// `retry`'s arguments.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// How to reach Redis.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The failing batch's id (as `stores` lists it), or with `--store` and no batch the live
    /// store that could not be prepared.
    pub batch: Option<String>,
    /// The batch's store (needed only when two stores have a failing batch of this id, or to
    /// retry a live store).
    #[arg(long)]
    pub store: Option<String>,
}

/// Which action on one store.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StoreVerb {
    Flush,
    Pause,
    Resume,
}

/// Runs `flush`, `pause` or `resume`. Returns the exit code.
pub(crate) async fn store_action(verb: StoreVerb, args: StoreActionArgs) -> anyhow::Result<i32> {
    let store = StoreName::new(args.store.as_str())?;
    let action = match verb {
        StoreVerb::Flush => OperatorAction::Flush(store),
        StoreVerb::Pause => OperatorAction::Pause(store),
        StoreVerb::Resume => OperatorAction::Resume(store),
    };
    let buffer = args.redis.connect().await?;
    let done = match action.execute(&buffer).await {
        Err(err) if err.is_paused() => bail!(
            "{err}; `buffer-persist resume {}` first",
            shell_word(&args.store)
        ),
        other => other?,
    };
    writeln!(std::io::stdout().lock(), "{done}")?;
    Ok(0)
}

/// Runs `retry`. Returns the exit code.
pub(crate) async fn retry(args: RetryArgs) -> anyhow::Result<i32> {
    let buffer = args.redis.connect().await?;
    let (store, batch) = match (&args.batch, &args.store) {
        (None, None) => bail!(
            "give the failing batch's id (see `buffer-persist stores`), or --store STORE for a live store"
        ),
        (None, Some(store)) => (StoreName::new(store.as_str())?, None),
        (Some(batch), store) => {
            let batch: BatchId = batch.parse()?;
            let store = match store {
                Some(store) => StoreName::new(store.as_str())?,
                None => {
                    // The batch id is unique per store (its random part makes it unique in
                    // practice); the failure records say whose it is.
                    let mut stores: Vec<StoreName> = buffer
                        .failures()
                        .await?
                        .into_iter()
                        .filter(|f| f.batch.as_ref() == Some(&batch))
                        .map(|f| f.store)
                        .collect();
                    stores.dedup();
                    match stores.len() {
                        0 => bail!(
                            "no failing batch {batch}: it is not failing, or was written (see `buffer-persist stores`)"
                        ),
                        1 => stores.remove(0),
                        _ => bail!(
                            "batch id {batch} is failing in {} stores; name one with --store",
                            stores.len()
                        ),
                    }
                }
            };
            (store, Some(batch))
        }
    };
    let done = OperatorAction::Retry(store, batch).execute(&buffer).await?;
    writeln!(std::io::stdout().lock(), "{done}")?;
    Ok(0)
}

/// `text` quoted for a shell when it needs it.
fn shell_word(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
