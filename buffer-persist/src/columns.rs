//! How a record's top-level fields become columns, shared by the CSV encoder (`writer.rs`) and
//! the Parquet encoder (`parquet.rs`): the batch's [`CsvLayout`] (named columns and the
//! trailing `_rest` column), a record split into its columns' values as pushed
//! ([`FieldSplitter`]), and the text of a CSV field.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use buffer_core::{Buffer, PreparedBatch};
use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, Visitor};
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

    /// The named columns, sorted.
    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    /// True when the layout has the trailing column of the other keys.
    pub(crate) fn has_rest(&self) -> bool {
        self.rest.is_some()
    }
}

/// Splits records into the values of a fixed, sorted list of named columns and the other
/// keys, in one borrowed pass: serde_json checks the record and hands each value over as its
/// raw JSON text, which is placed in its column's slot. No `Value` and no `String` per field
/// is built, and the slots are reused from record to record, so a record with no other keys
/// costs no allocation (the CSV and Parquet encoders' hot path; the PostgreSQL output's
/// `copy_text.rs` does the same for its rows).
#[derive(Debug)]
pub(crate) struct FieldSplitter {
    /// The named columns, sorted.
    columns: Vec<String>,
    /// Per column, where its value's JSON text is in the record being split (start, end).
    slots: Vec<Option<(usize, usize)>>,
}

/// One record split by a [`FieldSplitter`].
pub(crate) struct SplitRecord<'s, 'r> {
    record: &'r str,
    slots: &'s [Option<(usize, usize)>],
    /// The keys that name no column, with their values as pushed, in the record's order.
    pub(crate) rest: Vec<(Cow<'r, str>, &'r RawValue)>,
}

impl<'r> SplitRecord<'_, 'r> {
    /// The JSON text of column `column`'s value, `None` when the record lacks the key (a key
    /// given twice: its last value, as when a JSON object is read into a map).
    pub(crate) fn value(&self, column: usize) -> Option<&'r str> {
        self.slots
            .get(column)
            .copied()
            .flatten()
            .map(|(start, end)| &self.record[start..end])
    }

    /// The error for a record with a key outside the batch's key set, when the layout has no
    /// trailing column: `None` when there is none.
    pub(crate) fn unknown_key(&self) -> Option<String> {
        self.rest.first().map(|(key, _)| {
            // The key set in Redis is the union of the records' keys; a key missing from it
            // would lose its values, so the batch is refused instead.
            format!("key {key:?} is not in the batch's key set (no column for it)")
        })
    }
}

impl FieldSplitter {
    /// A splitter for `columns`, which must be sorted.
    pub(crate) fn new(columns: Vec<String>) -> Self {
        let slots = vec![None; columns.len()];
        Self { columns, slots }
    }

    /// The named columns, sorted.
    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Splits `record` (a JSON object's text).
    ///
    /// # Errors
    /// Why the record is not a JSON object (serde_json's message).
    pub(crate) fn split<'s, 'r>(
        &'s mut self,
        record: &'r str,
    ) -> Result<SplitRecord<'s, 'r>, String> {
        self.slots.fill(None);
        let mut rest = Vec::new();
        let mut deserializer = serde_json::Deserializer::from_str(record);
        SplitSeed {
            columns: &self.columns,
            slots: &mut self.slots,
            rest: &mut rest,
            base: record.as_ptr() as usize,
        }
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end())
        .map_err(|err| format!("not a JSON object: {err}"))?;
        Ok(SplitRecord {
            record,
            slots: &self.slots,
            rest,
        })
    }
}

/// Parses one record into a [`FieldSplitter`]'s slots.
struct SplitSeed<'a, 'r> {
    columns: &'a [String],
    slots: &'a mut [Option<(usize, usize)>],
    rest: &'a mut Vec<(Cow<'r, str>, &'r RawValue)>,
    /// The address of the record's first byte: a value's slot is its offset from it.
    base: usize,
}

impl<'r> DeserializeSeed<'r> for SplitSeed<'_, 'r> {
    type Value = ();

    fn deserialize<D: Deserializer<'r>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'r> Visitor<'r> for SplitSeed<'_, 'r> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'r>>(self, mut map: A) -> Result<(), A::Error> {
        // The column after the last one found: records usually list their keys sorted (a
        // `serde_json::Map` does), as the columns are, so one comparison finds most.
        let mut next = 0;
        while let Some(KeyText(key)) = map.next_key()? {
            let raw: &'r RawValue = map.next_value()?;
            let position = match self.columns.get(next) {
                Some(column) if *column == key => Ok(next),
                _ => self
                    .columns
                    .binary_search_by(|column| column.as_str().cmp(&key)),
            };
            match position {
                Ok(position) => {
                    // A slice of the record (serde_json borrows raw values from a `&str`).
                    let start = raw.get().as_ptr() as usize - self.base;
                    self.slots[position] = Some((start, start + raw.get().len()));
                    next = position + 1;
                }
                Err(_) => self.rest.push((key, raw)),
            }
        }
        Ok(())
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

/// A CSV field for a JSON value's text, which must be valid JSON (a value a
/// [`FieldSplitter`] handed over): a string unescaped, `null` empty, any other value (number,
/// boolean, array, object) its JSON text exactly as pushed (compact, as the buffer stores
/// records).
pub(crate) fn csv_text(text: &str) -> Result<Cow<'_, str>, String> {
    if text.starts_with('"') {
        // Valid JSON holds no control character in a string, so a string without a backslash
        // is its text between the quotes; one with an escape is unescaped into a new string.
        let inner = &text[1..text.len().saturating_sub(1).max(1)];
        if memchr::memchr(b'\\', inner.as_bytes()).is_none() {
            return Ok(Cow::Borrowed(inner));
        }
        return serde_json::from_str::<String>(text)
            .map(Cow::Owned)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(splitter: &mut FieldSplitter, record: &str) -> (Vec<Option<String>>, String) {
        let columns = splitter.columns().len();
        let split = splitter.split(record).unwrap();
        let values = (0..columns)
            .map(|column| split.value(column).map(str::to_owned))
            .collect();
        (values, rest_object(split.rest).unwrap().into_owned())
    }

    #[test]
    fn a_record_splits_into_its_columns_values_as_pushed_and_the_other_keys() {
        let mut splitter = FieldSplitter::new(vec!["a".into(), "b".into(), "c".into()]);
        let (values, rest) = split_all(
            &mut splitter,
            r#"{"c":"x\"y","z":[1, 2],"a":1e400,"\u0062":{"k":null},"y":1,"z":3}"#,
        );
        assert_eq!(
            values,
            [
                Some("1e400".to_owned()),
                Some(r#"{"k":null}"#.to_owned()),
                Some(r#""x\"y""#.to_owned())
            ]
        );
        // The other keys in the record's order, a repeated one keeping its last value.
        assert_eq!(rest, r#"{"y":1,"z":3}"#);
        // The slots are reset for the next record; a repeated column keeps its last value.
        let (values, rest) = split_all(&mut splitter, r#"{"b":1,"b":2}"#);
        assert_eq!(values, [None, Some("2".to_owned()), None]);
        assert_eq!(rest, "");
        for bad in ["[1]", r#"{"a":1} x"#, r#"{"a":}"#, ""] {
            let err = splitter.split(bad).err().unwrap();
            assert!(err.starts_with("not a JSON object"), "{bad}: {err}");
        }
        let split = splitter.split(r#"{"a":1,"new":2}"#).unwrap();
        assert!(split.unknown_key().unwrap().contains("\"new\""));
    }

    #[test]
    fn a_csv_field_is_a_string_unescaped_an_empty_null_or_the_json_text() {
        assert_eq!(csv_text(r#""plain, text""#).unwrap(), "plain, text");
        assert!(matches!(csv_text(r#""plain""#).unwrap(), Cow::Borrowed(_)));
        assert_eq!(csv_text(r#""a\"b\\c\u00e9\n""#).unwrap(), "a\"b\\cé\n");
        assert_eq!(csv_text(r#""""#).unwrap(), "");
        assert_eq!(csv_text("null").unwrap(), "");
        assert_eq!(csv_text("-1.50e3").unwrap(), "-1.50e3");
        assert_eq!(csv_text(r#"{"a":[1,"b"]}"#).unwrap(), r#"{"a":[1,"b"]}"#);
    }
}
