//! [`Format`] and [`Compression`]: what a batch's file is written as. A leaf module, so the
//! configuration (`config.rs`) and the path templates (`paths.rs`) both use them without
//! depending on each other.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// The file format of persisted batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// One compact JSON object per line (`.jsonl`).
    #[default]
    JsonLines,
    /// CSV (`.csv`) with a header of the batch's sorted unique keys, at most
    /// [`crate::PersistConfig::csv_max_columns`] of them; the keys beyond go into one trailing column
    /// holding a JSON object. Strings are written as they are, `null` and missing keys as empty
    /// fields, other values as their JSON text exactly as pushed.
    Csv,
    /// Parquet (`.parquet`), one file per batch with a schema inferred from its records
    /// (docs/outputs.md, "Parquet files"); `--compress` picks the columns' codec, and the file name gets
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
