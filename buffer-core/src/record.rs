//! Turning records into the JSON text that is buffered, and finding their top-level keys.

use std::cell::Cell;
use std::collections::HashSet;
use std::io;

use serde::Serialize;
use serde::de::{Deserialize, IgnoredAny};
use serde_json::ser::Formatter;

use crate::error::{Error, Result};
use crate::name::StoreName;

/// The records of one push, encoded and checked: their compact JSON object texts one after
/// the other in one buffer (one allocation per push, not one per record), and the push's
/// distinct top-level keys, found while the texts were written.
#[derive(Debug, Clone, Default)]
pub(crate) struct EncodedRecords {
    /// Every record's text, one after the other: UTF-8 (serde_json's output, or whole tokens
    /// of a `&str`), kept as bytes since Redis takes bytes.
    text: Vec<u8>,
    /// Where each record's text ends in `text`.
    ends: Vec<usize>,
    /// The length of the longest record.
    max_len: usize,
    /// The distinct top-level keys, in the order first seen.
    keys: Vec<KeySpan>,
    /// The keys that held an escape, decoded, one after the other.
    decoded: String,
}

/// Where a key's text is: a range of a record's text (between its quotes), or of the decoded
/// keys when it held an escape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeySpan {
    Text(usize, usize),
    Decoded(usize, usize),
}

impl EncodedRecords {
    /// The number of records.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The records' texts, in order.
    pub(crate) fn texts(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let text = self.text.get(start..end).unwrap_or_default();
            start = end;
            text
        })
    }

    /// The bytes of all records together.
    pub(crate) fn bytes(&self) -> usize {
        self.text.len()
    }

    /// The length of the longest record.
    pub(crate) fn max_len(&self) -> usize {
        self.max_len
    }

    /// The distinct top-level keys of the records.
    pub(crate) fn keys(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.keys.iter().map(|span| match *span {
            KeySpan::Text(start, end) => self.text.get(start..end).unwrap_or_default(),
            KeySpan::Decoded(start, end) => {
                self.decoded.as_bytes().get(start..end).unwrap_or_default()
            }
        })
    }
}

/// Builds the [`EncodedRecords`] of one push, record by record, checking each: a JSON object
/// of at most `max_bytes`, or the typed error naming its index.
///
/// A serialized record's top-level keys are seen as serde_json writes them (a [`Formatter`]
/// that notes where each top-level key starts and ends), so the text is never read again for
/// its keys. Records of one push usually share their keys in the same order: a key equal to
/// the previous record's key at the same position is not kept, so only the few others are
/// hashed into the push's key set, once, at the end.
pub(crate) struct RecordsBuilder<'s> {
    store: &'s StoreName,
    max_bytes: usize,
    /// The number of records expected, to size the text buffer after the first record.
    expected: usize,
    text: Vec<u8>,
    ends: Vec<usize>,
    max_len: usize,
    decoded: String,
    /// The keys of the record added last, and of the one being added.
    previous: Vec<KeySpan>,
    current: Vec<KeySpan>,
    /// Keys that differ from the previous record's key at the same position: the only ones
    /// that can be new to the push.
    candidates: Vec<KeySpan>,
    /// The top-level keys of the record being serialized, as the formatter saw them.
    seen: TopLevel,
}

/// What [`KeyRecorder`] saw of the record it wrote.
#[derive(Default)]
struct TopLevel {
    /// The range of each top-level key's quoted text in the output.
    quoted: Vec<(usize, usize)>,
    /// A raw fragment (`serde_json::value::RawValue`) written as the record itself: its keys
    /// were not seen one by one, so they are read from the text.
    raw: bool,
}

impl<'s> RecordsBuilder<'s> {
    pub(crate) fn new(store: &'s StoreName, max_bytes: usize, expected: usize) -> Self {
        Self {
            store,
            max_bytes,
            expected,
            text: Vec::new(),
            ends: Vec::with_capacity(expected),
            max_len: 0,
            decoded: String::new(),
            previous: Vec::new(),
            current: Vec::new(),
            candidates: Vec::new(),
            seen: TopLevel::default(),
        }
    }

    fn invalid(&self, index: usize, reason: String) -> Error {
        Error::InvalidRecord {
            store: self.store.to_string(),
            index,
            reason,
        }
    }

    /// Serializes `record` (the `index`-th of the push) straight into the push's text.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] when it cannot be serialized or is not a JSON object,
    /// [`Error::RecordTooLarge`] when its text is longer than the limit.
    pub(crate) fn serialize<T: Serialize + ?Sized>(
        &mut self,
        index: usize,
        record: &T,
    ) -> Result<()> {
        let start = self.text.len();
        let written = Cell::new(start);
        self.seen.quoted.clear();
        self.seen.raw = false;
        let serialized = {
            let writer = Tracked {
                out: &mut self.text,
                written: &written,
            };
            let formatter = KeyRecorder {
                depth: 0,
                key_start: 0,
                written: &written,
                seen: &mut self.seen,
            };
            record.serialize(&mut serde_json::Serializer::with_formatter(
                writer, formatter,
            ))
        };
        if let Err(err) = serialized {
            return Err(self.invalid(index, format!("it could not be serialized to JSON: {err}")));
        }
        let json = self.text.get(start..).unwrap_or_default();
        // Compact serializer output starts with the value's first character.
        if json.first() != Some(&b'{') {
            return Err(self.invalid(
                index,
                format!(
                    "a record must be a JSON object, this is {}",
                    kind_of_text(json)
                ),
            ));
        }
        self.check_size(index, start)?;
        self.current.clear();
        let seen = std::mem::take(&mut self.seen);
        let complete = !seen.raw
            && seen
                .quoted
                .iter()
                .all(|&(from, to)| self.add_quoted_key(from, to).is_ok());
        self.seen = seen;
        if !complete {
            self.current.clear();
            self.scan_keys(start)?;
        }
        self.end_record();
        Ok(())
    }

    /// Checks one JSON text (the `index`-th of the push) as a record and appends it compacted.
    ///
    /// Records are JSON text end to end: the text is validated by a streaming pass that builds
    /// nothing (no `Value`, so no number is converted and no key is special), checked to be an
    /// object, and compacted by dropping the whitespace between tokens. Every token keeps its
    /// exact text: `1e400`, `123456789012345678901234567890.123456789`, `-0.0`, escapes in
    /// strings and duplicate keys all reach Redis as they were written.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] when it is not valid JSON or not an object,
    /// [`Error::RecordTooLarge`] when its compact text is longer than the limit.
    pub(crate) fn parse(&mut self, index: usize, text: &str) -> Result<()> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        IgnoredAny::deserialize(&mut deserializer)
            .and_then(|IgnoredAny| deserializer.end())
            .map_err(|err| self.invalid(index, format!("it is not valid JSON: {err}")))?;
        let value = text.trim_start_matches(is_json_whitespace);
        if !value.starts_with('{') {
            return Err(self.invalid(
                index,
                format!(
                    "a record must be a JSON object, this is {}",
                    kind_of_text(value.as_bytes())
                ),
            ));
        }
        let start = self.text.len();
        compact(value, &mut self.text)
            .map_err(|reason| self.invalid(index, format!("it is not valid JSON: {reason}")))?;
        self.check_size(index, start)?;
        self.current.clear();
        self.scan_keys(start)?;
        self.end_record();
        Ok(())
    }

    /// Refuses the record written from `start` when it is longer than the limit; sizes the
    /// text buffer for the whole push after its first record.
    fn check_size(&mut self, index: usize, start: usize) -> Result<()> {
        let size = self.text.len() - start;
        if size > self.max_bytes {
            return Err(Error::RecordTooLarge {
                store: self.store.to_string(),
                index,
                size,
                max: self.max_bytes,
            });
        }
        if self.ends.is_empty() {
            // Records of one push are usually of similar size: one allocation for the rest.
            self.text
                .reserve((size + size / 8) * self.expected.saturating_sub(1));
        }
        self.max_len = self.max_len.max(size);
        Ok(())
    }

    /// Keeps the key whose quoted text is `from..to` in the push's text as a key of the
    /// record being added, and as a candidate key of the push unless the previous record had
    /// the same key at the same position. This runs for every key of every record: keys are
    /// short, so the comparison is a plain loop rather than a `memcmp` call.
    ///
    /// # Errors
    /// `Err` when the range is not a quoted string (the caller then reads the keys from the
    /// text), or when a key with escapes does not decode.
    fn add_quoted_key(&mut self, from: usize, to: usize) -> std::result::Result<(), ()> {
        let quoted = self.text.get(from..to).ok_or(())?;
        let [b'"', content @ .., b'"'] = quoted else {
            return Err(());
        };
        let span = if content.contains(&b'\\') {
            let key: String = serde_json::from_slice(quoted).map_err(|_| ())?;
            let start = self.decoded.len();
            self.decoded.push_str(&key);
            KeySpan::Decoded(start, self.decoded.len())
        } else {
            KeySpan::Text(from + 1, to - 1)
        };
        let known = self
            .previous
            .get(self.current.len())
            .is_some_and(|&before| {
                let (before, now) = (self.key_bytes(before), self.key_bytes(span));
                before.len() == now.len() && before.iter().zip(now).all(|(a, b)| a == b)
            });
        if !known {
            self.candidates.push(span);
        }
        self.current.push(span);
        Ok(())
    }

    /// Reads the top-level keys of the record written from `start` from its text.
    fn scan_keys(&mut self, start: usize) -> Result<()> {
        let mut quoted = Vec::new();
        top_level_keys(self.text.get(start..).unwrap_or_default(), |from, to| {
            quoted.push((start + from, start + to));
        })
        .map_err(|reason| Error::Corrupt {
            what: format!("an encoded record is not a JSON object: {reason}"),
        })?;
        for (from, to) in quoted {
            self.add_quoted_key(from, to).map_err(|()| Error::Corrupt {
                what: format!("an encoded record has a bad key at byte {}", from - start),
            })?;
        }
        Ok(())
    }

    /// Ends the record being added: notes where it ends; its keys are the previous ones for
    /// the next record.
    fn end_record(&mut self) {
        std::mem::swap(&mut self.previous, &mut self.current);
        self.ends.push(self.text.len());
    }

    fn key_bytes(&self, span: KeySpan) -> &[u8] {
        match span {
            KeySpan::Text(start, end) => self.text.get(start..end),
            KeySpan::Decoded(start, end) => self.decoded.as_bytes().get(start..end),
        }
        .unwrap_or_default()
    }

    /// The records added, with their distinct keys.
    ///
    /// # Errors
    /// [`Error::NoRecords`] when none was added.
    pub(crate) fn finish(self) -> Result<EncodedRecords> {
        if self.ends.is_empty() {
            return Err(Error::NoRecords {
                store: self.store.to_string(),
            });
        }
        let mut distinct: HashSet<&[u8]> = HashSet::with_capacity(self.candidates.len());
        let keys = self
            .candidates
            .iter()
            .copied()
            .filter(|&span| distinct.insert(self.key_bytes(span)))
            .collect();
        drop(distinct);
        Ok(EncodedRecords {
            text: self.text,
            ends: self.ends,
            max_len: self.max_len,
            keys,
            decoded: self.decoded,
        })
    }
}

/// The push's text buffer as serde_json's writer, telling [`KeyRecorder`] how much is written.
struct Tracked<'a> {
    out: &'a mut Vec<u8>,
    written: &'a Cell<usize>,
}

impl io::Write for Tracked<'_> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(buf);
        self.written.set(self.out.len());
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// serde_json's compact formatter, noting where each top-level key is written. serde_json
/// calls `begin_object_key`/`end_object_key` around every object key (maps, structs and enum
/// variants alike), so the depth of the objects and arrays around it is all it takes.
struct KeyRecorder<'a> {
    /// How many objects and arrays are open.
    depth: usize,
    /// Where the key being written starts.
    key_start: usize,
    written: &'a Cell<usize>,
    seen: &'a mut TopLevel,
}

impl Formatter for KeyRecorder<'_> {
    #[inline]
    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth += 1;
        writer.write_all(b"[")
    }

    #[inline]
    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth = self.depth.saturating_sub(1);
        writer.write_all(b"]")
    }

    #[inline]
    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth += 1;
        writer.write_all(b"{")
    }

    #[inline]
    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth = self.depth.saturating_sub(1);
        writer.write_all(b"}")
    }

    #[inline]
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if !first {
            writer.write_all(b",")?;
        }
        if self.depth == 1 {
            self.key_start = self.written.get();
        }
        Ok(())
    }

    #[inline]
    fn end_object_key<W: ?Sized + io::Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        if self.depth == 1 {
            self.seen.quoted.push((self.key_start, self.written.get()));
        }
        Ok(())
    }

    fn write_raw_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if self.depth == 0 {
            self.seen.raw = true;
        }
        writer.write_all(fragment.as_bytes())
    }
}

/// Calls `key` with the range of each top-level key's quoted text in `json`, a valid JSON
/// object text, in order: the string that follows the object's `{` or one of its own `,`.
/// Strings are skipped by their quotes and escapes, and nothing else is parsed, since the text
/// was validated when it was encoded. Used for `push_json` texts and for a record serialized
/// as a raw fragment, whose keys serde_json does not write one by one.
fn top_level_keys(
    json: &[u8],
    mut key: impl FnMut(usize, usize),
) -> std::result::Result<(), String> {
    if json.first() != Some(&b'{') {
        return Err(format!(
            "it starts with {:?}",
            json.first().map(|&b| char::from(b))
        ));
    }
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut i = 0;
    while let Some(&byte) = json.get(i) {
        match byte {
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => expect_key = depth == 1,
            b'"' => {
                let end = string_end(json, i + 1)
                    .ok_or_else(|| format!("an unterminated string at byte {i}"))?;
                if expect_key {
                    key(i, end + 1);
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

/// The index of the quote that closes the string whose content starts at `i`. Strings are
/// most of a record's bytes: memchr skips to the next quote or backslash with SIMD instead of
/// looking at every byte.
fn string_end(bytes: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i += memchr::memchr2(b'"', b'\\', bytes.get(i..)?)?;
        if bytes.get(i) == Some(&b'"') {
            return Some(i);
        }
        // An escape is at least two bytes; skipping the second keeps `\"` in the string.
        i += 2;
    }
}

/// The records of a `push_many`: each serialized and checked before anything is sent, the
/// error naming the index of the first bad one; [`Error::NoRecords`] for none.
pub(crate) fn encode_all<T: Serialize>(
    store: &StoreName,
    records: &[T],
    max_bytes: usize,
) -> Result<EncodedRecords> {
    let mut builder = RecordsBuilder::new(store, max_bytes, records.len());
    for (index, record) in records.iter().enumerate() {
        builder.serialize(index, record)?;
    }
    builder.finish()
}

/// The record of a `push`, serialized and checked.
pub(crate) fn encode_one<T: Serialize + ?Sized>(
    store: &StoreName,
    record: &T,
    max_bytes: usize,
) -> Result<EncodedRecords> {
    let mut builder = RecordsBuilder::new(store, max_bytes, 1);
    builder.serialize(0, record)?;
    builder.finish()
}

/// The records of a `push_json`: each text checked and compacted before anything is sent, the
/// error naming the index of the first bad one; [`Error::NoRecords`] for none.
pub(crate) fn parse_all<J: AsRef<str>>(
    store: &StoreName,
    texts: &[J],
    max_bytes: usize,
) -> Result<EncodedRecords> {
    let mut builder = RecordsBuilder::new(store, max_bytes, texts.len());
    for (index, text) in texts.iter().enumerate() {
        builder.parse(index, text.as_ref())?;
    }
    builder.finish()
}

/// JSON's four whitespace characters (RFC 8259), the only ones allowed between tokens.
fn is_json_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Appends a valid JSON text to `out` without the whitespace between its tokens, copying
/// every token's bytes unchanged, and refuses an unpaired UTF-16 surrogate escape (`"\ud800"`), which the syntax
/// pass lets through but no JSON parser that builds strings (serde_json's included) accepts:
/// a record that every reader can parse is part of what push promises.
fn compact(text: &str, out: &mut Vec<u8>) -> std::result::Result<(), String> {
    let bytes = text.as_bytes();
    out.reserve(text.len());
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
            out.extend_from_slice(bytes.get(run_start..i).unwrap_or_default());
            run_start = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(bytes.get(run_start..).unwrap_or_default());
    Ok(())
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

/// What a compact JSON text that is not an object is, from its first character.
fn kind_of_text(json: &[u8]) -> &'static str {
    match json.first() {
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

    fn parse(index: usize, text: &str, max: usize) -> Result<String> {
        let store = store();
        let mut builder = RecordsBuilder::new(&store, max, 1);
        builder.parse(index, text)?;
        Ok(String::from_utf8(builder.finish()?.text).unwrap())
    }

    fn encode<T: Serialize + ?Sized>(index: usize, record: &T, max: usize) -> Result<String> {
        let store = store();
        let mut builder = RecordsBuilder::new(&store, max, 1);
        builder.serialize(index, record)?;
        Ok(String::from_utf8(builder.finish()?.text).unwrap())
    }

    fn parsed(texts: &[&str]) -> EncodedRecords {
        parse_all(&store(), texts, 1000).unwrap()
    }

    fn sorted_keys(records: &EncodedRecords) -> Vec<String> {
        let mut keys: Vec<String> = records
            .keys()
            .map(|key| String::from_utf8(key.to_vec()).unwrap())
            .collect();
        keys.sort();
        keys
    }

    /// The distinct top-level keys of `text` as serde_json parses them, sorted.
    fn parsed_keys(text: &str) -> Vec<String> {
        let parsed: serde_json::Map<String, Value> = serde_json::from_str(text).unwrap();
        let mut keys: Vec<String> = parsed.keys().cloned().collect();
        keys.sort();
        keys
    }

    #[test]
    fn unique_keys_are_shared_across_records_and_escapes_are_decoded() {
        let records = parsed(&[r#"{"a":1,"b":{"x":1}}"#, r#"{"b":2,"c\u00e9":3}"#, "{}"]);
        assert_eq!(sorted_keys(&records), ["a", "b", "cé"]);
        assert_eq!(
            records.texts().collect::<Vec<_>>(),
            [
                &br#"{"a":1,"b":{"x":1}}"#[..],
                br#"{"b":2,"c\u00e9":3}"#,
                b"{}"
            ]
        );
        let plain = parsed(&[r#"{"a":1,"b":2}"#]);
        assert!(
            plain.keys.iter().all(|k| matches!(k, KeySpan::Text(..))),
            "plain keys are borrowed from the text"
        );
    }

    #[test]
    fn objects_are_encoded_compactly_with_their_keys() {
        let records = parsed(&[r#"{ "b": 1, "a": [1, 2] }"#]);
        assert_eq!(
            records.texts().collect::<Vec<_>>(),
            [br#"{"b":1,"a":[1,2]}"#]
        );
        assert_eq!(sorted_keys(&records), ["a", "b"]);
        assert_eq!(
            (records.bytes(), records.max_len(), records.len()),
            (17, 17, 1)
        );
    }

    #[test]
    fn big_numbers_survive_exactly() {
        let text =
            r#"{"n":123456789012345678901234567890,"f":0.1000000000000000055511151231257827}"#;
        assert_eq!(parse(0, text, 1000).unwrap(), text);
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
            assert_eq!(parse(0, text, 1000).unwrap(), compact, "{text}");
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
            let err = parse(4, text, 1000).unwrap_err();
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
        let encoded = encode_one(&store(), &order, 1000).unwrap();
        let text = std::str::from_utf8(encoded.texts().next().unwrap()).unwrap();
        assert_eq!(parse(0, text, 1000).unwrap(), text);
        assert_eq!(
            sorted_keys(&encoded),
            ["id", "nested", "tags", "tötal \"x\""]
        );
    }

    /// The keys seen while serializing are exactly those serde_json parses back from the text,
    /// whatever shape of `Serialize` wrote the object.
    #[test]
    fn keys_seen_while_serializing_are_the_keys_of_the_text() {
        use std::collections::BTreeMap;
        #[derive(Serialize)]
        struct Inner {
            deep: u8,
        }
        #[derive(Serialize)]
        struct Flat {
            a: u8,
            #[serde(flatten)]
            rest: BTreeMap<String, Inner>,
            #[serde(skip_serializing_if = "Option::is_none")]
            skipped: Option<u8>,
        }
        #[derive(Serialize)]
        struct Newtype(BTreeMap<i64, Vec<Inner>>);
        #[derive(Serialize)]
        enum Event {
            Created { id: u32, inner: Inner },
            Tagged(Vec<u8>),
        }
        let raw = serde_json::value::RawValue::from_string(
            r#"{"r1":{"x":1},"r\"2":[{"y":2}]}"#.to_owned(),
        )
        .unwrap();
        let inner_raw = serde_json::value::RawValue::from_string(r#"{"in":1}"#.to_owned()).unwrap();
        let with_raw_value: BTreeMap<&str, &serde_json::value::RawValue> =
            [("v", &*inner_raw), ("w", &*inner_raw)].into();
        let records: Vec<Box<dyn erased::Record + '_>> = vec![
            Box::new(Flat {
                a: 1,
                rest: [
                    ("b".to_owned(), Inner { deep: 2 }),
                    ("c\n".to_owned(), Inner { deep: 3 }),
                ]
                .into_iter()
                .collect(),
                skipped: None,
            }),
            Box::new(Newtype(
                [(-3, vec![Inner { deep: 1 }]), (7, vec![])]
                    .into_iter()
                    .collect(),
            )),
            Box::new(Event::Created {
                id: 1,
                inner: Inner { deep: 4 },
            }),
            Box::new(Event::Tagged(vec![1, 2])),
            Box::new(raw),
            Box::new(serde_json::json!({"x": {"y": [{"z": 1}]}, "é\u{1}": "{\"q\":1}", "": null})),
            Box::new(with_raw_value),
            Box::new(BTreeMap::<bool, u8>::from([(true, 1), (false, 0)])),
        ];
        for record in &records {
            let encoded = erased::encode(record.as_ref()).unwrap();
            let text = String::from_utf8(encoded.texts().next().unwrap().to_vec()).unwrap();
            assert_eq!(sorted_keys(&encoded), parsed_keys(&text), "{text}");
        }
    }

    /// `Serialize` is not object safe: a boxed record for the test above.
    mod erased {
        use super::*;

        pub(super) trait Record {
            fn encode(&self) -> Result<EncodedRecords>;
        }

        impl<T: Serialize> Record for T {
            fn encode(&self) -> Result<EncodedRecords> {
                encode_one(&store(), self, 1000)
            }
        }

        pub(super) fn encode(record: &dyn Record) -> Result<EncodedRecords> {
            record.encode()
        }
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
            let err = encode(2, &value, 100).unwrap_err();
            assert!(
                matches!(err, Error::InvalidRecord { index: 2, ref reason, .. } if reason.ends_with(kind)),
                "{value}: {err}"
            );
        }
        let raw = serde_json::value::RawValue::from_string("[1]".to_owned()).unwrap();
        let err = encode(0, &raw, 100).unwrap_err();
        assert!(
            matches!(err, Error::InvalidRecord { ref reason, .. } if reason.ends_with("an array")),
            "{err}"
        );
    }

    #[test]
    fn non_objects_and_oversized_records_are_refused() {
        let err = parse(3, "[1]", 100).unwrap_err();
        assert!(
            matches!(err, Error::InvalidRecord { index: 3, ref reason, .. } if reason.contains("an array"))
        );
        let err = parse(0, "{oops", 100).unwrap_err();
        assert!(
            matches!(err, Error::InvalidRecord { ref reason, .. } if reason.contains("not valid JSON"))
        );
        let err = encode(1, &serde_json::json!({"a": "x".repeat(50)}), 20).unwrap_err();
        assert!(matches!(
            err,
            Error::RecordTooLarge {
                index: 1,
                max: 20,
                ..
            }
        ));
        let unserializable: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let err = encode(5, &unserializable, 100).unwrap_err();
        assert!(
            matches!(err, Error::InvalidRecord { index: 5, ref reason, .. } if reason.contains("could not be serialized")),
            "{err}"
        );
    }

    #[test]
    fn a_bad_record_among_good_ones_is_named_by_its_index() {
        let records = [
            serde_json::json!({"a": 1}),
            serde_json::json!({"a": 2}),
            serde_json::json!([3]),
            serde_json::json!({"a": 4}),
        ];
        let err = encode_all(&store(), &records, 100).unwrap_err();
        assert!(
            matches!(err, Error::InvalidRecord { index: 2, .. }),
            "{err}"
        );
        let texts = [r#"{"a":1}"#, r#"{"a":"#];
        let err = parse_all(&store(), &texts, 100).unwrap_err();
        assert!(
            matches!(err, Error::InvalidRecord { index: 1, .. }),
            "{err}"
        );
        let none: [Value; 0] = [];
        assert!(matches!(
            encode_all(&store(), &none, 100),
            Err(Error::NoRecords { .. })
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
            top_level_keys(text.as_bytes(), |from, to| {
                scanned.push(serde_json::from_str::<String>(&text[from..to]).unwrap());
            })
            .unwrap();
            scanned.sort();
            scanned.dedup();
            let expected = parsed_keys(text);
            assert_eq!(scanned, expected, "{text}");
            assert_eq!(sorted_keys(&parsed(&[text])), expected, "{text}");
            let value: Value = serde_json::from_str(text).unwrap();
            let encoded = encode_one(&store(), &value, 1000).unwrap();
            assert_eq!(sorted_keys(&encoded), expected, "{text}");
        }
        assert!(top_level_keys(b"[1]", |_, _| ()).is_err());
        assert!(top_level_keys(br#"{"a"#, |_, _| ()).is_err());
    }

    #[test]
    fn keys_shared_by_position_or_not_are_all_found() {
        let texts = [
            r#"{"a":1,"b":2}"#,
            r#"{"a":1,"b":2}"#,
            r#"{"b":1,"a":2,"c":3}"#,
            r#"{"a":1}"#,
            r#"{"d":1,"a":2}"#,
            r#"{"d":1,"a":2,"e\u0041":3}"#,
            r#"{"d":1,"a":2,"eA":3}"#,
        ];
        let records = parsed(&texts);
        assert_eq!(sorted_keys(&records), ["a", "b", "c", "d", "eA"]);
        assert_eq!(records.keys().len(), 5, "each key once");
        let values: Vec<Value> = texts
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        let encoded = encode_all(&store(), &values, 100).unwrap();
        assert_eq!(sorted_keys(&encoded), ["a", "b", "c", "d", "eA"]);
        assert_eq!(encoded.keys().len(), 5, "each key once");
    }
}
