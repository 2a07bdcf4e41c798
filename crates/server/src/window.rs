//! A sliding minute of amounts in 100 ms buckets: what rate limits and free-tier counters
//! count requests (and tokens) with. Memory is bounded by the 601 buckets whatever the
//! rate; an amount leaves the window at most 100 ms after an exact log's entry would, so
//! a count errs on the side of "used".

use std::collections::VecDeque;

/// Width of a bucket.
pub const BUCKET_MS: i64 = 100;
/// The window.
pub const WINDOW_MS: i64 = 60_000;

/// Amounts added in the last minute.
#[derive(Debug, Default)]
pub struct Minute {
    /// (bucket start ms, amount), oldest first.
    buckets: VecDeque<(i64, u64)>,
    total: u64,
}

impl Minute {
    /// Adds `amount` at `ms`.
    pub fn add(&mut self, ms: i64, amount: u64) {
        let start = ms - ms.rem_euclid(BUCKET_MS);
        match self.buckets.back_mut() {
            Some(b) if b.0 == start => b.1 += amount,
            _ => self.buckets.push_back((start, amount)),
        }
        self.total += amount;
    }

    /// Drops the buckets that hold nothing of the minute before `ms`: a bucket
    /// `[s, s + 100)` can hold an amount of the window `(ms - 60 s, ms]` until
    /// `s + 100 <= ms - 60 s`.
    pub fn roll(&mut self, ms: i64) {
        while let Some(&(start, n)) = self.buckets.front() {
            if start + BUCKET_MS > ms - WINDOW_MS {
                break;
            }
            self.total -= n;
            self.buckets.pop_front();
        }
    }

    /// The sum over the window (as of the last [`Minute::roll`]).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// When the oldest amount leaves the window, if any is in it.
    pub fn oldest_leaves_at(&self) -> Option<i64> {
        self.buckets.front().map(|b| b.0 + BUCKET_MS + WINDOW_MS)
    }

    /// Buckets held (for tests: bounded whatever the rate).
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_leave_100_ms_late_at_most_and_memory_is_bounded() {
        let mut m = Minute::default();
        m.add(0, 1);
        m.add(99, 2);
        m.roll(60_099);
        assert_eq!(m.total(), 3);
        assert_eq!(m.oldest_leaves_at(), Some(60_100));
        m.roll(60_100);
        assert_eq!(m.total(), 0);
        assert_eq!(m.oldest_leaves_at(), None);
        for t in 0..200_000 {
            m.add(t, 1);
            m.roll(t);
        }
        assert!(m.buckets() <= 601);
        assert_eq!(m.total(), 60_100);
    }
}
