//! Turning records into the JSON text that is buffered, and finding their top-level keys.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::Serialize;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

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

/// Parses one JSON text (a line of JSON Lines, say) as a record.
pub(crate) fn parse(
    store: &StoreName,
    index: usize,
    text: &str,
    max_bytes: usize,
) -> Result<EncodedRecord> {
    let value: Value = serde_json::from_str(text).map_err(|err| Error::InvalidRecord {
        store: store.to_string(),
        index,
        reason: format!("it is not valid JSON: {err}"),
    })?;
    from_value(store, index, &value, max_bytes)
}

fn from_value(
    store: &StoreName,
    index: usize,
    value: &Value,
    max_bytes: usize,
) -> Result<EncodedRecord> {
    let Value::Object(_) = value else {
        return Err(Error::InvalidRecord {
            store: store.to_string(),
            index,
            reason: format!("a record must be a JSON object, this is {}", kind(value)),
        });
    };
    // `Value`'s Display writes compact JSON on one line, which is what JSON Lines needs.
    let json = value.to_string();
    check_size(store, index, &json, max_bytes)?;
    Ok(EncodedRecord { json })
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

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
