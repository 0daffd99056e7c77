//! The routes of the HTTP API, each with every status it can answer: the table the router
//! resolves requests with and the OpenAPI document (`docs/openapi.json`) is checked against.

use hyper::{Method, StatusCode};

use super::reply::ApiError;

/// One route: its method, its path as the OpenAPI document writes it, and every status its
/// handler can answer.
#[derive(Debug)]
pub(crate) struct RouteSpec {
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    pub(crate) statuses: &'static [u16],
}

/// Every route, in the order of the table in `docs/http.md`.
pub(crate) const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: "POST",
        path: "/v1/stores/{store}",
        statuses: &[200, 400, 401, 403, 408, 413, 415, 429, 500, 503, 504],
    },
    RouteSpec {
        method: "GET",
        path: "/v1/stores",
        statuses: &[200, 401, 500, 503, 504],
    },
    RouteSpec {
        method: "GET",
        path: "/v1/stores/{store}",
        statuses: &[200, 400, 401, 403, 500, 503, 504],
    },
    RouteSpec {
        method: "GET",
        path: "/healthz",
        statuses: &[200],
    },
    RouteSpec {
        method: "GET",
        path: "/readyz",
        statuses: &[200, 503],
    },
    RouteSpec {
        method: "GET",
        path: "/metrics",
        statuses: &[200],
    },
];

/// What any path or method outside [`ROUTES`] gets: 404 for a path that is none of them, 405
/// for a known path with another method.
pub(crate) const UNROUTED_STATUSES: &[u16] = &[404, 405];

/// Whether the route labelled `label` declares `status` (the unrouted label, 404 and 405).
pub(crate) fn declares(label: &str, status: u16) -> bool {
    if label == "unrouted" {
        return UNROUTED_STATUSES.contains(&status);
    }
    ROUTES
        .iter()
        .find(|r| {
            label
                .strip_prefix(r.method)
                .and_then(|rest| rest.strip_prefix(' '))
                == Some(r.path)
        })
        .is_some_and(|r| r.statuses.contains(&status))
}

/// A resolved request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `POST /v1/stores/{store}`, the name decoded.
    Push(String),
    /// `GET /v1/stores`.
    ListStores,
    /// `GET /v1/stores/{store}`, the name decoded.
    GetStore(String),
    /// `GET /healthz`.
    Health,
    /// `GET /readyz`.
    Ready,
    /// `GET /metrics`.
    Metrics,
}

impl Route {
    /// The label of the route in metrics: its method and the path as [`ROUTES`] writes it
    /// (never a store name, so the label's values are few).
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Push(_) => "POST /v1/stores/{store}",
            Self::ListStores => "GET /v1/stores",
            Self::GetStore(_) => "GET /v1/stores/{store}",
            Self::Health => "GET /healthz",
            Self::Ready => "GET /readyz",
            Self::Metrics => "GET /metrics",
        }
    }

    /// The route of a request.
    ///
    /// # Errors
    /// 404 for an unknown path, 405 (with `Allow`) for a known path with another method, 400
    /// for a store name that is not valid percent-encoded UTF-8.
    pub(crate) fn resolve(method: &Method, path: &str) -> Result<Self, ApiError> {
        let (allow, route) = match path {
            "/v1/stores" => ("GET", (method == Method::GET).then_some(Self::ListStores)),
            "/healthz" => ("GET", (method == Method::GET).then_some(Self::Health)),
            "/readyz" => ("GET", (method == Method::GET).then_some(Self::Ready)),
            "/metrics" => ("GET", (method == Method::GET).then_some(Self::Metrics)),
            _ => match path.strip_prefix("/v1/stores/") {
                Some(encoded) if !encoded.is_empty() && !encoded.contains('/') => {
                    let route = if method == Method::POST {
                        Some(Self::Push(decode_store(encoded)?))
                    } else if method == Method::GET {
                        Some(Self::GetStore(decode_store(encoded)?))
                    } else {
                        None
                    };
                    ("GET, POST", route)
                }
                _ => {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        format!(
                            "no route {path:?}: the API has /v1/stores, /v1/stores/{{store}} (the \
                             name percent-encoded, a '/' in it as %2F), /healthz, /readyz and \
                             /metrics"
                        ),
                    ));
                }
            },
        };
        route.ok_or_else(|| {
            let mut err = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not served on {path:?}; use {allow}"),
            )
            .with("allow", allow);
            err.allow = Some(allow);
            err
        })
    }
}

/// A store name from its percent-encoded path segment.
///
/// # Errors
/// 400 when a `%` is not followed by two hex digits or the bytes are not UTF-8, or the name
/// is not a store name (empty, too long, a NUL byte).
fn decode_store(encoded: &str) -> Result<String, ApiError> {
    let bad = |reason: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_store_name", reason).with("store_path", encoded)
    };
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = bytes
                .get(at + 1..at + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(byte) = hex else {
                return Err(bad(format!(
                    "the store name in the path has a '%' at byte {at} not followed by two hex \
                     digits; percent-encode the name (a '%' as %25)"
                )));
            };
            decoded.push(byte);
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    let name = String::from_utf8(decoded).map_err(|_| {
        bad("the store name in the path is not UTF-8 once percent-decoded".to_owned())
    })?;
    buffer_core::StoreName::new(name.as_str()).map_err(|err| bad(err.to_string()))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_are_percent_decoded() {
        let route = Route::resolve(&Method::POST, "/v1/stores/a%2Fb%20c%25d%3F%E2%82%AC").unwrap();
        assert_eq!(route, Route::Push("a/b c%d?€".to_owned()));
        let err = Route::resolve(&Method::POST, "/v1/stores/a%2").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        let err = Route::resolve(&Method::POST, "/v1/stores/%FF").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        let err = Route::resolve(&Method::POST, "/v1/stores/a%00").unwrap_err();
        assert!(err.message.contains("NUL"), "{}", err.message);
    }

    #[test]
    fn unknown_paths_are_404_and_other_methods_405() {
        let err = Route::resolve(&Method::POST, "/v1/stores/a/b").unwrap_err();
        assert_eq!(err.status, StatusCode::NOT_FOUND);
        let err = Route::resolve(&Method::DELETE, "/v1/stores/a").unwrap_err();
        assert_eq!(err.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(err.allow, Some("GET, POST"));
        let err = Route::resolve(&Method::POST, "/healthz").unwrap_err();
        assert_eq!(err.status, StatusCode::METHOD_NOT_ALLOWED);
        for spec in ROUTES {
            let path = spec.path.replace("{store}", "s");
            let method = Method::from_bytes(spec.method.as_bytes()).unwrap();
            let route = Route::resolve(&method, &path).unwrap();
            assert_eq!(route.label(), format!("{} {}", spec.method, spec.path));
        }
    }
}

/// The OpenAPI document lists exactly the routes of [`ROUTES`], each with exactly its
/// statuses, and the unrouted statuses.
#[cfg(test)]
mod openapi {
    use super::*;

    #[test]
    fn the_openapi_document_lists_every_route_and_status() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/openapi.json")).unwrap();
        let mut documented = Vec::new();
        for (path, methods) in doc["paths"].as_object().unwrap() {
            for (method, operation) in methods.as_object().unwrap() {
                let mut statuses: Vec<u16> = operation["responses"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|s| s.parse().unwrap())
                    .collect();
                statuses.sort_unstable();
                documented.push((method.to_uppercase(), path.clone(), statuses));
            }
        }
        documented.sort();
        let mut routed: Vec<(String, String, Vec<u16>)> = ROUTES
            .iter()
            .map(|r| (r.method.to_owned(), r.path.to_owned(), r.statuses.to_vec()))
            .collect();
        routed.sort();
        assert_eq!(documented, routed);
        let mut unrouted: Vec<u16> = doc["x-unrouted-responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|s| s.parse().unwrap())
            .collect();
        unrouted.sort_unstable();
        assert_eq!(unrouted, UNROUTED_STATUSES);
    }
}
