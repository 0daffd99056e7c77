//! The output directory's marker file, `OUT/.buffer-persist`.
//!
//! A batch's file name depends on the format and compression, and a CSV file's bytes on
//! `--csv-max-columns`, so persisters sharing one output directory must agree on them, or the
//! same batch could be written under two names (or as two different files). The first
//! persister records its settings in the marker; the others refuse to start when theirs differ.
//!
//! The marker is published atomically: it is written to a uniquely named temporary file in
//! `OUT`, fsynced, linked to `.buffer-persist` without clobbering, and the directory is fsynced.
//! So a reader sees no marker or a complete one, never a partial one, and of several
//! persisters starting at once exactly one link wins; the others read the winner's marker.
//!
//! A *half-made* marker (empty, or cut short: what versions that created the file and then
//! wrote it leave behind when killed in between, or what such a version shows while it is
//! writing) is "being written", never a mismatch: it is re-read until it is complete, for up
//! to [`HALF_MADE_GRACE`]. One that stays half-made that long was left by a crashed start: it is
//! removed and replaced, under an exclusive `flock` of that very file and only if the path still
//! names it, so of several persisters that find it only one replaces it and the others read the
//! replacement (two persisters with different settings never both start).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{Compression, Format, OutputLocation, PersistConfig};
use crate::error::{Error, Result};
use crate::paths::DEFAULT_PATH_TEMPLATE;
use crate::writer;

/// The marker's file name inside the output directory.
pub const MARKER_FILE: &str = ".buffer-persist";

/// How long a half-made marker is given to become complete before it is taken as left by a
/// crashed start and replaced. Writers of half-made markers write a few dozen bytes right
/// after creating the file, so this is generous.
pub(crate) const HALF_MADE_GRACE: Duration = Duration::from_secs(2);

/// How often a half-made marker is re-read while it is given time.
const HALF_MADE_POLL: Duration = Duration::from_millis(20);

/// Marker temporary files older than this were left by a start that crashed; they are
/// removed. A live start holds its temporary file for the time of one small write and fsync;
/// if a slow disk ever made it older, its link fails and that start simply tries again.
const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

/// Creates the output directory and publishes its marker, or checks the marker that is there.
///
/// # Errors
/// [`Error::OutputMismatch`] when the directory was set up with other settings (or holds a
/// marker this program did not write); [`Error::Io`] when the directory cannot be used.
pub(crate) fn check_or_write(config: &PersistConfig) -> Result<()> {
    let out = &config.out_dir;
    fs::create_dir_all(out).map_err(Error::io("create output directory", out))?;
    remove_stale_temps(out);
    let path = out.join(MARKER_FILE);
    let wanted = marker_text(config);
    let mut half_made_since: Option<Instant> = None;
    loop {
        match read_marker(&path)? {
            None => {
                if publish(out, &path, &wanted)? {
                    return Ok(());
                }
                // Another persister linked its marker first: read and compare it.
            }
            Some(found) => match classify(&found) {
                Marker::Complete if found == wanted => return Ok(()),
                Marker::Complete => {
                    return Err(mismatch(
                        path,
                        &found,
                        &wanted,
                        "directory",
                        DIRECTORY_SETTINGS,
                    ));
                }
                Marker::Foreign => {
                    return Err(Error::OutputMismatch {
                        reason: format!(
                            "this file is not a marker buffer-persist writes ({:?}); remove it if this directory is meant for buffer-persist",
                            shorten(&found)
                        ),
                        path,
                    });
                }
                Marker::HalfMade => {
                    let since = *half_made_since.get_or_insert_with(|| {
                        tracing::info!(
                            marker = %path.display(),
                            content = ?found,
                            "the output marker is half-made; waiting for it to be completed"
                        );
                        Instant::now()
                    });
                    if since.elapsed() < HALF_MADE_GRACE {
                        std::thread::sleep(HALF_MADE_POLL);
                    } else {
                        tracing::warn!(
                            marker = %path.display(),
                            content = ?found,
                            "the output marker stayed half-made (left by a crashed start); replacing it"
                        );
                        remove_half_made(&path)?;
                        half_made_since = None;
                    }
                }
            },
        }
    }
}

/// The marker's text for `config`. Only CSV and Parquet files depend on `--csv-max-columns`,
/// so only their markers record it (a JSON Lines marker keeps the two lines it always had). A path
/// template other than the default is recorded too: two persisters with different templates
/// would write one batch under two names. The default template adds no line, so directories
/// set up before templates existed keep their marker byte for byte (the template is checked
/// to have no control character, so it is one line). An object output records its part size
/// and, when it compresses, the compression level (`compression-level=`, last): both decide
/// where a batch is split into parts, so every attempt at a batch must use the same ones (see
/// [`compare`] for how a marker with another level, or none, is followed). A directory's
/// marker records no level: a file is never split, and an earlier attempt's file is compared
/// decompressed.
pub(crate) fn marker_text(config: &PersistConfig) -> String {
    let mut text = format!(
        "format={}\ncompression={}\n",
        config.format, config.compression
    );
    if matches!(config.format, Format::Csv | Format::Parquet) {
        text.push_str(&format!("csv-max-columns={}\n", config.csv_max_columns));
    }
    if config.path_template != DEFAULT_PATH_TEMPLATE {
        text.push_str(&format!("path-template={}\n", config.path_template));
    }
    if matches!(config.output_location(), Ok(OutputLocation::S3 { .. })) {
        text.push_str(&format!("part-size={}\n", config.part_size));
        if let Some(level) = writer::compression_level(config.format, config.compression) {
            text.push_str(&format!("{LEVEL_KEY}={level}\n"));
        }
    }
    text
}

/// The marker line naming the compression level of an object prefix.
const LEVEL_KEY: &str = "compression-level";

/// The level objects under a prefix were compressed at when its marker has no
/// `compression-level=` line: it was written before the line existed, by versions that
/// compressed JSON Lines and CSV with zstd at 3 and gzip at 2 (the levels chosen by the bench),
/// and Parquet columns at the `parquet` crate's defaults, zstd 1 and gzip 6. (Development builds
/// from before the bench chose gzip's level compressed gzip at 6; the marker cannot tell them
/// apart. A prefix they set up and left with a half-published gzip batch gets a marker with
/// `compression-level=6` by hand: docs/outputs.md, "Landing in object storage".)
fn level_before_the_line(format: Format, compression: Compression) -> Option<i32> {
    match (format, compression) {
        (_, Compression::None) => None,
        (Format::Parquet, Compression::Gzip) => Some(6),
        (Format::Parquet, Compression::Zstd) => Some(1),
        (Format::JsonLines | Format::Csv, Compression::Gzip) => Some(2),
        (Format::JsonLines | Format::Csv, Compression::Zstd) => Some(3),
    }
}

/// A marker's text without its `compression-level=` line, and that line's value.
fn split_level(text: &str) -> (String, Option<&str>) {
    let mut rest = String::with_capacity(text.len());
    let mut level = None;
    for line in text.split_inclusive('\n') {
        match line
            .strip_suffix('\n')
            .and_then(|line| line.strip_prefix(LEVEL_KEY))
            .and_then(|line| line.strip_prefix('='))
        {
            Some(value) => level = Some(value),
            None => rest.push_str(line),
        }
    }
    (rest, level)
}

/// Compares a marker `found` at `path` with `config`'s, for outputs where a marker is
/// published whole or not at all (object storage): anything but a complete marker with the
/// same settings is refused, naming the difference. Returns the gzip or zstd level this
/// persister must compress at (`None` without compression): the one the marker names, or for a
/// marker without a level line the level of the versions that wrote such markers
/// (`level_before_the_line`), whatever this binary's own level. So a batch one version
/// half-published as parts is finished by another in the same parts. A Parquet prefix whose
/// level differs from this binary's is refused instead (its columns' level is the `parquet`
/// crate's, which this binary cannot change), naming both levels.
///
/// # Errors
/// [`Error::OutputMismatch`].
pub(crate) fn compare(path: PathBuf, found: &str, config: &PersistConfig) -> Result<Option<i32>> {
    let wanted = marker_text(config);
    if classify(found) != Marker::Complete {
        return Err(Error::OutputMismatch {
            reason: format!(
                "this object is not a marker buffer-persist writes ({:?}); remove it if this prefix is meant for buffer-persist",
                shorten(found)
            ),
            path,
        });
    }
    let (found_settings, found_level) = split_level(found);
    let (wanted_settings, _) = split_level(&wanted);
    let ours = writer::compression_level(config.format, config.compression);
    if found_settings != wanted_settings || (found_level.is_some() && ours.is_none()) {
        return Err(mismatch(path, found, &wanted, "prefix", OBJECT_SETTINGS));
    }
    let theirs = match found_level {
        None => level_before_the_line(config.format, config.compression),
        Some(text) => match text.parse::<i32>() {
            Ok(level) if writer::level_exists(config.compression, level) => Some(level),
            _ => {
                return Err(Error::OutputMismatch {
                    reason: format!(
                        "the marker names {LEVEL_KEY}={text}, which --compress {} does not have",
                        config.compression
                    ),
                    path,
                });
            }
        },
    };
    if theirs == ours {
        return Ok(ours);
    }
    let (Some(theirs_level), Some(ours_level)) = (theirs, ours) else {
        return Err(mismatch(path, found, &wanted, "prefix", OBJECT_SETTINGS));
    };
    if config.format == Format::Parquet {
        return Err(Error::OutputMismatch {
            reason: format!(
                "this prefix's Parquet columns are compressed with {} at level {theirs_level} (its marker{}), this buffer-persist compresses them at level {ours_level} and cannot change it; use a version that compresses at {theirs_level}, or another prefix",
                config.compression,
                if found_level.is_some() {
                    ""
                } else {
                    ", written before levels were recorded"
                },
            ),
            path,
        });
    }
    tracing::info!(
        marker = %path.display(),
        compression = %config.compression,
        marker_level = theirs_level,
        own_level = ours_level,
        "compressing at the level of the prefix's marker, not this version's own, so every attempt at a batch cuts the same parts"
    );
    Ok(theirs)
}

/// What persisters sharing a prefix must agree on (the compression level is followed).
const OBJECT_SETTINGS: &str =
    "--format, --compress, --csv-max-columns, --path-template and --part-size";

/// What a marker's text is.
#[derive(Debug, PartialEq, Eq)]
enum Marker {
    /// Ends with a newline and names a format and a compression: written in full.
    Complete,
    /// Empty, or a beginning of a complete marker: still being written, or left by a crash.
    HalfMade,
    /// Something else: not written by this program.
    Foreign,
}

fn classify(text: &str) -> Marker {
    const KEYS: [&str; 6] = [
        "format",
        "compression",
        "csv-max-columns",
        "path-template",
        "part-size",
        LEVEL_KEY,
    ];
    let is_setting = |line: &str| {
        line.split_once('=')
            .is_some_and(|(key, value)| KEYS.contains(&key) && !value.is_empty())
    };
    let (full_lines, last) = match text.rsplit_once('\n') {
        Some((full, last)) => (full.split('\n').collect::<Vec<_>>(), last),
        None => (Vec::new(), text),
    };
    if !full_lines.iter().all(|line| is_setting(line)) {
        return Marker::Foreign;
    }
    // The unfinished last line must be the beginning of a setting line.
    let could_continue = last.is_empty()
        || match last.split_once('=') {
            Some((key, _)) => KEYS.contains(&key),
            None => KEYS.iter().any(|key| key.starts_with(last)),
        };
    let names = |key: &str| {
        full_lines
            .iter()
            .any(|line| line.split_once('=').is_some_and(|(k, _)| k == key))
    };
    if last.is_empty() && names("format") && names("compression") {
        Marker::Complete
    } else if could_continue {
        Marker::HalfMade
    } else {
        Marker::Foreign
    }
}

/// The marker's text, or `None` when there is none.
fn read_marker(path: &Path) -> Result<Option<String>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(Error::io("read", path)(err)),
    }
}

/// Publishes `text` as the marker: unique temporary file, fsync, no-clobber link, fsync of the
/// directory. False when a marker appeared in the meantime (it is then read and compared).
fn publish(out: &Path, path: &Path, text: &str) -> Result<bool> {
    let temp = out.join(format!("{MARKER_FILE}.{:016x}.tmp", rand::random::<u64>()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        });
    if let Err(err) = written {
        let _ = fs::remove_file(&temp);
        return Err(Error::io("write", &temp)(err));
    }
    let linked = fs::hard_link(&temp, path);
    // The temporary name goes whatever happened: after a link the marker lives on under its
    // own name, and after a failure there is nothing to keep.
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            crate::writer::sync_dir(out)?;
            crate::failpoint::failpoint("after-marker");
            Ok(true)
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        // A start that cleaned up stray temporary files took ours for a crashed one (only
        // when this one was very slow): try again.
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(Error::io("publish", path)(err)),
    }
}

/// Removes a marker that stayed half-made, under an exclusive lock of that very file and only
/// if the path still names it and it is still half-made: a persister that waited for the lock
/// finds the path gone or naming a complete marker, and reads that instead of removing it.
fn remove_half_made(path: &Path) -> Result<()> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(Error::io("open", path)(err)),
    };
    // The lock is released when `file` is closed, also when this process dies.
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|err| {
        Error::OutputMismatch {
            path: path.to_path_buf(),
            reason: format!(
                "the marker stayed half-made and cannot be locked to replace it ({err}); remove it by hand"
            ),
        }
    })?;
    if !still_names(path, &file)? {
        return Ok(());
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(Error::io("read", path))?;
    if classify(&text) != Marker::HalfMade {
        return Ok(());
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(Error::io("remove half-made marker", path)(err)),
    }
}

/// True when `path` still names the file `file` has open.
fn still_names(path: &Path, file: &File) -> Result<bool> {
    let open = file.metadata().map_err(Error::io("stat", path))?;
    match fs::metadata(path) {
        Ok(named) => Ok(named.dev() == open.dev() && named.ino() == open.ino()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(Error::io("stat", path)(err)),
    }
}

/// Removes marker temporary files left by starts that crashed between creating and linking.
fn remove_stale_temps(out: &Path) {
    let Ok(entries) = fs::read_dir(out) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_marker_temp(name) {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|meta| meta.modified())
            .is_ok_and(|modified| {
                now.duration_since(modified)
                    .is_ok_and(|age| age >= STALE_TEMP_AGE)
            });
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// True for the names `publish` gives its temporary files.
pub(crate) fn is_marker_temp(name: &str) -> bool {
    name.strip_prefix(MARKER_FILE)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_suffix(".tmp"))
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The mismatch error; `shared` says what persisters share, `settings` the flags they must
/// agree on.
fn mismatch(path: PathBuf, found: &str, wanted: &str, shared: &str, settings: &str) -> Error {
    Error::OutputMismatch {
        path,
        reason: format!(
            "this output {shared} is written as {:?}, not {:?}; persisters sharing a {shared} must use the same {settings}",
            found.trim().replace('\n', ", "),
            wanted.trim().replace('\n', ", ")
        ),
    }
}

/// What persisters sharing a directory must agree on.
const DIRECTORY_SETTINGS: &str = "--format, --compress, --csv-max-columns and --path-template";

fn shorten(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_complete_half_made_or_foreign() {
        assert_eq!(classify("format=csv\ncompression=none\n"), Marker::Complete);
        assert_eq!(
            classify("format=csv\ncompression=none\ncsv-max-columns=8\n"),
            Marker::Complete
        );
        assert_eq!(
            classify("format=jsonl\ncompression=none\npath-template=a={store}/{batch}\n"),
            Marker::Complete
        );
        for half in [
            "",
            "f",
            "format=",
            "format=cs",
            "format=csv\n",
            "format=csv\ncompr",
            "format=csv\ncompression=none",
            "format=csv\ncompression=none\npath-temp",
            "format=csv\ncompression=none\npath-template=a={store}/{ba",
        ] {
            assert_eq!(classify(half), Marker::HalfMade, "{half:?}");
        }
        for foreign in ["hello\n", "hello", "format=csv\nhello\n", "\n"] {
            assert_eq!(classify(foreign), Marker::Foreign, "{foreign:?}");
        }
    }

    fn s3_config(format: Format, compression: Compression) -> PersistConfig {
        let mut config = PersistConfig::new("s3://bucket/prefix");
        config.format = format;
        config.compression = compression;
        config
    }

    #[test]
    fn an_object_marker_records_the_level_and_a_persister_takes_the_markers_level() {
        let path = || PathBuf::from("s3://bucket/prefix/.buffer-persist");
        let gzip = s3_config(Format::JsonLines, Compression::Gzip);
        let text = marker_text(&gzip);
        assert!(text.ends_with("\ncompression-level=2\n"), "{text}");
        assert_eq!(classify(&text), Marker::Complete);
        assert_eq!(compare(path(), &text, &gzip).unwrap(), Some(2));
        // Another level: followed.
        let at_9 = text.replace("compression-level=2", "compression-level=9");
        assert_eq!(compare(path(), &at_9, &gzip).unwrap(), Some(9));
        // No level line: the level of the versions that wrote such markers.
        let before = text.replace("compression-level=2\n", "");
        assert_eq!(compare(path(), &before, &gzip).unwrap(), Some(2));
        let zstd = s3_config(Format::Csv, Compression::Zstd);
        let before = marker_text(&zstd).replace("compression-level=3\n", "");
        assert_eq!(compare(path(), &before, &zstd).unwrap(), Some(3));
        // A level gzip does not have, another setting, a level without compression: refused.
        let at_42 = text.replace("compression-level=2", "compression-level=42");
        let err = compare(path(), &at_42, &gzip).unwrap_err().to_string();
        assert!(err.contains("compression-level=42"), "{err}");
        let other_size = at_9.replace("part-size=", "part-size=1");
        assert!(compare(path(), &other_size, &gzip).is_err());
        let plain = s3_config(Format::JsonLines, Compression::None);
        assert!(!marker_text(&plain).contains("compression-level"));
        let plain_with_level = format!("{}compression-level=2\n", marker_text(&plain));
        assert!(compare(path(), &plain_with_level, &plain).is_err());
        // Parquet's column level cannot be changed by this binary: refused, naming both.
        let parquet = s3_config(Format::Parquet, Compression::Zstd);
        let ours = marker_text(&parquet);
        assert!(ours.ends_with("\ncompression-level=1\n"), "{ours}");
        let at_5 = ours.replace("compression-level=1", "compression-level=5");
        let err = compare(path(), &at_5, &parquet).unwrap_err().to_string();
        assert!(err.contains("level 5") && err.contains("level 1"), "{err}");
        // A directory's marker is unchanged: no level, no part size.
        let local = PersistConfig::new("/tmp/out");
        assert_eq!(marker_text(&local), "format=jsonl\ncompression=none\n");
    }

    #[test]
    fn marker_temp_names_are_recognised() {
        assert!(is_marker_temp(".buffer-persist.0123456789abcdef.tmp"));
        assert!(!is_marker_temp(".buffer-persist"));
        assert!(!is_marker_temp(".buffer-persist.x.tmp"));
        assert!(!is_marker_temp(".1700000000000-0123456789abcdef.tmp"));
    }
}
