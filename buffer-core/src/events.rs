//! Persister events, published on `<ns>:events` for dashboards to follow.

use std::time::Duration;

use futures::{Stream, StreamExt};
use redis::aio::{PubSubSink, PubSubStream};
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
    /// received it: on a cluster, those connected to the node that took it (the cluster
    /// passes it on to the other nodes' subscribers, who are not counted).
    ///
    /// On a cluster it is sent to the first node that takes it, in the order
    /// [`Buffer::subscribe_events`] tries them, so a dead master does not silence events.
    ///
    /// # Errors
    /// Transient errors: the last node's, when none took it.
    pub async fn publish_event(&self, event: &Event) -> Result<u64> {
        let payload = serde_json::to_string(event).map_err(|err| Error::Corrupt {
            what: format!("event could not be serialized: {err}"),
        })?;
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.events_channel()).arg(payload);
        let conn = self.conn();
        let nodes = self
            .run("publish event", &event.store, conn.pubsub_candidates())
            .await?;
        let mut last = None;
        for node in nodes {
            let address = node.addr().to_string();
            let (conn, publish) = (conn.clone(), publish.clone());
            let sent = self.run("publish event", &event.store, async move {
                redis::from_redis_value(conn.on_node(&address, publish).await?)
                    .map_err(redis::RedisError::from)
            });
            match sent.await {
                Ok(receivers) => return Ok(receivers),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("no Redis node to publish on".into())))
    }

    /// Subscribes to the namespace's events channel on a dedicated connection.
    ///
    /// On a cluster the subscription goes to whichever node answers first: the masters of
    /// the slot map, then the configured URLs (`PUBLISH` on a cluster reaches every node, so
    /// any node will do); each is given the connect timeout to accept the connection and the
    /// response timeout to confirm the subscription, so a dead or frozen node only delays
    /// the next one. On one server, that server.
    ///
    /// The stream ends when that connection is lost, or when its node stops answering the
    /// `PING` sent every few seconds (a frozen node keeps its socket open); subscribe again
    /// to resume, on whichever node answers then (events in between are missed: pub/sub
    /// keeps no history). Messages that are not events are skipped.
    ///
    /// # Errors
    /// Transient errors while connecting or subscribing: the last node's, when none answered.
    pub async fn subscribe_events(&self) -> Result<impl Stream<Item = Event> + Send + 'static> {
        let config = self.config();
        let (connect_timeout, response_timeout) = (config.connect_timeout, config.response_timeout);
        let conn = self.conn();
        // When the deployment cannot be asked for its nodes (Redis is away at the first use),
        // the first URL, whose error is then the one to report.
        let clients = match conn.pubsub_candidates().await {
            Ok(candidates) => candidates
                .into_iter()
                .filter_map(|info| redis::Client::open(info).ok())
                .collect(),
            Err(_) => vec![self.client().clone()],
        };
        let channel = self.events_channel();
        let mut last = None;
        for client in clients {
            let node = client.get_connection_info().addr().to_string();
            let attempt = async {
                let pubsub =
                    match tokio::time::timeout(connect_timeout, client.get_async_pubsub()).await {
                        Ok(pubsub) => pubsub?,
                        Err(_elapsed) => return Err(timed_out("connecting")),
                    };
                let (mut sink, messages) = pubsub.split();
                match tokio::time::timeout(response_timeout, sink.subscribe(&channel)).await {
                    Ok(subscribed) => subscribed?,
                    Err(_elapsed) => return Err(timed_out("subscribing")),
                }
                Ok((sink, messages))
            };
            match self.run("subscribe events", "", attempt).await {
                Ok((sink, messages)) => {
                    tracing::debug!(%node, "subscribed to events");
                    return Ok(subscription_stream(sink, messages, response_timeout));
                }
                Err(err) => {
                    tracing::debug!(%node, error = %err, "could not subscribe to events there");
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("no Redis node to subscribe to".into())))
    }
}

/// How often a subscription's node is sent a `PING`: a frozen node (SIGSTOP, a full network
/// buffer) keeps its socket open and would leave the stream silent for ever.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// A timeout as the `redis` crate reports one, so `Buffer::run` maps it to `Error::Timeout`.
fn timed_out(what: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// The events arriving on a subscribed connection, ending when the connection is lost or
/// its node leaves a `PING` unanswered for `response_timeout`. The stream owns the
/// subscription: dropping it closes the connection.
fn subscription_stream(
    sink: PubSubSink,
    messages: PubSubStream,
    response_timeout: Duration,
) -> impl Stream<Item = Event> + Send + 'static {
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (sink, messages, heartbeat);
    futures::stream::unfold(
        state,
        move |(mut sink, mut messages, mut heartbeat)| async move {
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let payload: Option<String> = message?.get_payload().ok();
                        if let Some(event) = payload.and_then(|p| serde_json::from_str(&p).ok()) {
                            return Some((event, (sink, messages, heartbeat)));
                        }
                    }
                    _ = heartbeat.tick() => {
                        let ping = sink.ping::<redis::Value>();
                        match tokio::time::timeout(response_timeout, ping).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(err)) => {
                                tracing::debug!(error = %err, "the events subscription is lost");
                                return None;
                            }
                            Err(_elapsed) => {
                                tracing::debug!("the events subscription's node does not answer");
                                return None;
                            }
                        }
                    }
                }
            }
        },
    )
}
