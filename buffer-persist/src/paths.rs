//! Where a batch's file goes: a pure function of (store, batch) under a path template.
//!
//! A [`PathTemplate`] such as `{store}/{batch}.{ext}` (the default) or
//! `store={store}/dt={date}/hour={hour}/{batch}.{ext}` names a batch's file relative to `OUT`.
//! Its placeholders are the store's encoding, the batch id, the extension (format plus
//! compression) and the UTC date and hour of the batch's first write
//! ([`PreparedBatch::first_write_ms`], frozen with the batch when it is prepared), so the path
//! is the same on every attempt, by every persister, before and after a crash.
//!
//! `{store}` is the store name's encoding from buffer-core (only `[A-Za-z0-9._%-]`, never `.`,
//! `..` or a hidden name), so no store name can reach a path outside `OUT`. Encodings longer
//! than [`MAX_COMPONENT`] bytes are split into components of at most that many bytes, each
//! prefixed with `~`: the segment `pre{store}post` becomes `pre~<part1>/~<part2>/…/~<partN>post`.
//! `~` never occurs in an encoding and no template segment may start with `~`, so a long name
//! can never collide with a short one, and a component starting with `~` is never `.` or `..`.
//! With the default template this is exactly the layout of versions before templates:
//! `OUT/<enc>/<batch>.<ext>`, or `OUT/~<part1>/~<part2>/…/<batch>.<ext>`.
//!
//! The rules a template is held to (each refused at start, naming the problem) keep every
//! path inside `OUT`, one file per batch and no file where another path needs a directory:
//! relative, no empty, `.` or `..` segment, no segment starting with `.` (temporary files and
//! the marker start with `.`) or `~` (long store names), `{store}` exactly once and in a
//! directory segment, `{batch}` in the file name (the last segment), only known placeholders,
//! balanced braces, no control characters, and no segment that could be longer than a file
//! name may be (255 bytes). All placeholders but `{store}` render to a fixed length for a
//! given configuration, so `{store}`'s text is always where the template puts it.

use std::fmt;
use std::path::{Path, PathBuf};

use buffer_core::{BatchId, PreparedBatch, StoreName};

use crate::error::Error;
use crate::format::{Compression, Format};

/// The default template: today's layout, `OUT/<encoded store>/<batch id>.<ext>`.
pub const DEFAULT_PATH_TEMPLATE: &str = "{store}/{batch}.{ext}";

/// The longest encoded name kept as one directory name.
const MAX_COMPONENT: usize = 200;

/// The longest file name most file systems take (`NAME_MAX`).
const MAX_NAME: usize = 255;

/// The longest batch id text: 20 digits of milliseconds (13 until the year 2286), `-`, 16 hex,
/// and room for the part suffix an object output may add (`.part-00001`, see [`part_suffix`]).
const BATCH_MAX: usize = 37 + PART_SUFFIX_LEN;

/// The length of [`part_suffix`]'s text.
const PART_SUFFIX_LEN: usize = ".part-00000".len();

/// The most parts a batch may have: the part number has five digits, so part names sort in
/// their order. With the default 32 MiB parts that is over 3 TB per batch.
pub(crate) const MAX_PARTS: u32 = 99_999;

/// The text an object output appends to `{batch}` in the file name for part `number` (from 1)
/// of a batch published as several objects: `.part-00001`. A batch is either one object under
/// the template's name or parts only, never both, so part names never meet a whole batch's.
pub(crate) fn part_suffix(number: u32) -> String {
    format!(".part-{number:05}")
}

/// The longest `{ext}` any format and compression gives (`jsonl.zst` is 9), with room for
/// formats to come, so a template's length check does not depend on `--format`.
const MAX_EXT: usize = 16;

/// A placeholder of a path template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Store,
    Batch,
    Ext,
    Date,
    Year,
    Month,
    Day,
    Hour,
}

impl Field {
    const ALL: [(&'static str, Field); 8] = [
        ("store", Field::Store),
        ("batch", Field::Batch),
        ("ext", Field::Ext),
        ("date", Field::Date),
        ("year", Field::Year),
        ("month", Field::Month),
        ("day", Field::Day),
        ("hour", Field::Hour),
    ];

    fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, field)| *field)
    }

    /// The longest text it renders to, `{store}` aside (its length is bounded per component).
    fn max_len(self) -> usize {
        match self {
            Self::Store => 0,
            Self::Batch => BATCH_MAX,
            Self::Ext => MAX_EXT,
            Self::Date => 10,
            Self::Year => 4,
            Self::Month | Self::Day | Self::Hour => 2,
        }
    }
}

/// A piece of a template segment.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// A parsed `--path-template`: how a batch's file is named under `OUT`.
///
/// # Examples
/// ```
/// use buffer_persist::PathTemplate;
///
/// let hive: PathTemplate = "store={store}/dt={date}/hour={hour}/{batch}.{ext}".parse().unwrap();
/// assert_eq!(hive.as_str(), "store={store}/dt={date}/hour={hour}/{batch}.{ext}");
/// assert!("{store}/../{batch}".parse::<PathTemplate>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PathTemplate {
    text: String,
    /// The `/`-separated segments; the last one is the file name.
    segments: Vec<Vec<Piece>>,
}

impl fmt::Debug for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PathTemplate").field(&self.text).finish()
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Default for PathTemplate {
    fn default() -> Self {
        // The unit tests parse the default template, so this cannot fail at run time.
        Self::parse(DEFAULT_PATH_TEMPLATE).expect("the default template is valid")
    }
}

impl std::str::FromStr for PathTemplate {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        Self::parse(text)
    }
}

impl PathTemplate {
    /// Parses and checks a template.
    ///
    /// # Errors
    /// [`Error::Config`] naming what is wrong: a missing `{store}` or `{batch}`, an unknown
    /// placeholder, an unbalanced brace, or a path that is absolute, has an empty, `.`, `..`,
    /// hidden (`.x`) or `~` segment, or could name a file longer than 255 bytes.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad =
            |why: String| Error::Config(format!("--path-template {text:?} is refused: {why}"));
        if text.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(bad(format!("it holds the control character {c:?}")));
        }
        if text.starts_with('/') {
            return Err(bad(
                "it is an absolute path; a template names a file relative to --out".into(),
            ));
        }
        let mut segments = Vec::new();
        for (index, segment) in text.split('/').enumerate() {
            let pieces = parse_segment(segment).map_err(bad)?;
            let what = || format!("segment {} ({segment:?})", index + 1);
            match segment {
                "" => {
                    return Err(bad(format!(
                        "{} is empty (a leading, trailing or doubled '/')",
                        what()
                    )));
                }
                "." | ".." => {
                    return Err(bad(format!(
                        "{} could leave the output directory or is meaningless; use plain names",
                        what()
                    )));
                }
                _ if segment.starts_with('.') => {
                    return Err(bad(format!(
                        "{} starts with '.', which is kept for temporary files and the marker",
                        what()
                    )));
                }
                _ if segment.starts_with('~') => {
                    return Err(bad(format!(
                        "{} starts with '~', which is kept for the parts of long store names",
                        what()
                    )));
                }
                _ => {}
            }
            let fixed: usize = pieces
                .iter()
                .map(|piece| match piece {
                    Piece::Text(text) => text.len(),
                    Piece::Field(field) => field.max_len(),
                })
                .sum();
            let has_store = pieces.contains(&Piece::Field(Field::Store));
            // A segment holding `{store}` renders one of its parts (at most MAX_COMPONENT
            // bytes, plus the `~` of a long name) beside its other text.
            let longest = fixed + if has_store { MAX_COMPONENT + 1 } else { 0 };
            if longest > MAX_NAME {
                return Err(bad(format!(
                    "{} could be {longest} bytes long, longer than a file name may be ({MAX_NAME})",
                    what()
                )));
            }
            segments.push(pieces);
        }
        let count = |field: Field| {
            segments
                .iter()
                .flatten()
                .filter(|piece| **piece == Piece::Field(field))
                .count()
        };
        match count(Field::Store) {
            0 => {
                return Err(bad(
                    "it has no {store}, so two stores' batches could get one name".into(),
                ));
            }
            1 => {}
            _ => return Err(bad("it has {store} more than once".into())),
        }
        let (file, dirs) = segments
            .split_last()
            .ok_or_else(|| bad("it is empty".into()))?;
        if count(Field::Batch) == 0 {
            return Err(bad(
                "it has no {batch}, so two batches of a store could get one name".into(),
            ));
        }
        if !file.contains(&Piece::Field(Field::Batch)) {
            return Err(bad(
                "its file name (the last segment) has no {batch}; every batch needs a file of its own"
                    .into(),
            ));
        }
        if !dirs
            .iter()
            .any(|segment| segment.contains(&Piece::Field(Field::Store)))
        {
            return Err(bad(
                "{store} is in the file name; put it in a directory segment (long store names become several directories)"
                    .into(),
            ));
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// The template's text, as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for [`DEFAULT_PATH_TEMPLATE`].
    pub fn is_default(&self) -> bool {
        self.text == DEFAULT_PATH_TEMPLATE
    }

    /// The path of a batch's file relative to `OUT`: a pure function of the store, the batch
    /// id, its first write (Unix ms, taken as UTC) and the file's extension (`jsonl`,
    /// `csv.gz`, …, without a leading dot).
    pub fn relative_path(
        &self,
        store: &StoreName,
        batch: &BatchId,
        first_write_ms: u64,
        ext: &str,
    ) -> PathBuf {
        self.part_path(store, batch, first_write_ms, ext, None)
    }

    /// [`PathTemplate::relative_path`], or for `part: Some(n)` the name of part `n` of a batch
    /// published as several objects: `{batch}` in the file name (the last segment) becomes
    /// `<batch id>.part-0000n`, every other segment is the same as the whole batch's.
    pub(crate) fn part_path(
        &self,
        store: &StoreName,
        batch: &BatchId,
        first_write_ms: u64,
        ext: &str,
        part: Option<u32>,
    ) -> PathBuf {
        let time = UtcTime::from_unix_ms(first_write_ms);
        let last = self.segments.len().saturating_sub(1);
        let render = |pieces: &[Piece], segment: usize| -> String {
            let mut text = String::new();
            for piece in pieces {
                match piece {
                    Piece::Text(literal) => text.push_str(literal),
                    Piece::Field(Field::Store) => text.push_str(store.encoded()),
                    Piece::Field(Field::Batch) => {
                        text.push_str(&batch.to_string());
                        if let Some(number) = part.filter(|_| segment == last) {
                            text.push_str(&part_suffix(number));
                        }
                    }
                    Piece::Field(Field::Ext) => text.push_str(ext),
                    Piece::Field(Field::Date) => text.push_str(&format!(
                        "{:04}-{:02}-{:02}",
                        time.year, time.month, time.day
                    )),
                    Piece::Field(Field::Year) => text.push_str(&format!("{:04}", time.year)),
                    Piece::Field(Field::Month) => text.push_str(&format!("{:02}", time.month)),
                    Piece::Field(Field::Day) => text.push_str(&format!("{:02}", time.day)),
                    Piece::Field(Field::Hour) => text.push_str(&format!("{:02}", time.hour)),
                }
            }
            text
        };
        let mut path = PathBuf::new();
        for (segment, pieces) in self.segments.iter().enumerate() {
            let Some(at) = pieces.iter().position(|p| *p == Piece::Field(Field::Store)) else {
                path.push(render(pieces, segment));
                continue;
            };
            let encoded = store.encoded();
            if encoded.len() <= MAX_COMPONENT {
                path.push(render(pieces, segment));
                continue;
            }
            let (before, after) = (
                render(&pieces[..at], segment),
                render(&pieces[at + 1..], segment),
            );
            let parts = split_long(encoded);
            let last = parts.len() - 1;
            for (index, part) in parts.into_iter().enumerate() {
                let mut component = String::new();
                if index == 0 {
                    component.push_str(&before);
                }
                component.push('~');
                component.push_str(part);
                if index == last {
                    component.push_str(&after);
                }
                path.push(component);
            }
        }
        path
    }

    /// The full path of a prepared batch's file under `out`.
    pub fn batch_path(
        &self,
        out: &Path,
        batch: &PreparedBatch,
        format: Format,
        compression: Compression,
    ) -> PathBuf {
        out.join(self.relative_path(
            &batch.store,
            &batch.id,
            batch.first_write_ms,
            &extension(format, compression),
        ))
    }
}

/// Splits a template segment into text and placeholders.
fn parse_segment(segment: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = segment;
    while !rest.is_empty() {
        let (open, close) = (rest.find('{'), rest.find('}'));
        let open = match (open, close) {
            (None, None) => {
                pieces.push(Piece::Text(rest.to_owned()));
                break;
            }
            (open, Some(close)) if open.is_none_or(|open| close < open) => {
                return Err(format!("a '}}' in {segment:?} closes no '{{'"));
            }
            (Some(open), _) => open,
            (None, Some(_)) => return Err(format!("a '}}' in {segment:?} closes no '{{'")),
        };
        let never_closed = || format!("a '{{' in {segment:?} is never closed");
        let close = rest.find('}').ok_or_else(never_closed)?;
        let name = &rest[open + 1..close];
        if name.contains('{') {
            return Err(never_closed());
        }
        let field = Field::parse(name).ok_or_else(|| {
            let known: Vec<String> = Field::ALL.iter().map(|(n, _)| format!("{{{n}}}")).collect();
            format!("{{{name}}} is not a placeholder; use {}", known.join(", "))
        })?;
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        pieces.push(Piece::Field(field));
        rest = &rest[close + 1..];
    }
    Ok(pieces)
}

/// Splits a long encoding into parts of at most [`MAX_COMPONENT`] bytes, never inside a
/// `%XX` escape.
fn split_long(encoded: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = encoded;
    while !rest.is_empty() {
        let mut cut = rest.len().min(MAX_COMPONENT);
        // Never split a %XX escape across two components.
        while cut < rest.len()
            && (rest.as_bytes()[cut.saturating_sub(1)] == b'%'
                || rest.as_bytes()[cut.saturating_sub(2)] == b'%')
        {
            cut -= 1;
        }
        let (part, tail) = rest.split_at(cut);
        parts.push(part);
        rest = tail;
    }
    parts
}

/// A UTC calendar time, to the hour.
struct UtcTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
}

impl UtcTime {
    fn from_unix_ms(ms: u64) -> Self {
        let seconds = ms / 1000;
        let days = seconds / 86_400;
        let hour = u32::try_from(seconds % 86_400 / 3600).unwrap_or(0);
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour,
        }
    }
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for non-negative days): eras of 400 years are 146 097 days, and counting years from March
/// puts the leap day at a year's end.
fn civil_from_days(days: u64) -> (i64, u32, u32) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (
        i64::try_from(year).unwrap_or(i64::MAX),
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// A file's extension without the leading dot: `jsonl`, `csv.gz`, …
/// Parquet compresses inside the file, so its name never gets a compression suffix.
pub(crate) fn extension(format: Format, compression: Compression) -> String {
    match format {
        Format::Parquet => format.extension().to_owned(),
        Format::JsonLines | Format::Csv => {
            format!("{}{}", format.extension(), compression.suffix())
        }
    }
}

/// The directory of a store's files under `out`, with the default template.
#[cfg(any(test, feature = "test-hooks"))]
pub fn store_dir(out: &Path, store: &StoreName) -> PathBuf {
    let encoded = store.encoded();
    let mut dir = out.to_path_buf();
    if encoded.len() <= MAX_COMPONENT {
        dir.push(encoded);
        return dir;
    }
    for part in split_long(encoded) {
        dir.push(format!("~{part}"));
    }
    dir
}

/// The file name of a batch, with the default template.
#[cfg(any(test, feature = "test-hooks"))]
pub fn batch_file_name(batch: &BatchId, format: Format, compression: Compression) -> String {
    format!("{batch}.{}", extension(format, compression))
}

/// The full path of a batch's file, with the default template.
#[cfg(any(test, feature = "test-hooks"))]
pub fn batch_path(
    out: &Path,
    store: &StoreName,
    batch: &BatchId,
    format: Format,
    compression: Compression,
) -> PathBuf {
    store_dir(out, store).join(batch_file_name(batch, format, compression))
}

/// True for the name of a temporary file of `batch` (see [`temp_name`]).
pub(crate) fn is_temp_of(file_name: &str, batch: &BatchId) -> bool {
    file_name.starts_with(&format!(".{batch}.")) && file_name.ends_with(".tmp")
}

/// A temporary file name for `batch`, unique to this attempt. It starts with `.` so readers
/// globbing `*.jsonl` never see it.
pub(crate) fn temp_name(batch: &BatchId) -> String {
    format!(".{batch}.{:016x}.tmp", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Component;

    fn only_normal_components(path: &Path) -> bool {
        path.components().all(|c| matches!(c, Component::Normal(_)))
    }

    const HIVE: &str = "store={store}/dt={date}/hour={hour}/{batch}.{ext}";

    fn batch() -> BatchId {
        "1700000000000-00000000000000ff".parse().unwrap()
    }

    #[test]
    fn hostile_names_stay_under_out() {
        let out = Path::new("out");
        for name in [
            "../../etc/x",
            "/",
            ".",
            "..",
            "a/../../b",
            "\\",
            "ünï/..",
            "~x",
        ] {
            let dir = store_dir(out, &StoreName::new(name).unwrap());
            let rel = dir.strip_prefix(out).unwrap();
            assert_eq!(rel.components().count(), 1, "{name:?} -> {dir:?}");
            assert!(only_normal_components(rel), "{name:?} -> {dir:?}");
            let hive: PathTemplate = HIVE.parse().unwrap();
            let rel = hive.relative_path(&StoreName::new(name).unwrap(), &batch(), 0, "jsonl");
            assert_eq!(rel.components().count(), 4, "{name:?} -> {rel:?}");
            assert!(only_normal_components(&rel), "{name:?} -> {rel:?}");
        }
    }

    #[test]
    fn long_names_are_split_into_short_marked_components() {
        let out = Path::new("out");
        let name = "é/".repeat(85); // 255 bytes, 765 encoded
        let dir = store_dir(out, &StoreName::new(name).unwrap());
        let rel = dir.strip_prefix(out).unwrap();
        assert!(rel.components().count() >= 4);
        for c in rel.components() {
            let Component::Normal(part) = c else {
                panic!("{c:?}")
            };
            let part = part.to_str().unwrap();
            assert!(
                part.starts_with('~') && part.len() <= MAX_COMPONENT + 1,
                "{part}"
            );
        }
        let joined: String = rel
            .components()
            .map(|c| c.as_os_str().to_str().unwrap()[1..].to_owned())
            .collect();
        assert_eq!(joined, StoreName::new("é/".repeat(85)).unwrap().encoded());
    }

    #[test]
    fn file_names_depend_only_on_batch_and_format() {
        let batch: BatchId = "0000000000001-00000000000000ff".parse().unwrap();
        assert_eq!(
            batch_file_name(&batch, Format::Csv, Compression::Zstd),
            "0000000000001-00000000000000ff.csv.zst"
        );
        let temp = temp_name(&batch);
        assert!(is_temp_of(&temp, &batch));
        assert!(!is_temp_of("0000000000001-00000000000000ff.csv", &batch));
    }

    #[test]
    fn the_default_template_gives_the_paths_of_versions_before_templates() {
        let template = PathTemplate::default();
        assert!(template.is_default());
        let out = Path::new("out");
        for name in [
            "orders".to_owned(),
            "é/".repeat(85),
            "x".repeat(200),
            "x".repeat(201),
            "%".repeat(70),
            "a%".repeat(100),
        ] {
            let store = StoreName::new(&name).unwrap();
            for (format, compression) in [
                (Format::JsonLines, Compression::None),
                (Format::Csv, Compression::Gzip),
                (Format::JsonLines, Compression::Zstd),
            ] {
                let old = batch_path(out, &store, &batch(), format, compression);
                let new = out.join(template.relative_path(
                    &store,
                    &batch(),
                    1_234,
                    &extension(format, compression),
                ));
                assert_eq!(old, new, "{name}");
            }
        }
    }

    #[test]
    fn hive_paths_come_from_the_first_write_in_utc() {
        let hive: PathTemplate = HIVE.parse().unwrap();
        let store = StoreName::new("orders/eu").unwrap();
        // 2023-11-14T22:13:20.000Z
        let path = hive.relative_path(&store, &batch(), 1_700_000_000_000, "jsonl.gz");
        assert_eq!(
            path,
            Path::new(
                "store=orders%2Feu/dt=2023-11-14/hour=22/1700000000000-00000000000000ff.jsonl.gz"
            )
        );
        let parts: PathTemplate = "{year}/{month}/{day}/{store}/{hour}-{batch}"
            .parse()
            .unwrap();
        // 2024-02-29T00:59:59.999Z
        let path = parts.relative_path(&store, &batch(), 1_709_168_399_999, "csv");
        assert_eq!(
            path,
            Path::new("2024/02/29/orders%2Feu/00-1700000000000-00000000000000ff")
        );
    }

    #[test]
    fn part_names_add_the_part_number_after_the_batch_in_the_file_name_only() {
        let store = StoreName::new("orders/eu").unwrap();
        let hive: PathTemplate = HIVE.parse().unwrap();
        let whole = hive.part_path(&store, &batch(), 1_700_000_000_000, "jsonl", None);
        assert_eq!(
            whole,
            hive.relative_path(&store, &batch(), 1_700_000_000_000, "jsonl")
        );
        let part = hive.part_path(&store, &batch(), 1_700_000_000_000, "jsonl", Some(12));
        assert_eq!(
            part,
            Path::new(
                "store=orders%2Feu/dt=2023-11-14/hour=22/1700000000000-00000000000000ff.part-00012.jsonl"
            )
        );
        // {batch} in a directory keeps the plain id: every part of a batch shares its directory.
        let dirs: PathTemplate = "{store}/{batch}/{batch}.{ext}".parse().unwrap();
        let part = dirs.part_path(&store, &batch(), 0, "csv", Some(1));
        assert_eq!(
            part,
            Path::new(
                "orders%2Feu/1700000000000-00000000000000ff/1700000000000-00000000000000ff.part-00001.csv"
            )
        );
    }

    #[test]
    fn long_names_in_a_segment_with_other_text_keep_it_around_their_parts() {
        let hive: PathTemplate = "a{store}z/{batch}".parse().unwrap();
        let store = StoreName::new("é".repeat(75)).unwrap(); // 450 bytes encoded
        let path = hive.relative_path(&store, &batch(), 0, "jsonl");
        let parts: Vec<&str> = path.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(parts.len(), 4, "{parts:?}");
        assert!(parts[0].starts_with("a~"), "{parts:?}");
        assert!(parts[1].starts_with('~'), "{parts:?}");
        assert!(
            parts[2].starts_with('~') && parts[2].ends_with('z'),
            "{parts:?}"
        );
        let joined = format!("{}{}{}", &parts[0][2..], &parts[1][1..], &parts[2][1..]);
        assert_eq!(joined, format!("{}z", store.encoded()));
        assert!(parts.iter().all(|p| p.len() <= MAX_COMPONENT + 2));
    }

    #[test]
    fn calendar_fields_agree_with_an_rfc3339_formatter() {
        let template: PathTemplate = "{store}/{date}T{hour}_{year}_{month}_{day}_{batch}"
            .parse()
            .unwrap();
        let store = StoreName::new("s").unwrap();
        let mut ms: u64 = 0;
        // Every ~1.3 days for 300 years, the last milliseconds of days, leap days and
        // century years included.
        while ms < 10_000_000_000_000 {
            for at in [ms, ms - ms % 86_400_000 + 86_399_999] {
                let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at);
                let text = humantime::format_rfc3339_millis(time).to_string();
                let (date, hour) = (&text[..10], &text[11..13]);
                let expected = format!(
                    "{date}T{hour}_{}_{}_{}_{}",
                    &date[..4],
                    &date[5..7],
                    &date[8..10],
                    batch()
                );
                let path = template.relative_path(&store, &batch(), at, "jsonl");
                assert_eq!(path, Path::new("s").join(expected), "{at}");
            }
            ms += 113_000_000_007;
        }
    }

    /// The message a template is refused with, by the parser and by
    /// [`crate::PersistConfig::validate`] alike.
    fn refusal(template: &str) -> String {
        let message = match template.parse::<PathTemplate>() {
            Err(Error::Config(message)) => message,
            other => panic!("{template:?} gave {other:?}"),
        };
        let mut config = crate::PersistConfig::new("out");
        config.path_template = template.to_owned();
        match config.validate() {
            Err(Error::Config(refused)) => assert_eq!(refused, message),
            other => panic!("validate of {template:?} gave {other:?}"),
        }
        message
    }

    #[test]
    fn templates_that_could_misplace_a_file_are_refused_naming_the_problem() {
        for (template, problem) in [
            ("", "empty"),
            ("{batch}.{ext}", "no {store}"),
            ("{store}/{ext}", "no {batch}"),
            ("{store}/{store}/{batch}", "more than once"),
            ("{batch}/{store}-{batch}", "{store} is in the file name"),
            (
                "{store}/{batch}/x.{ext}",
                "file name (the last segment) has no {batch}",
            ),
            ("{store}/{bacth}.{ext}", "{bacth} is not a placeholder"),
            ("{store}/{}.{ext}", "{} is not a placeholder"),
            ("{store}/{batch.{ext}", "never closed"),
            ("{store}/{batch}}.{ext}", "closes no"),
            ("{store}/batch}.{ext}", "closes no"),
            ("{store}/{batch", "never closed"),
            ("/{store}/{batch}", "absolute"),
            ("/tmp/{store}/{batch}", "absolute"),
            ("../{store}/{batch}", "could leave"),
            ("{store}/../{batch}", "could leave"),
            ("./{store}/{batch}", "could leave"),
            ("{store}//{batch}", "empty"),
            ("{store}/{batch}/", "empty"),
            ("{store}/.hidden/{batch}", "starts with '.'"),
            ("{store}/.{batch}", "starts with '.'"),
            ("~/{store}/{batch}", "starts with '~'"),
            ("{store}/a\n/{batch}", "control character"),
            (
                &format!("{}{{store}}/{{batch}}", "p".repeat(60)),
                "longer than a file name",
            ),
            (
                &format!("{{store}}/{}{{batch}}", "f".repeat(230)),
                "longer than a file name",
            ),
        ] {
            let message = refusal(template);
            assert!(message.contains(problem), "{template:?}: {message}");
            assert!(message.contains("--path-template"), "{message}");
        }
        for good in [
            DEFAULT_PATH_TEMPLATE,
            HIVE,
            "{year}/{month}/{day}/{hour}/{store}/{batch}.{ext}",
            "x/{store}-{date}/part-{batch}",
        ] {
            assert!(good.parse::<PathTemplate>().is_ok(), "{good}");
            let mut config = crate::PersistConfig::new("out");
            config.path_template = good.to_owned();
            assert!(config.validate().is_ok(), "{good}");
        }
    }
}
