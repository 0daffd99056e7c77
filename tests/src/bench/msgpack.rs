//! A prototype of a compact record encoding in Redis (MessagePack), for the memory study
//! only: it measures what such an encoding would save and what decoding it back to the exact
//! JSON text would cost a drain. It is not used by the library (see BENCHMARKS.md's "Redis
//! memory per record" for the decision and docs/operations.md for why records stay JSON in Redis).
//!
//! Files must stay byte-identical to today's, so a record is encoded only when decoding gives
//! back its exact text; any other record (a number written `12.50` or `1.0e3`, a string with
//! a `\u00e9` escape) is stored as its JSON text, which starts with `{` (MessagePack's fixint
//! 123, never the first byte of an encoded object), so the two never mix up.

use anyhow::{Result, bail, ensure};
use serde_json::Value;

/// The stored form of one record's JSON text: MessagePack when it decodes back to exactly
/// `text`, else `text` itself. The flag says which.
pub fn encode(text: &str) -> Result<(Vec<u8>, bool)> {
    // A number beyond f64's range (`1e400`) does not parse into a `Value`: such a record
    // stays JSON text, like any other that would not come back exactly.
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Ok((text.as_bytes().to_vec(), false));
    };
    ensure!(value.is_object(), "a record is a JSON object: {text}");
    let mut packed = Vec::with_capacity(text.len());
    write_value(&value, &mut packed);
    let mut back = Vec::with_capacity(text.len());
    decode_into(&packed, &mut back)?;
    if back == text.as_bytes() {
        Ok((packed, true))
    } else {
        Ok((text.as_bytes().to_vec(), false))
    }
}

fn write_len(out: &mut Vec<u8>, len: usize, fix: u8, fix_max: usize, wide: [u8; 3]) {
    if len <= fix_max {
        out.push(fix | len as u8);
    } else if wide[0] != 0 && len <= usize::from(u8::MAX) {
        out.extend([wide[0], len as u8]);
    } else if len <= usize::from(u16::MAX) {
        out.push(wide[1]);
        out.extend((len as u16).to_be_bytes());
    } else {
        out.push(wide[2]);
        out.extend((len as u32).to_be_bytes());
    }
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(0xc0),
        Value::Bool(false) => out.push(0xc2),
        Value::Bool(true) => out.push(0xc3),
        Value::Number(number) => {
            if let Some(u) = number.as_u64() {
                if u < 128 {
                    out.push(u as u8);
                } else if u <= u64::from(u8::MAX) {
                    out.extend([0xcc, u as u8]);
                } else if u <= u64::from(u16::MAX) {
                    out.push(0xcd);
                    out.extend((u as u16).to_be_bytes());
                } else if u <= u64::from(u32::MAX) {
                    out.push(0xce);
                    out.extend((u as u32).to_be_bytes());
                } else {
                    out.push(0xcf);
                    out.extend(u.to_be_bytes());
                }
            } else if let Some(i) = number.as_i64() {
                if i >= -32 {
                    out.push(i as i8 as u8);
                } else if i >= i64::from(i8::MIN) {
                    out.extend([0xd0, i as i8 as u8]);
                } else if i >= i64::from(i16::MIN) {
                    out.push(0xd1);
                    out.extend((i as i16).to_be_bytes());
                } else if i >= i64::from(i32::MIN) {
                    out.push(0xd2);
                    out.extend((i as i32).to_be_bytes());
                } else {
                    out.push(0xd3);
                    out.extend(i.to_be_bytes());
                }
            } else {
                out.push(0xcb);
                out.extend(number.as_f64().unwrap_or(f64::NAN).to_be_bytes());
            }
        }
        Value::String(text) => {
            write_len(out, text.len(), 0xa0, 31, [0xd9, 0xda, 0xdb]);
            out.extend(text.as_bytes());
        }
        Value::Array(items) => {
            write_len(out, items.len(), 0x90, 15, [0, 0xdc, 0xdd]);
            items.iter().for_each(|item| write_value(item, out));
        }
        Value::Object(fields) => {
            write_len(out, fields.len(), 0x80, 15, [0, 0xde, 0xdf]);
            for (key, item) in fields {
                write_len(out, key.len(), 0xa0, 31, [0xd9, 0xda, 0xdb]);
                out.extend(key.as_bytes());
                write_value(item, out);
            }
        }
    }
}

/// Appends the compact JSON text of one stored record (MessagePack or JSON text) to `out`:
/// the work a persister would add per record on the drain path.
///
/// # Errors
/// Truncated or invalid MessagePack, or a string that is not UTF-8.
pub fn decode_into(bytes: &[u8], out: &mut Vec<u8>) -> Result<()> {
    if bytes.first() == Some(&b'{') {
        out.extend(bytes);
        return Ok(());
    }
    let mut reader = Reader { bytes, at: 0 };
    reader.value(out)?;
    ensure!(reader.at == bytes.len(), "trailing bytes after the record");
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let Some(slice) = self.bytes.get(self.at..self.at + n) else {
            bail!("truncated MessagePack at byte {}", self.at);
        };
        self.at += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn len(&mut self, width: usize) -> Result<usize> {
        Ok(match width {
            1 => usize::from(self.array::<1>()?[0]),
            2 => usize::from(u16::from_be_bytes(self.array()?)),
            _ => u32::from_be_bytes(self.array()?) as usize,
        })
    }

    fn string(&mut self, len: usize, out: &mut Vec<u8>) -> Result<()> {
        let text = std::str::from_utf8(self.take(len)?)?;
        // Most strings need no escape: copy them as they are, as a real decoder would.
        if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            out.push(b'"');
            out.extend(text.as_bytes());
            out.push(b'"');
        } else {
            serde_json::to_writer(out, text)?;
        }
        Ok(())
    }

    fn key(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let tag = self.array::<1>()?[0];
        let len = match tag {
            0xa0..=0xbf => usize::from(tag & 0x1f),
            0xd9 => self.len(1)?,
            0xda => self.len(2)?,
            0xdb => self.len(4)?,
            _ => bail!("a map key is not a string (tag {tag:#x})"),
        };
        self.string(len, out)
    }

    fn map(&mut self, len: usize, out: &mut Vec<u8>) -> Result<()> {
        out.push(b'{');
        for i in 0..len {
            if i > 0 {
                out.push(b',');
            }
            self.key(out)?;
            out.push(b':');
            self.value(out)?;
        }
        out.push(b'}');
        Ok(())
    }

    fn list(&mut self, len: usize, out: &mut Vec<u8>) -> Result<()> {
        out.push(b'[');
        for i in 0..len {
            if i > 0 {
                out.push(b',');
            }
            self.value(out)?;
        }
        out.push(b']');
        Ok(())
    }

    fn value(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let tag = self.array::<1>()?[0];
        match tag {
            0x00..=0x7f => serde_json::to_writer(out, &tag)?,
            0x80..=0x8f => self.map(usize::from(tag & 0x0f), out)?,
            0x90..=0x9f => self.list(usize::from(tag & 0x0f), out)?,
            0xa0..=0xbf => self.string(usize::from(tag & 0x1f), out)?,
            0xc0 => out.extend(b"null"),
            0xc2 => out.extend(b"false"),
            0xc3 => out.extend(b"true"),
            0xcb => serde_json::to_writer(out, &f64::from_be_bytes(self.array()?))?,
            0xcc => serde_json::to_writer(out, &self.array::<1>()?[0])?,
            0xcd => serde_json::to_writer(out, &u16::from_be_bytes(self.array()?))?,
            0xce => serde_json::to_writer(out, &u32::from_be_bytes(self.array()?))?,
            0xcf => serde_json::to_writer(out, &u64::from_be_bytes(self.array()?))?,
            0xd0 => serde_json::to_writer(out, &i8::from_be_bytes(self.array()?))?,
            0xd1 => serde_json::to_writer(out, &i16::from_be_bytes(self.array()?))?,
            0xd2 => serde_json::to_writer(out, &i32::from_be_bytes(self.array()?))?,
            0xd3 => serde_json::to_writer(out, &i64::from_be_bytes(self.array()?))?,
            0xd9 => {
                let len = self.len(1)?;
                self.string(len, out)?;
            }
            0xda => {
                let len = self.len(2)?;
                self.string(len, out)?;
            }
            0xdb => {
                let len = self.len(4)?;
                self.string(len, out)?;
            }
            0xdc => {
                let len = self.len(2)?;
                self.list(len, out)?;
            }
            0xdd => {
                let len = self.len(4)?;
                self.list(len, out)?;
            }
            0xde => {
                let len = self.len(2)?;
                self.map(len, out)?;
            }
            0xdf => {
                let len = self.len(4)?;
                self.map(len, out)?;
            }
            0xe0..=0xff => serde_json::to_writer(out, &(tag as i8))?,
            _ => bail!("unsupported MessagePack tag {tag:#x}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> (Vec<u8>, bool) {
        let (stored, packed) = encode(text).unwrap();
        let mut back = Vec::new();
        decode_into(&stored, &mut back).unwrap();
        assert_eq!(String::from_utf8(back).unwrap(), text);
        (stored, packed)
    }

    #[test]
    fn canonical_records_are_packed_and_come_back_exactly() {
        let text = r#"{"host":"web-1","value":12.34,"load":[123,45,300],"at":1700000000000,"neg":-40,"x":null,"ok":false,"s":"a\"b\n"}"#;
        let (stored, packed) = round_trip(text);
        assert!(packed);
        assert!(stored.len() < text.len());
    }

    #[test]
    fn texts_that_would_not_come_back_exactly_stay_json() {
        for text in [
            r#"{"a":12.50}"#,
            r#"{"a":1.0e3}"#,
            r#"{"a":"\u00e9"}"#,
            r#"{"a":1e400}"#,
        ] {
            let (stored, packed) = encode(text).unwrap();
            assert!(!packed, "{text}");
            assert_eq!(stored, text.as_bytes());
        }
    }
}
