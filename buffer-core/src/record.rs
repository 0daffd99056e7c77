//! Turning records into the JSON text that is buffered, and finding their top-level keys.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::Serialize;
use serde::de::{Deserialize, IgnoredAny};

use crate::error::{Error, Result};
use crate::name::StoreName;

/// One record ready to be pushed: its compact JSON text, known to be an object.
#[derive(Debug, Clone)]
pub(crate) struct EncodedRecord {
    pub json: String,
}

/// Serializes `record`, which must encode to a JSON object of at most `max_bytes`.
///
/// Serializes straight to text: no intermediate `Value` tree, the cost that dominated bulk
/// pushes. Keys are read from the texts later, by [`unique_keys`].
pub(crate) fn encode<T: Serialize + ?Sized>(
    store: &StoreName,
    index: usize,
    record: &T,
    max_bytes: usize,
) -> Result<EncodedRecord> {
    let json = serde_json::to_string(record).map_err(|err| Error::InvalidRecord {
        store: store.to_string(),
        index,
        reason: format!("it could not be serialized to JSON: {err}"),
    })?;
    // Compact serializer output starts with the value's first character.
    if !json.starts_with('{') {
        return Err(Error::InvalidRecord {
            store: store.to_string(),
            index,
            reason: format!(
                "a record must be a JSON object, this is {}",
                kind_of_text(&json)
            ),
        });
    }
    check_size(store, index, &json, max_bytes)?;
    Ok(EncodedRecord { json })
}

/// The distinct top-level keys of `records`, borrowed from their texts where a key holds no
/// escape (nearly always), so no key is allocated per record.
///
/// The texts come from [`encode`] or [`parse`], so they are valid compact JSON objects: the
/// keys are found by a byte scan ([`top_level_keys`]) rather than by parsing every value
/// again. Records of one push usually share their keys in the same order, so a key equal to
/// the previous record's key at the same position (already in the set) is not hashed again.
///
/// # Errors
/// [`Error::Corrupt`] if a text is not a JSON object, which `encode` and `parse` rule out.
pub(crate) fn unique_keys(records: &[EncodedRecord]) -> Result<HashSet<Cow<'_, str>>> {
    let mut keys = HashSet::new();
    let mut previous: Vec<Cow<'_, str>> = Vec::new();
    let mut current: Vec<Cow<'_, str>> = Vec::new();
    for record in records {
        current.clear();
        top_level_keys(&record.json, |key| {
            if previous.get(current.len()) != Some(&key) && !keys.contains(&key) {
                keys.insert(key.clone());
            }
            current.push(key);
        })
        .map_err(|reason| Error::Corrupt {
            what: format!("an encoded record is not a JSON object: {reason}"),
        })?;
        std::mem::swap(&mut previous, &mut current);
    }
    Ok(keys)
}

/// Calls `key` with each top-level key of `json`, a valid JSON object text, in order: the
/// string that follows the object's `{` or one of its own `,`. Strings are skipped by their
/// quotes and escapes, and nothing else is parsed, since the text was validated when it was
/// encoded. A key is borrowed unless it holds an escape, which is decoded.
fn top_level_keys<'a>(
    json: &'a str,
    mut key: impl FnMut(Cow<'a, str>),
) -> std::result::Result<(), String> {
    let bytes = json.as_bytes();
    if bytes.first() != Some(&b'{') {
        return Err(format!("it starts with {:?}", json.chars().next()));
    }
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => expect_key = depth == 1,
            b'"' => {
                let (end, escaped) = string_end(bytes, i + 1)
                    .ok_or_else(|| format!("an unterminated string at byte {i}"))?;
                if expect_key {
                    if escaped {
                        let quoted = json.get(i..=end).unwrap_or_default();
                        let decoded: String = serde_json::from_str(quoted)
                            .map_err(|err| format!("a bad key at byte {i}: {err}"))?;
                        key(Cow::Owned(decoded));
                    } else {
                        key(Cow::Borrowed(json.get(i + 1..end).unwrap_or_default()));
                    }
                    expect_key = false;
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The index of the quote that closes the string whose content starts at `i`, and whether
/// the string holds an escape. Strings are most of a record's bytes: memchr skips to the next
/// quote or backslash with SIMD instead of looking at every byte.
fn string_end(bytes: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        i += memchr::memchr2(b'"', b'\\', bytes.get(i..)?)?;
        if bytes.get(i) == Some(&b'"') {
            return Some((i, escaped));
        }
        // An escape is at least two bytes; skipping the second keeps `\"` in the string.
        escaped = true;
        i += 2;
    }
}

/// Checks one JSON text (a line of JSON Lines, say) as a record and compacts it.
///
/// Records are JSON text end to end: the text is validated by a streaming pass that builds
/// nothing (no `Value`, so no number is converted and no key is special), checked to be an
/// object, and compacted by dropping the whitespace between tokens. Every token keeps its exact
/// text: `1e400`, `123456789012345678901234567890.123456789`, `-0.0`, escapes in strings and
/// duplicate keys all reach Redis as they were written.
pub(crate) fn parse(
    store: &StoreName,
    index: usize,
    text: &str,
    max_bytes: usize,
) -> Result<EncodedRecord> {
    let invalid = |reason: String| Error::InvalidRecord {
        store: store.to_string(),
        index,
        reason,
    };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    IgnoredAny::deserialize(&mut deserializer)
        .and_then(|IgnoredAny| deserializer.end())
        .map_err(|err| invalid(format!("it is not valid JSON: {err}")))?;
    let value = text.trim_start_matches(is_json_whitespace);
    if !value.starts_with('{') {
        return Err(invalid(format!(
            "a record must be a JSON object, this is {}",
            kind_of_text(value)
        )));
    }
    let json =
        compact(value).map_err(|reason| invalid(format!("it is not valid JSON: {reason}")))?;
    check_size(store, index, &json, max_bytes)?;
    Ok(EncodedRecord { json })
}

/// JSON's four whitespace characters (RFC 8259), the only ones allowed between tokens.
fn is_json_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Drops the whitespace between the tokens of a valid JSON text, copying every token's bytes
/// unchanged, and refuses an unpaired UTF-16 surrogate escape (`"\ud800"`), which the syntax
/// pass lets through but no JSON parser that builds strings (serde_json's included) accepts:
/// a record that every reader can parse is part of what push promises.
fn compact(text: &str) -> std::result::Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    // Bytes `run_start..i` are copied in one go when whitespace (or the end) is reached.
    let mut run_start = 0;
    let mut in_string = false;
    // Set after a high-surrogate escape: the next thing must be a low-surrogate escape.
    let mut awaiting_low_surrogate = false;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if in_string {
            if awaiting_low_surrogate && byte != b'\\' {
                return Err(format!("unpaired surrogate escape before byte {i}"));
            }
            match byte {
                b'"' => in_string = false,
                b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                    let unit = bytes
                        .get(i + 2..i + 6)
                        .and_then(|hex| std::str::from_utf8(hex).ok())
                        .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                        .ok_or_else(|| format!("a bad \\u escape at byte {i}"))?;
                    let low = (0xDC00..=0xDFFF).contains(&unit);
                    if awaiting_low_surrogate != low {
                        return Err(format!("unpaired surrogate escape at byte {i}"));
                    }
                    awaiting_low_surrogate = (0xD800..=0xDBFF).contains(&unit);
                    i += 6;
                    continue;
                }
                b'\\' if awaiting_low_surrogate => {
                    return Err(format!("unpaired surrogate escape before byte {i}"));
                }
                // Any other escape is two bytes; skipping the second keeps `\"` in the string.
                b'\\' => i += 1,
                _ => {}
            }
        } else if byte == b'"' {
            in_string = true;
        } else if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            // ASCII positions are character boundaries, so these slices never split a char.
            out.push_str(text.get(run_start..i).unwrap_or_default());
            run_start = i + 1;
        }
        i += 1;
    }
    out.push_str(text.get(run_start..).unwrap_or_default());
    Ok(out)
}

/// Why a stored record text could not be turned into a `Value`.
pub(crate) enum ValueFailure {
    /// It is not JSON at all (only a foreign writer can put such a text in a batch).
    NotJson(serde_json::Error),
    /// It is valid JSON that a `Value` cannot hold (a number beyond `f64`, deep nesting).
    NotRepresentable(serde_json::Error),
}

/// Parses a stored record text into a `Value`, telling apart texts that are not JSON from
/// valid JSON that a `Value` cannot hold (the syntax pass converts no number and has no depth
/// limit, so it decides which).
pub(crate) fn to_value(text: &str) -> std::result::Result<serde_json::Value, ValueFailure> {
    serde_json::from_str(text).map_err(|err| {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let valid = IgnoredAny::deserialize(&mut deserializer)
            .and_then(|IgnoredAny| deserializer.end())
            .is_ok();
        if valid {
            ValueFailure::NotRepresentable(err)
        } else {
            ValueFailure::NotJson(err)
        }
    })
}

fn check_size(store: &StoreName, index: usize, json: &str, max_bytes: usize) -> Result<()> {
    if json.len() > max_bytes {
        return Err(Error::RecordTooLarge {
            store: store.to_string(),
            index,
            size: json.len(),
            max: max_bytes,
        });
    }
    Ok(())
}

/// What a compact JSON text that is not an object is, from its first character.
fn kind_of_text(json: &str) -> &'static str {
    match json.as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn store() -> StoreName {
        StoreName::new("s").unwrap()
    }

    fn sorted_keys(records: &[EncodedRecord]) -> Vec<String> {
        let mut keys: Vec<String> = unique_keys(records)
            .unwrap()
            .into_iter()
            .map(Cow::into_owned)
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn unique_keys_are_shared_across_records_and_escapes_are_decoded() {
        let records: Vec<EncodedRecord> =
            [r#"{"a":1,"b":{"x":1}}"#, r#"{"b":2,"c\u00e9":3}"#, "{}"]
                .iter()
                .map(|text| parse(&store(), 0, text, 100).unwrap())
                .collect();
        assert_eq!(sorted_keys(&records), ["a", "b", "cé"]);
        let keys = unique_keys(&records[..1]).unwrap();
        assert!(
            keys.iter().all(|k| matches!(k, Cow::Borrowed(_))),
            "plain keys are borrowed"
        );
    }

    #[test]
    fn objects_are_encoded_compactly_with_their_keys() {
        let record = parse(&store(), 0, r#"{ "b": 1, "a": [1, 2] }"#, 100).unwrap();
        assert_eq!(record.json, r#"{"b":1,"a":[1,2]}"#);
        assert_eq!(sorted_keys(&[record]), ["a", "b"]);
    }

    #[test]
    fn big_numbers_survive_exactly() {
        let text =
            r#"{"n":123456789012345678901234567890,"f":0.1000000000000000055511151231257827}"#;
        assert_eq!(parse(&store(), 0, text, 1000).unwrap().json, text);
    }

    #[test]
    fn every_token_keeps_its_text_and_only_whitespace_between_tokens_goes() {
        let cases = [
            (
                "{\"$serde_json::private::Number\":\"42\"}",
                "{\"$serde_json::private::Number\":\"42\"}",
            ),
            (
                " {\"a\" : {\"$serde_json::private::Number\" :\"42\"}}\n",
                "{\"a\":{\"$serde_json::private::Number\":\"42\"}}",
            ),
            (
                "{\"n\": 123456789012345678901234567890.123456789, \"e\": 1e400, \"z\": -0.0, \"E\": 1E-400}",
                "{\"n\":123456789012345678901234567890.123456789,\"e\":1e400,\"z\":-0.0,\"E\":1E-400}",
            ),
            (
                "{\t\"s\" : \" a \\\" b \\\\\" , \"u\": \"\\ud83d\\ude00 \\u0041\"\r\n}",
                "{\"s\":\" a \\\" b \\\\\",\"u\":\"\\ud83d\\ude00 \\u0041\"}",
            ),
            ("{\"a\":1,\"a\":2}", "{\"a\":1,\"a\":2}"),
        ];
        for (text, compact) in cases {
            assert_eq!(
                parse(&store(), 0, text, 1000).unwrap().json,
                compact,
                "{text}"
            );
        }
    }

    #[test]
    fn unpaired_surrogate_escapes_and_trailing_text_are_refused() {
        for text in [
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\ud800x"}"#,
            r#"{"a":"\ud800\n"}"#,
            r#"{"a":"\ud800\u0041"}"#,
            r#"{"a":"\udc00"}"#,
            r#"{"\ud800":1}"#,
            r#"{"a":1} {"b":2}"#,
            r#"{"a":1"#,
        ] {
            let err = parse(&store(), 4, text, 1000).unwrap_err();
            assert!(
                matches!(err, Error::InvalidRecord { index: 4, ref reason, .. } if reason.contains("not valid JSON")),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn serialized_records_match_the_parsed_path() {
        #[derive(Serialize)]
        struct Order {
            id: u64,
            #[serde(rename = "tötal \"x\"")]
            total: f64,
            tags: Vec<&'static str>,
            nested: std::collections::BTreeMap<&'static str, i32>,
        }
        let order = Order {
            id: u64::MAX,
            total: 42.5,
            tags: vec!["a", "b"],
            nested: [("k", 1)].into_iter().collect(),
        };
        let encoded = encode(&store(), 0, &order, 1000).unwrap();
        let parsed = parse(&store(), 0, &encoded.json, 1000).unwrap();
        assert_eq!(encoded.json, parsed.json);
        assert_eq!(
            sorted_keys(&[encoded]),
            ["id", "nested", "tags", "tötal \"x\""]
        );
    }

    #[test]
    fn every_kind_of_non_object_is_named() {
        let cases: [(Value, &str); 5] = [
            (serde_json::json!([1]), "an array"),
            (serde_json::json!("s"), "a string"),
            (serde_json::json!(true), "a boolean"),
            (Value::Null, "null"),
            (serde_json::json!(-1.5), "a number"),
        ];
        for (value, kind) in cases {
            let err = encode(&store(), 2, &value, 100).unwrap_err();
            assert!(
                matches!(err, Error::InvalidRecord { index: 2, ref reason, .. } if reason.ends_with(kind)),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn non_objects_and_oversized_records_are_refused() {
        let err = parse(&store(), 3, "[1]", 100).unwrap_err();
        assert!(
            matches!(err, Error::InvalidRecord { index: 3, ref reason, .. } if reason.contains("an array"))
        );
        let err = parse(&store(), 0, "{oops", 100).unwrap_err();
        assert!(
            matches!(err, Error::InvalidRecord { ref reason, .. } if reason.contains("not valid JSON"))
        );
        let err = encode(&store(), 1, &serde_json::json!({"a": "x".repeat(50)}), 20).unwrap_err();
        assert!(matches!(
            err,
            Error::RecordTooLarge {
                index: 1,
                max: 20,
                ..
            }
        ));
    }

    #[test]
    fn the_key_scan_finds_exactly_the_top_level_keys() {
        let texts = [
            r#"{}"#,
            r#"{"a":1}"#,
            r#"{"a":{"b":{"c":[1,{"d":2}]}},"e":[{"f":1},[]],"g":"h,\"i\":{"}"#,
            r#"{"k\"ey":1,"x\\":"\\","\u00e9t\u00e9":{"y,":"}"},"z":[",{"]}"#,
            r#"{"a":1,"a":2,"b":[{"a":3}],"":null}"#,
            r#"{"s":"\\\"","t":true,"n":-1.5e-3}"#,
            r#"{"o":{"p":1,"q":2},"r":["s","t"],"u":[["v","w"],{"x":"y"}]}"#,
            // Long strings with escapes late in them.
            r#"{"a key that is longer than thirty-two bytes \" here":"a value longer than thirty-two bytes, \"quoted\", with a \\","b":1}"#,
        ];
        for text in texts {
            let mut scanned = Vec::new();
            top_level_keys(text, |key| scanned.push(key.into_owned())).unwrap();
            let parsed: serde_json::Map<String, Value> = serde_json::from_str(text).unwrap();
            let mut unique = scanned.clone();
            unique.sort();
            unique.dedup();
            let mut expected: Vec<String> = parsed.keys().cloned().collect();
            expected.sort();
            assert_eq!(unique, expected, "{text}");
            let record = parse(&store(), 0, text, 1000).unwrap();
            assert_eq!(sorted_keys(&[record]), expected, "{text}");
        }
        assert!(top_level_keys("[1]", |_| ()).is_err());
        assert!(top_level_keys(r#"{"a"#, |_| ()).is_err());
    }

    #[test]
    fn keys_shared_by_position_or_not_are_all_found() {
        let records: Vec<EncodedRecord> = [
            r#"{"a":1,"b":2}"#,
            r#"{"a":1,"b":2}"#,
            r#"{"b":1,"a":2,"c":3}"#,
            r#"{"a":1}"#,
            r#"{"d":1,"a":2}"#,
        ]
        .iter()
        .map(|text| parse(&store(), 0, text, 100).unwrap())
        .collect();
        assert_eq!(sorted_keys(&records), ["a", "b", "c", "d"]);
    }
}
