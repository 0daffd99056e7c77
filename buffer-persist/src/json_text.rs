//! A JSON text as `push_once` is given it: compacted exactly as `push_json` stores it, so a
//! record reads the same whichever way it was pushed (the CLI's `push --idempotent` and the
//! HTTP API's `Idempotency-Key` both use it).

use serde_json::value::RawValue;

/// A line as the record `push_once` is given: valid JSON with the whitespace between its tokens
/// dropped and every token's bytes unchanged, which is what `push_json` stores for the same
/// line, so a record reads the same whether it was pushed with `--idempotent` or not.
///
/// `push_once` serializes what it is given, so the line goes in as a `RawValue` (its text, not
/// a `Value`, which would rewrite numbers such as `1e400`). Whether it is an object, and its
/// size, `push_once` checks itself. An unpaired UTF-16 surrogate escape (`"\ud800"`) is
/// refused, as `push_json` refuses it: no JSON parser that builds strings would read it back.
///
/// # Errors
/// Why the line is not valid JSON, in words.
pub(crate) fn compact_record(line: &str) -> Result<Box<RawValue>, String> {
    let value: &RawValue =
        serde_json::from_str(line).map_err(|err| format!("it is not valid JSON: {err}"))?;
    let text = value.get();
    let mut compact = String::with_capacity(text.len());
    let mut in_string = false;
    // Set after a high-surrogate escape: the next character must start a low-surrogate escape.
    let mut awaiting_low_surrogate = false;
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        if !in_string {
            if !matches!(c, ' ' | '\t' | '\n' | '\r') {
                compact.push(c);
            }
            in_string = c == '"';
            continue;
        }
        if awaiting_low_surrogate && c != '\\' {
            return Err(format!(
                "it is not valid JSON: unpaired surrogate escape before byte {at}"
            ));
        }
        compact.push(c);
        match c {
            '"' => in_string = false,
            '\\' => {
                // The text is valid JSON, so an escape is complete: `\u` and four hex digits,
                // or one character.
                let Some((_, escaped)) = chars.next() else {
                    break;
                };
                compact.push(escaped);
                if escaped == 'u' {
                    let hex: String = chars.by_ref().take(4).map(|(_, h)| h).collect();
                    compact.push_str(&hex);
                    let unit = u16::from_str_radix(&hex, 16).map_err(|_| {
                        format!("it is not valid JSON: a bad \\u escape at byte {at}")
                    })?;
                    let low = (0xDC00..=0xDFFF).contains(&unit);
                    if awaiting_low_surrogate != low {
                        return Err(format!(
                            "it is not valid JSON: unpaired surrogate escape at byte {at}"
                        ));
                    }
                    awaiting_low_surrogate = (0xD800..=0xDBFF).contains(&unit);
                } else if awaiting_low_surrogate {
                    return Err(format!(
                        "it is not valid JSON: unpaired surrogate escape at byte {at}"
                    ));
                }
            }
            _ => {}
        }
    }
    RawValue::from_string(compact).map_err(|err| format!("it is not valid JSON: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_compacted_like_push_json_and_keeps_every_token() {
        let record =
            compact_record("  { \"a\" : 1e400 , \"b\" : [ 1 , \"x y\\\" z\" ] }  ").unwrap();
        assert_eq!(record.get(), r#"{"a":1e400,"b":[1,"x y\" z"]}"#);
        let record = compact_record(r#"{"k": "\ud83d\ude00 \n"}"#).unwrap();
        assert_eq!(record.get(), r#"{"k":"\ud83d\ude00 \n"}"#);
        assert!(compact_record(r#"{"k": "\ud800"}"#).is_err());
        assert!(compact_record(r#"{"k": "\ud800\n"}"#).is_err());
        assert!(compact_record(r#"{"k": "\udc00"}"#).is_err());
        assert!(compact_record("{\"k\": ").is_err());
    }
}
