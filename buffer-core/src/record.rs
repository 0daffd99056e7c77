//! Turning records into the JSON text that is buffered, and finding their top-level keys.

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::name::StoreName;

/// One record ready to be pushed: its compact JSON text and its top-level keys.
#[derive(Debug, Clone)]
pub(crate) struct EncodedRecord {
    pub json: String,
    pub keys: Vec<String>,
}

/// Serializes `record`, which must encode to a JSON object of at most `max_bytes`.
pub(crate) fn encode<T: Serialize + ?Sized>(
    store: &StoreName,
    index: usize,
    record: &T,
    max_bytes: usize,
) -> Result<EncodedRecord> {
    let value = serde_json::to_value(record).map_err(|err| Error::InvalidRecord {
        store: store.to_string(),
        index,
        reason: format!("it could not be serialized to JSON: {err}"),
    })?;
    from_value(store, index, &value, max_bytes)
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
    let Value::Object(object) = value else {
        return Err(Error::InvalidRecord {
            store: store.to_string(),
            index,
            reason: format!("a record must be a JSON object, this is {}", kind(value)),
        });
    };
    // `Value`'s Display writes compact JSON on one line, which is what JSON Lines needs.
    let json = value.to_string();
    if json.len() > max_bytes {
        return Err(Error::RecordTooLarge {
            store: store.to_string(),
            index,
            size: json.len(),
            max: max_bytes,
        });
    }
    Ok(EncodedRecord {
        json,
        keys: object.keys().cloned().collect(),
    })
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

    #[test]
    fn objects_are_encoded_compactly_with_their_keys_in_order() {
        let record = parse(&store(), 0, r#"{ "b": 1, "a": [1, 2] }"#, 100).unwrap();
        assert_eq!(record.json, r#"{"b":1,"a":[1,2]}"#);
        assert_eq!(record.keys, ["b", "a"]);
    }

    #[test]
    fn big_numbers_survive_exactly() {
        let text =
            r#"{"n":123456789012345678901234567890,"f":0.1000000000000000055511151231257827}"#;
        assert_eq!(parse(&store(), 0, text, 1000).unwrap().json, text);
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
