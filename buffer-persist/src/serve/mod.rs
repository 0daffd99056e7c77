//! `buffer-persist serve`: the HTTP ingest API (docs/http.md), on hyper's HTTP/1.1 server.
//!
//! - `routes`: the route table with every status each route answers (checked against
//!   `docs/openapi.json`) and the resolution of a request's method and path.
//! - `ingest`: a push's body read, decompressed and split into records, the push, and the
//!   status of each failure.
//! - `auth`: `--token-file` bearer tokens and their store scopes.
//! - `reply`: JSON responses and [`reply::ApiError`].
//! - `telemetry`: the API's own metrics on `/metrics`.
//!
//! One task per connection, tracked; on shutdown the listener is dropped (no new connection),
//! each connection finishes the request in hand and closes, and [`serve`] returns once all
//! have.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use buffer_core::Buffer;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) mod auth;
pub(crate) mod ingest;
pub(crate) mod reply;
pub(crate) mod routes;
mod telemetry;

use auth::{Caller, Tokens};
use reply::{ApiError, Body, json_response, ok_status};
use routes::Route;

/// How the server takes requests.
#[derive(Debug)]
pub(crate) struct ServeConfig {
    /// The largest body, as sent and once decompressed (`--max-body`).
    pub(crate) max_body: u64,
    /// How long a connection may take to send a request's headers, and how long an idle
    /// keep-alive connection is kept (`--header-timeout`).
    pub(crate) header_timeout: Duration,
    /// How long a request's body may take to arrive (`--body-timeout`).
    pub(crate) body_timeout: Duration,
    /// Requests served at once; more wait for a turn (`--max-requests`).
    pub(crate) max_requests: usize,
    /// `Retry-After` of a 503 and of a 429 by a records or bytes limit (`--retry-after`).
    pub(crate) retry_after: Duration,
    /// The bearer tokens; `None` lets every request in.
    pub(crate) tokens: Option<Tokens>,
}

/// What every request handler shares.
struct Server {
    buffer: Buffer,
    config: ServeConfig,
    metrics: telemetry::HttpMetrics,
    /// One permit per request served at once (`--max-requests`); a request waits for one
    /// before it reads its body, so at most that many bodies are held in memory.
    permits: Semaphore,
}

/// Serves the API on `listener` until `shutdown`, then finishes the requests in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    buffer: Buffer,
    config: ServeConfig,
    shutdown: CancellationToken,
) {
    let server = Arc::new(Server {
        buffer,
        permits: Semaphore::new(config.max_requests.max(1)),
        config,
        metrics: telemetry::HttpMetrics::new(),
    });
    // One task per connection, awaited before `serve` returns.
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let socket = match accepted {
            Ok((socket, _peer)) => socket,
            Err(err) => {
                // Out of file descriptors, say: wait a little instead of spinning.
                tracing::warn!(error = %err, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let server = server.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let handler = server.clone();
            let service = hyper::service::service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler.handle(request).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(server.config.header_timeout)
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(socket), service);
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
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

impl Server {
    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let (label, response) = match Route::resolve(request.method(), request.uri().path()) {
            Err(err) => ("unrouted", err.response()),
            Ok(route) => {
                let label = route.label();
                let response = match self.dispatch(route, request).await {
                    Ok(response) => response,
                    Err(err) => {
                        if err.status.is_server_error() {
                            tracing::warn!(route = label, status = err.status.as_u16(), message = %err.message, "request failed");
                        }
                        err.response()
                    }
                };
                (label, response)
            }
        };
        let status = response.status().as_u16();
        if !routes::declares(label, status) {
            // The OpenAPI document is checked against the route table, so a status missing
            // from the table is a status missing from the document: the tests look for this.
            tracing::error!(
                route = label,
                status,
                "undeclared status: add it to routes::ROUTES and docs/openapi.json"
            );
        }
        self.metrics.observe(label, status, started.elapsed());
        response
    }

    async fn dispatch(
        &self,
        route: Route,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        match route {
            Route::Health => Ok(ok_status()),
            Route::Metrics => {
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.render())));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                Ok(response)
            }
            Route::Ready => {
                let _permit = self.permit().await;
                self.buffer
                    .server_info()
                    .await
                    .map_err(|err| ingest::read_error(&err, self.config.retry_after))
                    .map_err(|mut err| {
                        // Readiness answers 200 or 503 only: a timeout is not ready either.
                        err.status = StatusCode::SERVICE_UNAVAILABLE;
                        err.code = "not_ready";
                        err.retry_after(self.config.retry_after)
                    })?;
                Ok(json_response(StatusCode::OK, &json!({"status": "ready"})))
            }
            Route::ListStores => {
                let caller = self.caller(&request)?;
                let _permit = self.permit().await;
                let mut report = crate::store_report::StoresReport::gather(&self.buffer)
                    .await
                    .map_err(|err| ingest::read_error(&err, self.config.retry_after))?;
                report.retain(|store| caller.allows(store.as_str()));
                Ok(json_response(StatusCode::OK, &report.json()))
            }
            Route::GetStore(store) => {
                let caller = self.caller(&request)?;
                self.check_scope(&caller, &store)?;
                let _permit = self.permit().await;
                let mut report = crate::store_report::StoresReport::gather(&self.buffer)
                    .await
                    .map_err(|err| ingest::read_error(&err, self.config.retry_after))?;
                report.retain(|name| name.as_str() == store);
                let limits = self
                    .buffer
                    .limits(store.as_str())
                    .await
                    .map_err(|err| ingest::read_error(&err, self.config.retry_after))?;
                let mut body = report.json();
                body["store"] = json!(store);
                body["limits"] = json!(limits.map(|l| json!({
                    "max_records": l.max_records, "max_bytes": l.max_bytes, "max_rate": l.max_rate,
                })));
                Ok(json_response(StatusCode::OK, &body))
            }
            Route::Push(store) => self.push(store, request).await,
        }
    }

    async fn push(
        &self,
        store: String,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let caller = self.caller(&request)?;
        self.check_scope(&caller, &store)?;
        let (layout, coding) = ingest::body_kind(request.headers())?;
        let key = match request.headers().get("idempotency-key") {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "bad_idempotency_key",
                            "Idempotency-Key is not text: use 1 to 128 letters, digits, '.', '_' or '-'",
                        )
                    })?
                    .to_owned(),
            ),
        };
        let _permit = self.permit().await;
        let (parts, body) = request.into_parts();
        let max = self.config.max_body;
        let sent = ingest::read_body(&parts.headers, body, max, self.config.body_timeout).await?;
        let decoded = ingest::decode(sent, coding, max).await?;
        let records = ingest::split(&decoded, layout)?;
        let (receipt, duplicate) = ingest::push(
            &self.buffer,
            &store,
            &records,
            key.as_deref(),
            self.config.retry_after,
        )
        .await?;
        let pushed = records.texts.len() as u64;
        if !duplicate {
            self.metrics.ingested(pushed, decoded.len() as u64);
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "store": store,
                "pushed": if duplicate { 0 } else { pushed },
                "duplicate": duplicate,
                "receipt": receipt,
            }),
        ))
    }

    /// A turn among the `--max-requests` served at once.
    async fn permit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // The semaphore is never closed, so acquiring only waits.
        self.permits.acquire().await.ok()
    }

    /// Who sent `request`.
    ///
    /// # Errors
    /// 401 without a valid bearer token (when the server has a token file).
    fn caller(&self, request: &Request<Incoming>) -> Result<Caller<'_>, ApiError> {
        let Some(tokens) = &self.config.tokens else {
            return Ok(Caller::Anyone);
        };
        tokens
            .caller(
                request
                    .headers()
                    .get(AUTHORIZATION)
                    .map(HeaderValue::as_bytes),
            )
            .map_err(|why| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why.to_string()))
    }

    /// # Errors
    /// 403 when `caller`'s token does not reach `store`.
    fn check_scope(&self, caller: &Caller<'_>, store: &str) -> Result<(), ApiError> {
        if caller.allows(store) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this token does not reach store {store:?} (see its scopes in the token file)"
                ),
            )
            .with("store", store))
        }
    }
}
