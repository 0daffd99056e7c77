//! The HTTP API's own metrics, served on its `/metrics`: requests by route and status, request
//! latency by route, records and bytes ingested.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Labels of a request counter: `route` (method and path pattern, never a store name) and
/// `status`.
type RouteStatus = Vec<(&'static str, String)>;

/// Labels of a latency histogram: `route`.
type RouteLabel = Vec<(&'static str, &'static str)>;

/// The latency histograms, one per route, each made by [`latency_histogram`].
type LatencyFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

/// The metrics of one server. Each field is shared with the registry, which encodes them at
/// every scrape.
#[derive(Debug)]
pub(crate) struct HttpMetrics {
    requests: Family<RouteStatus, Counter>,
    latency: LatencyFamily,
    records: Counter,
    bytes: Counter,
    registry: Registry,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

impl HttpMetrics {
    pub(crate) fn new() -> Self {
        let requests = Family::<RouteStatus, Counter>::default();
        let latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let records = Counter::default();
        let bytes = Counter::default();
        let mut registry = Registry::with_prefix("buffer_http");
        registry.register(
            "requests",
            "HTTP requests answered, by route and status.",
            requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a request's headers to its response, by route.",
            Unit::Seconds,
            latency.clone(),
        );
        registry.register(
            "records_ingested",
            "Records stored by pushes over HTTP (a duplicate Idempotency-Key stores none).",
            records.clone(),
        );
        registry.register_with_unit(
            "ingested",
            "Bytes of request bodies (decompressed) whose records were stored.",
            Unit::Bytes,
            bytes.clone(),
        );
        Self {
            requests,
            latency,
            records,
            bytes,
            registry,
        }
    }

    /// Counts one answered request.
    pub(crate) fn observe(&self, route: &'static str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&vec![
                ("route", route.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![("route", route)])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts the records and body bytes of a push that stored them.
    pub(crate) fn ingested(&self, records: u64, bytes: u64) {
        self.records.inc_by(records);
        self.bytes.inc_by(bytes);
    }

    /// The metrics in the OpenMetrics text format.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail but through a metric's own encoder; an empty
        // scrape is better than none.
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %err, "cannot encode metrics");
        }
        text
    }
}
