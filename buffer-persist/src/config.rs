//! What a persister does and how: thresholds, output format, concurrency.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;
pub use crate::format::{Compression, Format};
use crate::paths::{DEFAULT_PATH_TEMPLATE, PathTemplate};

/// How a persister runs.
#[derive(Clone, Debug)]
pub struct PersistConfig {
    /// Where batches go: a local (or mounted) directory, or `s3://bucket/prefix` (credentials,
    /// region and endpoint from the standard `AWS_*` environment); a batch goes to
    /// `<out_dir>/<path_template>`. Any other URL scheme is refused by
    /// [`PersistConfig::validate`].
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
    /// Object storage only: a batch whose encoded output grows past this many bytes is
    /// published as several objects (parts), each a complete file of at most about this size
    /// (default [`DEFAULT_PART_SIZE`]). A part is held in memory until it is uploaded, so this
    /// bounds the memory of a batch in flight. Persisters sharing a prefix must agree on it.
    pub part_size: u64,
    /// PostgreSQL only: the table of a store's records, `{store}` standing for the store's
    /// name (default [`DEFAULT_TABLE_TEMPLATE`]); always quoted as one identifier, so no store
    /// name can inject SQL.
    pub table_template: String,
    /// PostgreSQL only: create a missing table from its first batch's keys (the Parquet type
    /// mapping, plus a `_rest jsonb` column).
    pub create_tables: bool,
    /// PostgreSQL only: the ledger table, one row per batch applied, in the same transaction
    /// as its rows (default [`DEFAULT_LEDGER_TABLE`]; created when missing).
    pub ledger_table: String,
    /// PostgreSQL only: the server-side `statement_timeout` of every statement, also the
    /// client's bound on each round trip (plus a margin) and on connecting (default 60 s).
    pub statement_timeout: Duration,
}

/// The default of [`PersistConfig::table_template`].
pub const DEFAULT_TABLE_TEMPLATE: &str = "{store}";

/// The default of [`PersistConfig::ledger_table`].
pub const DEFAULT_LEDGER_TABLE: &str = "buffer_batches";

/// The default of [`PersistConfig::csv_max_columns`].
pub const DEFAULT_CSV_MAX_COLUMNS: usize = 1024;

/// The default of [`PersistConfig::part_size`]: 32 MiB.
pub const DEFAULT_PART_SIZE: u64 = 32 * 1024 * 1024;

/// The smallest `--part-size` taken: smaller parts would cost a request per few records.
const MIN_PART_SIZE: u64 = 1024;

/// The largest `--part-size` taken: S3 takes at most 5 GiB in one PUT.
const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// The URL schemes `--out` takes.
const SUPPORTED_SCHEMES: &str =
    "s3://bucket/prefix, postgres://user@host:port/db (or a local directory)";

/// Where batches go, parsed from [`PersistConfig::out_dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OutputLocation {
    /// A local (or mounted) directory.
    Local(PathBuf),
    /// An S3 bucket, objects under `prefix` (no leading or trailing `/`; empty for the
    /// bucket's root).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix, `/`-separated segments.
        prefix: String,
    },
    /// A PostgreSQL database: the `postgres://` or `postgresql://` URL as given.
    Postgres(String),
}

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
            part_size: DEFAULT_PART_SIZE,
            table_template: DEFAULT_TABLE_TEMPLATE.to_owned(),
            create_tables: false,
            ledger_table: DEFAULT_LEDGER_TABLE.to_owned(),
            statement_timeout: Duration::from_secs(60),
        }
    }

    /// `out_dir` for logs: a PostgreSQL URL with its password replaced by `***`.
    pub fn out_display(&self) -> String {
        let text = self.out_dir.to_string_lossy();
        match url_scheme(&self.out_dir) {
            Some("postgres" | "postgresql") => redact_password(&text),
            _ => text.into_owned(),
        }
    }

    /// Where batches go: a local directory, or an S3 bucket and prefix for `s3://bucket/prefix`.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL whose scheme is not supported (naming it and the supported
    /// ones) and for an `s3://` URL without a bucket or with an empty, `.` or `..` segment.
    pub(crate) fn output_location(&self) -> Result<OutputLocation, Error> {
        let Some(scheme) = url_scheme(&self.out_dir) else {
            return Ok(OutputLocation::Local(self.out_dir.clone()));
        };
        let text = self.out_dir.to_string_lossy();
        if scheme == "postgres" || scheme == "postgresql" {
            return Ok(OutputLocation::Postgres(text.into_owned()));
        }
        if scheme != "s3" {
            return Err(Error::Config(format!(
                "--out {text} uses the {scheme}:// scheme, which buffer-persist does not support; use {SUPPORTED_SCHEMES}; write ./{text} if you really mean a directory of that name"
            )));
        }
        let rest = &text[scheme.len() + 3..];
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Config(format!(
                "--out {text} names no bucket; write s3://bucket/prefix"
            )));
        }
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        if !prefix.is_empty() {
            if let Some(bad) = prefix
                .split('/')
                .find(|segment| matches!(*segment, "" | "." | ".."))
            {
                return Err(Error::Config(format!(
                    "--out {text}: the prefix has a segment {bad:?} (an empty, . or .. segment); write s3://bucket/a/b"
                )));
            }
            if let Some(c) = prefix.chars().find(|c| c.is_control()) {
                return Err(Error::Config(format!(
                    "--out {text}: the prefix holds the control character {c:?}"
                )));
            }
        }
        Ok(OutputLocation::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
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
    /// misplace a file, or an output that is a URL of a scheme other than `s3://` (naming it
    /// and the supported ones).
    pub fn validate(&self) -> Result<(), Error> {
        if let OutputLocation::Local(dir) = self.output_location()? {
            check_not_a_file(&dir)?;
        }
        self.path_template()?;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(Error::Config(format!(
                "--part-size {} is out of range; use 1KiB to 5GiB (S3 takes at most 5 GiB in one PUT)",
                self.part_size
            )));
        }
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

/// Refuses an output directory that is, or lies under, something other than a directory (a
/// regular file, say), which would otherwise surface as `File exists (os error 17)` or
/// `Not a directory` at the first batch. A path that does not exist yet is fine: it is
/// created.
fn check_not_a_file(dir: &std::path::Path) -> Result<(), Error> {
    let existing = dir
        .ancestors()
        .find(|path| !path.as_os_str().is_empty() && std::fs::symlink_metadata(path).is_ok());
    let Some(existing) = existing else {
        return Ok(());
    };
    // `metadata` follows a symbolic link, so a link to a directory is a directory.
    match std::fs::metadata(existing) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) if existing == dir => Err(Error::Config(format!(
            "--out {}: is a file, not a directory; give a directory (it is created when missing)",
            dir.display()
        ))),
        Ok(_) => Err(Error::Config(format!(
            "--out {}: {} is a file, not a directory; give a directory (it is created when missing)",
            dir.display(),
            existing.display()
        ))),
        // A dangling link or one we may not read: the first batch reports what it meets.
        Err(_) => Ok(()),
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

/// `url` with the password between `:` and `@` of its authority replaced by `***`.
pub(crate) fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
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
    fn an_out_with_an_unsupported_scheme_is_refused_naming_it_and_the_supported_one() {
        for (url, scheme) in [
            ("gs://b", "gs"),
            ("file:///tmp/x", "file"),
            ("s3+https://h/b", "s3+https"),
            ("az://c/x", "az"),
        ] {
            let config = PersistConfig::new(url);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(url), "{err}");
            assert!(err.contains(&format!("{scheme}://")), "{err}");
            assert!(err.contains("s3://bucket/prefix"), "{err}");
        }
        for bad in [
            "s3://",
            "s3:///x",
            "s3://b/a//c",
            "s3://b/../c",
            "s3://b/./c",
        ] {
            assert!(
                matches!(PersistConfig::new(bad).validate(), Err(Error::Config(msg)) if msg.contains(bad)),
                "{bad}"
            );
        }
        for dir in ["/tmp/x", "out", "./s3://bucket", "a b://c", "/s3://x"] {
            assert_eq!(
                PersistConfig::new(dir).output_location().unwrap(),
                OutputLocation::Local(PathBuf::from(dir)),
                "{dir}"
            );
        }
    }

    #[test]
    fn an_out_that_is_a_file_is_refused_as_not_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("afile");
        std::fs::write(&file, "x").unwrap();
        for out in [file.clone(), file.join("below")] {
            let err = PersistConfig::new(&out).validate().unwrap_err().to_string();
            assert!(err.contains("is a file, not a directory"), "{err}");
            assert!(err.contains(&*file.to_string_lossy()), "{err}");
        }
        assert!(PersistConfig::new(dir.path()).validate().is_ok());
        assert!(
            PersistConfig::new(dir.path().join("new/dir"))
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn an_s3_out_is_a_bucket_and_a_prefix() {
        let s3 = |bucket: &str, prefix: &str| OutputLocation::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        };
        for (url, wanted) in [
            ("s3://b", s3("b", "")),
            ("s3://b/", s3("b", "")),
            ("s3://b/land/x", s3("b", "land/x")),
            ("s3://b/land/x/", s3("b", "land/x")),
        ] {
            let config = PersistConfig::new(url);
            assert!(config.validate().is_ok(), "{url}");
            assert_eq!(config.output_location().unwrap(), wanted, "{url}");
        }
    }

    #[test]
    fn part_sizes_out_of_range_are_refused() {
        let mut config = PersistConfig::new("s3://b/x");
        config.part_size = 10;
        assert!(
            matches!(config.validate(), Err(Error::Config(msg)) if msg.contains("--part-size"))
        );
    }
}
