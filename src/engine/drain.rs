//! How fast the engine finishes requests, for the `Retry-After` of a refusal under load
//! (QUEUE_FULL, CAPACITY): the wait is the time the recent completion rate needs to finish as
//! many requests as the refused one is over the limit.
//!
//! Pure logic over caller-supplied instants; owned by [`super::Shared`] behind a mutex (the
//! worker records, submitters estimate).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Completions remembered (the rate is measured over the last this many).
const WINDOW: usize = 64;
/// Shortest suggested wait (HTTP `Retry-After` has whole seconds).
pub(crate) const MIN_RETRY: Duration = Duration::from_secs(1);
/// Longest suggested wait.
pub(crate) const MAX_RETRY: Duration = Duration::from_secs(600);

/// The instants of the most recent sequence completions.
#[derive(Debug, Default)]
pub(crate) struct DrainRate {
    done: VecDeque<Instant>,
}

impl DrainRate {
    /// Records one completion at `now`.
    pub fn record(&mut self, now: Instant) {
        if self.done.len() == WINDOW {
            self.done.pop_front();
        }
        self.done.push_back(now);
    }

    /// The time the recent rate needs to complete `n` more sequences, measured from the oldest
    /// remembered completion to `now` (so a rate decays while nothing completes). `None` before
    /// the first completion.
    pub fn time_for(&self, n: usize, now: Instant) -> Option<Duration> {
        let oldest = *self.done.front()?;
        let span = now.saturating_duration_since(oldest).as_secs_f64();
        let per_sec = self.done.len() as f64 / span.max(1e-3);
        Some(Duration::from_secs_f64(n as f64 / per_sec))
    }

    /// [`DrainRate::time_for`] clamped to [`MIN_RETRY`]..=[`MAX_RETRY`], rounded up to whole
    /// seconds; [`MIN_RETRY`] before the first completion.
    pub fn retry_after(&self, n: usize, now: Instant) -> Duration {
        let t = self.time_for(n.max(1), now).unwrap_or(MIN_RETRY);
        Duration::from_secs(t.as_secs_f64().ceil() as u64).clamp(MIN_RETRY, MAX_RETRY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_scales_with_excess_and_rate() {
        let t0 = Instant::now();
        let mut d = DrainRate::default();
        assert_eq!(d.time_for(3, t0), None);
        assert_eq!(d.retry_after(3, t0), MIN_RETRY);
        // 10 completions over 5 s: 2 per second.
        for i in 0..10 {
            d.record(t0 + Duration::from_millis(500 * i));
        }
        let now = t0 + Duration::from_secs(5);
        assert_eq!(d.time_for(10, now), Some(Duration::from_secs(5)));
        assert_eq!(d.retry_after(10, now), Duration::from_secs(5));
        assert_eq!(d.retry_after(1, now), MIN_RETRY);
        assert_eq!(d.retry_after(7, now), Duration::from_secs(4)); // 3.5 s rounds up
        assert_eq!(d.retry_after(1 << 20, now), MAX_RETRY);
        // Nothing completes for a while: the rate decays, the wait grows.
        let later = t0 + Duration::from_secs(50);
        assert_eq!(d.retry_after(10, later), Duration::from_secs(50));
    }

    #[test]
    fn window_keeps_the_most_recent() {
        let t0 = Instant::now();
        let mut d = DrainRate::default();
        for i in 0..(2 * WINDOW as u64) {
            d.record(t0 + Duration::from_secs(i));
        }
        assert_eq!(d.done.len(), WINDOW);
        assert_eq!(
            d.done.front(),
            Some(&(t0 + Duration::from_secs(WINDOW as u64)))
        );
    }
}
