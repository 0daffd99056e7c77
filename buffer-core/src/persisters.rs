//! Persisters announce themselves, so dashboards know who drains the buffer and with which
//! thresholds (to show the time until a store's age flush).
//!
//! One HASH per namespace, `<ns>:persisters`, field = holder id, value = [`PersisterInfo`] as
//! JSON. Each persister rewrites its field at every poll; readers ignore entries whose
//! heartbeat is older than they accept, and a persister removes its own field on clean exit.
//! A persister killed without that chance is forgotten by the next announcement made more
//! than [`FORGET_SILENT_PERSISTERS_AFTER`] after its last heartbeat.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::buffer::{Buffer, millis};
use crate::error::{Error, Result};
use crate::scripts;

/// How long the announcement of a persister that stopped announcing (killed, frozen, cut off)
/// is kept. Far longer than any sensible poll interval, so a live persister is never forgotten.
pub const FORGET_SILENT_PERSISTERS_AFTER: Duration = Duration::from_secs(3600);

/// What a running persister tells the world about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersisterInfo {
    /// Its holder id (the one written into its locks).
    pub holder: String,
    /// A store is flushed once its first record is this old (stored as ms, `max_age_ms`).
    #[serde(rename = "max_age_ms", with = "duration_as_ms")]
    pub max_age: Duration,
    /// A store is flushed at this many bytes, if set.
    pub max_bytes: Option<u64>,
    /// A store is flushed at this many records, if set.
    pub max_records: Option<u64>,
    /// Where it writes (for people to read).
    pub out: String,
    /// When it last announced itself (Unix ms).
    pub heartbeat_ms: u64,
    /// Batches it persisted since it started.
    pub batches_persisted: u64,
    /// Records it persisted since it started.
    pub records_persisted: u64,
    /// Its version (`buffer-persist`'s crate version); `None` from versions that did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Its poll interval, so a reader can tell a silent persister from a slow one (it
    /// announces once per poll); `None` from versions that did not say.
    #[serde(
        default,
        rename = "interval_ms",
        with = "optional_duration_as_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
}

impl Buffer {
    fn persisters_key(&self) -> String {
        format!("{}:persisters", self.layout().namespace())
    }

    /// Records (or refreshes) a persister's announcement, and forgets announcements silent for
    /// longer than [`FORGET_SILENT_PERSISTERS_AFTER`].
    ///
    /// # Errors
    /// Transient errors.
    pub async fn announce_persister(&self, info: &PersisterInfo) -> Result<()> {
        let json = serde_json::to_string(info).map_err(|err| Error::Corrupt {
            what: format!("persister info could not be serialized: {err}"),
        })?;
        let cutoff = self
            .stamp_ms()
            .await?
            .saturating_sub(millis(FORGET_SILENT_PERSISTERS_AFTER));
        let mut invocation = scripts::ANNOUNCE.key(self.persisters_key());
        invocation.arg(&info.holder).arg(json).arg(cutoff);
        let mut conn = self.conn();
        self.run("announce persister", "", async move {
            invocation.invoke_async::<i64>(&mut conn).await
        })
        .await
        .map(|_forgotten| ())
    }

    /// Removes a persister's announcement (on clean exit).
    ///
    /// # Errors
    /// Transient errors.
    pub async fn retire_persister(&self, holder: &str) -> Result<()> {
        let (key, field) = (self.persisters_key(), holder.to_owned());
        let mut conn = self.conn();
        self.run("retire persister", "", async move {
            redis::cmd("HDEL")
                .arg(key)
                .arg(field)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// The persisters that announced themselves within the last `max_silence`, by holder.
    /// Entries that do not parse are skipped.
    ///
    /// # Errors
    /// Transient errors.
    pub async fn persisters(&self, max_silence: Duration) -> Result<Vec<PersisterInfo>> {
        let max_silence_ms = millis(max_silence);
        let key = self.persisters_key();
        let mut conn = self.conn();
        let entries: Vec<(String, String)> = self
            .run("list persisters", "", async move {
                redis::cmd("HGETALL").arg(key).query_async(&mut conn).await
            })
            .await?;
        let now = self.stamp_ms().await?;
        let mut out: Vec<PersisterInfo> = entries
            .into_iter()
            .filter_map(|(_, json)| serde_json::from_str::<PersisterInfo>(&json).ok())
            .filter(|info| now.saturating_sub(info.heartbeat_ms) <= max_silence_ms)
            .collect();
        out.sort_by(|a, b| a.holder.cmp(&b.holder));
        Ok(out)
    }
}

/// A `Duration` as whole milliseconds on the wire: announcements stay readable by every version
/// (they were always `max_age_ms`), and by other languages.
mod duration_as_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(crate::clock::millis(*value))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// An optional `Duration` as whole milliseconds on the wire.
mod optional_duration_as_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_u64(crate::clock::millis(*value)),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(deserializer).map(|ms| ms.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_keeps_max_age_in_ms_on_the_wire() {
        let info = PersisterInfo {
            holder: "h/1".into(),
            max_age: Duration::from_millis(1500),
            max_bytes: None,
            max_records: Some(10),
            out: "out".into(),
            heartbeat_ms: 7,
            batches_persisted: 0,
            records_persisted: 0,
            version: Some("1.2.3".into()),
            interval: Some(Duration::from_millis(250)),
        };
        let json = serde_json::to_string(&info).unwrap();
        assert!(json.contains("\"max_age_ms\":1500"), "{json}");
        assert!(json.contains("\"interval_ms\":250"), "{json}");
        let older = json.replace(",\"version\":\"1.2.3\",\"interval_ms\":250", "");
        let read: PersisterInfo = serde_json::from_str(&older).unwrap();
        assert_eq!((read.version, read.interval), (None, None), "{older}");
        // What an older persister wrote parses as before.
        let back: PersisterInfo = serde_json::from_str(&json).unwrap();
        assert_eq!(back, info);
    }
}
