//! What the HTTP API answers: JSON bodies, and [`ApiError`], every refusal with its status,
//! a machine-readable `error` code and a `message` naming what was wrong.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};
use serde_json::{Value, json};

/// The body type of every response.
pub(crate) type Body = Full<Bytes>;

/// A refused request: its status, the JSON body `{"error": code, "message": …, …details}`
/// and the headers the status calls for.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    /// A stable code clients can branch on (`bad_records`, `limit_exceeded`, …).
    pub(crate) code: &'static str,
    /// What was wrong, in words.
    pub(crate) message: String,
    /// More fields of the body (the bad lines, the limit…), boxed so that the `Err` of every
    /// handler's `Result` stays small.
    pub(crate) details: Box<serde_json::Map<String, Value>>,
    /// `Retry-After`, in whole seconds (at least 1).
    pub(crate) retry_after: Option<Duration>,
    /// `Allow`, for a 405.
    pub(crate) allow: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Box::default(),
            retry_after: None,
            allow: None,
        }
    }

    /// The same error with one more field in its body.
    pub(crate) fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    pub(crate) fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub(crate) fn response(self) -> Response<Body> {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), self.code.into());
        body.insert("message".into(), self.message.into());
        let seconds = self.retry_after.map(retry_seconds);
        if let Some(seconds) = seconds {
            body.insert("retry_after_s".into(), seconds.into());
        }
        body.extend(*self.details);
        let mut response = json_response(self.status, &Value::Object(body));
        let headers = response.headers_mut();
        if let Some(seconds) = seconds {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1 (0 would invite a client to retry
/// at once, which is what the status asks it not to do).
fn retry_seconds(after: Duration) -> u64 {
    after.as_millis().div_ceil(1000).max(1) as u64
}

/// A JSON response with `status`.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut text = body.to_string();
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// `{"status": "ok"}` with 200.
pub(crate) fn ok_status() -> Response<Body> {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_seconds(Duration::ZERO), 1);
        assert_eq!(retry_seconds(Duration::from_millis(5_000)), 5);
        assert_eq!(retry_seconds(Duration::from_millis(5_001)), 6);
    }
}
