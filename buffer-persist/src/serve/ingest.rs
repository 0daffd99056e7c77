//! `POST /v1/stores/{store}`: the body read within `--max-body` and `--body-timeout`,
//! decompressed (gzip, zstd) within `--max-body` again, split into records (NDJSON lines, a
//! JSON array's elements, or one object) with every bad one named, then pushed as one atomic
//! push (`push_json`, or `push_once` under an `Idempotency-Key`).

use std::io::Read;
use std::time::Duration;

use buffer_core::{Buffer, Error as CoreError, LimitKind, PushReceipt};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use serde_json::value::RawValue;

use super::reply::ApiError;

/// At most this many bad records are listed in a 400 (`errors_total` counts them all), so a
/// body of millions of bad lines does not get a reply larger than itself.
const MAX_LISTED_ERRORS: usize = 1000;

/// How the body's records are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `application/x-ndjson`: one object per line.
    Lines,
    /// `application/json`: an array of objects, or one object.
    Json,
}

/// The body's `Content-Encoding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    Identity,
    Gzip,
    Zstd,
}

/// The layout and coding a request's headers announce.
///
/// # Errors
/// 415 for a content type or a content coding the API does not take.
pub(crate) fn body_kind(headers: &HeaderMap) -> Result<(Layout, Coding), ApiError> {
    let unsupported = |message: String| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    };
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let layout = match essence.as_str() {
        "application/x-ndjson" | "application/jsonl" => Layout::Lines,
        "application/json" => Layout::Json,
        _ => {
            return Err(unsupported(format!(
                "Content-Type {content_type:?} is not taken: send application/x-ndjson (one \
                 JSON object per line) or application/json (an array of objects, or one object)"
            ))
            .with("content_type", content_type));
        }
    };
    let encoding = headers
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let coding = match encoding.as_str() {
        "" | "identity" => Coding::Identity,
        "gzip" | "x-gzip" => Coding::Gzip,
        "zstd" => Coding::Zstd,
        _ => {
            return Err(unsupported(format!(
                "Content-Encoding {encoding:?} is not taken: send gzip, zstd or none"
            ))
            .with("content_encoding", encoding));
        }
    };
    Ok((layout, coding))
}

fn too_large(max: u64, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the body is over --max-body ({max} bytes) {what}; nothing was stored: split it into smaller requests"),
    )
    .with("max_body", max)
}

/// The body as sent, at most `max` bytes, read within `timeout`.
///
/// # Errors
/// 413 when `Content-Length` or the bytes read pass `max`, 408 when the body did not arrive
/// within `timeout`, 400 when the connection broke mid-body.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    max: u64,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let announced = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > max) {
        return Err(too_large(max, "by its Content-Length"));
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within --body-timeout ({} s); nothing was stored",
                timeout.as_secs_f64()
            ),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            Err(too_large(max, "while it was read"))
        }
        Ok(Err(err)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "body_unreadable",
            format!("the body could not be read: {err}; nothing was stored"),
        )),
    }
}

/// The body decompressed, at most `max` bytes (on a blocking thread: inflating 16 MiB is too
/// long for an async worker).
///
/// # Errors
/// 413 when the decompressed body passes `max`, 400 when it is not valid gzip or zstd.
pub(crate) async fn decode(body: Bytes, coding: Coding, max: u64) -> Result<Bytes, ApiError> {
    if coding == Coding::Identity {
        return Ok(body);
    }
    let decoded = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let read = match coding {
            Coding::Gzip => flate2::read::MultiGzDecoder::new(&body[..])
                .take(max + 1)
                .read_to_end(&mut out),
            Coding::Zstd => zstd::stream::read::Decoder::new(&body[..])
                .and_then(|decoder| decoder.take(max + 1).read_to_end(&mut out)),
            Coding::Identity => Ok(0),
        };
        read.map(|_| out)
    })
    .await
    .map_err(|err| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("decompression stopped: {err}"),
        )
    })?;
    let name = if coding == Coding::Gzip {
        "gzip"
    } else {
        "zstd"
    };
    let decoded = decoded.map_err(|err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_encoding",
            format!(
                "the body is not valid {name} (Content-Encoding: {name}): {err}; nothing was stored"
            ),
        )
    })?;
    if decoded.len() as u64 > max {
        return Err(too_large(max, "once decompressed"));
    }
    Ok(Bytes::from(decoded))
}

/// The records of a body, each with where it was: its line number (NDJSON, from 1) or its
/// element index (JSON array, from 0).
pub(crate) struct Records<'a> {
    pub(crate) texts: Vec<&'a str>,
    pub(crate) positions: Vec<usize>,
    layout: Layout,
}

impl Records<'_> {
    fn place(&self) -> &'static str {
        match self.layout {
            Layout::Lines => "line",
            Layout::Json => "element",
        }
    }
}

/// Whether `text` is one JSON object; why not, in words.
fn check_object(text: &str) -> Result<&str, String> {
    let value: &RawValue =
        serde_json::from_str(text).map_err(|err| format!("not valid JSON: {err}"))?;
    let text = value.get();
    match text.as_bytes().first() {
        Some(b'{') => Ok(text),
        Some(b'[') => Err("a JSON array, not an object".to_owned()),
        Some(b'"') => Err("a JSON string, not an object".to_owned()),
        _ => Err("a JSON scalar, not an object".to_owned()),
    }
}

/// Every record of `records` that is not a JSON object: (position, reason).
fn checked(records: &Records<'_>) -> Vec<(usize, String)> {
    records
        .texts
        .iter()
        .zip(&records.positions)
        .filter_map(|(text, at)| check_object(text).err().map(|reason| (*at, reason)))
        .collect()
}

/// The 400 listing every record of `records` that is not a JSON object, if any is not.
pub(crate) fn listing(records: &Records<'_>) -> Option<ApiError> {
    let errors = checked(records);
    (!errors.is_empty()).then(|| bad_records(records.place(), records.texts.len(), errors))
}

/// A 400 listing `errors` (position, reason), at most [`MAX_LISTED_ERRORS`] of them.
fn bad_records(place: &str, total: usize, errors: Vec<(usize, String)>) -> ApiError {
    let count = errors.len();
    let listed: Vec<serde_json::Value> = errors
        .into_iter()
        .take(MAX_LISTED_ERRORS)
        .map(|(at, reason)| {
            let mut entry = serde_json::Map::new();
            entry.insert(place.to_owned(), at.into());
            entry.insert("reason".to_owned(), reason.into());
            serde_json::Value::Object(entry)
        })
        .collect();
    let plural = if total == 1 { "" } else { "s" };
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_records",
        format!("{count} of {total} {place}{plural} are not records; nothing was stored"),
    )
    .with("errors_total", count)
    .with("errors", listed)
}

/// Splits a decoded body into record texts. NDJSON lines are only checked to be UTF-8 here:
/// the push checks that each is a JSON object, and a refused push is answered by
/// [`listing`], which names every bad line.
///
/// # Errors
/// 400 listing every element that is not a JSON object, or every line that is not UTF-8
/// (with the lines that are not objects), nothing pushed; or saying why the body as a whole
/// is not JSON, or that it holds no record.
pub(crate) fn split(body: &[u8], layout: Layout) -> Result<Records<'_>, ApiError> {
    let mut records = Records {
        texts: Vec::new(),
        positions: Vec::new(),
        layout,
    };
    let mut errors = Vec::new();
    let mut total = 0;
    match layout {
        Layout::Lines => {
            for (index, line) in body.split(|b| *b == b'\n').enumerate() {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                total += 1;
                // Only UTF-8 here: push_json checks each line is a JSON object anyway, and
                // checking twice was a fifth of the server's CPU. A body it refuses is
                // checked line by line then ([`listing`]), to name every bad line.
                match std::str::from_utf8(line) {
                    Ok(text) => {
                        records.texts.push(text);
                        records.positions.push(index + 1);
                    }
                    Err(err) => errors.push((index + 1, format!("not UTF-8: {err}"))),
                }
            }
            if !errors.is_empty() {
                // Name the lines that are UTF-8 but not objects too.
                errors.extend(checked(&records));
                errors.sort_unstable_by_key(|(line, _)| *line);
            }
        }
        Layout::Json => {
            let not_json = |reason: String| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_json",
                    format!("the body is not JSON: {reason}; nothing was stored"),
                )
            };
            let text =
                std::str::from_utf8(body).map_err(|err| not_json(format!("not UTF-8: {err}")))?;
            let trimmed = text.trim_start();
            if trimmed.starts_with('[') {
                let elements: Vec<&RawValue> =
                    serde_json::from_str(text).map_err(|err| not_json(err.to_string()))?;
                total = elements.len();
                for (index, element) in elements.into_iter().enumerate() {
                    match check_object(element.get()) {
                        Ok(text) => {
                            records.texts.push(text);
                            records.positions.push(index);
                        }
                        Err(reason) => errors.push((index, reason)),
                    }
                }
            } else {
                let value: &RawValue =
                    serde_json::from_str(text).map_err(|err| not_json(err.to_string()))?;
                if !value.get().starts_with('{') {
                    return Err(not_json(
                        "it must be an object or an array of objects".to_owned(),
                    ));
                }
                total = 1;
                records.texts.push(value.get());
                records.positions.push(0);
            }
        }
    }
    if !errors.is_empty() {
        return Err(bad_records(records.place(), total, errors));
    }
    if records.texts.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_records",
            "the body holds no record: send at least one JSON object",
        ));
    }
    Ok(records)
}

/// Pushes `records` to `store` as one push: `push_once` under `key` when given (a key seen
/// before returns its first receipt and stores nothing), else `push_json`. Returns the
/// receipt and whether the key had been used already.
///
/// # Errors
/// As [`push_error`] maps buffer-core's errors.
pub(crate) async fn push(
    buffer: &Buffer,
    store: &str,
    records: &Records<'_>,
    key: Option<&str>,
    retry_after: Duration,
) -> Result<(PushReceipt, bool), ApiError> {
    let result = match key {
        None => buffer
            .push_json(store, &records.texts)
            .await
            .map(|receipt| (receipt, false)),
        Some(key) => {
            let mut compact = Vec::with_capacity(records.texts.len());
            for (at, text) in records.texts.iter().enumerate() {
                match crate::json_text::compact_record(text) {
                    Ok(record) => compact.push(record),
                    Err(reason) => {
                        return Err(listing(records).unwrap_or_else(|| {
                            bad_records(
                                records.place(),
                                records.texts.len(),
                                vec![(records.positions[at], reason)],
                            )
                        }));
                    }
                }
            }
            buffer
                .push_once(store, key, &compact)
                .await
                .map(|outcome| (outcome.receipt, outcome.duplicate))
        }
    };
    result.map_err(|err| match err {
        // A record refused: name every bad one, not only the first push_json met.
        CoreError::InvalidRecord { .. } => {
            listing(records).unwrap_or_else(|| push_error(err, records, retry_after))
        }
        err => push_error(err, records, retry_after),
    })
}

/// The status and body of a failed push:
/// - a record refused (not an object, too large, one a coalescing store's rule cannot take)
///   → 400 naming its line or element;
/// - a bad `Idempotency-Key` → 400;
/// - a store limit → 429 with `Retry-After` (1 s for the rate, whose window is a second;
///   `--retry-after` for records and bytes, which wait for a persister);
/// - outcome unknown (a timeout, a connection lost after sending, replicas not confirming) →
///   504: retry with the same `Idempotency-Key`;
/// - Redis unreachable, loading, cluster down, out of memory → 503 with `Retry-After`;
/// - anything else (a key of the wrong type) → 500.
fn push_error(err: CoreError, records: &Records<'_>, retry_after: Duration) -> ApiError {
    let message = err.to_string();
    match err {
        CoreError::InvalidRecord { index, reason, .. } => bad_records(
            records.place(),
            records.texts.len(),
            vec![(
                records.positions.get(index).copied().unwrap_or(index),
                reason,
            )],
        ),
        CoreError::CoalesceRecordRefused {
            index,
            field,
            rule,
            reason,
            ..
        } => bad_records(
            records.place(),
            records.texts.len(),
            vec![(
                records.positions.get(index).copied().unwrap_or(index),
                format!("field {field:?} (rule {rule}): {reason}"),
            )],
        ),
        CoreError::RecordTooLarge {
            index, size, max, ..
        } => bad_records(
            records.place(),
            records.texts.len(),
            vec![(
                records.positions.get(index).copied().unwrap_or(index),
                format!("the record is {size} bytes, over the limit of {max}"),
            )],
        ),
        CoreError::InvalidPushId { .. } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_idempotency_key",
            format!("Idempotency-Key: {message}"),
        ),
        CoreError::LimitExceeded {
            limit,
            max,
            current,
            requested,
            ..
        } => {
            let after = if limit == LimitKind::Rate {
                Duration::from_secs(1)
            } else {
                retry_after
            };
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "limit_exceeded",
                format!("{message}; nothing was stored"),
            )
            .with("limit", limit.to_string())
            .with("max", max)
            .with("current", current)
            .with("requested", requested)
            .retry_after(after)
        }
        err if err.is_outcome_unknown() => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "outcome_unknown",
            format!(
                "{message}; the records may or may not be stored: retry with the same \
                 Idempotency-Key to store them exactly once"
            ),
        ),
        err if err.is_transient() => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "redis_unavailable",
            format!("{message}; nothing was stored"),
        )
        .retry_after(retry_after),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
    }
}

/// The status of a failed read (`GET /v1/stores…`, `/readyz`): 504 after a timeout, 503 when
/// Redis is unreachable, else 500.
pub(crate) fn read_error(err: &CoreError, retry_after: Duration) -> ApiError {
    let message = err.to_string();
    if err.is_outcome_unknown() {
        ApiError::new(StatusCode::GATEWAY_TIMEOUT, "redis_timeout", message)
    } else if err.is_transient() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "redis_unavailable",
            message,
        )
        .retry_after(retry_after)
    } else {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_line_is_listed_with_its_number() {
        let body = b"{\"a\":1}\n\n[1]\n{\"b\":\n\"x\"\r\n{\"c\":2}\r\n";
        let err = listing(&split(body, Layout::Lines).ok().unwrap()).unwrap();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        let lines: Vec<u64> = err.details["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["line"].as_u64().unwrap())
            .collect();
        assert_eq!(lines, [3, 4, 5]);
        // A line that is not UTF-8 is named by split, with the lines that are not objects.
        let err = split(b"{\"a\":1}\n\xff\n[1]\n", Layout::Lines)
            .err()
            .unwrap();
        let lines: Vec<u64> = err.details["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["line"].as_u64().unwrap())
            .collect();
        assert_eq!(lines, [2, 3]);
        let records = split(b"{\"a\":1}\n\n{\"c\":2}\r\n", Layout::Lines)
            .ok()
            .unwrap();
        assert_eq!(records.texts, ["{\"a\":1}", "{\"c\":2}"]);
        assert_eq!(records.positions, [1, 3]);
    }

    #[test]
    fn a_json_body_is_an_array_of_objects_or_one_object() {
        let records = split(b" [{\"a\":1}, {\"b\":2}] ", Layout::Json)
            .ok()
            .unwrap();
        assert_eq!(records.texts.len(), 2);
        let records = split(b"{\"a\":1}", Layout::Json).ok().unwrap();
        assert_eq!(records.texts, ["{\"a\":1}"]);
        let err = split(b"[{\"a\":1}, 2, \"x\"]", Layout::Json).err().unwrap();
        assert_eq!(err.details["errors_total"], 2);
        assert!(split(b"[{\"a\":1}", Layout::Json).is_err());
        assert!(split(b"[]", Layout::Json).is_err());
        assert!(split(b"7", Layout::Json).is_err());
    }
}
