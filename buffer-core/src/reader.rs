//! Reading a prepared batch: [`BatchReader`] pages bounded by records and bytes (planned from
//! the batch's run list), [`Buffer::get_contents`] and the batch's key set.

use std::collections::{BTreeSet, VecDeque};

use futures::stream::{self, Stream, TryStreamExt};
use serde::de::DeserializeOwned;

use crate::batch::{BatchId, PreparedBatch};
use crate::buffer::Buffer;
use crate::error::{Error, Result};
use crate::name::StoreName;
use crate::page::Page;
use crate::record;

/// All the records and keys of a batch, loaded at once by [`Buffer::get_contents`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BatchContents {
    /// The records, in push order, as `Value`s (exact for numbers that fit an `i64`, `u64` or
    /// `f64`; [`Buffer::reader`] gives the exact texts).
    pub records: Vec<serde_json::Value>,
    /// The distinct top-level keys, sorted.
    pub keys: BTreeSet<String>,
}

/// The first keys of a batch, from [`Buffer::batch_first_keys`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FirstKeys {
    /// The smallest of the batch's unique top-level keys, sorted.
    pub keys: BTreeSet<String>,
    /// True when the batch has keys beyond these.
    pub more: bool,
}

impl Buffer {
    /// A reader that streams a batch's records page by page, in push order, as the JSON texts
    /// that were pushed. A page holds at most `page_size` records and at most `page_bytes`
    /// bytes of them (or one record, when that record alone is larger), whatever the batch's
    /// mix of record sizes: the reader plans each page from the batch's run list before it
    /// reads it.
    pub fn reader(&self, batch: &PreparedBatch) -> BatchReader {
        let config = self.config();
        let keys = self.layout().batch(&batch.store, &batch.id);
        BatchReader {
            buffer: self.clone(),
            key: keys.records,
            runs_key: keys.runs,
            entities_key: keys.entities,
            rows_key: keys.rows,
            keys_key: keys.keys,
            rows: None,
            store: batch.store.clone(),
            batch: batch.id.clone(),
            next: 0,
            total: batch.records,
            average_bytes: usize::try_from(batch.bytes.div_ceil(batch.records.max(1))).unwrap_or(0),
            page_size: config.page_size as u64,
            page_bytes: config.page_bytes as u64,
            sizing: PageSizing::Runs {
                ahead: VecDeque::new(),
                next_entry: 0,
                exhausted: false,
            },
        }
    }

    /// Loads a whole batch: its records as `serde_json::Value`s and its sorted unique keys.
    /// Use [`Buffer::reader`] for batches that may not fit in memory, and for the records'
    /// exact texts.
    ///
    /// A `Value` holds a number as an `i64`, a `u64` or an `f64`, so this form is exact for
    /// every number that fits one of those; a longer integer or a decimal with more digits
    /// than an `f64` holds becomes the nearest `f64`. The texts in Redis (and so in the
    /// persister's files and from [`Buffer::reader`]) keep every number exactly as pushed.
    ///
    /// # Errors
    /// [`Error::BatchNotFound`] when the batch does not exist; [`Error::NotAValue`] when a
    /// record is valid JSON that no `Value` can hold (a number beyond `f64`'s range such as
    /// `1e400`, or nesting deeper than 128); [`Error::Corrupt`] when a record is not JSON;
    /// transient errors.
    pub async fn get_contents(&self, store: &StoreName, batch: &BatchId) -> Result<BatchContents> {
        let info = self
            .batch_info(store, batch)
            .await?
            .ok_or_else(|| Error::BatchNotFound {
                store: store.to_string(),
                batch: batch.to_string(),
            })?;
        let mut reader = self.reader(&info);
        let mut records = Vec::with_capacity(usize::try_from(info.records).unwrap_or(0));
        while let Some(page) = reader.next_page().await? {
            for text in page {
                let index = records.len() as u64;
                records.push(record::to_value(&text).map_err(|failure| match failure {
                    record::ValueFailure::NotJson(err) => Error::Corrupt {
                        what: format!(
                            "record {index} of batch {batch} of store {store:?} is not JSON: {err}"
                        ),
                    },
                    record::ValueFailure::NotRepresentable(err) => Error::NotAValue {
                        store: store.to_string(),
                        batch: batch.to_string(),
                        index,
                        reason: err.to_string(),
                    },
                })?);
            }
        }
        let keys = self.batch_keys(store, batch).await?;
        Ok(BatchContents { records, keys })
    }

    /// The sorted unique top-level keys of a batch's records (read with SSCAN, so a huge key
    /// set never blocks Redis).
    ///
    /// # Errors
    /// Transient errors; [`Error::WrongType`].
    pub async fn batch_keys(&self, store: &StoreName, batch: &BatchId) -> Result<BTreeSet<String>> {
        let key = self.layout().batch(store, batch).keys;
        self.scan_set(store, key, usize::MAX).await
    }

    /// The `limit` smallest of a batch's unique top-level keys, sorted, and whether it has
    /// more. Reads the set with SSCAN and keeps at most `limit` keys in memory, so a batch with
    /// millions of distinct keys costs no more than `limit` of them. A prepared batch never
    /// changes, so the answer is the same every time.
    ///
    /// # Errors
    /// Transient errors; [`Error::WrongType`].
    pub async fn batch_first_keys(
        &self,
        store: &StoreName,
        batch: &BatchId,
        limit: usize,
    ) -> Result<FirstKeys> {
        let key = self.layout().batch(store, batch).keys;
        let mut first = FirstKeys::default();
        let mut cursor: u64 = 0;
        loop {
            let (next, page) = self.sscan_page(store, &key, cursor).await?;
            for member in page {
                // SSCAN may return a member twice: only a key outside the kept set is "more".
                if first.keys.contains(&member) {
                    continue;
                }
                first.keys.insert(member);
                if first.keys.len() > limit {
                    first.keys.pop_last();
                    first.more = true;
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(first);
            }
        }
    }

    /// Whether `key` is one of a batch's unique top-level keys (one SISMEMBER).
    ///
    /// # Errors
    /// Transient errors; [`Error::WrongType`].
    pub async fn batch_has_key(
        &self,
        store: &StoreName,
        batch: &BatchId,
        key: &str,
    ) -> Result<bool> {
        let set = self.layout().batch(store, batch).keys;
        let member = key.to_owned();
        let mut conn = self.conn();
        self.run("check key", store.as_str(), async move {
            redis::cmd("SISMEMBER")
                .arg(set)
                .arg(member)
                .query_async(&mut conn)
                .await
        })
        .await
    }

    /// One SSCAN step over a key set: the next cursor (0 when done) and a page of members, which
    /// may repeat members of earlier pages. COUNT 500 keeps every step short on the server.
    async fn sscan_page(
        &self,
        store: &StoreName,
        key: &str,
        cursor: u64,
    ) -> Result<(u64, Vec<String>)> {
        let mut conn = self.conn();
        let key = key.to_owned();
        self.run("scan keys", store.as_str(), async move {
            redis::cmd("SSCAN")
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
        })
        .await
    }

    pub(crate) async fn scan_set(
        &self,
        store: &StoreName,
        key: String,
        limit: usize,
    ) -> Result<BTreeSet<String>> {
        let mut members = BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page) = self.sscan_page(store, &key, cursor).await?;
            members.extend(page);
            cursor = next;
            if cursor == 0 || members.len() >= limit {
                break;
            }
        }
        while members.len() > limit {
            members.pop_last();
        }
        Ok(members)
    }
}

/// Streams one batch's records page by page (LRANGE in pages, so no command reads much and
/// no page holds much).
///
/// Pages are bounded by bytes as well as by records. Every push also appended one entry
/// `<count>:<bytes>:<max record bytes>` to the store's run list in the same transaction, and
/// prepare renamed that list with the batch, so the runs describe the batch's records exactly.
/// The reader reads runs ahead (small entries, 1024 at a time) and plans each page
/// so that the bound on its bytes, `min(k × max, run bytes left)` summed over its runs, stays
/// within `page_bytes` (at least one record), then LRANGEs exactly that range.
///
/// A batch without a run list (written by an older version), or whose runs turn out not to
/// match its records, is read with pages sized by the bytes actually seen: the next page
/// shrinks at once to what the largest record seen would allow, and grows at most twofold.
#[derive(Debug)]
pub struct BatchReader {
    buffer: Buffer,
    key: String,
    runs_key: String,
    entities_key: String,
    rows_key: String,
    /// The batch's key set: its size bounds the fields of a row.
    keys_key: String,
    /// How the batch splits into appended records and coalesced rows, read at the first page.
    rows: Option<RowsPlan>,
    store: StoreName,
    batch: BatchId,
    next: u64,
    total: u64,
    /// The batch's bytes ÷ records, rounded up: what a page's buffer is sized by.
    average_bytes: usize,
    page_size: u64,
    page_bytes: u64,
    sizing: PageSizing,
}

/// A batch's coalesced part (see `crate::coalesce`): read after its appended records (a
/// coalescing store holds appended records only when a producer pushed before it learned of
/// the rules), in pages of whole entities.
#[derive(Debug)]
struct RowsPlan {
    /// Appended records, read first.
    appended: u64,
    /// Entities, one row each.
    entities: u64,
    /// How many field names the batch has (its key set): no row has more fields.
    fields: u64,
}

/// At most this many field values (entities × the batch's field names) are asked for in one
/// page of rows.
const ROW_VALUES_PER_PAGE: u64 = 65_536;

/// How many run entries one read of the run list fetches (about 20 bytes each).
const RUNS_PER_READ: u64 = 1024;

/// How the next page's length is chosen.
#[derive(Debug)]
enum PageSizing {
    /// From the batch's run list: `ahead` starts with the run holding record `next` (counts
    /// and bytes of that run already read are subtracted); `next_entry` is the index of the
    /// first run-list entry not fetched yet.
    Runs {
        ahead: VecDeque<Run>,
        next_entry: u64,
        exhausted: bool,
    },
    /// No usable run list: the length of the next page, adapted to the bytes seen.
    Adaptive { next_len: u64 },
}

/// One push's records, as its run entry describes them (what is left of them to read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    count: u64,
    bytes: u64,
    max: u64,
}

impl Run {
    fn parse(entry: &str) -> Option<Self> {
        let mut parts = entry.split(':').map(str::parse::<u64>);
        let run = Self {
            count: parts.next()?.ok()?,
            bytes: parts.next()?.ok()?,
            max: parts.next()?.ok()?,
        };
        (parts.next().is_none() && run.count > 0).then_some(run)
    }
}

/// The first page a batch without a run list is read with: small, since nothing is known of
/// its records yet.
const ADAPTIVE_FIRST_PAGE: u64 = 16;

/// Plans the next page from the runs ahead: how many records it takes so that the bound on its
/// bytes stays within `budget` (at least one record) and its length within `cap`. Returns that
/// count, and whether more runs must be read first to decide (every run ahead fits and `more`
/// says the run list goes on).
fn plan_from_runs(ahead: &VecDeque<Run>, cap: u64, budget: u64, more: bool) -> (u64, bool) {
    let mut planned = 0u64;
    let mut bytes = 0u64;
    for run in ahead {
        let room = cap - planned;
        if run.count <= room && bytes.saturating_add(run.bytes) <= budget {
            planned += run.count;
            bytes += run.bytes;
            if planned == cap {
                return (planned, false);
            }
            continue;
        }
        // Only part of this run fits: as many records as its largest one allows.
        let left = budget.saturating_sub(bytes);
        let by_bytes = if run.bytes <= left {
            run.count
        } else {
            left / run.max.max(1)
        };
        let take = room.min(run.count).min(by_bytes);
        // A record larger than the whole budget still makes a page, of its own.
        let take = if planned == 0 { take.max(1) } else { take };
        return (planned + take, false);
    }
    (planned, more)
}

/// Takes a page just read off the runs ahead. False when the runs did not tell the truth about
/// it (a record larger than its run's max, a run's bytes exceeded, or no run left).
fn consume_runs(ahead: &mut VecDeque<Run>, page: &Page) -> bool {
    for record in page.iter() {
        let len = record.len() as u64;
        let Some(run) = ahead.front_mut() else {
            return false;
        };
        if len > run.max || len > run.bytes {
            return false;
        }
        run.count -= 1;
        run.bytes -= len;
        if run.count == 0 {
            ahead.pop_front();
        }
    }
    true
}

impl BatchReader {
    /// The next page of records as JSON texts, or `None` after the last one.
    ///
    /// # Errors
    /// [`Error::BatchNotFound`] when the batch disappeared (or shrank) while being read;
    /// transient errors.
    pub async fn next_page(&mut self) -> Result<Option<Vec<String>>> {
        Ok(self.next_records().await?.map(Page::into_strings))
    }

    /// The next page of records as one [`Page`] (the texts in one buffer, each followed by a
    /// newline), or `None` after the last one. Planned and read as by
    /// [`BatchReader::next_page`], without a `String` per record: what the persister writes.
    ///
    /// # Errors
    /// As [`BatchReader::next_page`].
    #[tracing::instrument(
        level = "debug",
        name = "read_page",
        skip_all,
        fields(store = %self.store, batch = %self.batch, from = self.next)
    )]
    pub async fn next_records(&mut self) -> Result<Option<Page>> {
        if self.next >= self.total {
            return Ok(None);
        }
        if self.rows.is_none() {
            self.rows = Some(self.rows_plan().await?);
        }
        let appended = self.rows.as_ref().map_or(self.total, |plan| plan.appended);
        if self.next >= appended {
            return self.next_rows(appended).await;
        }
        let cap = self.page_size.min(appended - self.next);
        let want = self.plan(cap).await?;
        let start = self.next;
        let stop = start + want - 1;
        let page = match self.read_direct(start, stop).await? {
            Some(page) => page,
            None => self.read_general(start, stop).await?,
        };
        if page.len() as u64 != want {
            return Err(Error::BatchNotFound {
                store: self.store.to_string(),
                batch: self.batch.to_string(),
            });
        }
        self.next += want;
        self.account(&page);
        Ok(Some(page))
    }

    /// How the batch splits into appended records and coalesced rows: one round trip
    /// (`LLEN`, `LLEN`, `SCARD` of the key set).
    async fn rows_plan(&self) -> Result<RowsPlan> {
        let mut pipe = redis::pipe();
        pipe.llen(&self.key)
            .llen(&self.entities_key)
            .scard(&self.keys_key);
        let mut conn = self.buffer.conn();
        let (appended, entities, fields): (u64, u64, u64) = self
            .buffer
            .run("read batch", self.store.as_str(), async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        if appended + entities != self.total {
            return Err(Error::BatchNotFound {
                store: self.store.to_string(),
                batch: self.batch.to_string(),
            });
        }
        Ok(RowsPlan {
            appended,
            entities,
            fields,
        })
    }

    /// The next page of coalesced rows: whole entities (`LRANGE` of the entities, then one
    /// `HMGET` of their packed rows), each rendered as one JSON object.
    async fn next_rows(&mut self, appended: u64) -> Result<Option<Page>> {
        let Some(plan) = &self.rows else {
            return Ok(None);
        };
        let start = self.next - appended;
        if start >= plan.entities {
            return Ok(None);
        }
        let per_page = (ROW_VALUES_PER_PAGE / plan.fields.max(1)).max(1);
        let want = self
            .page_size
            .min(per_page)
            .min(plan.entities - start)
            .max(1);
        let (entities_key, rows_key) = (self.entities_key.clone(), self.rows_key.clone());
        let mut conn = self.buffer.conn();
        let entities: Vec<String> = self
            .buffer
            .run("read batch", self.store.as_str(), async move {
                redis::cmd("LRANGE")
                    .arg(entities_key)
                    .arg(start)
                    .arg(start + want - 1)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if entities.len() as u64 != want {
            return Err(Error::BatchNotFound {
                store: self.store.to_string(),
                batch: self.batch.to_string(),
            });
        }
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(&rows_key).arg(&entities[..]);
        let mut conn = self.buffer.conn();
        let packed: Vec<Option<String>> = self
            .buffer
            .run("read batch", self.store.as_str(), async move {
                hmget.query_async(&mut conn).await
            })
            .await?;
        let mut rows = Vec::with_capacity(entities.len());
        for (entity, packed) in entities.iter().zip(&packed) {
            let row = packed.as_deref().and_then(crate::coalesce::render_row);
            rows.push(row.ok_or_else(|| Error::Corrupt {
                what: format!(
                    "the row of entity {} in batch {} of coalescing store {:?} is {}",
                    crate::name::shorten(entity),
                    self.batch,
                    self.store.as_str(),
                    match packed {
                        None => "missing".to_owned(),
                        Some(text) => format!("not a row: {:?}", crate::name::shorten(text)),
                    }
                ),
            })?);
        }
        self.next += want;
        Ok(Some(Page::from_strings(&rows)))
    }

    /// Reads records `start..=stop` on the page sockets (page_socket.rs); `None` when the page
    /// must be read on the general connection instead.
    async fn read_direct(&self, start: u64, stop: u64) -> Result<Option<Page>> {
        if !self.buffer.config().direct_page_reads {
            return Ok(None);
        }
        let conn = self.buffer.conn();
        let key = self.key.as_bytes();
        let server = self
            .buffer
            .run("read batch", self.store.as_str(), async move {
                conn.server_of(key).await
            })
            .await?;
        let Some(server) = server.and_then(crate::page_socket::plain) else {
            return Ok(None);
        };
        let config = self.buffer.config();
        let timeouts = (config.connect_timeout, config.response_timeout);
        // Sized once from the batch's average record (a mixed batch's page may grow once).
        let records = usize::try_from(stop - start + 1).unwrap_or(usize::MAX);
        let expected = records.saturating_mul(self.average_bytes + 1);
        let read = self
            .buffer
            .page_sockets()
            .lrange(&server, &self.key, (start, stop), expected, timeouts)
            .await;
        match read {
            Ok(page) => Ok(Some(page)),
            Err(detour) => {
                tracing::debug!(store = %self.store, batch = %self.batch, %detour,
                    "page read on the general connection");
                Ok(None)
            }
        }
    }

    /// Reads records `start..=stop` on the general connection.
    async fn read_general(&self, start: u64, stop: u64) -> Result<Page> {
        let key = self.key.clone();
        let mut conn = self.buffer.conn();
        let page: Vec<String> = self
            .buffer
            .run("read batch", self.store.as_str(), async move {
                redis::cmd("LRANGE")
                    .arg(key)
                    .arg(start)
                    .arg(stop)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(Page::from_strings(&page))
    }

    /// The next page of records, each decoded from its JSON text into a `T`, or `None` after
    /// the last page. The page is planned and read as by [`BatchReader::next_page`].
    ///
    /// # Errors
    /// [`Error::RecordNotDecoded`], naming the record's index in the batch, when a record of
    /// the page does not decode into a `T` (the reader has then moved past that page; the
    /// batch itself is untouched in Redis, and a new [`Buffer::reader`] reads it again from
    /// the start); otherwise as [`BatchReader::next_page`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(buffer: buffer_core::Buffer) -> Result<(), buffer_core::Error> {
    /// use std::time::Duration;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Order { id: u64, total: f64 }
    ///
    /// if let Some(batch) = buffer.prepare_to_persist("orders", Duration::from_secs(30)).await? {
    ///     let mut reader = buffer.reader(&batch);
    ///     while let Some(orders) = reader.next_page_as::<Order>().await? {
    ///         for order in orders {
    ///             println!("order {} of {}", order.id, order.total);
    ///         }
    ///     }
    ///     buffer.empty(batch).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next_page_as<T: DeserializeOwned>(&mut self) -> Result<Option<Vec<T>>> {
        let Some(page) = self.next_page().await? else {
            return Ok(None);
        };
        let first = self.next - page.len() as u64;
        page.iter()
            .zip(first..)
            .map(|(text, index)| {
                serde_json::from_str(text).map_err(|err| Error::RecordNotDecoded {
                    store: self.store.to_string(),
                    batch: self.batch.to_string(),
                    index,
                    type_name: std::any::type_name::<T>(),
                    reason: err.to_string(),
                })
            })
            .collect::<Result<Vec<T>>>()
            .map(Some)
    }

    /// The batch's records, one by one in push order, as the JSON texts that were pushed: a
    /// [`Stream`] over [`BatchReader::next_page`], reading one page at a time as it is
    /// consumed, so it holds at most one page in memory.
    ///
    /// The stream ends after the last record, or after yielding the first error (a transient
    /// error, or [`Error::BatchNotFound`] when the batch disappeared while being read).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(buffer: buffer_core::Buffer) -> Result<(), buffer_core::Error> {
    /// use std::time::Duration;
    /// use futures::TryStreamExt;
    ///
    /// if let Some(batch) = buffer.prepare_to_persist("orders", Duration::from_secs(30)).await? {
    ///     let mut records = std::pin::pin!(buffer.reader(&batch).into_stream());
    ///     while let Some(record) = records.try_next().await? {
    ///         println!("{record}");
    ///     }
    ///     buffer.empty(batch).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn into_stream(self) -> impl Stream<Item = Result<String>> + Send + 'static {
        stream::try_unfold(self, |mut reader| async move {
            let page = reader.next_page().await?;
            Ok::<_, Error>(page.map(|page| {
                (
                    stream::iter(page.into_iter().map(Ok::<String, Error>)),
                    reader,
                )
            }))
        })
        .try_flatten()
    }

    /// How many records have been returned so far.
    pub fn records_read(&self) -> u64 {
        self.next
    }

    /// How many records the next page reads (1..=cap), reading more runs when needed.
    async fn plan(&mut self, cap: u64) -> Result<u64> {
        loop {
            let (next_entry, exhausted) = match &self.sizing {
                PageSizing::Adaptive { next_len } => return Ok((*next_len).clamp(1, cap)),
                PageSizing::Runs {
                    ahead,
                    next_entry,
                    exhausted,
                } => {
                    let (planned, needs_more) =
                        plan_from_runs(ahead, cap, self.page_bytes, !*exhausted);
                    if planned > 0 && !needs_more {
                        return Ok(planned);
                    }
                    (*next_entry, *exhausted)
                }
            };
            if exhausted {
                // The runs describe fewer records than the batch holds: there are none (a
                // batch written by an older version) or they are not this batch's.
                if next_entry > 0 {
                    tracing::warn!(store = %self.store, batch = %self.batch,
                        "the batch's run list ends before its records; sizing pages by bytes seen");
                }
                self.sizing = PageSizing::Adaptive {
                    next_len: ADAPTIVE_FIRST_PAGE,
                };
                continue;
            }
            let key = self.runs_key.clone();
            let mut conn = self.buffer.conn();
            let entries: Vec<String> = self
                .buffer
                .run("read batch runs", self.store.as_str(), async move {
                    redis::cmd("LRANGE")
                        .arg(key)
                        .arg(next_entry)
                        .arg(next_entry + RUNS_PER_READ - 1)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            let runs: Option<Vec<Run>> = entries.iter().map(|e| Run::parse(e)).collect();
            match (&mut self.sizing, runs) {
                (
                    PageSizing::Runs {
                        ahead,
                        next_entry,
                        exhausted,
                    },
                    Some(runs),
                ) => {
                    *next_entry += entries.len() as u64;
                    *exhausted = (entries.len() as u64) < RUNS_PER_READ;
                    ahead.extend(runs);
                }
                _ => {
                    tracing::warn!(store = %self.store, batch = %self.batch,
                        "malformed entry in the batch's run list; sizing pages by bytes seen");
                    self.sizing = PageSizing::Adaptive {
                        next_len: ADAPTIVE_FIRST_PAGE,
                    };
                }
            }
        }
    }

    /// Accounts for a page just read: takes it off the runs ahead (falling back to sizing by
    /// bytes seen when they did not describe it), or sets the next adaptive page length.
    fn account(&mut self, page: &Page) {
        let largest = page.iter().map(str::len).max().unwrap_or(0) as u64;
        // How many records as large as the largest one seen fit the budget (at least one).
        let fit = (self.page_bytes / largest.max(1)).max(1);
        match &mut self.sizing {
            PageSizing::Runs { ahead, .. } => {
                if !consume_runs(ahead, page) {
                    tracing::warn!(store = %self.store, batch = %self.batch,
                        "the batch's run list does not match its records; sizing pages by bytes seen");
                    self.sizing = PageSizing::Adaptive {
                        next_len: fit.min(ADAPTIVE_FIRST_PAGE),
                    };
                }
            }
            PageSizing::Adaptive { next_len } => {
                // Shrink at once to what the largest record seen allows; grow at most twofold.
                *next_len = fit.min((page.len() as u64).saturating_mul(2)).max(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(list: &[(u64, u64, u64)]) -> VecDeque<Run> {
        list.iter()
            .map(|&(count, bytes, max)| Run { count, bytes, max })
            .collect()
    }

    #[test]
    fn pages_are_planned_within_the_byte_budget() {
        // Whole runs while they fit, then as many records of the next run as its max allows.
        let ahead = runs(&[(1000, 20_000, 20), (40, 160 << 20, 4 << 20)]);
        assert_eq!(plan_from_runs(&ahead, 5000, 2 << 20, false), (1000, false));
        // A record larger than the budget is a page of its own.
        let ahead = runs(&[(40, 160 << 20, 4 << 20)]);
        assert_eq!(plan_from_runs(&ahead, 5000, 2 << 20, false), (1, false));
        // A run whose bytes fit is taken whole even if its max times its count would not.
        let ahead = runs(&[(10, 1000, 900), (5, 50, 10)]);
        assert_eq!(plan_from_runs(&ahead, 5000, 1000, true), (10, false));
        // The record cap wins over bytes; every run ahead fitting asks for more runs.
        assert_eq!(
            plan_from_runs(&runs(&[(10, 100, 10)]), 4, 1000, true),
            (4, false)
        );
        assert_eq!(
            plan_from_runs(&runs(&[(10, 100, 10)]), 50, 1000, true),
            (10, true)
        );
        assert_eq!(
            plan_from_runs(&VecDeque::new(), 50, 1000, false),
            (0, false)
        );
        assert_eq!(
            Run::parse("3:30:12"),
            Some(Run {
                count: 3,
                bytes: 30,
                max: 12
            })
        );
        assert_eq!(Run::parse("0:0:0"), None);
        assert_eq!(Run::parse("3:30"), None);
        assert_eq!(Run::parse("3:30:12:1"), None);
    }
}
