//! What a persister does and how: thresholds, output format, concurrency.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;
use crate::paths::{DEFAULT_PATH_TEMPLATE, PathTemplate};

/// The file format of persisted batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// One compact JSON object per line (`.jsonl`).
    #[default]
    JsonLines,
    /// CSV (`.csv`) with a header of the batch's sorted unique keys, at most
    /// [`PersistConfig::csv_max_columns`] of them; the keys beyond go into one trailing column
    /// holding a JSON object. Strings are written as they are, `null` and missing keys as empty
    /// fields, other values as their JSON text exactly as pushed.
    Csv,
    /// Parquet (`.parquet`), one file per batch with a schema inferred from its records
    /// (README.md, "Parquet"); `--compress` picks the columns' codec, and the file name gets
    /// no compression suffix.
    Parquet,
}

/// The compression of persisted files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Plain files.
    #[default]
    None,
    /// gzip (`.gz`).
    Gzip,
    /// Zstandard (`.zst`).
    Zstd,
}

impl Format {
    /// The file extension, without the compression suffix.
    pub fn extension(self) -> &'static str {
        match self {
            Self::JsonLines => "jsonl",
            Self::Csv => "csv",
            Self::Parquet => "parquet",
        }
    }
}

impl Compression {
    /// The suffix added after the format's extension (empty for none).
    pub fn suffix(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Gzip => ".gz",
            Self::Zstd => ".zst",
        }
    }
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "jsonl" | "json-lines" | "jsonlines" => Ok(Self::JsonLines),
            "csv" => Ok(Self::Csv),
            "parquet" => Ok(Self::Parquet),
            other => Err(Error::Config(format!(
                "unknown format {other:?}; use jsonl, csv or parquet"
            ))),
        }
    }
}

impl FromStr for Compression {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "none" => Ok(Self::None),
            "gzip" | "gz" => Ok(Self::Gzip),
            "zstd" | "zst" => Ok(Self::Zstd),
            other => Err(Error::Config(format!(
                "unknown compression {other:?}; use none, gzip or zstd"
            ))),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        })
    }
}

/// How a persister runs.
#[derive(Clone, Debug)]
pub struct PersistConfig {
    /// The output directory; batches go to `<out_dir>/<path_template>`.
    pub out_dir: PathBuf,
    /// Where a batch's file goes under `out_dir` (default [`DEFAULT_PATH_TEMPLATE`],
    /// `<encoded store>/<batch id>.<ext>`); see [`PathTemplate`] for the placeholders and
    /// rules. Checked by [`PersistConfig::validate`].
    pub path_template: String,
    /// Time between polls (default 1 s).
    pub interval: Duration,
    /// A store is flushed once its first record is this old (default 60 s).
    pub max_age: Duration,
    /// A store is flushed once it holds this many bytes.
    pub max_bytes: Option<u64>,
    /// A store is flushed once it holds this many records.
    pub max_records: Option<u64>,
    /// The file format (default JSON Lines).
    pub format: Format,
    /// The compression (default none).
    pub compression: Compression,
    /// How many batches are written at once (default 4).
    pub concurrency: usize,
    /// TTL of the locks taken; they are extended while a batch is written (default 30 s).
    pub lock_ttl: Duration,
    /// How long `drain` waits for batches locked by other persisters (default 2 × `lock_ttl`).
    pub drain_wait: Option<Duration>,
    /// At most this many named columns in a CSV or Parquet file (default
    /// [`DEFAULT_CSV_MAX_COLUMNS`]):
    /// the first ones of the batch's sorted unique keys. A record's other keys go into one
    /// trailing column as a JSON object, so a file stays proportional to its records however
    /// many distinct keys they have (and a Parquet writer holds one column writer per column,
    /// so its memory stays bounded too).
    pub csv_max_columns: usize,
}

/// The default of [`PersistConfig::csv_max_columns`].
pub const DEFAULT_CSV_MAX_COLUMNS: usize = 1024;

impl PersistConfig {
    /// A configuration writing to `out_dir`, with every other setting at its default.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        Self {
            out_dir: out_dir.into(),
            path_template: DEFAULT_PATH_TEMPLATE.to_owned(),
            interval: Duration::from_secs(1),
            max_age: Duration::from_secs(60),
            max_bytes: None,
            max_records: None,
            format: Format::JsonLines,
            compression: Compression::None,
            concurrency: 4,
            lock_ttl: Duration::from_secs(30),
            drain_wait: None,
            csv_max_columns: DEFAULT_CSV_MAX_COLUMNS,
        }
    }

    /// The parsed [`PersistConfig::path_template`].
    ///
    /// # Errors
    /// [`Error::Config`] naming what is wrong with the template (see [`PathTemplate::parse`]).
    pub fn path_template(&self) -> Result<PathTemplate, Error> {
        PathTemplate::parse(&self.path_template)
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting that is out of range, a path template that could
    /// misplace a file, or an output directory that is a URL (`s3://bucket/x`): only local or
    /// mounted directories are written.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(scheme) = url_scheme(&self.out_dir) {
            return Err(Error::Config(format!(
                "--out {} is a {scheme}:// URL, but buffer-persist writes only to a directory (local or a mounted shared file system); write ./{} if you really mean a directory of that name",
                self.out_dir.display(),
                self.out_dir.display()
            )));
        }
        self.path_template()?;
        if self.concurrency == 0 {
            return Err(Error::Config("--concurrency must be at least 1".into()));
        }
        if self.lock_ttl < Duration::from_millis(100) {
            return Err(Error::Config("--lock-ttl must be at least 100ms".into()));
        }
        if self.interval.is_zero() {
            return Err(Error::Config("--interval must be more than 0".into()));
        }
        if self.max_bytes == Some(0) || self.max_records == Some(0) {
            return Err(Error::Config(
                "--max-bytes and --max-records must be more than 0".into(),
            ));
        }
        Ok(())
    }
}

/// The scheme of an output path that looks like a URL (`scheme://...`): a scheme is a letter
/// followed by letters, digits, `+`, `-` or `.` (RFC 3986). Such a path would otherwise become
/// a local directory named `scheme:`, silently.
fn url_scheme(path: &std::path::Path) -> Option<&str> {
    let text = path.to_str()?;
    let (scheme, _) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

/// Parses a size such as `8MiB`, `512k`, `1.5GB` or `1000` (bytes).
///
/// # Errors
/// [`Error::Config`] for an unknown unit or a malformed number.
pub(crate) fn parse_size(text: &str) -> Result<u64, Error> {
    let bad = || {
        Error::Config(format!(
            "{text:?} is not a size; write e.g. 1000, 64KiB, 8MiB, 1GB"
        ))
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = number * factor;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration such as `200ms`, `10s`, `5m` or `1h 30m`.
///
/// # Errors
/// [`Error::Config`] for a malformed duration.
pub fn parse_duration(text: &str) -> Result<Duration, Error> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        Error::Config(format!(
            "{text:?} is not a duration ({err}); write e.g. 200ms, 10s, 5m"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 * 1024 * 1024);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("1.5kb").unwrap(), 1500);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn formats_parse_and_name_files() {
        assert_eq!("csv".parse::<Format>().unwrap(), Format::Csv);
        assert!("xml".parse::<Format>().is_err());
        assert_eq!("zstd".parse::<Compression>().unwrap().suffix(), ".zst");
        assert!(
            matches!("lz4".parse::<Compression>(), Err(Error::Config(msg)) if msg.contains("lz4"))
        );
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let mut config = PersistConfig::new("/tmp/x");
        assert!(config.validate().is_ok());
        config.concurrency = 0;
        assert!(
            matches!(config.validate(), Err(Error::Config(msg)) if msg.contains("concurrency"))
        );
    }

    #[test]
    fn an_out_that_is_a_url_is_refused() {
        for url in ["s3://bucket/x", "gs://b", "file:///tmp/x", "s3+https://h/b"] {
            let config = PersistConfig::new(url);
            assert!(
                matches!(config.validate(), Err(Error::Config(msg)) if msg.contains(url)),
                "{url}"
            );
        }
        for dir in ["/tmp/x", "out", "./s3://bucket", "a b://c", "/s3://x"] {
            assert!(PersistConfig::new(dir).validate().is_ok(), "{dir}");
        }
    }
}
