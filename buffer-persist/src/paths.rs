//! Where a batch's file goes: a pure function of (store, batch id, format, compression).
//!
//! `OUT/<enc>/<batch id>.<ext>` where `<enc>` is the store name's encoding from buffer-core
//! (only `[A-Za-z0-9._%-]`, never `.`, `..` or a hidden name), so no store name can reach a
//! path outside `OUT`. Encodings longer than a file name may be (255 bytes) are split into
//! components of at most 200 bytes, each prefixed with `~`: `OUT/~<part1>/~<part2>/...`.
//! `~` never occurs in an encoding, so a long name can never collide with a short one, and
//! a component starting with `~` is never `.` or `..`.

use std::path::{Path, PathBuf};

use buffer_core::{BatchId, StoreName};

use crate::config::{Compression, Format};

/// The longest encoded name kept as one directory name.
const MAX_COMPONENT: usize = 200;

/// The directory of a store's files under `out`.
pub fn store_dir(out: &Path, store: &StoreName) -> PathBuf {
    let encoded = store.encoded();
    let mut dir = out.to_path_buf();
    if encoded.len() <= MAX_COMPONENT {
        dir.push(encoded);
        return dir;
    }
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
        dir.push(format!("~{part}"));
        rest = tail;
    }
    dir
}

/// The file name of a batch.
pub fn batch_file_name(batch: &BatchId, format: Format, compression: Compression) -> String {
    format!("{batch}.{}{}", format.extension(), compression.suffix())
}

/// The full path of a batch's file.
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
}
