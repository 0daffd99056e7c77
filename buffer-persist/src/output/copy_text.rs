//! Records as rows of PostgreSQL's `COPY … FROM STDIN` text format, written straight from
//! the JSON text.
//!
//! Each record (a JSON object's text) is parsed once by serde_json into borrowed slices: the
//! keys as `&str` into the record (a copy only for a key with an escape in it) and each value
//! as its raw JSON text (`RawValue`), placed in the slot of its column. Then each column's
//! value is written out: a string unescaped from JSON and escaped for COPY in one pass
//! (copied whole when it has no backslash, which in valid JSON means nothing to escape),
//! numbers and booleans as their text, nested values escaped. The slots are one vector per
//! page, so a record costs no allocation unless it has keys for `_rest`. This replaced a parse
//! into a `BTreeMap<String, &RawValue>` and a `String` per string value, which was most of
//! the persister's CPU per record (BENCHMARKS.md, the PostgreSQL load).

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Why a record could not become a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowError {
    /// The record is not a JSON object (serde_json's message).
    NotAnObject(String),
    /// The record has this key, which names no column, and the table has no `_rest`.
    UnknownKey(String),
}

/// Encodes records into COPY text rows of a fixed column list.
#[derive(Debug, Clone)]
pub struct CopyTextEncoder {
    /// The COPY's columns in order: name, and whether it is json/jsonb (a string then goes
    /// in as its JSON text, quotes kept).
    columns: Vec<(String, bool)>,
    /// Each column's position, by name.
    positions: HashMap<String, usize>,
    /// A last column `_rest` takes the keys that name no column, as one JSON object.
    rest: bool,
    /// Keys left out of every row.
    dropped: Vec<String>,
    /// Positions of the columns with a default: each row ends with the `int[]` of those its
    /// record lacks, when there are any.
    defaulted: Vec<usize>,
}

/// A record's key: borrowed from its text, or unescaped (a key holding an escape).
enum Key<'p> {
    Borrowed(&'p str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Self::Borrowed(text) => text,
            Self::Owned(text) => text,
        }
    }
}

/// The per-page scratch: one value slot per column, the keys for `_rest`.
struct Slots<'p> {
    values: Vec<Option<&'p str>>,
    rest: Vec<(Key<'p>, &'p str)>,
    /// The first key that names no column (when the table has no `_rest`).
    unknown: Option<String>,
}

impl CopyTextEncoder {
    /// An encoder for `columns` (name, json/jsonb) in the COPY's order, then `_rest` when
    /// `rest`; `dropped` keys are left out, and `defaulted` positions are listed per row when
    /// the record lacks them.
    pub fn new(
        columns: Vec<(String, bool)>,
        rest: bool,
        dropped: Vec<String>,
        defaulted: Vec<usize>,
    ) -> Self {
        let positions = columns
            .iter()
            .enumerate()
            .map(|(position, (name, _))| (name.clone(), position))
            .collect();
        Self {
            columns,
            positions,
            rest,
            dropped,
            defaulted,
        }
    }

    /// Appends `records` to `out` as COPY text rows, one line each.
    ///
    /// # Errors
    /// The position in `records` of the first record that cannot be a row, and why; `out`
    /// then holds the rows before it and part of it.
    pub fn encode<'p>(
        &self,
        records: impl IntoIterator<Item = &'p str>,
        out: &mut Vec<u8>,
    ) -> Result<(), (usize, RowError)> {
        let mut slots = Slots {
            values: vec![None; self.columns.len()],
            rest: Vec::new(),
            unknown: None,
        };
        for (offset, record) in records.into_iter().enumerate() {
            self.encode_record(record, &mut slots, out)
                .map_err(|err| (offset, err))?;
        }
        Ok(())
    }

    fn encode_record<'p>(
        &self,
        record: &'p str,
        slots: &mut Slots<'p>,
        out: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        slots.values.iter_mut().for_each(|slot| *slot = None);
        slots.rest.clear();
        slots.unknown = None;
        let mut deserializer = serde_json::Deserializer::from_str(record);
        RecordSeed {
            encoder: self,
            slots: &mut *slots,
        }
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end())
        .map_err(|err| RowError::NotAnObject(err.to_string()))?;
        if let Some(key) = slots.unknown.take() {
            return Err(RowError::UnknownKey(key));
        }
        for (position, ((_, json), value)) in self.columns.iter().zip(&slots.values).enumerate() {
            if position > 0 {
                out.push(b'\t');
            }
            match value {
                None => out.extend_from_slice(b"\\N"),
                Some(text) => encode_value(out, text, *json),
            }
        }
        if self.rest {
            if !self.columns.is_empty() {
                out.push(b'\t');
            }
            if slots.rest.is_empty() {
                out.extend_from_slice(b"\\N");
            } else {
                write_rest(out, &mut slots.rest);
            }
        }
        if !self.defaulted.is_empty() {
            out.extend_from_slice(b"\t{");
            let mut first = true;
            for position in &self.defaulted {
                if slots.values[*position].is_none() {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    // Writing into a Vec cannot fail.
                    let _ = write!(out, "{position}");
                }
            }
            out.push(b'}');
        }
        out.push(b'\n');
        Ok(())
    }
}

/// The `_rest` object of the keys that name no column, in key order, the last of a repeated
/// key winning (as a map would have it), escaped for COPY.
fn write_rest(out: &mut Vec<u8>, rest: &mut [(Key<'_>, &str)]) {
    rest.sort_by(|(a, _), (b, _)| a.as_str().cmp(b.as_str()));
    let mut object = String::from("{");
    let mut index = 0;
    while index < rest.len() {
        // The last of a run of equal keys (the sort is stable, so in the record's order).
        let mut last = index;
        while last + 1 < rest.len() && rest[last + 1].0.as_str() == rest[index].0.as_str() {
            last += 1;
        }
        if object.len() > 1 {
            object.push(',');
        }
        let (key, value) = &rest[last];
        object.push_str(&serde_json::to_string(key.as_str()).unwrap_or_default());
        object.push(':');
        object.push_str(value);
        index = last + 1;
    }
    object.push('}');
    escape_copy_text(out, &object);
}

/// Appends one JSON value (its text) as a COPY text field: null as `\N`; a string unquoted
/// and unescaped (its JSON text when the column is json/jsonb); numbers, booleans and nested
/// values as their JSON text, which PostgreSQL parses as the column's type.
pub(crate) fn encode_value(out: &mut Vec<u8>, text: &str, json_column: bool) {
    match text.as_bytes().first() {
        Some(b'n') => out.extend_from_slice(b"\\N"),
        Some(b'"') if !json_column => {
            let mark = out.len();
            if !unescape_string_into(out, text) {
                // Not a string serde_json would decode (a lone surrogate): as before this
                // encoder existed, serde_json decides, and its text goes in raw when it
                // refuses.
                out.truncate(mark);
                let unquoted: String =
                    serde_json::from_str(text).unwrap_or_else(|_| text.to_owned());
                escape_copy_text(out, &unquoted);
            }
        }
        // Numbers and booleans hold nothing COPY escapes.
        Some(b't' | b'f' | b'-' | b'0'..=b'9') => out.extend_from_slice(text.as_bytes()),
        _ => escape_copy_text(out, text),
    }
}

/// Appends the string whose JSON text (quotes included) is `text`, unescaped from JSON and
/// escaped for COPY. False, with part written, for an escape it cannot decode.
fn unescape_string_into(out: &mut Vec<u8>, text: &str) -> bool {
    let inner = &text.as_bytes()[1..text.len().saturating_sub(1).max(1)];
    // Valid JSON has no control character in a string, so without a backslash there is
    // nothing to unescape nor to escape.
    let Some(first) = memchr::memchr(b'\\', inner) else {
        out.extend_from_slice(inner);
        return true;
    };
    out.extend_from_slice(&inner[..first]);
    let mut index = first;
    while index < inner.len() {
        let byte = inner[index];
        if byte != b'\\' {
            let run_end =
                memchr::memchr(b'\\', &inner[index..]).map_or(inner.len(), |at| index + at);
            out.extend_from_slice(&inner[index..run_end]);
            index = run_end;
            continue;
        }
        let Some(&escape) = inner.get(index + 1) else {
            return false;
        };
        index += 2;
        match escape {
            // The escapes COPY spells the same way: kept as they are.
            b'n' | b'r' | b't' | b'b' | b'f' => out.extend_from_slice(&[b'\\', escape]),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.push(b'"'),
            b'/' => out.push(b'/'),
            b'u' => {
                let Some(unit) = hex4(inner, index) else {
                    return false;
                };
                index += 4;
                let code = if (0xD800..0xDC00).contains(&unit) {
                    // A high surrogate: its low half must follow as `\uDCxx`.
                    if inner.get(index) != Some(&b'\\') || inner.get(index + 1) != Some(&b'u') {
                        return false;
                    }
                    let Some(low) = hex4(inner, index + 2) else {
                        return false;
                    };
                    if !(0xDC00..0xE000).contains(&low) {
                        return false;
                    }
                    index += 6;
                    0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                } else {
                    unit
                };
                let Some(character) = char::from_u32(code) else {
                    return false;
                };
                let mut buffer = [0u8; 4];
                escape_copy_text(out, character.encode_utf8(&mut buffer));
            }
            _ => return false,
        }
    }
    true
}

/// The four hex digits at `at` of `bytes`, as a number.
fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    let text = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(text, 16).ok()
}

/// Appends `text` escaped for COPY's text format: backslash, newline, carriage return and
/// tab as backslash sequences, every other byte as it is.
///
/// Public (behind the `test-hooks` feature) for the bench, which writes its baseline's COPY
/// file with it.
pub fn escape_copy_text(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (index, byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..index]);
        out.extend_from_slice(escaped);
        start = index + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Parses one record into the slots of a page.
struct RecordSeed<'e, 's, 'p> {
    encoder: &'e CopyTextEncoder,
    slots: &'s mut Slots<'p>,
}

impl<'p> DeserializeSeed<'p> for RecordSeed<'_, '_, 'p> {
    type Value = ();

    fn deserialize<D: Deserializer<'p>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'p> Visitor<'p> for RecordSeed<'_, '_, 'p> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'p>>(self, mut map: A) -> Result<(), A::Error> {
        let encoder = self.encoder;
        // The column after the last one found: records usually list their keys in the
        // table's order, so one comparison finds most.
        let mut next = 0;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let name = key.as_str();
            let position = match encoder.columns.get(next) {
                Some((column, _)) if column == name => Some(next),
                _ => encoder.positions.get(name).copied(),
            };
            match position {
                Some(position) => {
                    let value: &'p RawValue = map.next_value()?;
                    self.slots.values[position] = Some(value.get());
                    next = position + 1;
                }
                None if encoder.dropped.iter().any(|dropped| dropped == name) => {
                    map.next_value::<IgnoredAny>()?;
                }
                None if encoder.rest => {
                    let value: &'p RawValue = map.next_value()?;
                    self.slots.rest.push((key, value.get()));
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                    if self.slots.unknown.is_none() {
                        self.slots.unknown = Some(name.to_owned());
                    }
                }
            }
        }
        Ok(())
    }
}

/// A key, borrowed from the record when it has no escape.
struct KeySeed;

impl<'p> DeserializeSeed<'p> for KeySeed {
    type Value = Key<'p>;

    fn deserialize<D: Deserializer<'p>>(self, deserializer: D) -> Result<Key<'p>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'p> Visitor<'p> for KeySeed {
    type Value = Key<'p>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, text: &'p str) -> Result<Key<'p>, E> {
        Ok(Key::Borrowed(text))
    }

    fn visit_str<E>(self, text: &str) -> Result<Key<'p>, E> {
        Ok(Key::Owned(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder(columns: &[(&str, bool)], rest: bool) -> CopyTextEncoder {
        CopyTextEncoder::new(
            columns
                .iter()
                .map(|(name, json)| ((*name).to_owned(), *json))
                .collect(),
            rest,
            Vec::new(),
            Vec::new(),
        )
    }

    fn rows(encoder: &CopyTextEncoder, records: &[&str]) -> String {
        let mut out = Vec::new();
        encoder.encode(records.iter().copied(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The encoder this one replaced: a map of owned keys, a `String` per string value.
    fn reference_value(text: &str, json_column: bool) -> Vec<u8> {
        let mut out = Vec::new();
        match text.as_bytes().first() {
            Some(b'n') => out.extend_from_slice(b"\\N"),
            Some(b'"') if !json_column => {
                let unquoted: String =
                    serde_json::from_str(text).unwrap_or_else(|_| text.to_owned());
                escape_copy_text(&mut out, &unquoted);
            }
            _ => escape_copy_text(&mut out, text),
        }
        out
    }

    #[test]
    fn strings_are_unescaped_from_json_and_escaped_for_copy_as_a_decoded_string_would_be() {
        let strings = [
            r#""plain""#,
            r#""""#,
            r#""tab\there\nnew \\ back \"q\" \/ \r \b \f""#,
            r#""\u00e9t\u00E9 \u20ac \ud83d\ude00 \u0009 \u005c \u000a""#,
            "\"raw é € 😀\"",
            r#""\ud83d alone""#,
            r#""a\\""#,
        ];
        for text in strings {
            let mut ours = Vec::new();
            encode_value(&mut ours, text, false);
            // \b and \f: COPY reads them as the same bytes serde_json decodes.
            let reference = reference_value(text, false);
            let copy_read = |bytes: &[u8]| {
                String::from_utf8_lossy(bytes)
                    .replace("\\b", "\u{8}")
                    .replace("\\f", "\u{c}")
            };
            assert_eq!(copy_read(&ours), copy_read(&reference), "{text}");
        }
        let mut out = Vec::new();
        encode_value(&mut out, r#""x""#, true);
        assert_eq!(out, br#""x""#);
        out.clear();
        encode_value(&mut out, "null", false);
        assert_eq!(out, b"\\N");
        out.clear();
        encode_value(&mut out, "{\"a\":\"b\\nc\",\n\"t\":\t1}", true);
        assert_eq!(out, b"{\"a\":\"b\\\\nc\",\\n\"t\":\\t1}");
    }

    #[test]
    fn records_become_rows_in_column_order_with_rest_and_missing_keys() {
        let encoder = encoder(&[("id", false), ("name", false), ("tags", true)], true);
        assert_eq!(
            rows(
                &encoder,
                &[
                    r#"{"name":"a\tb","id":7,"z":1,"tags":["x"],"b":{"k":"v"}}"#,
                    r#"{"id":8}"#,
                    r#"{"id":9,"id":10,"r":1,"r":2}"#,
                    r#"{"i\u0064":11}"#,
                ]
            ),
            "7\ta\\tb\t[\"x\"]\t{\"b\":{\"k\":\"v\"},\"z\":1}\n\
             8\t\\N\t\\N\t\\N\n\
             10\t\\N\t\\N\t{\"r\":2}\n\
             11\t\\N\t\\N\t\\N\n"
        );
    }

    #[test]
    fn defaulted_columns_are_listed_when_missing_and_dropped_keys_left_out() {
        let encoder = CopyTextEncoder::new(
            vec![
                ("a".into(), false),
                ("b".into(), false),
                ("c".into(), false),
            ],
            false,
            vec!["_writes".into()],
            vec![1, 2],
        );
        assert_eq!(
            rows(
                &encoder,
                &[r#"{"a":1,"_writes":3}"#, r#"{"b":null,"c":2,"a":0}"#]
            ),
            "1\t\\N\t\\N\t{1,2}\n0\t\\N\t2\t{}\n"
        );
    }

    #[test]
    fn a_record_that_is_no_object_or_has_an_unknown_key_is_refused_by_position() {
        let encoder = encoder(&[("id", false)], false);
        let mut out = Vec::new();
        let (at, err) = encoder
            .encode([r#"{"id":1}"#, r#"{"id":2,"surprise":1}"#], &mut out)
            .unwrap_err();
        assert_eq!((at, err), (1, RowError::UnknownKey("surprise".into())));
        let (at, err) = encoder.encode(["[1]"], &mut out).unwrap_err();
        assert_eq!(at, 0);
        assert!(
            matches!(err, RowError::NotAnObject(ref m) if m.contains("expected a JSON object")),
            "{err:?}"
        );
        let (_, err) = encoder.encode([r#"{"id":1} x"#], &mut out).unwrap_err();
        assert!(matches!(err, RowError::NotAnObject(_)), "{err:?}");
    }
}
