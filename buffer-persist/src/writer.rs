//! Writing one batch to its file, durably and at most once.
//!
//! The steps, each of which may fail without publishing anything:
//! 1. create a unique temporary file in the store's directory (same file system as the target);
//! 2. stream the records page by page through the format encoder and the compressor;
//! 3. check that exactly the batch's record count was written;
//! 4. fsync the file;
//! 5. publish with a no-clobber `link(temp, target)`, remove the temp name;
//! 6. fsync the directory.
//!
//! If the target already exists, it counts as "already written" only when its decompressed
//! contents equal what this writer produced for the same batch (a Parquet file, compressed
//! inside, is compared as it is: its encoder writes the same bytes for the same records);
//! otherwise it is a [`Error::Conflict`] and the batch is kept in Redis.

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use buffer_core::{BatchId, Buffer, Page, PreparedBatch, StoreName};

use crate::columns::{CsvLayout, FieldSplitter, csv_text, rest_object};
use crate::config::{Compression, Format};
use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::parquet::{ParquetEncoder, ParquetFailure, ParquetLayout};
use crate::paths;

/// Where the bytes of a file go. Tests replace it to simulate a full disk.
pub trait FileSink: Write + Send {
    /// Flushes and fsyncs the file.
    ///
    /// # Errors
    /// The operating system's error; the file is then removed and rewritten from Redis.
    fn sync(&mut self) -> io::Result<()>;
}

impl FileSink for File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_all()
    }
}

/// Opens the sink for a temporary file; the default opens a real file.
pub type SinkFactory = dyn Fn(&Path) -> io::Result<Box<dyn FileSink>> + Send + Sync;

/// Opens `path` as a new file (it must not exist).
///
/// # Errors
/// The operating system's error.
pub(crate) fn open_file_sink(path: &Path) -> io::Result<Box<dyn FileSink>> {
    let file = OpenOptions::new().write(true).create_new(true).open(path)?;
    Ok(Box::new(WritebackFile::new(file)))
}

/// The compression levels of `--compress gzip` and `--compress zstd` (see `Compressor::new`).
/// An object prefix records the level in its marker (`marker.rs`), and a persister writing
/// there follows the marker's level, so changing these never changes how an object output
/// splits a batch that an older version began.
pub(crate) const GZIP_LEVEL: u32 = 2;
pub(crate) const ZSTD_LEVEL: i32 = 3;

/// The level this binary compresses a `format` file with `compression` at: the gzip or zstd
/// level of the whole file ([`GZIP_LEVEL`], [`ZSTD_LEVEL`]), or for Parquet its columns' codec
/// level (the `parquet` crate's default, which `parquet.rs` uses). `None` without compression.
pub(crate) fn compression_level(format: Format, compression: Compression) -> Option<i32> {
    use parquet::basic::{GzipLevel, ZstdLevel};
    match (format, compression) {
        (_, Compression::None) => None,
        (Format::Parquet, Compression::Gzip) => {
            i32::try_from(GzipLevel::default().compression_level()).ok()
        }
        (Format::Parquet, Compression::Zstd) => Some(ZstdLevel::default().compression_level()),
        (Format::JsonLines | Format::Csv, Compression::Gzip) => i32::try_from(GZIP_LEVEL).ok(),
        (Format::JsonLines | Format::Csv, Compression::Zstd) => Some(ZSTD_LEVEL),
    }
}

/// True when `level` is one `compression` has (gzip 0 to 9, zstd's own range).
pub(crate) fn level_exists(compression: Compression, level: i32) -> bool {
    match compression {
        Compression::None => false,
        Compression::Gzip => (0..=9).contains(&level),
        Compression::Zstd => zstd::compression_level_range().contains(&level),
    }
}

/// After this many bytes, a file's dirty pages are sent on their way to the disk.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// A file whose written pages start going to the disk while the batch is still being written.
///
/// Why: the kernel starts writing dirty pages back only past a share of memory (gigabytes), so
/// a batch of a few hundred MiB would sit in the page cache until the final fsync, and the
/// drain would pay reading and writing first, then the whole disk write after. Here, every
/// [`WRITEBACK_EVERY`] bytes, a background thread runs `fdatasync` on a clone of the handle
/// (at most one at a time), so the disk works while Redis is read; the final [`FileSink::sync`]
/// waits only for the tail (BENCHMARKS.md, the drain figures).
///
/// An error of a background `fdatasync` is kept and returned by the final `sync`: on Linux a
/// writeback error is reported once per open file description, which the clone shares, so
/// dropping it would let the final fsync succeed over lost pages. Only a file that went
/// through that `sync` is ever published; one dropped without it is being abandoned (its
/// temporary name is removed), so dropping it does not wait for the thread (see `Drop`).
struct WritebackFile {
    file: File,
    since_writeback: u64,
    /// The background `fdatasync` in flight: joined by the next writeback and by `sync`,
    /// detached on drop.
    in_flight: Option<std::thread::JoinHandle<io::Result<()>>>,
    /// The first error of a background `fdatasync`.
    failed: Option<io::Error>,
    /// What the background thread runs on the clone: `File::sync_data`; tests slow it down or
    /// make it fail.
    writeback: fn(&File) -> io::Result<()>,
}

impl WritebackFile {
    fn new(file: File) -> Self {
        Self::with_writeback(file, File::sync_data)
    }

    fn with_writeback(file: File, writeback: fn(&File) -> io::Result<()>) -> Self {
        Self {
            file,
            since_writeback: 0,
            in_flight: None,
            failed: None,
            writeback,
        }
    }

    /// Waits for the background `fdatasync` in flight, keeping its error.
    fn join(&mut self) {
        if let Some(handle) = self.in_flight.take() {
            let outcome = handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the writeback thread panicked")));
            if let Err(err) = outcome
                && self.failed.is_none()
            {
                self.failed = Some(err);
            }
        }
    }

    fn start_writeback(&mut self) -> io::Result<()> {
        if self.in_flight.as_ref().is_some_and(|h| !h.is_finished()) {
            return Ok(());
        }
        self.join();
        let clone = self.file.try_clone()?;
        let writeback = self.writeback;
        self.in_flight = Some(std::thread::spawn(move || writeback(&clone)));
        self.since_writeback = 0;
        Ok(())
    }
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.since_writeback += written as u64;
        if self.since_writeback >= WRITEBACK_EVERY {
            self.start_writeback()?;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl FileSink for WritebackFile {
    fn sync(&mut self) -> io::Result<()> {
        self.join();
        if let Some(err) = self.failed.take() {
            return Err(err);
        }
        self.file.sync_all()
    }
}

impl Drop for WritebackFile {
    /// Detaches the background `fdatasync` instead of joining it: a drop may happen on an
    /// async worker (a batch abandoned between pages), and joining would hold that worker for
    /// a whole `fdatasync`. The thread ends on its own once the disk answers, closing its
    /// clone of the handle. Its error is not needed: this file was never synced by
    /// [`FileSink::sync`], so it is never published.
    fn drop(&mut self) {
        drop(self.in_flight.take());
    }
}

thread_local! {
    /// True while this thread runs the writer's blocking work (`off_worker`): a thread of
    /// tokio's blocking pool, where a drop may take its time.
    static OFF_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `work` marked as running off the async workers (see [`drop_off_worker`]). Every
/// blocking step of writing a batch goes through it (`output::blocking`).
pub(crate) fn off_worker<T>(work: impl FnOnce() -> T) -> T {
    /// Puts the mark back as it was, also when `work` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            OFF_WORKER.with(|mark| mark.set(self.0));
        }
    }
    let _restore = Restore(OFF_WORKER.with(|mark| mark.replace(true)));
    work()
}

/// Drops `value` where its drop cannot stall an async worker: right here on a thread running
/// the writer's blocking work ([`off_worker`]) or outside any runtime, else on tokio's blocking
/// pool. An open batch file's drop writes (its buffer is flushed, a gzip or CSV encoder ends its
/// stream into the file) and removes its temporary file; on an async worker that would hold
/// every task of that worker for as long as the disk takes.
pub(crate) fn drop_off_worker<T: Send + 'static>(value: T) {
    if OFF_WORKER.with(std::cell::Cell::get) {
        drop(value);
        return;
    }
    match tokio::runtime::Handle::try_current() {
        // A runtime shutting down drops the task unrun, which drops `value` there: the
        // clean-up still happens.
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(value))),
        Err(_) => drop(value),
    }
}

/// Counts bytes on their way to the sink.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Sink = Counting<BufWriter<Box<dyn FileSink>>>;

/// The compression layer over the sink.
enum Compressor {
    Plain(Sink),
    Gzip(flate2::write::GzEncoder<Sink>),
    Zstd(zstd::stream::write::Encoder<'static, Sink>),
}

impl Compressor {
    /// `level` is the gzip or zstd level; `None` is this binary's ([`GZIP_LEVEL`],
    /// [`ZSTD_LEVEL`]).
    fn new(sink: Sink, compression: Compression, level: Option<i32>) -> io::Result<Self> {
        Ok(match compression {
            // The levels were chosen by measurement (BENCHMARKS.md, "compress JSONL" rows).
            // zstd: the highest level that keeps a compressed drain at half the plain one or
            // better. gzip: only level 1 would, with files about half again as large as level
            // 2's; level 2 is the knee of its curve, 4-5× faster than gzip's usual 6 for files
            // about 6 % larger.
            Compression::None => Self::Plain(sink),
            Compression::Gzip => {
                let level = match level {
                    Some(level) => u32::try_from(level).map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("gzip has no level {level}"),
                        )
                    })?,
                    None => GZIP_LEVEL,
                };
                Self::Gzip(flate2::write::GzEncoder::new(
                    sink,
                    flate2::Compression::new(level),
                ))
            }
            Compression::Zstd => Self::Zstd(zstd::stream::write::Encoder::new(
                sink,
                level.unwrap_or(ZSTD_LEVEL),
            )?),
        })
    }

    fn finish(self) -> io::Result<Sink> {
        match self {
            Self::Plain(sink) => Ok(sink),
            Self::Gzip(encoder) => encoder.finish(),
            Self::Zstd(encoder) => encoder.finish(),
        }
    }
}

impl Write for Compressor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(w) => w.write(buf),
            Self::Gzip(w) => w.write(buf),
            Self::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(w) => w.flush(),
            Self::Gzip(w) => w.flush(),
            Self::Zstd(w) => w.flush(),
        }
    }
}

/// The format layer over the compressor.
enum Encoder {
    Lines(Compressor),
    Csv {
        // Boxed: the CSV writer carries its own buffer and would make every Encoder large.
        writer: Box<csv::Writer<Compressor>>,
        /// The layout's named columns.
        splitter: FieldSplitter,
        /// Whether the layout has the trailing column of the other keys.
        has_rest: bool,
    },
    /// Parquet compresses its own columns: its compressor is always `Plain`.
    Parquet(Box<ParquetEncoder<Compressor>>),
}

/// What a batch's file is laid out by, read from the batch before the file is created: every
/// attempt at a batch reads the same layout, so writes the same bytes.
#[derive(Clone, Debug, Default)]
pub(crate) enum FileLayout {
    /// JSON Lines: records as they are.
    #[default]
    Lines,
    /// CSV columns.
    Csv(CsvLayout),
    /// Parquet columns and their types.
    Parquet(ParquetLayout),
}

impl FileLayout {
    /// The layout of `batch`'s file in `format`: CSV and Parquet read the batch's key set (and
    /// Parquet its records, once, for their types) from Redis. (The persister lays a local
    /// Parquet file out from the batch's first page instead: `ParquetLayout::of_sample`.)
    pub(crate) async fn of_batch(
        buffer: &Buffer,
        batch: &PreparedBatch,
        format: Format,
        max_columns: usize,
    ) -> Result<Self> {
        Ok(match format {
            Format::JsonLines => Self::Lines,
            Format::Csv => Self::Csv(CsvLayout::of_batch(buffer, batch, max_columns).await?),
            Format::Parquet => {
                Self::Parquet(ParquetLayout::of_batch(buffer, batch, max_columns).await?)
            }
        })
    }

    /// The format this layout is for.
    pub(crate) fn format(&self) -> Format {
        match self {
            Self::Lines => Format::JsonLines,
            Self::Csv(_) => Format::Csv,
            Self::Parquet(_) => Format::Parquet,
        }
    }

    /// The same layout for an output that splits a batch into parts of about `part_size`
    /// bytes: a Parquet part can only end where a row group ends, so its row groups are kept
    /// to at most `part_size` bytes too. Other formats are unchanged.
    pub(crate) fn for_parts(self, part_size: u64) -> Self {
        match self {
            Self::Parquet(layout) => Self::Parquet(layout.with_row_groups_up_to(part_size)),
            other => other,
        }
    }
}

/// The compression applied to a whole file of `format`: `compression`, except for Parquet,
/// which compresses inside the file (column by column, with `compression` as the codec) and
/// is never compressed again.
pub(crate) fn file_compression(format: Format, compression: Compression) -> Compression {
    match format {
        Format::Parquet => Compression::None,
        Format::JsonLines | Format::Csv => compression,
    }
}

/// A batch's records on their way through the format encoder and the compressor into a sink:
/// the part of writing that does not care where the bytes go (a temporary file, or an object
/// part held in memory by the object output). Every format and compression goes through it, so
/// every output writes them alike.
pub(crate) struct EncodedStream {
    store: StoreName,
    batch: BatchId,
    encoder: Encoder,
    /// What the bytes are written to, for error messages (a temporary file, an object name).
    label: PathBuf,
    records: u64,
}

impl EncodedStream {
    /// Starts the encoder and the compressor over `sink` (a CSV file's header is written at
    /// once). `layout` is the file's columns ([`FileLayout::of_batch`]), which also decides the
    /// format; `compression` is the file's compression, or a Parquet file's column codec (the
    /// Parquet file itself is never compressed again: [`file_compression`]). `level` is the
    /// file's gzip or zstd level, `None` for this binary's ([`compression_level`]); Parquet's
    /// columns always use theirs.
    pub(crate) fn new(
        sink: Box<dyn FileSink>,
        label: PathBuf,
        store: &StoreName,
        batch: &BatchId,
        compression: Compression,
        level: Option<i32>,
        layout: FileLayout,
    ) -> Result<Self> {
        let sink = Counting {
            inner: BufWriter::with_capacity(256 * 1024, sink),
            bytes: 0,
        };
        let compressor =
            Compressor::new(sink, file_compression(layout.format(), compression), level)
                .map_err(Error::io("start compressor", &label))?;
        let encoder = match layout {
            FileLayout::Lines => Encoder::Lines(compressor),
            FileLayout::Parquet(layout) => Encoder::Parquet(Box::new(
                ParquetEncoder::new(compressor, layout, compression)
                    .map_err(|err| parquet_error(&label, store, batch, 0, err))?,
            )),
            FileLayout::Csv(csv) => {
                let mut writer = Box::new(csv::Writer::from_writer(compressor));
                // Always a header (the layout has at least one column): a CSV reader takes
                // the first line as one, so every later line is one record.
                writer
                    .write_record(csv.header())
                    .map_err(|err| csv_error(&label, store, batch, 0, err))?;
                Encoder::Csv {
                    writer,
                    has_rest: csv.has_rest(),
                    splitter: FieldSplitter::new(csv.columns().to_vec()),
                }
            }
        };
        Ok(Self {
            store: store.clone(),
            batch: batch.clone(),
            encoder,
            label,
            records: 0,
        })
    }

    /// Appends one record (its JSON text as read from Redis).
    pub(crate) fn write_record(&mut self, text: &str) -> Result<()> {
        match &mut self.encoder {
            Encoder::Lines(out) => {
                out.write_all(text.as_bytes())
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(Error::io("write", &self.label))?;
            }
            Encoder::Csv {
                writer,
                splitter,
                has_rest,
            } => {
                let index = self.records;
                let encode_error = |reason| Error::Encode {
                    store: self.store.to_string(),
                    batch: self.batch.to_string(),
                    index,
                    reason,
                };
                let csv_error = |err| csv_error(&self.label, &self.store, &self.batch, index, err);
                let columns = splitter.columns().len();
                let split = splitter.split(text).map_err(encode_error)?;
                if !*has_rest && let Some(reason) = split.unknown_key() {
                    return Err(encode_error(reason));
                }
                // Field by field into the CSV writer's buffer: the same bytes as a whole row
                // handed over at once, without a row to build per record.
                for column in 0..columns {
                    let field = match split.value(column) {
                        Some(value) => csv_text(value).map_err(encode_error)?,
                        None => Cow::Borrowed(""),
                    };
                    writer.write_field(field.as_bytes()).map_err(csv_error)?;
                }
                if *has_rest {
                    let object = rest_object(split.rest).map_err(encode_error)?;
                    writer.write_field(object.as_bytes()).map_err(csv_error)?;
                }
                writer.write_record(None::<&[u8]>).map_err(csv_error)?;
            }
            Encoder::Parquet(encoder) => {
                let index = self.records;
                encoder.write_record(text).map_err(|err| {
                    parquet_error(&self.label, &self.store, &self.batch, index, err)
                })?;
            }
        }
        self.records += 1;
        Ok(())
    }

    /// Appends a page of records. As JSON Lines the page is already the file's text: one
    /// write, whatever the number of records.
    pub(crate) fn write_page(&mut self, page: &Page) -> Result<()> {
        if let Encoder::Lines(out) = &mut self.encoder {
            out.write_all(page.as_lines().as_bytes())
                .map_err(Error::io("write", &self.label))?;
            self.records += page.len() as u64;
            return Ok(());
        }
        page.iter().try_for_each(|text| self.write_record(text))
    }

    /// Bytes the compressor has put out so far (what the sink holds or will hold, less what
    /// the encoder and the compressor still buffer). A function of the records written alone,
    /// so a batch is split into parts at the same records on every attempt. A Parquet encoder
    /// puts bytes out only when it closes a row group, so a Parquet part ends at a row group.
    pub(crate) fn encoded_bytes(&self) -> u64 {
        let compressor = match &self.encoder {
            Encoder::Lines(compressor) => compressor,
            Encoder::Csv { writer, .. } => writer.get_ref(),
            Encoder::Parquet(encoder) => encoder.sink(),
        };
        match compressor {
            Compressor::Plain(sink) => sink.bytes,
            Compressor::Gzip(encoder) => encoder.get_ref().bytes,
            Compressor::Zstd(encoder) => encoder.get_ref().bytes,
        }
    }

    /// Ends the encoder and the compressor (a complete file: the CSV writer's buffer and the
    /// compression stream's trailer are written) and flushes everything into the sink.
    /// Returns the sink, the bytes it received and the records written.
    pub(crate) fn finish(self) -> Result<(Box<dyn FileSink>, u64, u64)> {
        let Self {
            store,
            batch,
            encoder,
            label,
            records,
        } = self;
        let compressor = match encoder {
            Encoder::Lines(compressor) => compressor,
            Encoder::Csv { writer, .. } => writer.into_inner().map_err(|err| Error::Io {
                action: "write",
                path: label.clone(),
                source: io::Error::other(err.to_string()),
            })?,
            // The footer is written here: every Parquet part is a complete file.
            Encoder::Parquet(encoder) => encoder
                .finish()
                .map_err(|err| parquet_error(&label, &store, &batch, records, err))?,
        };
        let sink = compressor
            .finish()
            .map_err(Error::io("finish compression of", &label))?;
        let bytes = sink.bytes;
        let inner = sink.inner.into_inner().map_err(|err| Error::Io {
            action: "write",
            path: label.clone(),
            source: io::Error::new(err.error().kind(), err.error().to_string()),
        })?;
        Ok((inner, bytes, records))
    }
}

/// A batch file being written to its temporary name. Dropping it (a failed write, a cancelled
/// task, an abandon) removes the temporary file, off the async workers ([`drop_off_worker`]);
/// `finish` hands it to a [`SyncedFile`].
pub(crate) struct BatchFile {
    store: StoreName,
    batch: BatchId,
    /// The encoder and the temporary file; taken by `finish`, else dropped with the batch file.
    open: Option<OpenFile>,
    target: PathBuf,
    compression: Compression,
}

/// What a [`BatchFile`]'s drop has to clean up, in this order: the encoder (which may still
/// write into the file), then the temporary name.
struct OpenFile {
    stream: EncodedStream,
    temp: TempName,
}

impl Drop for BatchFile {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            drop_off_worker(open);
        }
    }
}

/// What publishing a file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Published {
    /// The file was written and published by this writer.
    Written {
        /// Its path.
        path: PathBuf,
        /// Its size on disk.
        bytes: u64,
    },
    /// An identical file was already there (an earlier attempt published it before crashing).
    AlreadyThere {
        /// Its path.
        path: PathBuf,
    },
}

impl Published {
    /// The published file.
    pub(crate) fn path(&self) -> &Path {
        match self {
            Self::Written { path, .. } | Self::AlreadyThere { path } => path,
        }
    }
}

impl BatchFile {
    /// Creates the target's directory (every missing level, each made durable) and the
    /// temporary file beside the target. `target` is the batch's path under `out` (from the
    /// path template); `layout` is the file's columns ([`FileLayout::of_batch`]), which also
    /// decides the format.
    pub(crate) fn create(
        out: &Path,
        target: PathBuf,
        batch: &PreparedBatch,
        compression: Compression,
        layout: FileLayout,
        open: &SinkFactory,
    ) -> Result<Self> {
        let dir = target.parent().unwrap_or(out).to_path_buf();
        create_dir_durably(out, &dir)?;
        let temp = dir.join(paths::temp_name(&batch.id));
        let sink = open(&temp).map_err(Error::io("create temporary file", &temp))?;
        // From here on the temporary file exists: any error below removes it.
        let temp = TempName(temp);
        let format = layout.format();
        // A local file needs no agreed level: an earlier attempt's file is compared with this
        // one decompressed (a Parquet file's columns use the `parquet` crate's levels).
        let stream = EncodedStream::new(
            sink,
            temp.0.clone(),
            &batch.store,
            &batch.id,
            compression,
            None,
            layout,
        )?;
        Ok(Self {
            store: batch.store.clone(),
            batch: batch.id.clone(),
            open: Some(OpenFile { stream, temp }),
            target,
            // An earlier attempt's file is compared as the file is compressed (a Parquet file
            // byte for byte).
            compression: file_compression(format, compression),
        })
    }

    /// Appends a page of records (the JSON texts read from Redis).
    pub(crate) fn write_page(&mut self, page: &Page) -> Result<()> {
        self.open_file()?.stream.write_page(page)
    }

    fn open_file(&mut self) -> Result<&mut OpenFile> {
        self.open
            .as_mut()
            .ok_or_else(|| Error::Task("a finished batch file was written to".into()))
    }

    /// Finishes the compression, checks that exactly `expected` records were written and
    /// fsyncs the file. On error the temporary file is removed.
    pub(crate) fn finish(mut self, expected: u64) -> Result<SyncedFile> {
        let OpenFile { stream, temp } = self
            .open
            .take()
            .ok_or_else(|| Error::Task("a batch file was finished twice".into()))?;
        // The synced file takes over the temporary name (and its removal on error).
        let mut synced = SyncedFile {
            store: self.store.clone(),
            batch: self.batch.clone(),
            temp: temp.handed_over(),
            target: std::mem::take(&mut self.target),
            compression: self.compression,
            bytes: 0,
            published: false,
        };
        let (mut file, bytes, records) = stream.finish()?;
        if records != expected {
            return Err(Error::CountMismatch {
                store: synced.store.to_string(),
                batch: synced.batch.to_string(),
                written: records,
                expected,
            });
        }
        failpoint("before-fsync");
        file.sync().map_err(Error::io("fsync", &synced.temp))?;
        failpoint("after-fsync");
        synced.bytes = bytes;
        Ok(synced)
    }

    /// Removes the temporary file (on abandon), off the async workers.
    pub(crate) fn discard(self) {
        drop(self);
    }
}

/// The temporary name of a batch file being written: removed on drop unless handed over to
/// the [`SyncedFile`] that publishes it.
struct TempName(PathBuf);

impl TempName {
    /// The path, no longer removed on drop: its new owner removes it.
    fn handed_over(self) -> PathBuf {
        let mut this = std::mem::ManuallyDrop::new(self);
        std::mem::take(&mut this.0)
    }
}

impl Drop for TempName {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A CSV writer's error as ours: an I/O error of the temporary file, or record `index` of the
/// batch that could not be encoded.
fn csv_error(
    temp: &Path,
    store: &StoreName,
    batch: &BatchId,
    index: u64,
    err: csv::Error,
) -> Error {
    match err.into_kind() {
        csv::ErrorKind::Io(source) => Error::Io {
            action: "write",
            path: temp.to_path_buf(),
            source,
        },
        other => Error::Encode {
            store: store.to_string(),
            batch: batch.to_string(),
            index,
            reason: format!("{other:?}"),
        },
    }
}

/// The Parquet encoder's error as ours, as [`csv_error`] does for CSV.
fn parquet_error(
    label: &Path,
    store: &StoreName,
    batch: &BatchId,
    index: u64,
    err: ParquetFailure,
) -> Error {
    match err {
        ParquetFailure::Io(source) => Error::Io {
            action: "write",
            path: label.to_path_buf(),
            source,
        },
        ParquetFailure::Record(reason) => Error::Encode {
            store: store.to_string(),
            batch: batch.to_string(),
            index,
            reason,
        },
        ParquetFailure::SampleMisfit(reason) => Error::SampleMisfit {
            store: store.to_string(),
            batch: batch.to_string(),
            index,
            reason,
        },
    }
}

/// A complete, fsynced temporary file, ready to be published. Dropping it unpublished removes
/// the temporary file.
pub(crate) struct SyncedFile {
    store: StoreName,
    batch: BatchId,
    temp: PathBuf,
    target: PathBuf,
    compression: Compression,
    bytes: u64,
    published: bool,
}

impl SyncedFile {
    /// Publishes the file under its target name without clobbering (`link`), removes the
    /// temporary name and fsyncs the directory.
    pub(crate) fn publish(mut self) -> Result<Published> {
        let result = self.link();
        // Whatever happened, the temporary name goes: after a successful link the data lives
        // on under the target name; after a failure nothing partial may stay behind.
        let _ = fs::remove_file(&self.temp);
        self.published = true;
        let published = result?;
        sync_dir(self.target.parent().unwrap_or(Path::new(".")))?;
        failpoint("after-dir-fsync");
        Ok(published)
    }

    fn link(&self) -> Result<Published> {
        match fs::hard_link(&self.temp, &self.target) {
            Ok(()) => {
                failpoint("after-link");
                Ok(Published::Written {
                    path: self.target.clone(),
                    bytes: self.bytes,
                })
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                if same_contents(&self.temp, &self.target, self.compression)? {
                    Ok(Published::AlreadyThere {
                        path: self.target.clone(),
                    })
                } else {
                    Err(Error::Conflict {
                        store: self.store.to_string(),
                        batch: self.batch.to_string(),
                        path: self.target.clone(),
                    })
                }
            }
            Err(err) => Err(Error::io("publish", &self.target)(err)),
        }
    }
}

impl Drop for SyncedFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Removes temporary files of `batch` left in `dir`, the directory of its file, by writers
/// that crashed or lost their lock (they write beside the target, whose path the template
/// makes the same for every attempt). Called once the batch is persisted and emptied, when no
/// one can still be writing it legitimately.
pub(crate) fn remove_stale_temps(dir: &Path, batch: &BatchId) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|name| paths::is_temp_of(name, batch))
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Compares the decompressed contents of two files of the same format and compression.
fn same_contents(a: &Path, b: &Path, compression: Compression) -> Result<bool> {
    let mut left = open_decoded_as(a, compression)?;
    let mut right = open_decoded_as(b, compression)?;
    same_bytes(&mut left, &mut right).map_err(|(side, err)| {
        let path = if side == 0 { a } else { b };
        Error::io("read", path)(err)
    })
}

/// True when two readers give the same bytes, read 64 KiB at a time. An error says which
/// reader failed (0 for `left`, 1 for `right`).
pub(crate) fn same_bytes(
    left: &mut dyn Read,
    right: &mut dyn Read,
) -> Result<bool, (u8, io::Error)> {
    let mut left_buf = vec![0u8; 64 * 1024];
    let mut right_buf = vec![0u8; 64 * 1024];
    loop {
        let n = read_full(left, &mut left_buf).map_err(|err| (0, err))?;
        let m = read_full(right, &mut right_buf).map_err(|err| (1, err))?;
        if n != m || left_buf[..n] != right_buf[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Opens a batch file with the decompressor its name calls for (`.gz`, `.zst` or none).
///
/// # Errors
/// [`Error::Io`] when the file cannot be opened.
#[cfg(any(test, feature = "test-hooks"))]
pub fn open_decoded(path: &Path) -> Result<Box<dyn Read>> {
    let name = path.to_string_lossy();
    let compression = if name.ends_with(".gz") {
        Compression::Gzip
    } else if name.ends_with(".zst") {
        Compression::Zstd
    } else {
        Compression::None
    };
    open_decoded_as(path, compression)
}

fn open_decoded_as(path: &Path, compression: Compression) -> Result<Box<dyn Read>> {
    let file = File::open(path).map_err(Error::io("open", path))?;
    let reader = decoded(Box::new(file), compression).map_err(Error::io("open", path))?;
    Ok(reader)
}

/// `reader`'s bytes decompressed as `compression` says.
///
/// # Errors
/// The decompressor's error when it cannot start.
pub(crate) fn decoded(
    reader: Box<dyn Read + Send>,
    compression: Compression,
) -> io::Result<Box<dyn Read + Send>> {
    Ok(match compression {
        Compression::None => Box::new(BufReader::new(reader)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(reader))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
    })
}

/// Creates `dir` (and parents) under `out`, fsyncing each parent whose entries changed, so a
/// published file's directory survives a crash too.
fn create_dir_durably(out: &Path, dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut current = dir;
    while !current.is_dir() {
        missing.push(current.to_path_buf());
        match current.parent() {
            Some(parent) if current != out => current = parent,
            _ => break,
        }
    }
    fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent() {
            sync_dir(parent)?;
        }
    }
    failpoint("after-dir-create");
    Ok(())
}

/// fsyncs a directory so the names in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let handle = File::open(dir).map_err(Error::io("open directory", dir))?;
    handle
        .sync_all()
        .map_err(Error::io("fsync directory", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_big_file_starts_its_writeback_while_it_is_written_and_syncs_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let mut sink = WritebackFile::new(file);
        let chunk = vec![b'x'; 1 << 20];
        let mut started = 0;
        for _ in 0..20 {
            sink.write_all(&chunk).unwrap();
            if sink.since_writeback == 0 {
                started += 1;
            }
        }
        assert!(started >= 1, "no writeback was started");
        sink.sync().unwrap();
        assert!(sink.in_flight.is_none());
        drop(sink);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 20 << 20);
    }

    fn new_file(dir: &tempfile::TempDir, name: &str) -> File {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.path().join(name))
            .unwrap()
    }

    /// Set when `slow_writeback` is done.
    static SLOW_WRITEBACK_DONE: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    /// An `fdatasync` on a disk that takes 1.5 s to answer.
    fn slow_writeback(file: &File) -> io::Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let result = file.sync_data();
        SLOW_WRITEBACK_DONE.store(true, std::sync::atomic::Ordering::SeqCst);
        result
    }

    #[test]
    fn a_writeback_file_dropped_on_an_async_worker_mid_fdatasync_does_not_hold_the_worker() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            // Another task on the one worker thread: it ticks only while that thread is free.
            let ticks = std::sync::Arc::new(AtomicU64::new(0));
            tokio::spawn({
                let ticks = ticks.clone();
                async move {
                    loop {
                        ticks.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            });
            let mut sink = WritebackFile::with_writeback(new_file(&dir, "f"), slow_writeback);
            sink.write_all(&vec![b'x'; WRITEBACK_EVERY as usize])
                .unwrap();
            assert!(sink.in_flight.is_some(), "no background fdatasync started");
            tokio::time::sleep(Duration::from_millis(20)).await;
            let started = Instant::now();
            drop(sink);
            let took = started.elapsed();
            assert!(
                !SLOW_WRITEBACK_DONE.load(Ordering::SeqCst),
                "the drop waited for the fdatasync ({took:?})"
            );
            assert!(took < Duration::from_millis(500), "the drop took {took:?}");
            let before = ticks.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(
                ticks.load(Ordering::SeqCst) > before,
                "the other task did not run"
            );
        });
    }

    /// An `fdatasync` whose disk reports a write error.
    fn failing_writeback(_: &File) -> io::Result<()> {
        Err(io::Error::other("injected writeback error"))
    }

    #[test]
    fn an_error_of_a_background_fdatasync_fails_the_final_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = WritebackFile::with_writeback(new_file(&dir, "f"), failing_writeback);
        sink.write_all(&vec![b'x'; WRITEBACK_EVERY as usize])
            .unwrap();
        let err = sink.sync().unwrap_err();
        assert!(
            err.to_string().contains("injected writeback error"),
            "{err}"
        );
    }

    #[test]
    fn a_value_dropped_off_the_workers_is_dropped_here_on_a_blocking_thread_or_without_runtime() {
        struct Notes(std::sync::mpsc::Sender<std::thread::ThreadId>);
        impl Drop for Notes {
            fn drop(&mut self) {
                let _ = self.0.send(std::thread::current().id());
            }
        }
        let here = std::thread::current().id();
        let (sender, dropped) = std::sync::mpsc::channel();
        // No runtime: dropped here.
        drop_off_worker(Notes(sender.clone()));
        assert_eq!(dropped.recv().unwrap(), here);
        // Inside the writer's blocking work: dropped right there.
        off_worker(|| drop_off_worker(Notes(sender.clone())));
        assert_eq!(dropped.recv().unwrap(), here);
        // On an async worker: dropped on another thread (tokio's blocking pool).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async { drop_off_worker(Notes(sender.clone())) });
        drop(runtime);
        assert_ne!(dropped.recv().unwrap(), here);
    }
}
