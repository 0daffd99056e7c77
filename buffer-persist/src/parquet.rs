//! Parquet files (`--format parquet`): a schema inferred per batch, then the batch's records
//! encoded column by column through the Arrow writer of the `parquet` crate.
//!
//! The unit is self-contained: [`ParquetLayout::of_batch`] reads a batch once to infer its
//! columns, [`ParquetLayout::of_sample`] infers them from the batch's first page alone (the
//! encoder then says when a later value does not fit, and the file is written again with
//! `of_batch`'s types), and [`ParquetEncoder`] writes a complete Parquet file into any `Write + Send` sink
//! and hands the sink back from [`ParquetEncoder::finish`]. It is one arm of the writer's
//! `EncodedStream` (`writer.rs`), so every output writes Parquet: the local output into the
//! temporary file, the object output into each part's buffer (each part a complete file).
//!
//! The mapping (docs/outputs.md, "Parquet files"): the columns are the batch's sorted unique keys, at most
//! `--csv-max-columns` of them, then (when the batch has more keys, or none) one trailing
//! `_rest` column holding each record's other keys as a JSON object, exactly as the CSV
//! layout does. A column's type is the one every non-null value of that key agrees on:
//! integers that fit `i64` → Int64; numbers mixing integers and decimals → Float64 (only when
//! each one is exactly an `f64`); booleans → Boolean; strings → Utf8; only nulls → Utf8. A key
//! whose values disagree, any nested object or array, an integer beyond `i64` or a decimal
//! that no `f64` holds exactly make the column Utf8 holding each value's JSON text exactly as
//! pushed, so nothing is lost. `null` and a missing key are both a Parquet null.
//!
//! The bytes written depend only on the batch's records (rows are cut into Arrow batches by
//! record count and text size, never by how the records were paged out of Redis; a sampled
//! layout is used only when it gives every column the whole batch's type), so every attempt
//! at a batch writes the same file and the publisher can compare files byte for byte.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use buffer_core::{Buffer, Page, PreparedBatch};
use parquet::arrow::ArrowWriter;
use parquet::basic::{GzipLevel, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

use crate::columns::{CsvLayout, FieldSplitter, csv_text, rest_object};
use crate::config::Compression;
use crate::error::{Error, Result};

/// Rows per row group at most: a reader's unit of parallelism and skipping.
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// Encoded bytes per row group at most: the writer holds a whole row group in memory before
/// writing it out, so this bounds the encoder's memory whatever the records.
const ROW_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// Records per Arrow batch handed to the writer at most.
const CHUNK_ROWS: usize = 8 * 1024;
/// JSON text per Arrow batch at most (at least one record): the arrays built from it are
/// about this size.
const CHUNK_TEXT_BYTES: usize = 2 * 1024 * 1024;
/// The writer's name in the file's footer. Fixed rather than the crate's default (which
/// carries the `parquet` crate's version) so the bytes of a batch's file do not change with a
/// dependency update, and the publisher keeps recognising an earlier attempt's file.
const CREATED_BY: &str = "buffer-persist";
/// Field metadata naming the columns that hold JSON text rather than plain strings.
const ENCODING_KEY: &str = "buffer.encoding";

/// What a column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ColumnType {
    /// Every value an integer within `i64`.
    Int64,
    /// Every value a number, some of them decimals, each exactly an `f64`.
    Float64,
    /// Every value `true` or `false`.
    Boolean,
    /// Every value a string (or only nulls): the string, unescaped.
    Utf8,
    /// Anything else: each value's JSON text exactly as pushed.
    Json,
}

/// What the values of one key were seen to be, over the whole batch.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    ints: bool,
    /// Some integer has no exact `f64`: the column cannot be Float64 without losing it.
    ints_beyond_f64: bool,
    floats: bool,
    bools: bool,
    strings: bool,
    /// A nested value, or a number no Int64 or Float64 holds exactly.
    json: bool,
}

impl Seen {
    fn observe(&mut self, text: &str) {
        match classify(text) {
            Value::Null => {}
            Value::Bool => self.bools = true,
            Value::String => self.strings = true,
            Value::Int { exact_f64 } => {
                self.ints = true;
                self.ints_beyond_f64 |= !exact_f64;
            }
            Value::Float => self.floats = true,
            Value::Other => self.json = true,
        }
    }

    fn column_type(self) -> ColumnType {
        let numbers = self.ints || self.floats;
        let kinds = [numbers, self.bools, self.strings]
            .iter()
            .filter(|seen| **seen)
            .count();
        if self.json || kinds > 1 {
            ColumnType::Json
        } else if numbers {
            match (self.floats, self.ints_beyond_f64) {
                (false, _) => ColumnType::Int64,
                (true, false) => ColumnType::Float64,
                (true, true) => ColumnType::Json,
            }
        } else if self.bools {
            ColumnType::Boolean
        } else {
            ColumnType::Utf8
        }
    }
}

/// One JSON value's kind, from its text.
enum Value {
    Null,
    Bool,
    String,
    Int {
        exact_f64: bool,
    },
    Float,
    /// An object, an array, or a number neither `i64` nor `f64` holds exactly.
    Other,
}

fn classify(text: &str) -> Value {
    match text.as_bytes().first() {
        Some(b'"') => Value::String,
        Some(b'{' | b'[') => Value::Other,
        _ if text == "null" => Value::Null,
        _ if text == "true" || text == "false" => Value::Bool,
        _ if !text.contains(['.', 'e', 'E']) => match text.parse::<i64>() {
            Ok(int) => Value::Int {
                exact_f64: int_is_exact_f64(int),
            },
            // Beyond i64: kept as text rather than rounded.
            Err(_) => Value::Other,
        },
        _ if float_of_text(text).is_some() => Value::Float,
        _ => Value::Other,
    }
}

/// Whether `int` converts to `f64` and back unchanged. `i64::MAX as f64` is 2^63, which
/// saturates back to `i64::MAX`, hence the range check.
fn int_is_exact_f64(int: i64) -> bool {
    let float = int as f64;
    float < 9_223_372_036_854_775_808.0 && float as i64 == int
}

/// The `f64` a JSON number's text denotes, when that `f64` denotes exactly the same decimal
/// (its shortest representation has the same digits and exponent): `0.1` and `1.5e3` are
/// exact, `3.14159265358979323846` (more digits than an `f64` holds) and `1e400` are not.
fn float_of_text(text: &str) -> Option<f64> {
    let float: f64 = text.parse().ok()?;
    if !float.is_finite() {
        return None;
    }
    // A decimal of at most 15 significant digits whose `f64` is normal survives the
    // trip to `f64` and back to 15 digits unchanged (15 = f64's DIGITS), so no other decimal
    // of 15 digits or fewer has that `f64`: the shortest form is the text's own decimal. The
    // usual case (`12.34`), decided without formatting; `exact_slow` below gives the same
    // answer (a unit test compares the two).
    // (A text of zeros is zero; a tiny decimal that underflows to zero is not exact.)
    let digits = significant_digits(text);
    if digits == 0 || (digits <= 15 && float.abs() >= f64::MIN_POSITIVE) {
        return Some(float);
    }
    exact_slow(text, float)
}

/// The significant digits of a JSON number's text: its mantissa's digits without the
/// leading and trailing zeros (`0.0120e5` has 2).
fn significant_digits(text: &str) -> usize {
    let mantissa = text
        .as_bytes()
        .split(|byte| matches!(byte, b'e' | b'E'))
        .next()
        .unwrap_or_default();
    let digits = || mantissa.iter().filter(|byte| byte.is_ascii_digit());
    let leading = digits().take_while(|digit| **digit == b'0').count();
    let total = digits().count();
    let trailing = digits().rev().take_while(|digit| **digit == b'0').count();
    total.saturating_sub(leading + trailing)
}

/// [`float_of_text`] by its definition: `float` when its shortest decimal form has the same
/// digits and power of ten as `text`.
fn exact_slow(text: &str, float: f64) -> Option<f64> {
    let shortest = format!("{float:e}");
    (decimal(text)? == decimal(&shortest)?).then_some(float)
}

/// A decimal number's text as (negative, significant digits, power of ten), normalised so two
/// texts of the same number compare equal: `1.50e1`, `15` and `15.0` are all (false, "15", 0).
fn decimal(text: &str) -> Option<(bool, String, i64)> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (int_part, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int_part}{fraction}");
    let significant = digits.trim_start_matches('0');
    let trimmed = significant.trim_end_matches('0');
    if trimmed.is_empty() {
        return Some((negative, String::new(), 0));
    }
    let fraction_len = i64::try_from(fraction.len()).ok()?;
    let trailing = i64::try_from(significant.len() - trimmed.len()).ok()?;
    let power = exponent.checked_sub(fraction_len)?.checked_add(trailing)?;
    Some((negative, trimmed.to_owned(), power))
}

/// The columns of a batch's Parquet file and their types.
#[derive(Clone, Debug)]
pub(crate) struct ParquetLayout {
    /// The named columns, sorted by name (as the CSV layout's), with their types.
    columns: Vec<(String, ColumnType)>,
    /// The trailing column of the other keys, when there is one.
    rest: Option<String>,
    /// Encoded bytes per row group at most: [`ROW_GROUP_BYTES`], or less for an output that
    /// splits a batch into parts (a part ends at a row group).
    row_group_bytes: usize,
    /// True when the types were inferred from a sample of the batch (its first page) rather
    /// than from all of it: a later value that does not fit its column is then
    /// [`ParquetFailure::SampleMisfit`], and the file is written again with
    /// [`ParquetLayout::of_batch`].
    sampled: bool,
}

impl ParquetLayout {
    /// Infers the layout of `batch`'s file: its columns from the batch's key set (at most
    /// `max_columns` named ones, as for CSV), their types from one pass over its records,
    /// page by page (one page and one state per column in memory).
    ///
    /// # Errors
    /// Redis errors; [`Error::Encode`] naming the first record that is not a JSON object.
    pub(crate) async fn of_batch(
        buffer: &Buffer,
        batch: &PreparedBatch,
        max_columns: usize,
    ) -> Result<Self> {
        let mut inference = Inference::of_key_set(buffer, batch, max_columns).await?;
        let mut reader = buffer.reader(batch);
        while let Some(page) = reader.next_records().await? {
            // Parsing is CPU work: off the async threads, as the encoder's.
            inference = tokio::task::spawn_blocking(move || {
                inference.observe_page(&page).map(|()| inference)
            })
            .await
            .map_err(|err| Error::Task(format!("parquet schema inference: {err}")))?
            .map_err(|(index, reason)| encode_error(batch, index, reason))?;
        }
        Ok(inference.into_layout(false))
    }

    /// The layout of `batch`'s file with the types inferred from `sample` alone, the batch's
    /// first page, which the writer then writes first: no read of the batch beyond the one
    /// that writes it. Marked as sampled: a later record whose value does not fit its column
    /// (the whole batch would have given the column another type) makes the encoder fail
    /// with [`ParquetFailure::SampleMisfit`], and the file is started again with
    /// [`ParquetLayout::of_batch`]. When no record misfits, every column's type is the one
    /// the whole batch gives (a value that fits a column's type never changes what the
    /// values so far infer), so the file's bytes are those of the full inference.
    ///
    /// # Errors
    /// Redis errors; [`Error::Encode`] naming the first record of the sample that is not a
    /// JSON object.
    pub(crate) async fn of_sample(
        buffer: &Buffer,
        batch: &PreparedBatch,
        max_columns: usize,
        sample: Page,
    ) -> Result<(Self, Page)> {
        let mut inference = Inference::of_key_set(buffer, batch, max_columns).await?;
        // Parsing is CPU work: off the async threads, as the encoder's.
        let (layout, sample) = tokio::task::spawn_blocking(move || {
            inference
                .observe_page(&sample)
                .map(|()| (inference.into_layout(true), sample))
        })
        .await
        .map_err(|err| Error::Task(format!("parquet schema inference: {err}")))?
        .map_err(|(index, reason)| encode_error(batch, index, reason))?;
        Ok((layout, sample))
    }

    /// The named columns with their types, sorted by name (the PostgreSQL output creates
    /// tables from them).
    pub(crate) fn columns(&self) -> &[(String, ColumnType)] {
        &self.columns
    }

    /// The same layout with row groups of at most `bytes` encoded bytes (never more than
    /// [`ROW_GROUP_BYTES`]). The object output gives its part size: its parts can only end
    /// where a row group ends, so this keeps them near the part size, and the part size is
    /// in the output's marker, so every attempt cuts the same row groups.
    pub(crate) fn with_row_groups_up_to(mut self, bytes: u64) -> Self {
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        self.row_group_bytes = bytes.clamp(1, ROW_GROUP_BYTES);
        self
    }

    /// The Arrow schema of the file: every column nullable (a missing key is a null); JSON
    /// text columns say so in their field metadata.
    fn schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|(name, column)| field(name, *column))
            .collect();
        if let Some(rest) = &self.rest {
            fields.push(field(rest, ColumnType::Json));
        }
        Arc::new(Schema::new(fields))
    }

    /// The type of column `name`, if the layout has a named column by that name.
    #[cfg(test)]
    fn column_type(&self, name: &str) -> Option<ColumnType> {
        self.columns
            .iter()
            .find(|(column, _)| column == name)
            .map(|(_, column)| *column)
    }
}

fn field(name: &str, column: ColumnType) -> Field {
    let data_type = match column {
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Utf8 | ColumnType::Json => DataType::Utf8,
    };
    let field = Field::new(name, data_type, true);
    if column == ColumnType::Json {
        field.with_metadata(HashMap::from([(
            ENCODING_KEY.to_owned(),
            "json".to_owned(),
        )]))
    } else {
        field
    }
}

fn encode_error(batch: &PreparedBatch, index: u64, reason: String) -> Error {
    Error::Encode {
        store: batch.store.to_string(),
        batch: batch.id.to_string(),
        index,
        reason,
    }
}

/// The type pass's state: one [`Seen`] per named column.
struct Inference {
    splitter: FieldSplitter,
    rest: Option<String>,
    seen: Vec<Seen>,
    records: u64,
}

impl Inference {
    /// No record seen yet, the columns from `batch`'s key set.
    async fn of_key_set(
        buffer: &Buffer,
        batch: &PreparedBatch,
        max_columns: usize,
    ) -> Result<Self> {
        let (names, rest) = CsvLayout::of_batch(buffer, batch, max_columns)
            .await?
            .into_parts();
        Ok(Self::new(names, rest))
    }

    /// No record seen yet: `names` (sorted) and the trailing column `rest`, if any.
    fn new(names: Vec<String>, rest: Option<String>) -> Self {
        Self {
            seen: vec![Seen::default(); names.len()],
            splitter: FieldSplitter::new(names),
            rest,
            records: 0,
        }
    }

    /// Observes a page of records; on error, the failing record's index and why.
    fn observe_page(&mut self, page: &Page) -> std::result::Result<(), (u64, String)> {
        for text in page.iter() {
            let split = self
                .splitter
                .split(text)
                .map_err(|reason| (self.records, reason))?;
            for (column, seen) in self.seen.iter_mut().enumerate() {
                if let Some(value) = split.value(column) {
                    seen.observe(value);
                }
            }
            self.records += 1;
        }
        Ok(())
    }

    fn into_layout(self, sampled: bool) -> ParquetLayout {
        let types = self.seen.iter().map(|seen| seen.column_type());
        let columns = self.splitter.columns().iter().cloned().zip(types).collect();
        ParquetLayout {
            columns,
            rest: self.rest,
            row_group_bytes: ROW_GROUP_BYTES,
            sampled,
        }
    }
}

/// One column's values of the Arrow batch being built.
enum ColumnBuilder {
    Int64(Int64Builder),
    Float64(Float64Builder),
    Boolean(BooleanBuilder),
    Utf8(StringBuilder),
    Json(StringBuilder),
}

impl ColumnBuilder {
    fn new(column: ColumnType) -> Self {
        match column {
            ColumnType::Int64 => Self::Int64(Int64Builder::new()),
            ColumnType::Float64 => Self::Float64(Float64Builder::new()),
            ColumnType::Boolean => Self::Boolean(BooleanBuilder::new()),
            ColumnType::Utf8 => Self::Utf8(StringBuilder::new()),
            ColumnType::Json => Self::Json(StringBuilder::new()),
        }
    }

    /// Appends one record's value, its JSON text (`None`: the key is missing).
    fn append(&mut self, value: Option<&str>) -> std::result::Result<(), String> {
        let text = match value {
            None | Some("null") => {
                match self {
                    Self::Int64(b) => b.append_null(),
                    Self::Float64(b) => b.append_null(),
                    Self::Boolean(b) => b.append_null(),
                    Self::Utf8(b) | Self::Json(b) => b.append_null(),
                }
                return Ok(());
            }
            Some(text) => text,
        };
        // A full type pass saw every value, so a value that does not fit its column means the
        // batch changed between the passes, which a prepared batch never does: the batch is
        // refused rather than written otherwise. After a sampled pass it means the sample
        // did not show the column's type: the file is written again (`SampleMisfit`).
        let misfit = |expected: &str| {
            format!("value {text} is not {expected} (the type pass saw otherwise)")
        };
        match self {
            Self::Int64(b) => b.append_value(text.parse().map_err(|_| misfit("an i64"))?),
            Self::Float64(b) => {
                let float = if text.contains(['.', 'e', 'E']) {
                    float_of_text(text)
                } else {
                    text.parse::<i64>()
                        .ok()
                        .filter(|int| int_is_exact_f64(*int))
                        .map(|int| int as f64)
                };
                b.append_value(float.ok_or_else(|| misfit("an exact f64"))?);
            }
            Self::Boolean(b) => b.append_value(match text {
                "true" => true,
                "false" => false,
                _ => return Err(misfit("a boolean")),
            }),
            Self::Utf8(b) => {
                if !text.starts_with('"') {
                    return Err(misfit("a string"));
                }
                b.append_value(csv_text(text)?);
            }
            Self::Json(b) => b.append_value(text),
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Boolean(b) => Arc::new(b.finish()),
            Self::Utf8(b) | Self::Json(b) => Arc::new(b.finish()),
        }
    }
}

/// Writes one batch's records as a complete Parquet file into a sink.
///
/// Rows are gathered into Arrow batches of at most [`CHUNK_ROWS`] records or
/// [`CHUNK_TEXT_BYTES`] of JSON text; the writer closes a row group at [`ROW_GROUP_ROWS`] rows
/// or [`ROW_GROUP_BYTES`] encoded bytes. Nothing is complete until [`ParquetEncoder::finish`]
/// writes the footer; dropping the encoder leaves a file no reader accepts.
pub(crate) struct ParquetEncoder<W: Write + Send> {
    writer: ArrowWriter<W>,
    schema: SchemaRef,
    /// Splits a record into the named columns' values.
    splitter: FieldSplitter,
    has_rest: bool,
    /// Whether the types come from a sample ([`ParquetLayout::of_sample`]).
    sampled: bool,
    builders: Vec<ColumnBuilder>,
    chunk_rows: usize,
    chunk_text_bytes: usize,
    /// JSON text per Arrow batch at most: [`CHUNK_TEXT_BYTES`], or the row group bound when
    /// that is smaller (the writer never splits the first Arrow batch of a row group, so a
    /// larger one would make a larger row group).
    chunk_text_limit: usize,
}

impl<W: Write + Send> ParquetEncoder<W> {
    /// Starts a file in `sink` with `layout`'s columns, each compressed with `compression`.
    ///
    /// # Errors
    /// The writer's error (an I/O error of the sink as [`ParquetFailure::Io`]).
    pub(crate) fn new(
        sink: W,
        layout: ParquetLayout,
        compression: Compression,
    ) -> std::result::Result<Self, ParquetFailure> {
        let schema = layout.schema();
        let codec = match compression {
            Compression::None => parquet::basic::Compression::UNCOMPRESSED,
            Compression::Gzip => parquet::basic::Compression::GZIP(GzipLevel::default()),
            Compression::Zstd => parquet::basic::Compression::ZSTD(ZstdLevel::default()),
        };
        let properties = WriterProperties::builder()
            .set_compression(codec)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_max_row_group_bytes(Some(layout.row_group_bytes))
            .set_created_by(CREATED_BY.to_owned())
            .build();
        let writer = ArrowWriter::try_new(sink, schema.clone(), Some(properties))
            .map_err(ParquetFailure::from)?;
        let mut builders: Vec<ColumnBuilder> = layout
            .columns
            .iter()
            .map(|(_, column)| ColumnBuilder::new(*column))
            .collect();
        let has_rest = layout.rest.is_some();
        let chunk_text_limit = CHUNK_TEXT_BYTES.min(layout.row_group_bytes);
        if has_rest {
            builders.push(ColumnBuilder::new(ColumnType::Json));
        }
        Ok(Self {
            writer,
            schema,
            splitter: FieldSplitter::new(
                layout.columns.into_iter().map(|(name, _)| name).collect(),
            ),
            has_rest,
            sampled: layout.sampled,
            builders,
            chunk_rows: 0,
            chunk_text_bytes: 0,
            chunk_text_limit,
        })
    }

    /// Appends one record (its JSON object text).
    ///
    /// # Errors
    /// [`ParquetFailure::Record`] when the record is not a JSON object or (after a full type
    /// pass) a value does not fit its column; [`ParquetFailure::SampleMisfit`] when a value
    /// does not fit a column whose type came from a sample; the writer's error when a full
    /// chunk cannot be written. After an error the encoder holds part of the record: the
    /// file is abandoned (the batch refused, or written again).
    pub(crate) fn write_record(&mut self, text: &str) -> std::result::Result<(), ParquetFailure> {
        let split = self.splitter.split(text).map_err(ParquetFailure::Record)?;
        if !self.has_rest
            && let Some(reason) = split.unknown_key()
        {
            return Err(ParquetFailure::Record(reason));
        }
        let sampled = self.sampled;
        let named_columns = self.builders.len() - usize::from(self.has_rest);
        let (named, rest) = self.builders.split_at_mut(named_columns);
        for (column, builder) in named.iter_mut().enumerate() {
            builder.append(split.value(column)).map_err(|reason| {
                if sampled {
                    ParquetFailure::SampleMisfit(reason)
                } else {
                    ParquetFailure::Record(reason)
                }
            })?;
        }
        if let Some(builder) = rest.first_mut() {
            let object = rest_object(split.rest).map_err(ParquetFailure::Record)?;
            match builder {
                ColumnBuilder::Json(b) if object.is_empty() => b.append_null(),
                ColumnBuilder::Json(b) => b.append_value(object),
                _ => return Err(ParquetFailure::Record("the rest column is not text".into())),
            }
        }
        self.chunk_rows += 1;
        self.chunk_text_bytes += text.len();
        if self.chunk_rows >= CHUNK_ROWS || self.chunk_text_bytes >= self.chunk_text_limit {
            self.write_chunk()?;
        }
        Ok(())
    }

    /// Hands the rows gathered so far to the writer as one Arrow batch.
    fn write_chunk(&mut self) -> std::result::Result<(), ParquetFailure> {
        if self.chunk_rows == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(ColumnBuilder::finish)
            .collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|err| ParquetFailure::Record(format!("arrow batch: {err}")))?;
        self.chunk_rows = 0;
        self.chunk_text_bytes = 0;
        self.writer.write(&batch).map_err(ParquetFailure::from)
    }

    /// The sink, as far as the writer has written into it (row groups are written whole, when
    /// they close; the writer's own small buffer may hold the last bytes back).
    pub(crate) fn sink(&self) -> &W {
        self.writer.inner()
    }

    /// Writes the last rows, the last row group and the footer, and returns the sink (not
    /// flushed to disk: the caller syncs it).
    ///
    /// # Errors
    /// The writer's error.
    pub(crate) fn finish(mut self) -> std::result::Result<W, ParquetFailure> {
        self.write_chunk()?;
        self.writer.into_inner().map_err(ParquetFailure::from)
    }
}

/// Why the Parquet encoder failed.
#[derive(Debug)]
pub(crate) enum ParquetFailure {
    /// The sink refused the bytes (a full disk, a closed connection).
    Io(std::io::Error),
    /// A record could not be encoded, or the writer refused what it was given.
    Record(String),
    /// A value does not fit the type its column was given from a sample of the batch: the
    /// file must be written again with the types of the whole batch.
    SampleMisfit(String),
}

impl From<ParquetError> for ParquetFailure {
    fn from(err: ParquetError) -> Self {
        match err {
            // The writer wraps the sink's I/O errors; keep them I/O errors (transient, with
            // their kind), not encoding failures.
            ParquetError::External(source) => match source.downcast::<std::io::Error>() {
                Ok(io) => Self::Io(*io),
                Err(other) => Self::Record(other.to_string()),
            },
            other => Self::Record(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column_of(values: &[&str]) -> ColumnType {
        let mut seen = Seen::default();
        for value in values {
            seen.observe(value);
        }
        seen.column_type()
    }

    #[test]
    fn each_value_mix_maps_to_its_documented_column_type() {
        assert_eq!(column_of(&["1", "-2", "null"]), ColumnType::Int64);
        assert_eq!(column_of(&["1", "2.5"]), ColumnType::Float64);
        assert_eq!(column_of(&["1e3", "0.1"]), ColumnType::Float64);
        assert_eq!(column_of(&["true", "null"]), ColumnType::Boolean);
        assert_eq!(column_of(&["\"a\""]), ColumnType::Utf8);
        assert_eq!(column_of(&["null", "null"]), ColumnType::Utf8);
        assert_eq!(column_of(&[]), ColumnType::Utf8);
        assert_eq!(column_of(&["1", "\"1\""]), ColumnType::Json);
        assert_eq!(column_of(&["true", "1"]), ColumnType::Json);
        assert_eq!(column_of(&["{\"a\":1}"]), ColumnType::Json);
        assert_eq!(column_of(&["[1,2]"]), ColumnType::Json);
        assert_eq!(column_of(&["18446744073709551615"]), ColumnType::Json);
        assert_eq!(
            column_of(&["3.14159265358979323846264338"]),
            ColumnType::Json
        );
        assert_eq!(column_of(&["1e400"]), ColumnType::Json);
        // 2^53 + 1 is an i64 but no f64: alone it is Int64, beside a decimal it is text.
        assert_eq!(column_of(&["9007199254740993"]), ColumnType::Int64);
        assert_eq!(column_of(&["9007199254740993", "0.5"]), ColumnType::Json);
        assert_eq!(column_of(&["9007199254740992", "0.5"]), ColumnType::Float64);
    }

    #[test]
    fn decimals_compare_by_value_not_by_spelling() {
        assert_eq!(decimal("15"), decimal("1.50e1"));
        assert_eq!(decimal("15.000"), decimal("1.5e1"));
        assert_eq!(decimal("0.001"), decimal("1e-3"));
        assert_ne!(decimal("0.1"), decimal("0.10000000000000001"));
        assert_eq!(float_of_text("0.1"), Some(0.1));
        assert_eq!(float_of_text("-0.0"), Some(-0.0));
        assert_eq!(float_of_text("0.10000000000000001"), None);
        assert_eq!(float_of_text("1E400"), None);
        assert!(!int_is_exact_f64(i64::MAX));
        assert!(int_is_exact_f64(i64::MIN));
    }

    #[test]
    fn a_layout_without_columns_still_counts_rows_through_its_rest_column() {
        let layout = ParquetLayout {
            columns: vec![("a".into(), ColumnType::Int64)],
            rest: Some("_rest".into()),
            row_group_bytes: ROW_GROUP_BYTES,
            sampled: false,
        };
        assert_eq!(layout.column_type("a"), Some(ColumnType::Int64));
        let mut encoder = ParquetEncoder::new(Vec::new(), layout, Compression::Zstd).unwrap();
        encoder.write_record(r#"{"a":1,"b":[1]}"#).unwrap();
        encoder.write_record(r#"{}"#).unwrap();
        let bytes = encoder.finish().unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        assert_eq!(&bytes[bytes.len() - 4..], b"PAR1");
    }

    /// `records` encoded with the layout inferred from the first `sample` of them (all of
    /// them when `None`): the file's bytes, or the failure and the index of the record.
    fn encode_with_layout_of(
        records: &[String],
        sample: Option<usize>,
    ) -> std::result::Result<Vec<u8>, (usize, ParquetFailure)> {
        let mut inference = Inference::new(vec!["s".into(), "v".into()], None);
        let seen = &records[..sample.unwrap_or(records.len())];
        inference.observe_page(&Page::from_strings(seen)).unwrap();
        let layout = inference.into_layout(sample.is_some());
        let mut encoder = ParquetEncoder::new(Vec::new(), layout, Compression::Zstd).unwrap();
        for (index, record) in records.iter().enumerate() {
            encoder
                .write_record(record)
                .map_err(|failure| (index, failure))?;
        }
        encoder.finish().map_err(|failure| (records.len(), failure))
    }

    #[test]
    fn a_sampled_layout_writes_the_bytes_of_the_full_inference_or_names_the_misfit() {
        // 20 000 records: several Arrow chunks. `v` is an integer, null or missing; the
        // sample's first 10 records have only integers, so it infers Int64 as the whole does.
        let records: Vec<String> = (0..20_000)
            .map(|i| match i % 3 {
                0 => format!(r#"{{"s":"r{i}","v":{i}}}"#),
                1 => format!(r#"{{"v":null,"s":"r\n{i}"}}"#),
                _ => format!(r#"{{"s":"r{i}"}}"#),
            })
            .collect();
        let full = encode_with_layout_of(&records, None).unwrap();
        let sampled = encode_with_layout_of(&records, Some(10)).unwrap();
        assert!(
            full == sampled,
            "the sampled file differs from the full one"
        );

        // A decimal after the sample: the whole batch makes `v` Float64, the sample Int64.
        let mut changed = records.clone();
        changed[15_000] = r#"{"s":"late","v":0.5}"#.into();
        let (index, failure) = encode_with_layout_of(&changed, Some(10)).unwrap_err();
        assert_eq!(index, 15_000);
        assert!(
            matches!(&failure, ParquetFailure::SampleMisfit(reason) if reason.contains("0.5")),
            "{failure:?}"
        );
        // The full inference writes it (the file the persister starts again with).
        assert!(encode_with_layout_of(&changed, None).is_ok());
        // A string where the sample saw only nulls and integers: also a misfit; without a
        // sample, the column is JSON text.
        changed[15_000] = r#"{"s":"late","v":"x"}"#.into();
        let (index, failure) = encode_with_layout_of(&changed, Some(10)).unwrap_err();
        assert_eq!(index, 15_000);
        assert!(
            matches!(failure, ParquetFailure::SampleMisfit(_)),
            "{failure:?}"
        );
        assert!(encode_with_layout_of(&changed, None).is_ok());
    }

    #[test]
    fn every_value_that_fits_a_column_type_keeps_the_type_the_values_before_gave() {
        // The sampled layout's guarantee: a value its column's type accepts never changes the
        // type the inference would give, so a file written without a misfit is the full one.
        let values = [
            "null",
            "true",
            "false",
            "\"s\"",
            "\"\"",
            "0",
            "-1",
            "9007199254740993",
            "9223372036854775807",
            "18446744073709551616",
            "0.5",
            "-0.0",
            "1e3",
            "1E-3",
            "0.1",
            "3.14159265358979323846",
            "1e400",
            "{}",
            "[1]",
        ];
        for first in values {
            for second in values {
                let mut seen = Seen::default();
                seen.observe(first);
                let column = seen.column_type();
                let fits = ColumnBuilder::new(column).append(Some(second)).is_ok();
                seen.observe(second);
                if fits {
                    assert_eq!(seen.column_type(), column, "{first} then {second}");
                } else {
                    assert_ne!(seen.column_type(), column, "{first} then {second}");
                }
            }
        }
    }

    #[test]
    fn the_fast_exactness_test_of_decimals_agrees_with_the_definition() {
        // Decimals of 1 to 20 significant digits at exponents across f64's range, zeros and
        // subnormals included, from a fixed pseudo-random sequence.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut texts: Vec<String> = vec![
            "0.0".into(),
            "-0.0".into(),
            "0e5".into(),
            "2.2250738585072014e-308".into(),
            "4.9e-324".into(),
            "1.7976931348623157e308".into(),
            "1.5e-310".into(),
            "123456789012345.0".into(),
            "1234567890123456.0".into(),
            "0.30000000000000004".into(),
        ];
        for _ in 0..50_000 {
            let digits = 1 + (next() % 20) as usize;
            let mantissa: String = (0..digits)
                .map(|_| char::from(b'0' + (next() % 10) as u8))
                .collect();
            let point = (next() % (digits as u64 + 1)) as usize;
            let exponent = (next() % 640) as i64 - 330;
            let sign = if next() % 2 == 0 { "" } else { "-" };
            let (int_part, fraction) = mantissa.split_at(point);
            let int_part = if int_part.is_empty() { "0" } else { int_part };
            texts.push(format!("{sign}{int_part}.{fraction}0e{exponent}"));
            texts.push(format!("{sign}{int_part}.{fraction}1"));
        }
        for text in &texts {
            let slow = text
                .parse::<f64>()
                .ok()
                .filter(|float| float.is_finite())
                .and_then(|float| exact_slow(text, float));
            assert_eq!(
                float_of_text(text).map(f64::to_bits),
                slow.map(f64::to_bits),
                "{text}"
            );
        }
    }
}
