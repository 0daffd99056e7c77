//! The metrics endpoint: `GET /metrics` on `--metrics-addr`, in the OpenMetrics text format.
//!
//! The official `prometheus-client` crate encodes the metrics and `hyper` (HTTP/1 only) serves
//! them. The persister's counters stay plain atomics (its `stats()` and the drain report read
//! them too) and are read by a [`Collector`] at each scrape; the histograms are
//! `prometheus-client` histograms the persister observes into as it finishes batches.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::persister::Persister;

/// Every metric name starts with this.
const PREFIX: &str = "buffer_persist";

/// The content type of the OpenMetrics text format that `prometheus-client` writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads the persister's counters at each scrape.
#[derive(Debug)]
struct StatsCollector(Persister);

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let stats = self.0.stats();
        // Counter names without `_total`: the encoder appends it.
        let counters = [
            (
                "batches",
                "Batches written and emptied.",
                stats.batches_persisted,
            ),
            (
                "records",
                "Records in persisted batches.",
                stats.records_persisted,
            ),
            (
                "bytes",
                "Bytes of record JSON in persisted batches.",
                stats.bytes_persisted,
            ),
            (
                "files_written",
                "Files published by this persister.",
                stats.files_written,
            ),
            (
                "batches_recovered",
                "Batches left prepared by an earlier run and recovered.",
                stats.batches_recovered,
            ),
            (
                "errors",
                "Failed batch attempts, failed polls and lost locks.",
                stats.errors,
            ),
            (
                "batch_failures",
                "Failed attempts at batches (or at preparing stores), recorded for backoff.",
                stats.batch_failures,
            ),
            ("polls", "Polls made by the run loop.", stats.polls),
        ];
        // The PostgreSQL output's own, only when the output is one.
        let postgres = self.0.postgres_stats().map(|pg| {
            [
                (
                    "postgres_rows",
                    "Rows loaded into PostgreSQL by committed transactions.",
                    pg.rows,
                ),
                (
                    "postgres_transactions",
                    "PostgreSQL transactions committed, one per batch applied.",
                    pg.transactions,
                ),
                (
                    "postgres_ledger_hits",
                    "Batches found in the PostgreSQL ledger already applied, deleted from Redis without applying them again.",
                    pg.ledger_hits,
                ),
            ]
        });
        for (name, help, value) in counters.into_iter().chain(postgres.into_iter().flatten()) {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "batches_in_backoff",
                "Failing batches and stores waiting for their retry at the last poll.",
                stats.in_backoff as f64,
            ),
            (
                "oldest_store_age_seconds",
                "Age of the oldest live store at the last poll (lag).",
                stats.oldest_store_age_ms as f64 / 1000.0,
            ),
            (
                "prepared_batches",
                "Prepared batches waiting at the last poll.",
                stats.prepared_waiting as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// The registry of everything the endpoint serves for `persister`.
fn registry(persister: &Persister) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(StatsCollector(persister.clone())));
    persister.histograms().register(&mut registry);
    registry
}

/// The metrics of `persister` in the OpenMetrics text format.
pub(crate) fn render(persister: &Persister) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail; an error here could only come from a metric's own
    // encoder, and an empty scrape is better than none.
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &registry(persister)) {
        tracing::warn!(error = %err, "cannot encode metrics");
    }
    text
}

/// Binds `addr` and serves `GET /metrics` (the persister's counters and histograms) until
/// `shutdown`; every other path is a 404. Returns the bound address (useful with port 0) and
/// the serving task, which ends once its open connections have.
///
/// # Errors
/// [`Error::Io`] when the address cannot be bound.
pub async fn serve_metrics(
    addr: SocketAddr,
    persister: Persister,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(Error::io("bind metrics address", addr.to_string()))?;
    let bound = listener
        .local_addr()
        .map_err(Error::io("bind metrics address", addr.to_string()))?;
    let task = tokio::spawn(async move {
        // One task per connection, awaited before the serving task ends.
        let connections = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let socket = match accepted {
                Ok((socket, _peer)) => socket,
                Err(err) => {
                    tracing::debug!(error = %err, "cannot accept a metrics connection");
                    continue;
                }
            };
            let persister = persister.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = respond(&persister, &request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service);
                tokio::pin!(connection);
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    () = shutdown.cancelled() => {
                        // Finish the request in hand, then close.
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(err) = result {
                    tracing::debug!(error = %err, "metrics connection ended with an error");
                }
            });
        }
        connections.close();
        connections.wait().await;
    });
    Ok((bound, task))
}

/// The answer to one request: the metrics for `GET /metrics`, 404 for other paths, 405 for
/// other methods on it.
fn respond(persister: &Persister, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: the metrics are at /metrics\n".to_owned(),
        )
    } else if request.method() != Method::GET && request.method() != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is served\n".to_owned(),
        )
    } else {
        (StatusCode::OK, CONTENT_TYPE, render(persister))
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
