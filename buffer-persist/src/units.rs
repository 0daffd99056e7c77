//! Numbers as operators read them in logs and messages: sizes in binary units (`8 MiB`),
//! durations in the largest fitting unit (`60 s`, `1 h 30 min`), counts with their noun in the
//! right number (`1 batch`, `2 batches`). Never Rust's debug forms (`Some(8388608)`, `0ns`).

use std::time::Duration;

/// `n` followed by `one` or `many`: `1 batch`, `0 batches`, `2 batches`.
pub(crate) fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A byte count in the largest binary unit it reaches: `512 B`, `64 KiB`, `8 MiB`, `1.5 GiB`
/// (one decimal when it is not whole).
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// A duration in the units a person would say: `0 s`, `250 ms`, `60 s`, `5 min`,
/// `1 h 30 min` (humantime's parts, spaced).
pub(crate) fn duration(d: Duration) -> String {
    if d.is_zero() {
        return "0 s".to_owned();
    }
    // Under two minutes, whole seconds read best: `60 s`, `90 s`, not `1 min 30 s`.
    if d.subsec_nanos() == 0 && d.as_secs() < 120 {
        return format!("{} s", d.as_secs());
    }
    humantime::format_duration(d)
        .to_string()
        .split(' ')
        .map(spaced)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `30m` → `30 min`, `1h` → `1 h`, `250ms` → `250 ms`.
fn spaced(part: &str) -> String {
    let split = part
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(part.len());
    let (number, unit) = part.split_at(split);
    let unit = match unit {
        "m" => "min",
        "s" => "s",
        other => other,
    };
    format!("{number} {unit}")
}

/// A limit that may be unset: its value, or `none`.
pub(crate) fn optional<T>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map_or_else(|| "none".to_owned(), show)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_the_right_number() {
        assert_eq!(count(1, "batch", "batches"), "1 batch");
        assert_eq!(count(0, "batch", "batches"), "0 batches");
        assert_eq!(count(2, "record", "records"), "2 records");
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(64 * 1024), "64 KiB");
        assert_eq!(bytes(8_388_608), "8 MiB");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5 GiB");
    }

    #[test]
    fn durations_read_as_spoken() {
        assert_eq!(duration(Duration::ZERO), "0 s");
        assert_eq!(duration(Duration::from_secs(60)), "60 s");
        assert_eq!(duration(Duration::from_secs(300)), "5 min");
        assert_eq!(duration(Duration::from_secs(45)), "45 s");
        assert_eq!(duration(Duration::from_secs(90)), "90 s");
        assert_eq!(duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(duration(Duration::from_secs(5400)), "1 h 30 min");
        assert_eq!(optional(None::<u64>, bytes), "none");
        assert_eq!(optional(Some(1024), bytes), "1 KiB");
    }
}
