//! A Prometheus text endpoint: `GET /metrics` (any path answers) on `--metrics-addr`.
//!
//! A few lines of HTTP/1.1 by hand: the endpoint serves one small text document, and a full
//! HTTP stack would be most of the binary's size.

use std::fmt::Write as _;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::persister::{Persister, StatsSnapshot};

/// Binds `addr` and serves the persister's counters until `shutdown`. Returns the bound
/// address (useful with port 0) and the serving task.
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
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((mut socket, _peer)) = accepted else {
                continue;
            };
            let body = render(&persister.stats());
            tokio::spawn(async move {
                // Read (and ignore) the request head; answer every path the same.
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok((bound, task))
}

/// The counters in the Prometheus text format.
pub(crate) fn render(stats: &StatsSnapshot) -> String {
    let metrics: [(&str, &str, &str, f64); 11] = [
        (
            "buffer_persist_batches_total",
            "counter",
            "Batches written and emptied.",
            stats.batches_persisted as f64,
        ),
        (
            "buffer_persist_records_total",
            "counter",
            "Records in persisted batches.",
            stats.records_persisted as f64,
        ),
        (
            "buffer_persist_bytes_total",
            "counter",
            "Bytes of record JSON in persisted batches.",
            stats.bytes_persisted as f64,
        ),
        (
            "buffer_persist_files_written_total",
            "counter",
            "Files published by this persister.",
            stats.files_written as f64,
        ),
        (
            "buffer_persist_batches_recovered_total",
            "counter",
            "Batches left prepared by an earlier run and recovered.",
            stats.batches_recovered as f64,
        ),
        (
            "buffer_persist_errors_total",
            "counter",
            "Failed batch attempts, failed polls and lost locks.",
            stats.errors as f64,
        ),
        (
            "buffer_persist_batch_failures_total",
            "counter",
            "Failed attempts at batches (or at preparing stores), recorded for backoff.",
            stats.batch_failures as f64,
        ),
        (
            "buffer_persist_polls_total",
            "counter",
            "Polls made by the run loop.",
            stats.polls as f64,
        ),
        (
            "buffer_persist_batches_in_backoff",
            "gauge",
            "Failing batches and stores waiting for their retry at the last poll.",
            stats.in_backoff as f64,
        ),
        (
            "buffer_persist_oldest_store_age_seconds",
            "gauge",
            "Age of the oldest live store at the last poll (lag).",
            stats.oldest_store_age_ms as f64 / 1000.0,
        ),
        (
            "buffer_persist_prepared_batches",
            "gauge",
            "Prepared batches waiting at the last poll.",
            stats.prepared_waiting as f64,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in metrics {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text() {
        let stats = StatsSnapshot {
            batches_persisted: 3,
            records_persisted: 30,
            oldest_store_age_ms: 1500,
            batch_failures: 4,
            in_backoff: 2,
            ..Default::default()
        };
        let text = render(&stats);
        assert!(text.contains(
            "# TYPE buffer_persist_batches_total counter\nbuffer_persist_batches_total 3\n"
        ));
        assert!(text.contains("buffer_persist_records_total 30\n"));
        assert!(text.contains("buffer_persist_oldest_store_age_seconds 1.5\n"));
        assert!(text.contains(
            "# TYPE buffer_persist_batch_failures_total counter\nbuffer_persist_batch_failures_total 4\n"
        ));
        assert!(text.contains(
            "# TYPE buffer_persist_batches_in_backoff gauge\nbuffer_persist_batches_in_backoff 2\n"
        ));
    }
}
