//! The dashboard's state and how it changes: plain data, no Redis, no terminal.
//!
//! Everything that happens (a key, a tick of the clock, a poll result, a persister event)
//! becomes an [`Action`]; [`App::update`] applies it. Time comes in with the actions
//! ([`Action::Tick`], [`Snapshot::taken_at_ms`]), so every state change is a plain function
//! call in tests.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use buffer_core::{
    BatchId, Event, EventKind, MasterStatus, PersisterInfo, ServerInfo, StoreLimits, StoreName,
};
use buffer_persist::OperatorAction;

use crate::snapshot::{FocusDetail, Snapshot, StoreDetail};

/// How many rate samples (one per second) the sparklines keep.
pub(crate) const RATE_HISTORY: usize = 300;
/// How many persister events the log keeps.
pub(crate) const EVENT_HISTORY: usize = 200;

/// Something that changes the dashboard's state.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Action {
    /// The clock moved (Unix ms): ages and lock TTLs count on.
    Tick {
        /// The time now.
        now_ms: u64,
    },
    /// How many store rows the table shows now (the layout's business: the dashboard works it
    /// out from the terminal size after every change and sends it when it differs).
    Viewport {
        /// Rows of the stores table on screen.
        table_rows: usize,
    },
    /// A poll of Redis succeeded.
    Snapshot(Box<Snapshot>),
    /// The health of each master of a cluster, found at the start of a poll (sent even when
    /// the rest of the poll then fails: a lost master makes the cluster refuse commands).
    Masters(Vec<MasterStatus>),
    /// A poll of Redis failed; the poller keeps trying.
    PollFailed {
        /// What went wrong.
        error: String,
        /// When (Unix ms).
        at_ms: u64,
    },
    /// The subscription to persister events is up.
    EventsLive,
    /// The subscription to persister events was lost; it is retried.
    EventsLost { error: String },
    /// A persister event arrived.
    Event(Event),
    /// Counters of the demo's load generator and persister.
    Demo(DemoStats),
    /// Select the previous row.
    Up,
    /// Select the next row.
    Down,
    /// One page up.
    PageUp,
    /// One page down.
    PageDown,
    /// The first row.
    Top,
    /// The last row.
    Bottom,
    /// Open the selected store in full, or close it.
    Enter,
    /// Back: close the store view, the help, or clear the filter.
    Back,
    /// Start typing a filter.
    FilterStart,
    /// A character typed into the filter.
    FilterInput(char),
    /// Delete the filter's last character.
    FilterBackspace,
    /// Keep the filter and leave the input.
    FilterAccept,
    /// Drop the filter and leave the input.
    FilterCancel,
    /// Sort by the next column.
    SortNext,
    /// Reverse the sort order.
    SortReverse,
    /// Rank a coalescing store's top entities by its next summed field.
    NextTopField,
    /// Show or hide the help.
    Help,
    /// Leave the dashboard.
    Quit,
    /// Ask to flush the selected store now.
    Flush,
    /// Ask to retry the selected store's failing batch now.
    Retry,
    /// Ask to pause the selected store, or to resume it when paused.
    PauseResume,
    /// Open the selected store's limits form.
    EditLimits,
    /// Show the persisters screen, or go back from it.
    Persisters,
    /// Do the action waiting for confirmation.
    Confirm,
    /// Drop the action waiting for confirmation, or close the form.
    Cancel,
    /// The form's next field.
    FormNext,
    /// The form's previous field.
    FormPrevious,
    /// A character typed into the form's field.
    FormInput(char),
    /// Delete the last character of the form's field.
    FormBackspace,
    /// Submit the form: its action waits for confirmation.
    FormSubmit,
    /// A confirmed action finished: what it did, or why it failed.
    Done {
        /// The line to show.
        text: String,
        /// Whether it failed.
        failed: bool,
    },
    /// Whether Redis lets this dashboard act (found once at start).
    Access(Access),
    /// A click on the `n`th row of the table on screen (0 = the top row).
    ClickRow(usize),
    /// The mouse wheel: rows to move, down when positive.
    Scroll(isize),
}

/// Whether the dashboard may act on Redis: its actions are shown only when it may.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Not known yet (actions hidden meanwhile).
    Unknown,
    /// The Redis user may run every action.
    ReadWrite,
    /// Actions hidden: why (`--read-only`, or the Redis user lacks write rights).
    ReadOnly(String),
}

/// The limits form: three fields, empty = no limit of that kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LimitsForm {
    /// The store whose limits are edited.
    pub(crate) store: StoreName,
    /// Max records, max bytes, max records per second, as typed.
    pub(crate) fields: [String; 3],
    /// The field being typed in.
    pub(crate) focus: usize,
    /// Why the last submit was refused.
    pub(crate) error: Option<String>,
}

impl LimitsForm {
    /// The field labels, in order.
    pub(crate) const LABELS: [&'static str; 3] = ["max records", "max bytes", "max rate /s"];

    fn new(store: StoreName, limits: Option<StoreLimits>) -> Self {
        let text = |value: Option<u64>| value.map(|v| v.to_string()).unwrap_or_default();
        let limits = limits.unwrap_or_default();
        Self {
            store,
            fields: [
                text(limits.max_records),
                text(limits.max_bytes),
                text(limits.max_rate),
            ],
            focus: 0,
            error: None,
        }
    }

    /// The action the form asks for: set these limits, or clear them when every field is
    /// empty; an error naming the field that is not a whole number.
    fn action(&self) -> Result<OperatorAction, String> {
        let mut values = [None; 3];
        for (i, text) in self.fields.iter().enumerate() {
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            match text.parse::<u64>() {
                Ok(value) if value > 0 && value <= buffer_core::MAX_LIMIT => {
                    values[i] = Some(value);
                }
                _ => {
                    return Err(format!(
                        "{}: {text:?} is not a whole number from 1 to 2^53 (empty = no limit)",
                        Self::LABELS[i]
                    ));
                }
            }
        }
        let limits = StoreLimits {
            max_records: values[0],
            max_bytes: values[1],
            max_rate: values[2],
        };
        Ok(if limits.is_empty() {
            OperatorAction::ClearLimits(self.store.clone())
        } else {
            OperatorAction::SetLimits(self.store.clone(), limits)
        })
    }
}

/// The outcome of the last action, shown in the footer for a while.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Notice {
    pub(crate) text: String,
    pub(crate) failed: bool,
    /// When it came (Unix ms).
    pub(crate) at_ms: u64,
}

/// How long an action's outcome stays in the footer.
pub(crate) const NOTICE_FOR_MS: u64 = 10_000;

/// The demo's counters, shown in the header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DemoStats {
    /// Records pushed by the load generator.
    pub(crate) pushed: u64,
    /// Records persisted by the in-process persister.
    pub(crate) persisted: u64,
    /// Files written.
    pub(crate) files: u64,
}

/// How the dashboard starts.
#[derive(Clone, Debug)]
pub(crate) struct AppConfig {
    /// The Redis URL with the password redacted.
    pub(crate) address: String,
    /// The key namespace.
    pub(crate) namespace: String,
    /// The persister's `--max-age`, when known: the table then shows when each store is flushed.
    pub(crate) max_age: Option<Duration>,
    /// Where the demo writes, when this is the demo.
    pub(crate) demo_out: Option<String>,
    /// The time at start (Unix ms).
    pub(crate) now_ms: u64,
    /// `--read-only`: no action, whatever Redis allows.
    pub(crate) read_only: bool,
    /// `NO_COLOR` is set: no colours, only bold, dim and reverse.
    pub(crate) no_color: bool,
}

/// The state of the connection to Redis, as the last poll left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Connection {
    /// No poll has finished yet.
    Connecting,
    /// The last poll succeeded.
    Connected,
    /// Polls fail; the data shown is from the last good one.
    Lost {
        /// The last error.
        error: String,
        /// When the first failing poll ended (Unix ms).
        since_ms: u64,
        /// Failed polls in a row.
        failures: u32,
    },
}

/// The state of the persister-event subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EventFeed {
    /// Not subscribed yet.
    Connecting,
    Live,
    /// Lost; being retried.
    Lost(String),
}

/// What keys do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Normal,
    /// Typing a filter after `/`.
    Filter,
    /// The help is shown.
    Help,
    /// An action waits for `y` (or Enter) or `n` (or Esc).
    Confirm,
    /// Typing into the limits form.
    Form,
}

/// What fills the screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Screen {
    /// The stores table with the selected store, rates and events below.
    Table,
    /// The selected store in full (after Enter).
    Store,
    /// Every running persister and the batches it holds.
    Persisters,
}

/// A column of the stores table; each one sorts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Column {
    /// Store name.
    Name,
    /// Live records.
    Records,
    /// Live bytes.
    Bytes,
    /// Unique keys (known for visible rows only).
    Keys,
    /// Age of the first write.
    Age,
    /// Time until the age flush.
    Flush,
    /// Lock holder and remaining TTL (known for visible rows only).
    Lock,
    /// Prepared batches.
    Batches,
    /// The cluster master holding the store (known for visible rows only; shown on a cluster
    /// only).
    Node,
}

impl Column {
    /// Every column, in table order.
    pub(crate) const ALL: [Column; 9] = [
        Column::Name,
        Column::Records,
        Column::Bytes,
        Column::Keys,
        Column::Age,
        Column::Flush,
        Column::Lock,
        Column::Batches,
        Column::Node,
    ];

    /// The header text.
    pub(crate) fn title(self) -> &'static str {
        match self {
            Self::Name => "Store",
            Self::Records => "Records",
            Self::Bytes => "Bytes",
            Self::Keys => "Keys",
            Self::Age => "Age",
            Self::Flush => "Flush",
            Self::Lock => "Lock holder, TTL",
            Self::Batches => "Batches",
            Self::Node => "Node",
        }
    }

    fn next(self) -> Self {
        let at = Self::ALL.iter().position(|c| *c == self).unwrap_or(0);
        Self::ALL[(at + 1) % Self::ALL.len()]
    }

    /// The order a column sorts in when chosen: the interesting end first (biggest, oldest,
    /// soonest to flush, soonest to expire).
    fn default_direction(self) -> Direction {
        match self {
            Self::Name | Self::Flush | Self::Lock | Self::Node => Direction::Ascending,
            Self::Records | Self::Bytes | Self::Keys | Self::Age | Self::Batches => {
                Direction::Descending
            }
        }
    }
}

/// A sort direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Smallest first.
    Ascending,
    /// Largest first.
    Descending,
}

/// How the table is sorted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sort {
    pub(crate) column: Column,
    pub(crate) direction: Direction,
}

/// Whether the dashboard keeps running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Running {
    Yes,
    /// `q` was pressed.
    Quit,
}

/// One store as the table shows it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StoreRow {
    pub(crate) name: StoreName,
    /// Its live buffer, `None` when only prepared batches are left.
    pub(crate) live: Option<LiveCounts>,
    /// Its prepared batches.
    pub(crate) prepared: usize,
    /// How many of its batches (and its live store, when it cannot be prepared) failed to
    /// persist and wait for a retry.
    pub(crate) failing: usize,
    /// Details, known for the rows that were visible at the last poll.
    pub(crate) detail: Option<StoreDetail>,
    /// Whether persisting it is paused (`buffer-persist pause`).
    pub(crate) paused: bool,
}

/// A live store's counts from the indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LiveCounts {
    /// When its first live record was pushed (Unix ms).
    pub(crate) first_write_ms: u64,
    pub(crate) bytes: u64,
    pub(crate) records: u64,
}

/// Push and persist rates, one sample per second or more.
///
/// Pushes are not counted by Redis, so the push rate is inferred: the growth of the live
/// records of append stores plus the records that left them in prepared batches (announced
/// by `prepared` events), plus the growth of the writes merged into coalescing stores' live
/// rows (whose records are entities: a write to an existing entity adds no record). The
/// persist rate is the records of `persisted` events: for a coalescing store, its rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rates {
    /// Start of the current window: (Unix ms, live records then).
    window: Option<(u64, u64)>,
    /// Records prepared since the window started.
    prepared: u64,
    /// Records persisted since the window started.
    persisted: u64,
    /// Writes merged into coalescing stores since the window started.
    merged: u64,
    /// Push records/s, oldest first.
    pub(crate) push: VecDeque<u64>,
    /// Persist records/s, oldest first.
    pub(crate) persist: VecDeque<u64>,
}

impl Rates {
    /// Counts a persister event into the current window.
    pub(crate) fn on_event(&mut self, event: &Event) {
        match event.kind {
            EventKind::Prepared => self.prepared += event.records,
            EventKind::Persisted => self.persisted += event.records,
            EventKind::Failed | EventKind::Recovered => {}
        }
    }

    /// Takes a poll's live record total of append stores and the writes merged into
    /// coalescing stores since the previous poll; closes the window and adds a sample when at
    /// least a second has passed since it opened.
    pub(crate) fn on_poll(&mut self, at_ms: u64, live_records: u64, merged_writes: u64) {
        let Some((start_ms, start_records)) = self.window else {
            self.window = Some((at_ms, live_records));
            self.prepared = 0;
            self.persisted = 0;
            self.merged = 0;
            return;
        };
        self.merged += merged_writes;
        let elapsed = at_ms.saturating_sub(start_ms);
        if elapsed < 1000 {
            return;
        }
        let pushed = (live_records + self.prepared).saturating_sub(start_records) + self.merged;
        push_capped(&mut self.push, pushed * 1000 / elapsed);
        push_capped(&mut self.persist, self.persisted * 1000 / elapsed);
        self.window = Some((at_ms, live_records));
        self.prepared = 0;
        self.persisted = 0;
        self.merged = 0;
    }

    /// Forgets the window (after an outage the first poll starts a new one).
    pub(crate) fn restart(&mut self) {
        self.window = None;
    }

    /// The latest push rate.
    pub(crate) fn push_now(&self) -> Option<u64> {
        self.push.back().copied()
    }

    /// The latest persist rate.
    pub(crate) fn persist_now(&self) -> Option<u64> {
        self.persist.back().copied()
    }
}

fn push_capped(samples: &mut VecDeque<u64>, value: u64) {
    if samples.len() == RATE_HISTORY {
        samples.pop_front();
    }
    samples.push_back(value);
}

/// Which stores the poller should fetch details for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ViewRequest {
    /// The rows on screen, top to bottom.
    pub(crate) visible: Vec<StoreName>,
    /// The selected store.
    pub(crate) selected: Option<StoreName>,
    /// Which summed field a coalescing store's top entities rank by: the n-th, wrapping
    /// (see `snapshot::top_field`); moved on by [`Action::NextTopField`].
    pub(crate) top_by: usize,
    /// Whether the persisters screen is shown (the poller then reads every lock).
    pub(crate) persisters: bool,
}

/// The whole dashboard state.
#[derive(Clone, Debug)]
pub(crate) struct App {
    pub(crate) address: String,
    pub(crate) namespace: String,
    /// `--max-age` as given on the command line; wins over what persisters announce.
    pub(crate) configured_max_age_ms: Option<u64>,
    /// The persisters that announced themselves at the last poll.
    pub(crate) persisters: Vec<PersisterInfo>,
    pub(crate) demo_out: Option<String>,
    pub(crate) demo: Option<DemoStats>,
    /// The time now (Unix ms), moved by [`Action::Tick`].
    pub(crate) now_ms: u64,
    /// How many table rows are on screen, as the last [`Action::Viewport`] said.
    pub(crate) table_rows: usize,
    pub(crate) running: Running,
    pub(crate) connection: Connection,
    pub(crate) feed: EventFeed,
    pub(crate) server: Option<ServerInfo>,
    /// Each master of a cluster and its health, as the last poll found them; `None` on one
    /// server (and until a poll found out).
    pub(crate) masters: Option<Vec<MasterStatus>>,
    /// When the data shown was read (Unix ms).
    pub(crate) snapshot_at_ms: u64,
    /// Every store, in name order.
    pub(crate) rows: Vec<StoreRow>,
    /// Indexes into `rows` after filtering and sorting: what the table lists.
    pub(crate) view: Vec<usize>,
    pub(crate) sort: Sort,
    pub(crate) filter: String,
    pub(crate) mode: Mode,
    pub(crate) screen: Screen,
    /// The selected position in `view`.
    pub(crate) cursor: usize,
    /// The first position of `view` on screen.
    pub(crate) offset: usize,
    /// The selected store; kept by name so it stays selected when rows move.
    pub(crate) selected: Option<StoreName>,
    pub(crate) focus: Option<FocusDetail>,
    pub(crate) rates: Rates,
    /// Each live coalescing store's merged writes at the last poll, for the push rate.
    merged_seen: HashMap<StoreName, u64>,
    /// Which summed field a coalescing store's top entities rank by (see
    /// [`ViewRequest::top_by`]).
    pub(crate) top_by: usize,
    /// Persister events, newest first.
    pub(crate) events: VecDeque<Event>,
    pub(crate) prepared_total: usize,
    /// Batches and stores failing to persist, over every store.
    pub(crate) failing_total: usize,
    /// Whether actions are offered.
    pub(crate) access: Access,
    /// `NO_COLOR`: drawn without colours.
    pub(crate) no_color: bool,
    /// The action waiting for confirmation (in [`Mode::Confirm`]).
    pub(crate) pending: Option<OperatorAction>,
    /// The limits form (in [`Mode::Form`]).
    pub(crate) form: Option<LimitsForm>,
    /// Confirmed actions for the dashboard loop to run ([`App::take_commands`]).
    commands: Vec<OperatorAction>,
    /// The outcome of the last action.
    pub(crate) notice: Option<Notice>,
    /// Locks held on every store and batch, read while the persisters screen is shown.
    pub(crate) held: Vec<crate::snapshot::HeldBy>,
    /// The screen to go back to from the persisters screen.
    before_persisters: Screen,
}

impl App {
    /// A dashboard with no data yet.
    pub(crate) fn new(config: AppConfig) -> Self {
        Self {
            address: config.address,
            namespace: config.namespace,
            persisters: Vec::new(),
            configured_max_age_ms: config.max_age.map(buffer_core::millis),
            demo: config.demo_out.as_ref().map(|_| DemoStats::default()),
            demo_out: config.demo_out,
            now_ms: config.now_ms,
            table_rows: 0,
            running: Running::Yes,
            connection: Connection::Connecting,
            feed: EventFeed::Connecting,
            server: None,
            masters: None,
            snapshot_at_ms: 0,
            rows: Vec::new(),
            view: Vec::new(),
            sort: Sort {
                column: Column::Name,
                direction: Direction::Ascending,
            },
            filter: String::new(),
            mode: Mode::Normal,
            screen: Screen::Table,
            cursor: 0,
            offset: 0,
            selected: None,
            focus: None,
            rates: Rates::default(),
            merged_seen: HashMap::new(),
            top_by: 0,
            events: VecDeque::new(),
            prepared_total: 0,
            failing_total: 0,
            access: if config.read_only {
                Access::ReadOnly("--read-only".into())
            } else {
                Access::Unknown
            },
            no_color: config.no_color,
            pending: None,
            form: None,
            commands: Vec::new(),
            notice: None,
            held: Vec::new(),
            before_persisters: Screen::Table,
        }
    }

    /// Whether actions are offered: only once Redis said this user may run them, and never
    /// with `--read-only`.
    pub(crate) fn can_act(&self) -> bool {
        self.access == Access::ReadWrite
    }

    /// The confirmed actions, for the dashboard loop to run (each once).
    pub(crate) fn take_commands(&mut self) -> Vec<OperatorAction> {
        std::mem::take(&mut self.commands)
    }

    /// The persisters whose announcement is recent enough to trust: silent ones are shown
    /// (marked) on the persisters screen but not used for thresholds.
    pub(crate) fn live_persisters(&self) -> impl Iterator<Item = &PersisterInfo> {
        self.persisters.iter().filter(|p| !self.is_silent(p))
    }

    /// Whether `persister` missed its announcements: nothing for three of its poll intervals
    /// (at least 10 s), or for 60 s when it did not say its interval.
    pub(crate) fn is_silent(&self, persister: &PersisterInfo) -> bool {
        let limit = persister.interval.map_or(60_000, |interval| {
            buffer_core::millis(interval).saturating_mul(3).max(10_000)
        });
        self.now_ms.saturating_sub(persister.heartbeat_ms) > limit
    }

    /// The batch of the selected store to retry: its first failing batch still waiting for
    /// its retry, else its first failing batch, else the live store when it cannot be
    /// prepared.
    fn retry_target(&self) -> Option<(StoreName, Option<BatchId>)> {
        let focus = self.focus.as_ref()?;
        let failing = || focus.batches.iter().filter(|b| b.failure.is_some());
        let waiting = failing().find(|b| {
            b.failure
                .as_ref()
                .is_some_and(|f| f.next_retry_ms > self.now_ms)
        });
        if let Some(batch) = waiting.or_else(|| failing().next()) {
            return Some((focus.store.clone(), Some(batch.id.clone())));
        }
        focus.failure.as_ref().map(|_| (focus.store.clone(), None))
    }

    /// Asks for `action` to be confirmed.
    fn ask(&mut self, action: OperatorAction) {
        self.pending = Some(action);
        self.mode = Mode::Confirm;
    }

    fn notify(&mut self, text: String, failed: bool) {
        self.notice = Some(Notice {
            text,
            failed,
            at_ms: self.now_ms,
        });
    }

    /// The outcome line to show now, if any.
    pub(crate) fn current_notice(&self) -> Option<&Notice> {
        self.notice
            .as_ref()
            .filter(|n| self.now_ms.saturating_sub(n.at_ms) < NOTICE_FOR_MS)
    }

    /// Whether the dashboard keeps running.
    pub(crate) fn running(&self) -> Running {
        self.running
    }

    /// The rows on screen and the selected store, for the poller.
    pub(crate) fn view_request(&self) -> ViewRequest {
        let end = (self.offset + self.page()).min(self.view.len());
        ViewRequest {
            visible: self.view[self.offset.min(end)..end]
                .iter()
                .map(|&i| self.rows[i].name.clone())
                .collect(),
            selected: self.selected.clone(),
            top_by: self.top_by,
            persisters: self.screen == Screen::Persisters,
        }
    }

    /// Whether rows on screen (or the selected store) have no details yet.
    pub(crate) fn needs_details(&self) -> bool {
        self.visible_rows().any(|row| row.detail.is_none())
            || (self.selected.is_some() && self.focus.is_none())
    }

    /// The rows the table shows, in order.
    pub(crate) fn visible_rows(&self) -> impl Iterator<Item = &StoreRow> {
        let end = (self.offset + self.page()).min(self.view.len());
        self.view[self.offset.min(end)..end]
            .iter()
            .map(|&i| &self.rows[i])
    }

    /// The selected row.
    pub(crate) fn selected_row(&self) -> Option<&StoreRow> {
        self.view.get(self.cursor).map(|&i| &self.rows[i])
    }

    /// The names the table lists, in order: what the unit tests assert on.
    #[cfg(test)]
    pub(crate) fn listed(&self) -> Vec<&str> {
        self.view
            .iter()
            .map(|&i| self.rows[i].name.as_str())
            .collect()
    }

    /// How many table rows are on screen: one page.
    pub(crate) fn page(&self) -> usize {
        self.table_rows
    }

    /// What keys do now.
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// Applies one action.
    pub(crate) fn update(&mut self, action: Action) {
        match action {
            Action::Tick { now_ms } => self.now_ms = now_ms,
            Action::Viewport { table_rows } => {
                self.table_rows = table_rows;
                self.scroll_to_cursor();
            }
            Action::Snapshot(snapshot) => self.apply_snapshot(*snapshot),
            Action::Masters(masters) => self.masters = Some(masters),
            Action::PollFailed { error, at_ms } => {
                self.connection =
                    match std::mem::replace(&mut self.connection, Connection::Connecting) {
                        Connection::Lost {
                            since_ms, failures, ..
                        } => Connection::Lost {
                            error,
                            since_ms,
                            failures: failures.saturating_add(1),
                        },
                        Connection::Connecting | Connection::Connected => Connection::Lost {
                            error,
                            since_ms: at_ms,
                            failures: 1,
                        },
                    };
                self.rates.restart();
                self.scroll_to_cursor();
            }
            Action::EventsLive => self.feed = EventFeed::Live,
            Action::EventsLost { error } => self.feed = EventFeed::Lost(error),
            Action::Event(event) => {
                // A coalescing store's prepare moves its writes out of the live rows, which
                // the push rate counts by their growth, not by the rows the event names.
                let coalescing = event.kind == EventKind::Prepared
                    && self.merged_seen.keys().any(|s| s.as_str() == event.store);
                if !coalescing {
                    self.rates.on_event(&event);
                }
                if self.events.len() == EVENT_HISTORY {
                    self.events.pop_back();
                }
                self.events.push_front(event);
            }
            Action::Demo(stats) => self.demo = Some(stats),
            Action::Up => self.move_cursor(-1),
            Action::Down => self.move_cursor(1),
            Action::PageUp => self.move_cursor(-(self.page().max(1) as isize)),
            Action::PageDown => self.move_cursor(self.page().max(1) as isize),
            Action::Top => self.move_cursor(isize::MIN / 2),
            Action::Bottom => self.move_cursor(isize::MAX / 2),
            Action::Enter => {
                self.screen = match self.screen {
                    Screen::Table if self.selected.is_some() => Screen::Store,
                    Screen::Table | Screen::Store => Screen::Table,
                    Screen::Persisters => self.before_persisters,
                };
            }
            Action::Back => match (self.mode, self.screen) {
                (Mode::Help, _) => self.mode = Mode::Normal,
                (_, Screen::Store) => self.screen = Screen::Table,
                (_, Screen::Persisters) => self.screen = self.before_persisters,
                (_, Screen::Table) if !self.filter.is_empty() => {
                    self.filter.clear();
                    self.rebuild_view();
                }
                _ => {}
            },
            Action::FilterStart => self.mode = Mode::Filter,
            Action::FilterInput(c) => {
                if !c.is_control() {
                    self.filter.push(c);
                    self.cursor = 0;
                    self.rebuild_view();
                }
            }
            Action::FilterBackspace => {
                self.filter.pop();
                self.rebuild_view();
            }
            Action::FilterAccept => {
                self.mode = Mode::Normal;
                self.scroll_to_cursor();
            }
            Action::FilterCancel => {
                self.mode = Mode::Normal;
                self.filter.clear();
                self.rebuild_view();
            }
            Action::SortNext => {
                let mut column = self.sort.column.next();
                // The node column exists on a cluster only.
                if column == Column::Node && self.masters.is_none() {
                    column = column.next();
                }
                self.sort = Sort {
                    column,
                    direction: column.default_direction(),
                };
                self.rebuild_view();
            }
            Action::SortReverse => {
                self.sort.direction = match self.sort.direction {
                    Direction::Ascending => Direction::Descending,
                    Direction::Descending => Direction::Ascending,
                };
                self.rebuild_view();
            }
            Action::NextTopField => {
                // Shown at the next poll, which reads the list of the new field.
                self.top_by = self.top_by.wrapping_add(1);
                self.focus = self.focus.take().map(|mut focus| {
                    if let Some(coalesced) = &mut focus.coalesced {
                        coalesced.view.top.clear();
                        coalesced.view.field = None;
                    }
                    focus
                });
            }
            Action::Help => {
                self.mode = match self.mode {
                    Mode::Help => Mode::Normal,
                    Mode::Normal | Mode::Filter | Mode::Confirm | Mode::Form => Mode::Help,
                };
            }
            Action::Quit => self.running = Running::Quit,
            Action::Flush
            | Action::Retry
            | Action::PauseResume
            | Action::EditLimits
            | Action::Confirm
            | Action::FormSubmit => self.act(action),
            Action::Persisters => {
                if self.screen == Screen::Persisters {
                    self.screen = self.before_persisters;
                } else {
                    self.before_persisters = self.screen;
                    self.screen = Screen::Persisters;
                }
            }
            Action::Cancel => {
                self.pending = None;
                self.form = None;
                self.mode = Mode::Normal;
            }
            Action::FormNext | Action::FormPrevious => {
                if let Some(form) = &mut self.form {
                    let n = LimitsForm::LABELS.len();
                    form.focus = match action {
                        Action::FormNext => (form.focus + 1) % n,
                        _ => (form.focus + n - 1) % n,
                    };
                }
            }
            Action::FormInput(c) => {
                if let Some(form) = &mut self.form
                    && !c.is_control()
                    && form.fields[form.focus].len() < 20
                {
                    form.fields[form.focus].push(c);
                    form.error = None;
                }
            }
            Action::FormBackspace => {
                if let Some(form) = &mut self.form {
                    form.fields[form.focus].pop();
                    form.error = None;
                }
            }
            Action::Done { text, failed } => self.notify(text, failed),
            Action::Access(access) => {
                // `--read-only` stays read-only whatever Redis allows.
                if !matches!(&self.access, Access::ReadOnly(why) if why == "--read-only") {
                    self.access = access;
                }
                if !self.can_act() {
                    self.pending = None;
                    self.form = None;
                    if matches!(self.mode, Mode::Confirm | Mode::Form) {
                        self.mode = Mode::Normal;
                    }
                }
            }
            Action::ClickRow(row) => {
                if self.screen == Screen::Table && self.offset + row < self.view.len() {
                    self.cursor = self.offset + row;
                    self.select_cursor();
                    self.scroll_to_cursor();
                }
            }
            Action::Scroll(by) => self.move_cursor(by),
        }
    }

    /// The actions that change Redis: each one asks for confirmation first, and none is
    /// possible without the rights ([`App::can_act`]).
    fn act(&mut self, action: Action) {
        if !self.can_act() {
            return;
        }
        let selected = self.selected.clone();
        match action {
            Action::Flush => {
                if let Some(store) = selected {
                    self.ask(OperatorAction::Flush(store));
                }
            }
            Action::Retry => match self.retry_target() {
                Some((store, batch)) => self.ask(OperatorAction::Retry(store, batch)),
                None => {
                    if let Some(store) = selected {
                        self.notify(format!("{store}: nothing failing to retry"), false);
                    }
                }
            },
            Action::PauseResume => {
                if let Some(row) = self.selected_row() {
                    let store = row.name.clone();
                    self.ask(if row.paused {
                        OperatorAction::Resume(store)
                    } else {
                        OperatorAction::Pause(store)
                    });
                }
            }
            Action::EditLimits => {
                if let Some(store) = selected {
                    let limits = self
                        .focus
                        .as_ref()
                        .filter(|f| f.store == store)
                        .and_then(|f| f.limits)
                        .map(|l| l.limits);
                    self.form = Some(LimitsForm::new(store, limits));
                    self.mode = Mode::Form;
                }
            }
            Action::FormSubmit => {
                if let Some(form) = &mut self.form {
                    match form.action() {
                        Ok(action) => {
                            self.form = None;
                            self.ask(action);
                        }
                        Err(error) => form.error = Some(error),
                    }
                }
            }
            Action::Confirm => {
                if let Some(action) = self.pending.take() {
                    self.notify(format!("{}: working…", action.store()), false);
                    self.commands.push(action);
                }
                self.mode = Mode::Normal;
            }
            _ => {}
        }
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let Snapshot {
            taken_at_ms,
            server,
            stores,
            prepared,
            failures,
            mut details,
            focus,
            persisters,
            paused,
            held,
            merged_writes,
        } = snapshot;
        self.persisters = persisters;
        self.held = held;
        let paused: HashSet<StoreName> = paused.into_iter().collect();
        self.connection = Connection::Connected;
        self.server = Some(server);
        self.snapshot_at_ms = taken_at_ms;
        self.now_ms = self.now_ms.max(taken_at_ms);
        self.prepared_total = prepared.len();

        // The push rate: append stores by their live records, coalescing stores by the
        // writes merged since the last poll (a counter that restarts at 0 when the store is
        // prepared: then the writes merged since, and those between the last poll and the
        // prepare are not seen).
        let coalescing: HashSet<&StoreName> = merged_writes.iter().map(|(s, _)| s).collect();
        let live_total: u64 = stores
            .iter()
            .filter(|s| !coalescing.contains(&s.store))
            .map(|s| s.records)
            .sum();
        let mut merged_since = 0;
        for (store, writes) in &merged_writes {
            let before = self.merged_seen.get(store).copied().unwrap_or(0);
            merged_since += if *writes >= before {
                writes - before
            } else {
                *writes
            };
        }
        self.merged_seen = merged_writes.into_iter().collect();
        self.rates.on_poll(taken_at_ms, live_total, merged_since);

        // Failure records count only while their batch is prepared (or their store live): a
        // record can outlive its batch until a persister sweeps it.
        let mut failing: HashMap<StoreName, usize> = HashMap::new();
        {
            let prepared_ids: HashSet<_> = prepared.iter().map(|p| (&p.store, &p.id)).collect();
            let live: HashSet<_> = stores.iter().map(|s| &s.store).collect();
            for failure in &failures {
                let exists = match &failure.batch {
                    Some(batch) => prepared_ids.contains(&(&failure.store, batch)),
                    None => live.contains(&failure.store),
                };
                if exists {
                    *failing.entry(failure.store.clone()).or_default() += 1;
                }
            }
        }
        self.failing_total = failing.values().sum();
        let mut batches: HashMap<StoreName, usize> = HashMap::new();
        for batch in prepared {
            *batches.entry(batch.store).or_default() += 1;
        }
        let mut rows: Vec<StoreRow> = Vec::with_capacity(stores.len() + batches.len());
        for store in stores {
            rows.push(StoreRow {
                paused: paused.contains(&store.store),
                prepared: batches.remove(&store.store).unwrap_or(0),
                failing: failing.get(&store.store).copied().unwrap_or(0),
                detail: details.remove(&store.store),
                live: Some(LiveCounts {
                    first_write_ms: store.first_write_ms,
                    bytes: store.bytes,
                    records: store.records,
                }),
                name: store.store,
            });
        }
        // Stores with prepared batches but nothing live are listed too: that is where a
        // persister is at work.
        for (name, prepared) in batches {
            rows.push(StoreRow {
                paused: paused.contains(&name),
                detail: details.remove(&name),
                failing: failing.get(&name).copied().unwrap_or(0),
                name,
                live: None,
                prepared,
            });
        }
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        self.rows = rows;
        self.focus = focus.filter(|f| Some(&f.store) == self.selected.as_ref());
        self.rebuild_view();
    }

    /// Filters and sorts `rows` into `view`, keeping the selected store selected.
    fn rebuild_view(&mut self) {
        let needle = self.filter.to_lowercase();
        let mut view: Vec<usize> = (0..self.rows.len())
            .filter(|&i| {
                needle.is_empty() || self.rows[i].name.as_str().to_lowercase().contains(&needle)
            })
            .collect();
        let sort = self.sort;
        let at = self.snapshot_at_ms;
        view.sort_by(|&a, &b| compare_rows(&self.rows[a], &self.rows[b], sort, at));
        self.view = view;

        let position = self
            .selected
            .as_ref()
            .and_then(|name| self.view.iter().position(|&i| &self.rows[i].name == name));
        match position {
            Some(position) => self.cursor = position,
            None => {
                self.cursor = self.cursor.min(self.view.len().saturating_sub(1));
                self.select_cursor();
            }
        }
        self.scroll_to_cursor();
    }

    fn move_cursor(&mut self, by: isize) {
        if self.view.is_empty() {
            return;
        }
        let last = self.view.len() - 1;
        self.cursor = self.cursor.saturating_add_signed(by).min(last);
        self.select_cursor();
        self.scroll_to_cursor();
    }

    fn select_cursor(&mut self) {
        let name = self
            .view
            .get(self.cursor)
            .map(|&i| self.rows[i].name.clone());
        if name != self.selected {
            self.focus = None;
        }
        self.selected = name;
        if self.selected.is_none() {
            self.screen = Screen::Table;
        }
    }

    /// Moves `offset` so the cursor is on screen and no space is wasted below the last row.
    fn scroll_to_cursor(&mut self) {
        let page = self.page().max(1);
        if self.cursor < self.offset {
            self.offset = self.cursor;
        } else if self.cursor >= self.offset + page {
            self.offset = self.cursor + 1 - page;
        }
        self.offset = self.offset.min(self.view.len().saturating_sub(page));
    }

    /// Remaining TTL of a lock read by the last poll, counted down to now.
    pub(crate) fn remaining_ttl(&self, ttl_ms: u64) -> u64 {
        crate::snapshot::remaining_ttl_ms(ttl_ms, self.snapshot_at_ms, self.now_ms)
    }

    /// Age of a live store now.
    pub(crate) fn age_ms(&self, live: &LiveCounts) -> u64 {
        self.now_ms.saturating_sub(live.first_write_ms)
    }

    /// The age at which stores are flushed: `--max-age` when given, else the smallest one the
    /// running persisters announce (the first of them to act), else unknown.
    pub(crate) fn max_age_ms(&self) -> Option<u64> {
        self.configured_max_age_ms.or_else(|| {
            self.live_persisters()
                .map(|p| buffer_core::millis(p.max_age))
                .min()
        })
    }

    /// Time until the persister's flush: `Some(0)` when due (by age, or because the store is
    /// over an announced size threshold), `None` when the max age is unknown.
    pub(crate) fn flush_in_ms(&self, live: &LiveCounts) -> Option<u64> {
        let max_age = self.max_age_ms()?;
        let over = |threshold: fn(&PersisterInfo) -> Option<u64>, value: u64| {
            self.live_persisters()
                .filter_map(threshold)
                .any(|limit| value >= limit)
        };
        if over(|p| p.max_records, live.records) || over(|p| p.max_bytes, live.bytes) {
            return Some(0);
        }
        Some(
            live.first_write_ms
                .saturating_add(max_age)
                .saturating_sub(self.now_ms),
        )
    }
}

/// The table order: by the sort column, unknown values last in either direction, then by name.
fn compare_rows(a: &StoreRow, b: &StoreRow, sort: Sort, at_ms: u64) -> Ordering {
    let by_name = a.name.cmp(&b.name);
    let ordered = |ord: Ordering| match sort.direction {
        Direction::Ascending => ord,
        Direction::Descending => ord.reverse(),
    };
    if sort.column == Column::Name {
        return ordered(by_name);
    }
    if sort.column == Column::Node {
        let node = |row: &StoreRow| row.detail.as_ref().and_then(|d| d.node.clone());
        return match (node(a), node(b)) {
            (Some(x), Some(y)) => ordered(x.cmp(&y)).then(by_name),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => by_name,
        };
    }
    let key = |row: &StoreRow| -> Option<u64> {
        match sort.column {
            Column::Name | Column::Node => None,
            Column::Records => Some(row.live.map_or(0, |l| l.records)),
            Column::Bytes => Some(row.live.map_or(0, |l| l.bytes)),
            Column::Keys => row.detail.as_ref().map(|d| d.unique_keys),
            Column::Age => row.live.map(|l| at_ms.saturating_sub(l.first_write_ms)),
            Column::Flush => row.live.map(|l| l.first_write_ms),
            Column::Lock => row
                .detail
                .as_ref()
                .and_then(|d| d.lock.as_ref())
                .map(|lock| lock.ttl_ms.unwrap_or(u64::MAX)),
            Column::Batches => Some(row.prepared as u64),
        }
    };
    match (key(a), key(b)) {
        (Some(x), Some(y)) => ordered(x.cmp(&y)).then(by_name),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => by_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::HeldLock;
    use buffer_core::StoreSummary;

    const T0: u64 = 1_700_000_000_000;

    fn app() -> App {
        let mut app = App::new(AppConfig {
            address: "redis://127.0.0.1:6379/0".into(),
            namespace: "buf".into(),
            max_age: Some(Duration::from_secs(60)),
            demo_out: None,
            now_ms: T0,
            read_only: false,
            no_color: false,
        });
        app.update(Action::Viewport { table_rows: 30 });
        app
    }

    fn summary(name: &str, records: u64, bytes: u64, age_ms: u64) -> StoreSummary {
        let mut summary = StoreSummary::new(StoreName::new(name).unwrap());
        summary.first_write_ms = T0 - age_ms;
        summary.bytes = bytes;
        summary.records = records;
        summary
    }

    fn snapshot(stores: Vec<StoreSummary>) -> Snapshot {
        Snapshot {
            taken_at_ms: T0,
            stores,
            ..Snapshot::default()
        }
    }

    fn loaded() -> App {
        let mut app = app();
        app.update(Action::Snapshot(Box::new(snapshot(vec![
            summary("orders", 300, 30_000, 5_000),
            summary("clicks", 1_000, 50_000, 1_000),
            summary("audit", 10, 9_000, 50_000),
        ]))));
        app
    }

    #[test]
    fn a_snapshot_lists_stores_by_name_and_selects_the_first() {
        let app = loaded();
        assert_eq!(app.listed(), ["audit", "clicks", "orders"]);
        assert_eq!(app.selected.as_ref().unwrap().as_str(), "audit");
        assert_eq!(app.connection, Connection::Connected);
        assert!(
            app.needs_details(),
            "the poller is asked for the new rows' details"
        );
    }

    #[test]
    fn s_cycles_the_sort_column_and_big_s_reverses_it() {
        let mut app = loaded();
        app.update(Action::SortNext);
        assert_eq!(app.sort.column, Column::Records);
        assert_eq!(app.listed(), ["clicks", "orders", "audit"], "biggest first");
        app.update(Action::SortNext);
        assert_eq!(app.sort.column, Column::Bytes);
        assert_eq!(app.listed(), ["clicks", "orders", "audit"]);
        app.update(Action::SortReverse);
        assert_eq!(app.listed(), ["audit", "orders", "clicks"]);
        app.update(Action::SortNext); // keys: unknown for all, by name
        assert_eq!(app.listed(), ["audit", "clicks", "orders"]);
        app.update(Action::SortNext);
        assert_eq!(app.sort.column, Column::Age);
        assert_eq!(app.listed(), ["audit", "orders", "clicks"], "oldest first");
        app.update(Action::SortNext);
        assert_eq!(app.sort.column, Column::Flush);
        assert_eq!(
            app.listed(),
            ["audit", "orders", "clicks"],
            "soonest flush first"
        );
        for _ in 0..3 {
            app.update(Action::SortNext);
        }
        assert_eq!(app.sort.column, Column::Name);
    }

    #[test]
    fn on_a_cluster_the_sort_cycle_includes_the_node_and_sorts_by_it() {
        let mut app = loaded();
        let mut snap = snapshot(vec![
            summary("audit", 1, 1, 0),
            summary("clicks", 1, 1, 0),
            summary("orders", 1, 1, 0),
        ]);
        for (store, node) in [("clicks", "10.0.0.1:7000"), ("orders", "10.0.0.0:7000")] {
            snap.details.insert(
                StoreName::new(store).unwrap(),
                StoreDetail {
                    unique_keys: 1,
                    lock: None,
                    node: Some(node.into()),
                    merged_writes: None,
                },
            );
        }
        app.update(Action::Snapshot(Box::new(snap)));
        for _ in 0..Column::ALL.len() - 1 {
            app.update(Action::SortNext);
        }
        assert_eq!(
            app.sort.column,
            Column::Name,
            "one server: no node column to sort by"
        );
        app.update(Action::Masters(Vec::new()));
        for _ in 0..Column::ALL.len() - 1 {
            app.update(Action::SortNext);
        }
        assert_eq!(app.sort.column, Column::Node);
        assert_eq!(
            app.listed(),
            ["orders", "clicks", "audit"],
            "known nodes first"
        );
        app.update(Action::SortNext);
        assert_eq!(app.sort.column, Column::Name);
    }

    #[test]
    fn sorting_by_keys_or_lock_puts_known_values_first() {
        let mut app = app();
        let mut snap = snapshot(vec![
            summary("a", 1, 1, 0),
            summary("b", 1, 1, 0),
            summary("c", 1, 1, 0),
        ]);
        let detail = |keys, ttl: Option<u64>| StoreDetail {
            unique_keys: keys,
            lock: ttl.map(|ttl| HeldLock {
                holder: "p".into(),
                ttl_ms: Some(ttl),
                batch: None,
            }),
            node: None,
            merged_writes: None,
        };
        snap.details
            .insert(StoreName::new("b").unwrap(), detail(3, Some(9_000)));
        snap.details
            .insert(StoreName::new("c").unwrap(), detail(7, Some(2_000)));
        app.update(Action::Snapshot(Box::new(snap)));
        for _ in 0..3 {
            app.update(Action::SortNext);
        }
        assert_eq!(app.sort.column, Column::Keys);
        assert_eq!(app.listed(), ["c", "b", "a"]);
        app.update(Action::SortReverse);
        assert_eq!(app.listed(), ["b", "c", "a"], "unknown stays last");
        for _ in 0..3 {
            app.update(Action::SortNext);
        }
        assert_eq!(app.sort.column, Column::Lock);
        assert_eq!(app.listed(), ["c", "b", "a"], "soonest to expire first");
    }

    #[test]
    fn the_filter_narrows_the_list_case_insensitively_and_esc_clears_it() {
        let mut app = loaded();
        app.update(Action::FilterStart);
        assert_eq!(app.mode, Mode::Filter);
        for c in "OR".chars() {
            app.update(Action::FilterInput(c));
        }
        assert_eq!(app.listed(), ["orders"]);
        assert_eq!(app.selected.as_ref().unwrap().as_str(), "orders");
        app.update(Action::FilterBackspace);
        assert_eq!(app.listed(), ["orders"], "'o' matches orders only");
        app.update(Action::FilterAccept);
        assert_eq!(app.mode, Mode::Normal);
        assert_eq!(app.filter, "O");
        app.update(Action::Back);
        assert_eq!(app.listed().len(), 3);
        assert_eq!(
            app.selected.as_ref().unwrap().as_str(),
            "orders",
            "selection kept"
        );

        app.update(Action::FilterStart);
        app.update(Action::FilterInput('z'));
        assert!(app.listed().is_empty());
        assert_eq!(app.selected, None);
        app.update(Action::FilterCancel);
        assert_eq!(app.listed().len(), 3);
    }

    #[test]
    fn selection_follows_the_store_when_rows_move() {
        let mut app = loaded();
        app.update(Action::Down);
        assert_eq!(app.selected.as_ref().unwrap().as_str(), "clicks");
        app.update(Action::SortNext); // records: clicks first
        assert_eq!(app.cursor, 0);
        assert_eq!(app.selected.as_ref().unwrap().as_str(), "clicks");
        // A store that disappears leaves the cursor where it was.
        app.update(Action::Snapshot(Box::new(snapshot(vec![
            summary("orders", 300, 30_000, 5_000),
            summary("audit", 10, 9_000, 50_000),
        ]))));
        assert_eq!(app.selected.as_ref().unwrap().as_str(), "orders");
    }

    #[test]
    fn moving_stops_at_the_ends_and_scrolls_a_long_list() {
        let mut app = app();
        app.update(Action::Viewport { table_rows: 5 });
        let stores = (0..10_000)
            .map(|i| summary(&format!("store-{i:05}"), i, i, 0))
            .collect();
        app.update(Action::Snapshot(Box::new(snapshot(stores))));
        let page = app.page();
        assert_eq!(page, 5, "one page is the viewport");
        app.update(Action::Up);
        assert_eq!(app.cursor, 0);
        for _ in 0..page {
            app.update(Action::Down);
        }
        assert_eq!(app.cursor, page);
        assert_eq!(app.offset, 1, "scrolled by one");
        let request = app.view_request();
        assert_eq!(
            request.visible.len(),
            page,
            "only visible rows are asked for"
        );
        assert_eq!(request.visible[0].as_str(), "store-00001");
        app.update(Action::Bottom);
        assert_eq!(app.cursor, 9_999);
        assert_eq!(app.offset, 10_000 - page);
        app.update(Action::Down);
        assert_eq!(app.cursor, 9_999);
        app.update(Action::PageUp);
        assert_eq!(app.cursor, 9_999 - page);
        app.update(Action::Top);
        assert_eq!((app.cursor, app.offset), (0, 0));
    }

    #[test]
    fn enter_opens_the_selected_store_and_esc_goes_back() {
        let mut app = loaded();
        app.update(Action::Enter);
        assert_eq!(app.screen, Screen::Store);
        app.update(Action::Back);
        assert_eq!(app.screen, Screen::Table);
        app.update(Action::Enter);
        app.update(Action::Enter);
        assert_eq!(app.screen, Screen::Table);
        let mut empty = super::tests::app();
        empty.update(Action::Enter);
        assert_eq!(empty.screen, Screen::Table, "nothing to open");
    }

    #[test]
    fn lock_ttls_count_down_between_polls_and_ages_grow() {
        let mut app = loaded();
        assert_eq!(app.remaining_ttl(10_000), 10_000);
        app.update(Action::Tick { now_ms: T0 + 2_500 });
        assert_eq!(app.remaining_ttl(10_000), 7_500);
        app.update(Action::Tick {
            now_ms: T0 + 20_000,
        });
        assert_eq!(app.remaining_ttl(10_000), 0, "stops at zero");
        let audit = app
            .rows
            .iter()
            .find(|r| r.name.as_str() == "audit")
            .unwrap();
        let live = audit.live.unwrap();
        assert_eq!(app.age_ms(&live), 70_000);
        assert_eq!(app.flush_in_ms(&live), Some(0), "due");
        let orders = app
            .rows
            .iter()
            .find(|r| r.name.as_str() == "orders")
            .unwrap();
        assert_eq!(app.flush_in_ms(&orders.live.unwrap()), Some(35_000));
    }

    #[test]
    fn the_max_age_comes_from_the_flag_or_else_from_announcing_persisters() {
        let mut app = App::new(AppConfig {
            address: String::new(),
            namespace: "buf".into(),
            max_age: None,
            demo_out: None,
            now_ms: T0,
            read_only: false,
            no_color: false,
        });
        let persister = |holder: &str, max_age_ms, max_records| PersisterInfo {
            holder: holder.into(),
            max_age: Duration::from_millis(max_age_ms),
            max_bytes: None,
            max_records,
            out: "out".into(),
            heartbeat_ms: T0,
            batches_persisted: 0,
            records_persisted: 0,
            version: None,
            interval: None,
        };
        let live = LiveCounts {
            first_write_ms: T0 - 4_000,
            bytes: 10,
            records: 50,
        };
        assert_eq!(
            app.flush_in_ms(&live),
            None,
            "unknown without flag or persister"
        );
        let mut snap = snapshot(vec![]);
        snap.persisters = vec![persister("a", 30_000, None), persister("b", 10_000, None)];
        app.update(Action::Snapshot(Box::new(snap.clone())));
        assert_eq!(app.max_age_ms(), Some(10_000), "the first persister to act");
        assert_eq!(app.flush_in_ms(&live), Some(6_000));
        snap.persisters[0].max_records = Some(50);
        app.update(Action::Snapshot(Box::new(snap)));
        assert_eq!(
            app.flush_in_ms(&live),
            Some(0),
            "over the record threshold: due"
        );
        app.configured_max_age_ms = Some(60_000);
        assert_eq!(app.max_age_ms(), Some(60_000), "the flag wins");
    }

    fn event(kind: EventKind, records: u64) -> Event {
        Event {
            kind,
            store: "orders".into(),
            batch: "0000000000001-0000000000000001".into(),
            records,
            bytes: records * 10,
            at_ms: T0,
            holder: "p".into(),
            detail: None,
        }
    }

    #[test]
    fn rates_count_live_growth_plus_prepared_records_per_second() {
        let mut rates = Rates::default();
        rates.on_poll(T0, 100, 0);
        rates.on_poll(T0 + 500, 150, 0);
        assert!(rates.push.is_empty(), "a window lasts at least a second");
        // In two seconds 400 records arrived while 300 left in a prepared batch that was
        // persisted: live grew by 100.
        rates.on_event(&event(EventKind::Prepared, 300));
        rates.on_event(&event(EventKind::Persisted, 300));
        rates.on_event(&event(EventKind::Recovered, 999));
        rates.on_poll(T0 + 2_000, 200, 0);
        assert_eq!(rates.push_now(), Some(200));
        assert_eq!(rates.persist_now(), Some(150));
        rates.on_poll(T0 + 3_000, 100, 0);
        assert_eq!(rates.push_now(), Some(0), "never negative");
        for i in 0..RATE_HISTORY as u64 + 10 {
            rates.on_poll(T0 + 4_000 + i * 1_000, 100, 0);
        }
        assert_eq!(rates.push.len(), RATE_HISTORY);
    }

    /// A coalescing store's writes count as pushed records, though its records (entities)
    /// do not grow; its prepare event (rows, not writes) is not counted again.
    #[test]
    fn the_push_rate_counts_writes_merged_into_coalescing_stores() {
        let mut app = app();
        let poll = |app: &mut App, at: u64, clicks: u64, merged: Option<u64>| {
            let mut stores = vec![summary("clicks", clicks, 1_000, 0)];
            let mut merged_writes = Vec::new();
            if let Some(writes) = merged {
                stores.push(summary("pageviews", 3, 1_000, 0));
                merged_writes.push((StoreName::new("pageviews").unwrap(), writes));
            }
            app.update(Action::Snapshot(Box::new(Snapshot {
                taken_at_ms: at,
                merged_writes,
                ..snapshot(stores)
            })));
        };
        poll(&mut app, T0, 100, Some(50));
        // A second later: 30 clicks, 300 writes merged into the same 3 entities.
        poll(&mut app, T0 + 1_000, 130, Some(350));
        assert_eq!(app.rates.push_now(), Some(330));
        // The store is prepared (its 3 rows leave, with the 400 writes merged into them), then
        // 20 writes make new rows: those count, the prepared rows do not.
        let mut prepared = event(EventKind::Prepared, 3);
        prepared.store = "pageviews".into();
        app.update(Action::Event(prepared));
        poll(&mut app, T0 + 2_000, 130, Some(20));
        assert_eq!(app.rates.push_now(), Some(20));
        // Gone from the live stores (nothing merged since), then back with 5 writes.
        poll(&mut app, T0 + 3_000, 130, None);
        assert_eq!(app.rates.push_now(), Some(0));
        poll(&mut app, T0 + 4_000, 130, Some(5));
        assert_eq!(app.rates.push_now(), Some(5));
    }

    #[test]
    fn events_are_logged_newest_first_and_counted_into_rates() {
        let mut app = loaded();
        app.update(Action::Event(event(EventKind::Prepared, 5)));
        app.update(Action::Event(event(EventKind::Persisted, 5)));
        assert_eq!(app.events[0].kind, EventKind::Persisted);
        for _ in 0..EVENT_HISTORY {
            app.update(Action::Event(event(EventKind::Failed, 0)));
        }
        assert_eq!(app.events.len(), EVENT_HISTORY);
    }

    #[test]
    fn failed_polls_mark_the_connection_lost_until_a_snapshot_arrives() {
        let mut app = loaded();
        app.update(Action::PollFailed {
            error: "connection refused".into(),
            at_ms: T0 + 1_000,
        });
        app.update(Action::PollFailed {
            error: "timed out".into(),
            at_ms: T0 + 2_000,
        });
        assert_eq!(
            app.connection,
            Connection::Lost {
                error: "timed out".into(),
                since_ms: T0 + 1_000,
                failures: 2
            }
        );
        assert_eq!(app.listed().len(), 3, "the last data stays on screen");
        app.update(Action::Snapshot(Box::new(snapshot(vec![]))));
        assert_eq!(app.connection, Connection::Connected);
        assert!(app.listed().is_empty());
    }

    #[test]
    fn stores_with_only_prepared_batches_are_listed() {
        let mut app = app();
        let mut snap = snapshot(vec![summary("live", 1, 1, 0)]);
        snap.prepared.push(buffer_core::PreparedSummary::new(
            StoreName::new("flushing").unwrap(),
            "0000000000001-0000000000000001".parse().unwrap(),
        ));
        app.update(Action::Snapshot(Box::new(snap)));
        assert_eq!(app.listed(), ["flushing", "live"]);
        assert_eq!(app.rows[0].prepared, 1);
        assert_eq!(app.rows[0].live, None);
    }
}
