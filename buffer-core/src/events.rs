//! Persister events, published on `<ns>:events` for dashboards to follow.

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::buffer::Buffer;
use crate::error::{Error, Result};

/// What happened to a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A live store was frozen into a batch.
    Prepared,
    /// A batch was written durably and emptied.
    Persisted,
    /// Writing a batch failed; it stays prepared and will be retried.
    Failed,
    /// A batch left prepared by an earlier run was picked up again.
    Recovered,
}

/// One persister event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The store's name.
    pub store: String,
    /// The batch id.
    pub batch: String,
    /// Records in the batch.
    pub records: u64,
    /// Bytes in the batch.
    pub bytes: u64,
    /// When it happened (Unix ms).
    pub at_ms: u64,
    /// The persister that did it.
    pub holder: String,
    /// The file written, or the error, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Buffer {
    /// Publishes an event on the namespace's events channel. Returns how many subscribers
    /// received it.
    ///
    /// # Errors
    /// Transient errors.
    pub async fn publish_event(&self, event: &Event) -> Result<u64> {
        let payload = serde_json::to_string(event).map_err(|err| Error::Corrupt {
            what: format!("event could not be serialized: {err}"),
        })?;
        let channel = self.events_channel();
        let mut conn = self.conn();
        self.run("publish event", &event.store, async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async(&mut conn)
                .await
        })
        .await
    }

    /// Subscribes to the namespace's events channel on a dedicated connection. The stream
    /// ends when that connection is lost; subscribe again to resume (events in between are
    /// missed: pub/sub keeps no history). Messages that are not events are skipped.
    ///
    /// # Errors
    /// Transient errors while connecting or subscribing.
    pub async fn subscribe_events(&self) -> Result<impl Stream<Item = Event> + Send + 'static> {
        let client = self.client().clone();
        let channel = self.events_channel();
        let pubsub = self
            .run("subscribe events", "", async move {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok(pubsub)
            })
            .await?;
        Ok(pubsub.into_on_message().filter_map(|message| async move {
            let payload: String = message.get_payload().ok()?;
            serde_json::from_str(&payload).ok()
        }))
    }
}
