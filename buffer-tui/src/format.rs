//! Numbers, sizes, durations and untrusted text made fit for a terminal cell.

use std::borrow::Cow;

use ratatui::text::Span;

/// `1536` → `1.5 KiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// `12345` → `12.3k`: counts that stay narrow.
pub(crate) fn count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

/// A duration in ms, short: `0.4s`, `4.2s`, `42s`, `3m05s`, `2h03m`, `3d04h` — the same
/// spelling as `buffer-persist stores`.
pub(crate) use buffer_persist::cli::short_duration as duration_ms;

/// An age, to the second: `0s`, `42s`, `3m05s`…
pub(crate) fn age_ms(ms: u64) -> String {
    if ms < 60_000 {
        format!("{}s", ms / 1000)
    } else {
        duration_ms(ms)
    }
}

/// Replaces control characters (an escape sequence in a store name, a newline in a record)
/// so untrusted text can never move the cursor or recolour the terminal.
pub(crate) fn clean(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(
            text.chars()
                .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(text)
    }
}

/// The display width of a string.
pub(crate) fn width(text: &str) -> usize {
    Span::raw(text).width()
}

/// `text` cut to at most `max` columns, with `…` when something was cut. Control characters
/// are replaced as by [`clean`].
pub(crate) fn fit(text: &str, max: usize) -> String {
    let text = clean(text);
    if width(&text) <= max {
        return text.into_owned();
    }
    if max == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    let mut buf = [0u8; 4];
    for c in text.chars() {
        let w = width(c.encode_utf8(&mut buf));
        if used + w > max - 1 {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

/// `text` cleaned as by [`clean`] and broken into lines of at most `max` columns, at spaces
/// where it can and inside a word (a long path) where it must: nothing is left out.
pub(crate) fn wrap(text: &str, max: usize) -> Vec<String> {
    let text = clean(text);
    let max = max.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut used = 0;
    let mut buf = [0u8; 4];
    for word in text.split(' ') {
        let word_width = width(word);
        // The word goes on this line, or starts the next one when it fits there whole.
        if used > 0 && used + 1 + word_width > max && word_width <= max {
            lines.push(std::mem::take(&mut line));
            used = 0;
        } else if used > 0 {
            if used < max {
                line.push(' ');
                used += 1;
            } else {
                lines.push(std::mem::take(&mut line));
                used = 0;
            }
        }
        for c in word.chars() {
            let w = width(c.encode_utf8(&mut buf));
            if used + w > max {
                lines.push(std::mem::take(&mut line));
                used = 0;
            }
            line.push(c);
            used += w;
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_counts_are_short() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(20 * 1024 * 1024), "20 MiB");
        assert_eq!(count(9_999), "9999");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(2_500_000), "2.5M");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration_ms(400), "0.4s");
        assert_eq!(duration_ms(4_250), "4.2s");
        assert_eq!(duration_ms(42_000), "42s");
        assert_eq!(duration_ms(185_000), "3m05s");
        assert_eq!(duration_ms(7_380_000), "2h03m");
        assert_eq!(duration_ms(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
        assert_eq!(age_ms(4_250), "4s");
    }

    #[test]
    fn untrusted_text_is_cleaned_and_fitted() {
        assert_eq!(clean("a\u{1b}[31mb\n"), "a\u{fffd}[31mb\u{fffd}");
        assert_eq!(fit("orders", 10), "orders");
        assert_eq!(fit("orders-and-more", 8), "orders-…");
        assert_eq!(fit("日本語の名前", 5), "日本…");
        assert_eq!(fit("abc", 0), "");
    }

    #[test]
    fn wrapped_text_keeps_every_character_and_breaks_at_spaces() {
        assert_eq!(
            wrap("no space left on device", 10),
            ["no space", "left on", "device"]
        );
        // A path longer than a line is broken inside it; nothing is lost.
        let path = "create out/orders/1699999998000-000000000000ef56.jsonl: Is a directory";
        let lines = wrap(path, 20);
        assert!(lines.iter().all(|l| width(l) <= 20), "{lines:?}");
        assert_eq!(lines.join(" ").replace(' ', ""), path.replace(' ', ""));
        assert_eq!(wrap("", 5), [""]);
        assert_eq!(wrap("a\u{1b}b", 5), ["a\u{fffd}b"]);
    }
}
