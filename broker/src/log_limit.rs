//! Logging of bad network input at a bounded rate.

use std::time::{Duration, Instant};

/// Lets through at most `burst` log lines per `interval`; counts the rest and reports the count
/// when the next interval begins.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    interval: Duration,
    burst: u32,
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub(crate) fn new(interval: Duration, burst: u32) -> Self {
        LogLimiter {
            interval,
            burst,
            window_start: Instant::now(),
            in_window: 0,
            suppressed: 0,
        }
    }

    /// True when a line may be logged now. When a new interval starts after lines were
    /// suppressed, returns their count through `on_resume` first.
    pub(crate) fn allow(&mut self, now: Instant, on_resume: impl FnOnce(u64)) -> bool {
        if now.duration_since(self.window_start) >= self.interval {
            if self.suppressed > 0 {
                on_resume(self.suppressed);
            }
            self.window_start = now;
            self.in_window = 0;
            self.suppressed = 0;
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_reports_suppressed() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(Duration::from_secs(10), 3);
        let allowed = (0..100)
            .filter(|_| l.allow(t0, |_| panic!("no resume yet")))
            .count();
        assert_eq!(allowed, 3);
        let mut reported = None;
        assert!(l.allow(t0 + Duration::from_secs(11), |n| reported = Some(n)));
        assert_eq!(reported, Some(97));
    }
}
