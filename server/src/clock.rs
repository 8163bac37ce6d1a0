//! Wall clock with a test offset: watchdogs, deadlines and retention read
//! time here, so the test handle can move time forward without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicU64>,
    /// Wakes every [`Clock::sleep_until`] when the test handle moves time.
    advanced: Arc<Notify>,
}

impl Clock {
    /// Unix epoch milliseconds, plus whatever the test handle added.
    pub fn now_ms(&self) -> u64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        real + self.offset_ms.load(Ordering::SeqCst)
    }

    pub fn advance(&self, ms: u64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
        self.advanced.notify_waiters();
    }

    /// Until this clock reads `at_ms` or later (never, for `None`): a real
    /// timer, woken early when the test handle moves time.
    pub async fn sleep_until(&self, at_ms: Option<u64>) {
        let Some(at_ms) = at_ms else {
            return std::future::pending().await;
        };
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            // Registered before the clock is read: an advance in between wakes it.
            advanced.as_mut().enable();
            let now = self.now_ms();
            if now >= at_ms {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(at_ms - now)) => {}
                () = advanced => {}
            }
        }
    }
}
