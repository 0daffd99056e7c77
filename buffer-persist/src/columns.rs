//! How a record's top-level fields become columns, shared by the CSV encoder (`writer.rs`) and
//! the Parquet encoder (`parquet.rs`): the batch's [`CsvLayout`] (named columns and the
//! trailing `_rest` column), the fields of a record as pushed ([`RecordFields`]), and the text
//! of a CSV field.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use buffer_core::{Buffer, PreparedBatch};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::Result;

/// The columns of a batch's CSV file: at most `--csv-max-columns` named columns (the first of
/// the batch's sorted unique keys), then, when the batch has other keys or no key at all, one
/// trailing column holding each record's other keys as a JSON object.
///
/// It depends only on the batch's key set, which never changes once the batch is prepared,
/// so every attempt at a batch writes the same bytes (publication compares them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CsvLayout {
    /// The named columns, sorted.
    columns: Vec<String>,
    /// The name of the trailing column, when there is one.
    rest: Option<String>,
}

/// The trailing column's name, unless the batch has that key: then `_` is appended until it
/// names no key of the batch.
const REST_COLUMN: &str = "_rest";

impl CsvLayout {
    /// Reads the layout of `batch`'s CSV file from its key set, holding at most `max_columns`
    /// keys in memory.
    pub(crate) async fn of_batch(
        buffer: &Buffer,
        batch: &PreparedBatch,
        max_columns: usize,
    ) -> Result<Self> {
        let first = buffer
            .batch_first_keys(&batch.store, &batch.id, max_columns)
            .await?;
        let columns: Vec<String> = first.keys.into_iter().collect();
        // A batch of records with no keys gets the trailing column too: a header with one
        // column, so a CSV reader counts every row as a record (an empty header line would be
        // taken for a header, the first record lost).
        let rest = if first.more || columns.is_empty() {
            let mut name = REST_COLUMN.to_owned();
            while buffer.batch_has_key(&batch.store, &batch.id, &name).await? {
                name.push('_');
            }
            Some(name)
        } else {
            None
        };
        Ok(Self { columns, rest })
    }

    /// The named columns and the trailing column's name: the Parquet layout starts from them.
    pub(crate) fn into_parts(self) -> (Vec<String>, Option<String>) {
        (self.columns, self.rest)
    }

    pub(crate) fn header(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .map(String::as_str)
            .chain(self.rest.as_deref())
    }

    /// The CSV row of one record: named columns, then the trailing column.
    pub(crate) fn row<'a>(&self, text: &'a str) -> Result<Vec<Cow<'a, str>>, String> {
        let RecordFields(fields) =
            serde_json::from_str(text).map_err(|err| format!("not a JSON object: {err}"))?;
        let mut row: Vec<Cow<'a, str>> = vec![Cow::Borrowed(""); self.columns.len()];
        let mut rest: Vec<(Cow<'a, str>, &'a RawValue)> = Vec::new();
        for (key, raw) in fields {
            match self
                .columns
                .binary_search_by(|column| column.as_str().cmp(&key))
            {
                // A key given twice: the last one wins, as when a JSON object is read into a map.
                Ok(column) => row[column] = csv_field(raw)?,
                Err(_) => rest.push((key, raw)),
            }
        }
        if self.rest.is_some() {
            row.push(rest_object(rest)?);
        } else if let Some((key, _)) = rest.first() {
            // The key set in Redis is the union of the records' keys; a key missing from it
            // would lose its values, so the batch is refused instead.
            return Err(format!(
                "key {key:?} is not in the batch's key set (no column for it)"
            ));
        }
        Ok(row)
    }
}

/// A record's top-level fields in their order: each key (borrowed unless it holds an escape)
/// and its value's JSON text exactly as pushed. No `serde_json::Value` is built, so values
/// are never reinterpreted (numbers keep every digit, and no key is special).
pub(crate) struct RecordFields<'a>(pub(crate) Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for RecordFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = RecordFields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(KeyText(key)) = map.next_key()? {
                    let raw: &'de RawValue = map.next_value()?;
                    fields.push((key, raw));
                }
                Ok(RecordFields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// An object key, borrowed from the text when it holds no escape.
struct KeyText<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for KeyText<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
                Ok(KeyText(Cow::Borrowed(key)))
            }
            fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
                Ok(KeyText(Cow::Owned(key.to_owned())))
            }
            fn visit_string<E>(self, key: String) -> Result<Self::Value, E> {
                Ok(KeyText(Cow::Owned(key)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A CSV field for a JSON value's text: a string unescaped, `null` empty, any other value
/// (number, boolean, array, object) its JSON text exactly as pushed (compact, as the buffer
/// stores records).
pub(crate) fn csv_field(raw: &RawValue) -> Result<Cow<'_, str>, String> {
    let text = raw.get();
    if text.starts_with('"') {
        // Borrowed when the string holds no escape, unescaped into a new string otherwise.
        return serde_json::from_str::<&str>(text)
            .map(Cow::Borrowed)
            .or_else(|_| serde_json::from_str::<String>(text).map(Cow::Owned))
            .map_err(|err| format!("a string value is not valid JSON: {err}"));
    }
    Ok(if text == "null" {
        Cow::Borrowed("")
    } else {
        Cow::Borrowed(text)
    })
}

/// The trailing column's field: a JSON object of the record's keys that have no named column,
/// values as pushed, in the record's order (a key given twice keeps its last value); empty
/// when there are none.
pub(crate) fn rest_object<'a>(
    mut rest: Vec<(Cow<'a, str>, &'a RawValue)>,
) -> Result<Cow<'a, str>, String> {
    if rest.is_empty() {
        return Ok(Cow::Borrowed(""));
    }
    if rest.len() > 1 {
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(rest.len());
        for (position, (key, _)) in rest.iter().enumerate() {
            last.insert(key, position);
        }
        if last.len() < rest.len() {
            let keep: Vec<bool> = rest
                .iter()
                .enumerate()
                .map(|(position, (key, _))| last.get(key.as_ref()) == Some(&position))
                .collect();
            let mut flags = keep.into_iter();
            rest.retain(|_| flags.next().unwrap_or(true));
        }
    }
    let mut object = String::from("{");
    for (position, (key, raw)) in rest.iter().enumerate() {
        if position > 0 {
            object.push(',');
        }
        let key = serde_json::to_string(key.as_ref())
            .map_err(|err| format!("key {key:?} cannot be written as JSON: {err}"))?;
        object.push_str(&key);
        object.push(':');
        object.push_str(raw.get());
    }
    object.push('}');
    Ok(Cow::Owned(object))
}
