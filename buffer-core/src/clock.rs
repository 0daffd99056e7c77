//! Wall-clock time, behind a trait so time-dependent logic is tested without sleeping, and
//! the offset that puts this process's clock on Redis's timeline.
//!
//! # How a clock and the offset combine
//!
//! Every time a [`crate::Buffer`] stamps or compares in Redis (first-write times, index scores,
//! batch ids, `get_old` cutoffs, persister heartbeats) is [`crate::Buffer::now_ms`]:
//!
//! - for a clock whose [`Clock::corrected_by_redis_time`] is `true` (the default, and
//!   [`SystemClock`]): `clock.now_ms() + offset`, where `offset` = Redis `TIME` − `clock.now_ms()`,
//!   measured at the midpoint of one `TIME` round trip (so it is exact to half a round trip).
//!   It is measured by `connect`, or by the first call that stamps a time after
//!   `connect_lazy`, and measured again in the background once it is older than
//!   [`crate::BufferConfig::clock_sync_interval`]; no push ever waits for it after the
//!   first. So producers and persisters with skewed clocks all agree with Redis, and a clock
//!   that is stepped is followed again within one interval.
//! - for a clock that returns `false` ([`ManualClock`]): `clock.now_ms()` exactly, never
//!   measured. Such a clock stands for Redis time itself, so a test that sets and advances it
//!   controls every time the buffer writes and compares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Whether a buffer corrects this clock by its measured offset to Redis `TIME` (see the
    /// module docs). `true` for clocks that keep real time, however skewed; `false` for a
    /// clock whose readings are to be used exactly as they are (a test clock).
    fn corrected_by_redis_time(&self) -> bool {
        true
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; clones share the same time. Its readings are used
/// as they are, never corrected by an offset to Redis time.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(now_ms)))
    }

    /// Moves the clock forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `now_ms` (which may step back, as real clocks do).
    pub fn set_ms(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn corrected_by_redis_time(&self) -> bool {
        false
    }
}

/// How long to wait before trying again after a measurement failed (Redis away), so a stale
/// offset does not turn every call into a new attempt.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Marks "never" in the instants below.
const NEVER: u64 = u64::MAX;

/// The measured offset of a clock to Redis time, shared by the clones of one buffer.
///
/// Instants are milliseconds on the monotonic clock since `origin`, so staleness is judged by
/// real elapsed time whatever the wall clocks do.
#[derive(Debug)]
pub(crate) struct RedisOffset {
    origin: Instant,
    /// Redis time − clock time, in ms, valid once `measured_at` is not `NEVER`.
    offset_ms: AtomicI64,
    /// When the offset was last measured.
    measured_at: AtomicU64,
    /// When a measurement was last started (successful or not).
    attempted_at: AtomicU64,
    /// Held by the one measurement in flight: set by whoever starts it (`try_begin`), cleared
    /// by that measurement when it ends (`end`), so stale reads start at most one at a time.
    measuring: AtomicBool,
    /// How old a measurement may grow before it is taken again.
    interval: Duration,
}

impl RedisOffset {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            origin: Instant::now(),
            offset_ms: AtomicI64::new(0),
            measured_at: AtomicU64::new(NEVER),
            attempted_at: AtomicU64::new(NEVER),
            measuring: AtomicBool::new(false),
            interval,
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    /// The offset, or `None` before the first measurement.
    pub(crate) fn offset_ms(&self) -> Option<i64> {
        (self.measured_at.load(Ordering::Acquire) != NEVER)
            .then(|| self.offset_ms.load(Ordering::Acquire))
    }

    /// `clock_ms` on Redis's timeline (the clock itself before the first measurement).
    pub(crate) fn apply(&self, clock_ms: u64) -> u64 {
        let offset = self.offset_ms().unwrap_or(0);
        let corrected = i128::from(clock_ms) + i128::from(offset);
        u64::try_from(corrected.max(0)).unwrap_or(u64::MAX)
    }

    /// True when the offset should be measured (again) now: never measured, or older than the
    /// interval, and no attempt failed within the last `RETRY_AFTER_FAILURE`.
    pub(crate) fn is_due(&self) -> bool {
        let now = self.elapsed_ms();
        let measured = self.measured_at.load(Ordering::Acquire);
        let stale = measured == NEVER || now.saturating_sub(measured) >= millis(self.interval);
        let attempted = self.attempted_at.load(Ordering::Acquire);
        let resting = attempted != NEVER
            && attempted != measured
            && now.saturating_sub(attempted) < millis(RETRY_AFTER_FAILURE);
        stale && !resting
    }

    /// Claims the right to measure; false when a measurement is already in flight.
    pub(crate) fn try_begin(&self) -> bool {
        let claimed = self
            .measuring
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if claimed {
            self.attempted_at
                .store(self.elapsed_ms(), Ordering::Release);
        }
        claimed
    }

    /// Ends the measurement claimed by `try_begin`, recording its result if it had one.
    pub(crate) fn end(&self, offset_ms: Option<i64>) {
        if let Some(offset) = offset_ms {
            self.offset_ms.store(offset, Ordering::Release);
            let attempted = self.attempted_at.load(Ordering::Acquire);
            self.measured_at.store(attempted, Ordering::Release);
        }
        self.measuring.store(false, Ordering::Release);
    }
}

/// The offset of Redis time to a clock, from one `TIME` round trip: Redis's reading (seconds
/// and microseconds) against the clock's reading halfway through the round trip.
pub(crate) fn offset_from_round_trip(before_ms: u64, after_ms: u64, secs: u64, micros: u64) -> i64 {
    let redis_ms = i128::from(secs) * 1000 + i128::from(micros) / 1000;
    let midpoint = (i128::from(before_ms) + i128::from(after_ms)) / 2;
    i64::try_from(redis_ms - midpoint).unwrap_or(0)
}

/// Whole milliseconds in `duration`, saturating at `u64::MAX`: the unit of every time and TTL
/// buffer-core writes to Redis, and of the `*_ms` fields it returns.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// assert_eq!(buffer_core::millis(Duration::from_micros(2_500)), 2);
/// assert_eq!(buffer_core::millis(Duration::MAX), u64::MAX);
/// ```
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_taken_at_the_midpoint_of_the_round_trip() {
        // Clock read 1_000 before and 1_010 after; Redis said 4_600.005 s.
        assert_eq!(offset_from_round_trip(1_000, 1_010, 4, 600_005), 3_595);
        assert_eq!(offset_from_round_trip(5_000, 5_000, 1, 0), -4_000);
    }

    #[test]
    fn the_offset_applies_once_measured_and_is_due_again_after_the_interval() {
        let offset = RedisOffset::new(Duration::ZERO);
        assert_eq!(offset.offset_ms(), None);
        assert_eq!(offset.apply(1_000), 1_000, "uncorrected before measuring");
        assert!(offset.is_due());
        assert!(offset.try_begin());
        assert!(!offset.try_begin(), "one measurement at a time");
        offset.end(Some(-2_000));
        assert_eq!(offset.apply(1_500), 0, "never below the epoch");
        assert_eq!(offset.apply(10_000), 8_000);
        assert!(offset.is_due(), "a zero interval is always stale");

        let failing = RedisOffset::new(Duration::ZERO);
        assert!(failing.try_begin());
        failing.end(None);
        assert_eq!(failing.offset_ms(), None);
        assert!(!failing.is_due(), "a failed attempt rests before the next");
    }
}
