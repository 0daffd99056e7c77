//! The object output (`--out s3://bucket/prefix`): exactly once without a shared disk.
//!
//! A batch is encoded into parts held in memory. A part is closed at the first record
//! boundary where the compressor has put out at least `--part-size` bytes, unless that record
//! is the batch's last; every part is a complete file (the encoder and the compression stream
//! are ended per part, a CSV part has its header, a Parquet part its footer). A Parquet
//! encoder puts bytes out only when it closes a row group, so a Parquet part ends at a row
//! group, and its row groups are kept to at most the part size (`FileLayout::for_parts`).
//! The split depends only on the batch's records and the settings the marker records, so
//! every attempt splits a batch alike.
//!
//! Names: a batch that fits in one part is one object under the path template's name
//! (`prefix/<template>`). A larger one is published as parts only: `{batch}` in the file name
//! becomes `<batch id>.part-00001`, `.part-00002`, … (see `paths::part_suffix`).
//!
//! Each object is published with a conditional create (`PutMode::Create`, S3's
//! `If-None-Match: *`), after checking in Redis that this persister still holds the batch's
//! lock. S3 makes a PUT visible whole or not at all, so nothing partial is ever under a final
//! name, and no temporary object is made (no multipart upload either: a part is one PUT).
//! When the name is taken ("precondition failed"), an earlier attempt published it (before a
//! crash, or a retried request whose answer was lost): the object is read back and counts as
//! written only when its decompressed bytes (a Parquet object's bytes as they are) equal this
//! part's, else [`Error::Conflict`] and
//! the batch stays in Redis. A crash between parts leaves the first parts in place; the next
//! attempt finds them, verifies them, and publishes the rest.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use buffer_core::{LockGuard, Page, PreparedBatch};
use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, RetryConfig};

use crate::config::{Compression, PersistConfig};
use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::marker::{self, MARKER_FILE};
use crate::paths::{self, PathTemplate};
use crate::writer::{self, EncodedStream, FileLayout, FileSink, Published};

/// How much of a part buffer grows at a time: the buffer is a list of chunks of this size, so
/// growing never copies what is already there (a doubling `Vec` would hold up to three times
/// the part while it moves).
const CHUNK: usize = 1024 * 1024;

/// Refuses an `http://` endpoint unless `AWS_ALLOW_HTTP` allows it: the client would build
/// every request only to fail it with `HTTP error: builder error`, which names nothing to fix.
///
/// # Errors
/// [`Error::Config`] naming the endpoint and the variable to set.
fn refuse_plain_http_unless_allowed(builder: &AmazonS3Builder) -> Result<()> {
    use object_store::ClientConfigKey;
    use object_store::aws::AmazonS3ConfigKey;
    let endpoints = [AmazonS3ConfigKey::Endpoint, AmazonS3ConfigKey::S3Endpoint]
        .iter()
        .filter_map(|key| builder.get_config_value(key));
    let allowed = builder
        .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
        .is_some_and(|value| {
            // object_store's own reading of a true value.
            matches!(
                value.to_ascii_lowercase().as_str(),
                "1" | "true" | "on" | "yes" | "y"
            )
        });
    for endpoint in endpoints {
        if !allowed && endpoint.to_ascii_lowercase().starts_with("http://") {
            return Err(Error::Config(format!(
                "the S3 endpoint {endpoint} (AWS_ENDPOINT_URL) is plain HTTP, which the S3 client refuses unless AWS_ALLOW_HTTP=true is set; set it, or use an https:// endpoint"
            )));
        }
    }
    Ok(())
}

/// A bucket and prefix of an object store.
#[derive(Debug)]
pub(crate) struct ObjectOutput {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket`, for names in logs, events and errors.
    base: String,
    /// The key prefix (no leading or trailing `/`), empty for the bucket's root.
    prefix: String,
    /// The gzip or zstd level the prefix's objects are compressed at (`None` without
    /// compression), as its marker says: set once by `check_or_write_marker`, before any batch,
    /// and read by every `ObjectBatch`. The split into parts depends on it.
    level: OnceLock<Option<i32>>,
}

impl ObjectOutput {
    /// An S3 output whose credentials, region and endpoint come from the standard environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
    /// `AWS_ALLOW_HTTP`, ...).
    ///
    /// # Errors
    /// [`Error::Config`] when the client cannot be built from the environment.
    pub(crate) fn s3_from_env(bucket: &str, prefix: &str) -> Result<Self> {
        // The client retries a failed request itself (with backoff) for at most a minute;
        // past that the batch fails, stays in Redis and is retried at a later poll, so an
        // unreachable store never holds a batch's lock for long.
        let retry = RetryConfig {
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
            ..RetryConfig::default()
        };
        let builder = AmazonS3Builder::from_env();
        refuse_plain_http_unless_allowed(&builder)?;
        let store = builder
            .with_bucket_name(bucket)
            .with_retry(retry)
            .build()
            .map_err(|err| {
                Error::Config(format!(
                    "--out s3://{bucket}: cannot set up the S3 client from the environment: {err}"
                ))
            })?;
        Ok(Self {
            store: Arc::new(store),
            base: format!("s3://{bucket}"),
            prefix: prefix.to_owned(),
            level: OnceLock::new(),
        })
    }

    /// The object key of `relative` (a path from the template) under the prefix.
    fn key(&self, relative: &std::path::Path) -> Result<ObjectPath> {
        let mut key = self.prefix.clone();
        for component in relative.components() {
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(&component.as_os_str().to_string_lossy());
        }
        // The template and the store encoding keep every segment printable and never `.`/`..`,
        // so this only fails on a bug; the key is taken as is (`ObjectPath::from` would
        // percent-encode `%`, `~` and `=` a second time).
        ObjectPath::parse(&key)
            .map_err(|err| Error::Config(format!("object name {key:?} is refused: {err}")))
    }

    /// `s3://bucket/key`.
    fn url(&self, key: &ObjectPath) -> String {
        format!("{}/{key}", self.base)
    }

    /// Publishes the `.buffer-persist` marker under the prefix with a conditional create, or
    /// reads the one there and compares it: persisters sharing a prefix must agree on format,
    /// compression, CSV columns, path template and part size, or one batch could be
    /// published under two names, or split differently. The compression level is the
    /// marker's: this persister compresses at the level the marker names (or, for a marker
    /// from before levels were recorded, the level that version used), so every attempt at a
    /// batch cuts the same parts (`marker::compare`).
    ///
    /// # Errors
    /// [`Error::OutputMismatch`] for a marker with other settings or not written by this
    /// program; [`Error::ObjectStore`] when the store cannot be reached.
    pub(crate) async fn check_or_write_marker(&self, config: &PersistConfig) -> Result<()> {
        let key = self.key(std::path::Path::new(MARKER_FILE))?;
        let url = self.url(&key);
        let wanted = marker::marker_text(config);
        let level = match self
            .store
            .put_opts(
                &key,
                PutPayload::from(wanted.clone()),
                PutMode::Create.into(),
            )
            .await
        {
            Ok(_) => {
                failpoint("after-marker");
                writer::compression_level(config.format, config.compression)
            }
            Err(object_store::Error::AlreadyExists { .. }) => {
                let found = self
                    .store
                    .get(&key)
                    .await
                    .map_err(object_error("read", &url))?
                    .bytes()
                    .await
                    .map_err(object_error("read", &url))?;
                marker::compare(PathBuf::from(url), &String::from_utf8_lossy(&found), config)?
            }
            // A PUT answered 404 has nowhere to go: S3 says NoSuchBucket (with its XML,
            // which object_store reports as "Object at location … not found").
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::NoBucket {
                    bucket: self.base.trim_start_matches("s3://").to_owned(),
                });
            }
            Err(err) => return Err(object_error("publish", &url)(err)),
        };
        // Every later check (a `drain` after a `run` of the same persister) must find the
        // same level: batches already started are split at the first one.
        let settled = *self.level.get_or_init(|| level);
        if settled != level {
            return Err(Error::OutputMismatch {
                path: PathBuf::from(self.url(&key)),
                reason: format!(
                    "the marker's compression level changed from {settled:?} to {level:?} while this persister ran"
                ),
            });
        }
        Ok(())
    }

    /// The level the marker settled; an error before the marker was checked, so no batch is
    /// ever split at a level the prefix did not agree on.
    fn level(&self) -> Result<Option<i32>> {
        self.level.get().copied().ok_or_else(|| {
            Error::Task(format!(
                "a batch was started on {}/{} before its marker was checked",
                self.base, self.prefix
            ))
        })
    }

    /// Publishes one complete object with a conditional create. An object already under the
    /// name counts as this one when its decompressed bytes are the same.
    async fn publish(&self, batch: &PreparedBatch, part: ClosedPart) -> Result<Published> {
        let url = self.url(&part.key);
        let payload: PutPayload = part.chunks.iter().cloned().collect();
        match self
            .store
            .put_opts(&part.key, payload, PutMode::Create.into())
            .await
        {
            Ok(_) => Ok(Published::Written {
                path: PathBuf::from(url),
                bytes: part.bytes,
            }),
            Err(object_store::Error::AlreadyExists { .. }) => {
                if self.holds(&part.key, part.chunks, part.compression).await? {
                    Ok(Published::AlreadyThere {
                        path: PathBuf::from(url),
                    })
                } else {
                    Err(Error::Conflict {
                        store: batch.store.to_string(),
                        batch: batch.id.to_string(),
                        path: PathBuf::from(url),
                    })
                }
            }
            Err(err) => Err(object_error("publish", &url)(err)),
        }
    }

    /// True when the object `key` decompresses to the same bytes as `ours`. The object is
    /// streamed (a few chunks in flight), never held whole, so verifying costs no part buffer.
    async fn holds(
        &self,
        key: &ObjectPath,
        ours: Vec<Bytes>,
        compression: Compression,
    ) -> Result<bool> {
        let url = self.url(key);
        let found = self
            .store
            .get(key)
            .await
            .map_err(object_error("read", &url))?;
        let mut stream = found.into_stream();
        // The async side feeds the object's chunks to a comparison on a blocking thread; the
        // comparison drops the receiver when it has its answer, which ends the feeding.
        let (sender, receiver) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
        let label = url.clone();
        let compare = tokio::task::spawn_blocking(move || {
            let theirs = ChunkStream {
                receiver,
                current: Bytes::new(),
            };
            let mut ours = writer::decoded(Box::new(Chunks::new(ours)), compression)
                .map_err(Error::io("decompress", &label))?;
            let mut theirs = writer::decoded(Box::new(theirs), compression)
                .map_err(Error::io("decompress", &label))?;
            writer::same_bytes(&mut ours, &mut theirs)
                .map_err(|(_, err)| Error::io("read back", &label)(err))
        });
        while let Some(chunk) = stream.next().await {
            let failed = chunk.is_err();
            let chunk = chunk.map_err(io::Error::other);
            if sender.send(chunk).await.is_err() || failed {
                break;
            }
        }
        drop(sender);
        compare
            .await
            .map_err(|err| Error::Task(format!("object comparison: {err}")))?
    }
}

/// An object store error as ours.
fn object_error(action: &'static str, url: &str) -> impl FnOnce(object_store::Error) -> Error {
    let object = url.to_owned();
    move |source| Error::ObjectStore {
        action,
        object,
        source: Box::new(source),
    }
}

/// One batch on its way to an object output.
pub(crate) struct ObjectBatch {
    output: Arc<ObjectOutput>,
    template: PathTemplate,
    batch: PreparedBatch,
    ext: String,
    /// The compression setting: a file's compression, or Parquet's column codec.
    compression: Compression,
    /// The gzip or zstd level of every part, the prefix's (its marker's).
    level: Option<i32>,
    /// What a part is compared with an object already under its name as: `compression`, or
    /// none for Parquet (compared byte for byte).
    file_compression: Compression,
    layout: FileLayout,
    part_size: u64,
    /// The part being encoded; `None` until the first record and between parts.
    current: Option<OpenPart>,
    /// Complete parts waiting to be published, in order (at most the parts one page closed).
    complete: VecDeque<ClosedPart>,
    /// Parts closed so far, the whole-batch object included.
    closed: u32,
    /// Records encoded so far.
    written: u64,
    /// The first object published (or found), which names the batch in logs and events.
    first: Option<Published>,
}

/// A part being encoded into its in-memory buffer.
struct OpenPart {
    stream: EncodedStream,
    buffer: PartBuffer,
}

/// A complete object, ready to publish.
struct ClosedPart {
    key: ObjectPath,
    /// Part number for a batch of several objects; `None` for a batch that is one object.
    number: Option<u32>,
    chunks: Vec<Bytes>,
    bytes: u64,
    compression: Compression,
}

impl ObjectBatch {
    /// A batch on its way to `output`, compressed at the level its marker settled.
    ///
    /// # Errors
    /// [`Error::Task`] when the output's marker was not checked yet.
    pub(crate) fn new(
        output: Arc<ObjectOutput>,
        template: PathTemplate,
        config: &PersistConfig,
        batch: &PreparedBatch,
        layout: FileLayout,
    ) -> Result<Self> {
        Ok(Self {
            level: output.level()?,
            output,
            template,
            batch: batch.clone(),
            ext: paths::extension(config.format, config.compression),
            compression: config.compression,
            file_compression: writer::file_compression(config.format, config.compression),
            layout: layout.for_parts(config.part_size),
            part_size: config.part_size,
            current: None,
            complete: VecDeque::new(),
            closed: 0,
            written: 0,
            first: None,
        })
    }

    /// The part being encoded, started when there is none.
    fn open_part(&mut self) -> Result<&mut OpenPart> {
        if self.current.is_none() {
            let buffer = PartBuffer::default();
            let stream = EncodedStream::new(
                Box::new(buffer.clone()),
                PathBuf::from(format!(
                    "{} (part {} in memory)",
                    self.output.base,
                    self.closed + 1
                )),
                &self.batch.store,
                &self.batch.id,
                self.compression,
                self.level,
                self.layout.clone(),
            )?;
            self.current = Some(OpenPart { stream, buffer });
        }
        self.current
            .as_mut()
            .ok_or_else(|| Error::Task("part buffer missing".into()))
    }

    /// Encodes a page; every part it completes is queued for publishing. Blocking.
    pub(crate) fn encode_page(&mut self, page: &Page) -> Result<()> {
        let total = self.batch.records;
        let part_size = self.part_size;
        for text in page.iter() {
            let part = self.open_part()?;
            part.stream.write_record(text)?;
            let full = part.stream.encoded_bytes() >= part_size;
            self.written += 1;
            // Never close at the last record: a batch that fits in one part stays one object
            // under the template's own name.
            if full && self.written < total {
                let number = self.closed + 1;
                if number >= paths::MAX_PARTS {
                    return Err(Error::Config(format!(
                        "batch {} of store {:?} needs more than {} parts; raise --part-size",
                        self.batch.id,
                        self.batch.store.as_str(),
                        paths::MAX_PARTS
                    )));
                }
                self.close(Some(number))?;
            }
        }
        Ok(())
    }

    /// Ends the batch: checks the record count and closes the last part (the whole batch when
    /// no part was closed before). Blocking.
    pub(crate) fn end(&mut self, expected: u64) -> Result<()> {
        if self.written != expected {
            return Err(Error::CountMismatch {
                store: self.batch.store.to_string(),
                batch: self.batch.id.to_string(),
                written: self.written,
                expected,
            });
        }
        // A batch with no record (never prepared so, but cheap to handle) is one empty file.
        self.open_part()?;
        let number = (self.closed > 0).then_some(self.closed + 1);
        self.close(number)
    }

    /// Ends the open part's encoder and compression and queues it for publishing.
    fn close(&mut self, number: Option<u32>) -> Result<()> {
        let Some(OpenPart { stream, buffer }) = self.current.take() else {
            return Ok(());
        };
        let (sink, bytes, _) = stream.finish()?;
        // The encoder's handle on the buffer goes, so the chunks are taken, not copied.
        drop(sink);
        let relative = self.template.part_path(
            &self.batch.store,
            &self.batch.id,
            self.batch.first_write_ms,
            &self.ext,
            number,
        );
        let key = self.output.key(&relative)?;
        self.complete.push_back(ClosedPart {
            key,
            number,
            chunks: buffer.take()?,
            bytes,
            compression: self.file_compression,
        });
        self.closed += 1;
        Ok(())
    }

    /// Publishes the complete parts in order, each after checking in Redis that the lock is
    /// still ours (extend, which fails when it is lost).
    pub(crate) async fn publish_complete_parts(
        &mut self,
        guard: &LockGuard,
        lock_ttl: Duration,
    ) -> Result<()> {
        while let Some(part) = self.complete.pop_front() {
            guard.extend(lock_ttl).await?;
            let number = part.number;
            let published = self.output.publish(&self.batch, part).await?;
            match number {
                Some(_) => failpoint("after-part"),
                None => failpoint("after-link"),
            }
            self.first.get_or_insert(published);
        }
        Ok(())
    }

    /// What was published: the first object (written by this attempt or found in place).
    pub(crate) fn published(self) -> Result<Published> {
        self.first
            .ok_or_else(|| Error::Task("an ended batch published no object".into()))
    }
}

/// An object part's bytes in memory, as chunks of at most [`CHUNK`] bytes. Clones share the
/// buffer: the encoder writes through one, [`ObjectBatch::close`] takes the chunks through the
/// other once the encoder is finished.
#[derive(Clone, Default)]
struct PartBuffer(Arc<Mutex<PartChunks>>);

#[derive(Default)]
struct PartChunks {
    full: Vec<Bytes>,
    current: Vec<u8>,
}

impl PartBuffer {
    fn take(&self) -> Result<Vec<Bytes>> {
        let mut chunks = self
            .0
            .lock()
            .map_err(|_| Error::Task("part buffer poisoned".into()))?;
        let mut full = std::mem::take(&mut chunks.full);
        let current = std::mem::take(&mut chunks.current);
        if !current.is_empty() {
            full.push(Bytes::from(current));
        }
        Ok(full)
    }
}

impl Write for PartBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut chunks = self
            .0
            .lock()
            .map_err(|_| io::Error::other("part buffer poisoned"))?;
        let mut rest = buf;
        while !rest.is_empty() {
            if chunks.current.capacity() == 0 {
                chunks.current = Vec::with_capacity(CHUNK);
            }
            let room = CHUNK - chunks.current.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            chunks.current.extend_from_slice(now);
            rest = later;
            if chunks.current.len() == CHUNK {
                let full = Bytes::from(std::mem::take(&mut chunks.current));
                chunks.full.push(full);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FileSink for PartBuffer {
    /// Nothing to make durable: the part is durable once the store accepted its PUT.
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a list of chunks in order.
struct Chunks {
    chunks: VecDeque<Bytes>,
}

impl Chunks {
    fn new(chunks: Vec<Bytes>) -> Self {
        Self {
            chunks: chunks.into(),
        }
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(front) = self.chunks.front_mut() {
            if front.is_empty() {
                self.chunks.pop_front();
                continue;
            }
            let n = front.len().min(buf.len());
            buf[..n].copy_from_slice(&front.split_to(n));
            return Ok(n);
        }
        Ok(0)
    }
}

/// Reads an object's chunks as the async side receives them (on a blocking thread).
struct ChunkStream {
    receiver: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChunkStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = self.current.len().min(buf.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_buffer_keeps_every_byte_in_order_across_chunks() {
        let buffer = PartBuffer::default();
        let mut writer = buffer.clone();
        let data: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(CHUNK / 3 + 1) {
            writer.write_all(piece).unwrap();
        }
        let chunks = buffer.take().unwrap();
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|chunk| chunk.len() <= CHUNK));
        let mut read = Vec::new();
        Chunks::new(chunks).read_to_end(&mut read).unwrap();
        assert_eq!(read, data);
    }
}
