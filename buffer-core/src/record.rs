//! Turning records into the JSON text that is buffered, and finding their top-level keys.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::Serialize;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

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
/// # Errors
/// [`Error::Corrupt`] if a text is not a JSON object, which `encode` and `parse` rule out.
pub(crate) fn unique_keys(records: &[EncodedRecord]) -> Result<HashSet<Cow<'_, str>>> {
    let mut keys = HashSet::new();
    for record in records {
        let mut deserializer = serde_json::Deserializer::from_str(&record.json);
        deserializer
            .deserialize_map(KeysInto(&mut keys))
            .and_then(|()| deserializer.end())
            .map_err(|err| Error::Corrupt {
                what: format!("an encoded record is not a JSON object: {err}"),
            })?;
    }
    Ok(keys)
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

/// Adds the top-level keys of a JSON object to a set; the values are skipped, not built.
struct KeysInto<'s, 'a>(&'s mut HashSet<Cow<'a, str>>);

impl<'a> Visitor<'a> for KeysInto<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key()? {
            map.next_value::<IgnoredAny>()?;
            self.0.insert(key);
        }
        Ok(())
    }
}

/// An object key, borrowed from the text unless it had to be unescaped. (`Cow<str>`'s own
/// `Deserialize` always copies.)
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E>(self, key: &str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
            fn visit_string<E>(self, key: String) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
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
}
