//! Rate limits: requests per minute and tokens per minute, per key and per model.
//!
//! Requests use a sliding [`Minute`] of 100 ms buckets: a request is admitted when fewer
//! than `rpm` requests were admitted in the buckets that overlap the 60 seconds before
//! it, so no 60-second window ever holds more than `rpm` (a token bucket would let twice
//! that through around a refill); a bucket leaves the window at most 100 ms later than
//! an exact log's entry would. Memory per scope is bounded whatever the rate (an exact
//! log held one timestamp per request: 16 MB per scope at 16k requests/s).
//! Tokens use a sliding window of one-second buckets: the request's worst case
//! (prompt + max output) is reserved at admission and corrected to the vendor's usage
//! at settlement. Checks across scopes (key, model) are all-or-none.

use std::collections::VecDeque;

use crate::FastMap;
use std::sync::Mutex;

use crate::window::Minute;

/// Limits of one scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spec {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
}

#[derive(Debug, Default)]
struct Window {
    /// Requests admitted in the last minute.
    requests: Minute,
    /// (second, tokens)
    tokens: VecDeque<(i64, u64)>,
}

impl Window {
    fn prune(&mut self, now_ms: i64) {
        self.requests.roll(now_ms);
        let now_s = now_ms.div_euclid(1000);
        while self.tokens.front().is_some_and(|(s, _)| *s <= now_s - 60) {
            self.tokens.pop_front();
        }
    }

    fn tokens_used(&self) -> u64 {
        self.tokens.iter().map(|(_, n)| n).sum()
    }
}

/// What a scope has left, for `x-ratelimit-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remaining {
    pub spec: Spec,
    pub requests_left: u32,
    pub requests_reset_ms: i64,
    pub tokens_left: u64,
    pub tokens_reset_ms: i64,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub retry_after_secs: u64,
    pub remaining: Remaining,
    /// Refused for tokens (TPM), not for the request count.
    pub tokens: bool,
}

/// Every scope's window.
#[derive(Default)]
pub struct Limits {
    windows: Mutex<FastMap<String, Window>>,
}

impl Limits {
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits a request needing `tokens` in every scope, or refuses it. Returns what the
    /// first scope has left (the key's, for headers).
    pub fn admit<S: AsRef<str>>(
        &self,
        scopes: &[(S, Spec)],
        tokens: u64,
        now_ms: i64,
    ) -> Result<Option<Remaining>, Refusal> {
        let mut m = match self.windows.lock() {
            Ok(m) => m,
            Err(_) => return Ok(None),
        };
        for (id, spec) in scopes {
            let id = id.as_ref();
            let w = crate::slot(&mut m, id, Window::default);
            w.prune(now_ms);
            if let Some(rpm) = spec.rpm {
                if w.requests.total() >= u64::from(rpm) {
                    let leaves = w.requests.oldest_leaves_at().unwrap_or(now_ms);
                    let wait = (leaves - now_ms).max(1);
                    return Err(Refusal {
                        tokens: false,
                        message: format!("Rate limit reached for {id}: {rpm} requests per minute. Retry after {}s.", ceil_s(wait)),
                        retry_after_secs: ceil_s(wait),
                        remaining: remaining(w, *spec, now_ms),
                    });
                }
            }
            if let Some(tpm) = spec.tpm {
                let used = w.tokens_used();
                if tokens > u64::from(tpm) {
                    return Err(Refusal {
                        tokens: true,
                        message: format!(
                            "Request too large for {id}: it may use up to {tokens} tokens, the limit is {tpm} tokens per minute. Lower max_tokens or shorten the prompt."
                        ),
                        retry_after_secs: 60,
                        remaining: remaining(w, *spec, now_ms),
                    });
                }
                if used + tokens > u64::from(tpm) {
                    // Wait until enough old buckets have left the window.
                    let mut freed = 0;
                    let mut wait_s = 60;
                    for (s, n) in &w.tokens {
                        freed += n;
                        if used - freed + tokens <= u64::from(tpm) {
                            wait_s = (s + 60 - now_ms.div_euclid(1000)).max(1) as u64;
                            break;
                        }
                    }
                    return Err(Refusal {
                        tokens: true,
                        message: format!("Rate limit reached for {id}: {tpm} tokens per minute ({used} used). Retry after {wait_s}s."),
                        retry_after_secs: wait_s,
                        remaining: remaining(w, *spec, now_ms),
                    });
                }
            }
        }
        let mut first = None;
        for (i, (id, spec)) in scopes.iter().enumerate() {
            let Some(w) = m.get_mut(id.as_ref()) else {
                continue;
            };
            if spec.rpm.is_some() {
                w.requests.add(now_ms, 1);
            }
            if spec.tpm.is_some() {
                add_tokens(w, now_ms.div_euclid(1000), tokens as i64);
            }
            if i == 0 {
                first = Some(remaining(w, *spec, now_ms));
            }
        }
        Ok(first)
    }

    /// Corrects a token reservation made at `at_ms` to the actual count.
    pub fn settle_tokens<S: AsRef<str>>(
        &self,
        scopes: &[(S, Spec)],
        reserved: u64,
        actual: u64,
        at_ms: i64,
    ) {
        if let Ok(mut m) = self.windows.lock() {
            for (id, spec) in scopes {
                if spec.tpm.is_none() {
                    continue;
                }
                if let Some(w) = m.get_mut(id.as_ref()) {
                    add_tokens(w, at_ms.div_euclid(1000), actual as i64 - reserved as i64);
                }
            }
        }
    }
}

fn add_tokens(w: &mut Window, second: i64, delta: i64) {
    if let Some(b) = w.tokens.iter_mut().rev().find(|(s, _)| *s == second) {
        b.1 = (b.1 as i64 + delta).max(0) as u64;
    } else if delta > 0 {
        // Keep seconds ordered; a settlement for an older second lands in its bucket
        // when it still exists, else it is already outside the window.
        let pos = w
            .tokens
            .iter()
            .position(|(s, _)| *s > second)
            .unwrap_or(w.tokens.len());
        w.tokens.insert(pos, (second, delta as u64));
    }
}

fn ceil_s(ms: i64) -> u64 {
    (ms.max(0) as u64).div_ceil(1000)
}

fn remaining(w: &Window, spec: Spec, now_ms: i64) -> Remaining {
    let req_reset = w
        .requests
        .oldest_leaves_at()
        .map(|t| t - now_ms)
        .unwrap_or(0)
        .max(0);
    let tok_reset = w
        .tokens
        .front()
        .map(|(s, _)| (s + 60) * 1000 - now_ms)
        .unwrap_or(0)
        .max(0);
    Remaining {
        spec,
        requests_left: spec
            .rpm
            .map(|r| u64::from(r).saturating_sub(w.requests.total()) as u32)
            .unwrap_or(0),
        requests_reset_ms: req_reset,
        tokens_left: spec
            .tpm
            .map(|t| u64::from(t).saturating_sub(w.tokens_used()))
            .unwrap_or(0),
        tokens_reset_ms: tok_reset,
    }
}

use axum::http::{HeaderName, HeaderValue};

const X_RATELIMIT_LIMIT_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-limit-requests");
const X_RATELIMIT_REMAINING_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining-requests");
const X_RATELIMIT_RESET_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-reset-requests");
const X_RATELIMIT_LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const X_RATELIMIT_REMAINING_TOKENS: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining-tokens");
const X_RATELIMIT_RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// `x-ratelimit-*` headers in OpenAI's style (`reset` as `1s`, `6m0s`).
pub fn headers(r: &Remaining) -> Vec<(HeaderName, HeaderValue)> {
    // Header values made directly (no String per header, nothing to validate).
    let dur = |ms: i64| {
        let s = ceil_s(ms);
        let mut v = Vec::with_capacity(16);
        if s >= 60 {
            push_decimal(&mut v, s / 60);
            v.push(b'm');
            push_decimal(&mut v, s % 60);
        } else {
            push_decimal(&mut v, s);
        }
        v.push(b's');
        HeaderValue::from_bytes(&v).unwrap_or_else(|_| HeaderValue::from_static("0s"))
    };
    let mut h = Vec::with_capacity(6);
    if let Some(rpm) = r.spec.rpm {
        h.push((X_RATELIMIT_LIMIT_REQUESTS, HeaderValue::from(rpm)));
        h.push((
            X_RATELIMIT_REMAINING_REQUESTS,
            HeaderValue::from(r.requests_left),
        ));
        h.push((X_RATELIMIT_RESET_REQUESTS, dur(r.requests_reset_ms)));
    }
    if let Some(tpm) = r.spec.tpm {
        h.push((X_RATELIMIT_LIMIT_TOKENS, HeaderValue::from(tpm)));
        h.push((
            X_RATELIMIT_REMAINING_TOKENS,
            HeaderValue::from(r.tokens_left),
        ));
        h.push((X_RATELIMIT_RESET_TOKENS, dur(r.tokens_reset_ms)));
    }
    h
}

/// Appends the decimal digits of `v`.
fn push_decimal(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rpm: Option<u32>, tpm: Option<u32>) -> Vec<(String, Spec)> {
        vec![("key k".into(), Spec { rpm, tpm })]
    }

    #[test]
    fn rpm_holds_over_any_window() {
        let l = Limits::new();
        let s = key(Some(3), None);
        for t in [0, 10, 20] {
            assert!(l.admit(&s, 0, t).is_ok());
        }
        let e = l.admit(&s, 0, 59_999).unwrap_err();
        assert_eq!(e.retry_after_secs, 1);
        // The bucket [0, 100) leaves the window once (now - 60 s) reaches its end.
        assert!(l.admit(&s, 0, 60_099).is_err());
        assert!(l.admit(&s, 0, 60_100).is_ok());
        // Simulated traffic: never more than 3 admitted in any 60 s window.
        let l = Limits::new();
        let mut admitted = Vec::new();
        for t in (0..600_000).step_by(700) {
            if l.admit(&s, 0, t).is_ok() {
                admitted.push(t);
            }
        }
        for (i, t) in admitted.iter().enumerate() {
            let in_window = admitted[i..]
                .iter()
                .take_while(|u| **u < t + 60_000)
                .count();
            assert!(in_window <= 3);
        }
        assert!(admitted.len() >= 29);
        // Memory does not grow with the rate: 100,000 requests in a minute, 600 buckets.
        let l = Limits::new();
        let s = key(Some(1_000_000), None);
        for t in 0..100_000 {
            assert!(l.admit(&s, 0, t * 3 / 5).is_ok());
        }
        let m = l.windows.lock().unwrap();
        let w = m.get("key k").unwrap();
        assert_eq!(w.requests.total(), 100_000);
        assert!(w.requests.buckets() <= 601);
    }

    #[test]
    fn tpm_reserves_and_settles() {
        let l = Limits::new();
        let s = key(None, Some(1000));
        assert!(l.admit(&s, 600, 0).is_ok());
        assert!(l.admit(&s, 600, 1000).is_err());
        l.settle_tokens(&s, 600, 100, 0);
        let r = l.admit(&s, 600, 1000).unwrap().unwrap();
        assert_eq!(r.tokens_left, 300);
        assert!(l
            .admit(&s, 2000, 2000)
            .unwrap_err()
            .message
            .contains("too large"));
        // Old buckets leave the window.
        assert!(l.admit(&s, 900, 61_500).is_ok());
    }

    #[test]
    fn all_or_none_and_headers() {
        let l = Limits::new();
        let scopes = vec![
            (
                "key k".to_owned(),
                Spec {
                    rpm: Some(10),
                    tpm: None,
                },
            ),
            (
                "model m".to_owned(),
                Spec {
                    rpm: Some(1),
                    tpm: None,
                },
            ),
        ];
        let r = l.admit(&scopes, 0, 0).unwrap().unwrap();
        assert_eq!(r.requests_left, 9);
        assert!(l.admit(&scopes, 0, 5).is_err());
        // The refused request used nothing of the key's allowance.
        let r = l.admit(&scopes[..1], 0, 6).unwrap().unwrap();
        assert_eq!(r.requests_left, 8);
        let h = headers(&r);
        let get = |name| {
            h.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_str().unwrap())
        };
        assert_eq!(get(X_RATELIMIT_REMAINING_REQUESTS), Some("8"));
        assert_eq!(get(X_RATELIMIT_LIMIT_REQUESTS), Some("10"));
        // The oldest bucket, [0, 100), leaves the window at 60.1 s.
        assert_eq!(get(X_RATELIMIT_RESET_REQUESTS), Some("1m1s"));
        let at = |ms| {
            let mut r = r.clone();
            r.requests_reset_ms = ms;
            headers(&r)[2].1.to_str().unwrap().to_owned()
        };
        assert_eq!(at(0), "0s");
        assert_eq!(at(1), "1s");
        assert_eq!(at(59_001), "1m0s");
        assert_eq!(at(60_000), "1m0s");
        assert_eq!(at(3_600_000), "60m0s");
    }
}
