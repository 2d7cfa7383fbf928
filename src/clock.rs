//! Time as an input. Every deadline, retry and escalation reads the time
//! through a `Clock`; the daemon uses the system clock, tests move a clock
//! forward instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Milliseconds since the Unix epoch: the wall clock read once when the
/// clock is made, advanced by the monotonic clock since, so an NTP step of
/// the system clock neither stalls queued retries nor fires them early.
/// Tests move it forward.
#[derive(Clone)]
pub struct Clock {
    inner: Arc<Inner>,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            inner: Arc::new(Inner {
                epoch: std::time::Instant::now(),
                epoch_ms: system_ms(),
                offset_ms: AtomicI64::new(0),
                moved: Notify::new(),
            }),
        }
    }
}

struct Inner {
    epoch: std::time::Instant,
    epoch_ms: i64,
    /// Added to the system time; only tests move it.
    offset_ms: AtomicI64,
    /// Wakes sleepers when the clock is moved.
    moved: Notify,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Clock(+{} ms)",
            self.inner.offset_ms.load(Ordering::Relaxed)
        )
    }
}

impl Clock {
    pub fn system() -> Clock {
        Clock::default()
    }

    pub fn now_ms(&self) -> i64 {
        self.inner.epoch_ms
            + self.inner.epoch.elapsed().as_millis() as i64
            + self.inner.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves the clock forward (tests) and wakes everything sleeping on it.
    pub fn advance(&self, by: Duration) {
        self.inner
            .offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
        self.inner.moved.notify_waiters();
    }

    /// Sleeps until `until_ms` on this clock, or at most `max`, or until the
    /// clock is moved; the caller re-reads the time afterwards.
    pub async fn sleep_until(&self, until_ms: i64, max: Duration) {
        let wait = Duration::from_millis((until_ms - self.now_ms()).max(0) as u64).min(max);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.inner.moved.notified() => {}
        }
    }
}

fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
