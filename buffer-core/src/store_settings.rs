//! Settings kept per store in one HASH per slot group (field = the store's encoded name,
//! value = the setting's text): a store's limits and its coalescing rules. One place reads
//! them, so both are read the same way: one `HGET` for a store, one `HGETALL` per group in one
//! round trip for every store (never a scan of the keyspace). How each is written stays with
//! its module (limits in a MULTI with `TIME`, rules by a script that checks the store is
//! empty).

use std::collections::HashMap;

use crate::buffer::Buffer;
use crate::error::Result;
use crate::keys::GroupKeys;
use crate::name::StoreName;

/// Which per-group hash a setting lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreSetting {
    /// `<ns>:{<ns>:<g>}:limits` (see `crate::limits`).
    Limits,
    /// `<ns>:{<ns>:<g>}:coalesce` (see `crate::coalesce`).
    CoalesceRules,
}

impl StoreSetting {
    fn key(self, group: GroupKeys) -> String {
        match self {
            Self::Limits => group.limits,
            Self::CoalesceRules => group.coalesce,
        }
    }

    /// What a warning about a malformed entry calls it.
    fn what(self) -> &'static str {
        match self {
            Self::Limits => "limits",
            Self::CoalesceRules => "coalescing rules",
        }
    }
}

impl Buffer {
    /// The stored text of `store`'s `setting`, `None` when it has none. `op` names the
    /// operation in errors and spans.
    pub(crate) async fn store_setting(
        &self,
        setting: StoreSetting,
        op: &'static str,
        store: &StoreName,
    ) -> Result<Option<String>> {
        let key = setting.key(self.layout().group_for(store));
        self.hget_field(op, store, key, store.encoded().to_owned())
            .await
    }

    /// Every store that has a `setting`, decoded by `parse`, sorted by name. An entry that
    /// does not decode (only a foreign writer can make one) is skipped with a warning saying
    /// why.
    pub(crate) async fn all_store_settings<T>(
        &self,
        setting: StoreSetting,
        op: &'static str,
        parse: impl Fn(&str) -> std::result::Result<T, String>,
    ) -> Result<Vec<(StoreName, T)>> {
        let layout = self.layout();
        let mut pipe = redis::pipe();
        for g in 0..layout.groups() {
            pipe.hgetall(setting.key(layout.group(g)));
        }
        let mut conn = self.conn();
        let groups: Vec<HashMap<String, String>> = self
            .run(op, "", async move { pipe.query_async(&mut conn).await })
            .await?;
        let mut out = Vec::new();
        for (field, text) in groups.into_iter().flatten() {
            match (StoreName::from_encoded(&field), parse(&text)) {
                (Ok(store), Ok(value)) => out.push((store, value)),
                (_, Err(reason)) => tracing::warn!(
                    %field, %text, %reason, "skipping malformed {}", setting.what()
                ),
                (Err(err), _) => {
                    tracing::warn!(%field, %err, "skipping {} of no store", setting.what());
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}
