//! Upstream health per `provider/model`: a circuit breaker, a time-to-first-token EWMA, and free-tier usage counters.
//!
//! # The breaker
//! - **closed**: calls go through. It opens after `failure_threshold` consecutive
//!   failures, or when at least `min_requests` calls in the last `window` failed at a
//!   rate of `error_rate_percent` or more.
//! - **open**: no calls (routing skips the candidate; a direct request gets a 503) until
//!   `cool_down` has passed.
//! - **half-open**: one probe call is let through; its success closes the circuit, its
//!   failure opens it for another `cool_down`.
//!
//! Only failures that say something about the upstream count (connect errors, timeouts,
//! 429, 5xx, overload codes: the retryable ones); a 400 the client caused is a success as
//! far as health goes.
//!
//! Time comes from `tokio::time::Instant`, so tests pause and advance it. Free-tier
//! counters use the wall clock passed in by the caller (days are calendar days in UTC).
//! All state is in memory: a restart closes every circuit and forgets free-tier usage
//! (the vendors' own 429s, which mark a free model exhausted until their retry-after,
//! still keep tollgate honest after a restart).

use std::collections::{BTreeMap, VecDeque};

use crate::FastMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use tokio::time::Instant;

/// Breaker and EWMA settings (`[routing.breaker]` in config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub error_rate_percent: u32,
    pub min_requests: u32,
    pub window: Duration,
    pub cool_down: Duration,
    /// Weight of the newest TTFT sample in the EWMA (0..1].
    pub ewma_alpha: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            error_rate_percent: 50,
            min_requests: 20,
            window: Duration::from_secs(60),
            cool_down: Duration::from_secs(30),
            ewma_alpha: 0.3,
        }
    }
}

/// Free-tier limits of one model, as the catalog states them or config overrides them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FreeLimits {
    pub rpm: Option<u64>,
    pub rpd: Option<u64>,
    pub tpm: Option<u64>,
    pub daily_tokens: Option<u64>,
    /// A one-off free grant of tokens; counted since this process started.
    pub quota_tokens: Option<u64>,
}

impl FreeLimits {
    pub fn from_catalog(f: &tollgate_core::catalog::FreeTier) -> FreeLimits {
        FreeLimits {
            rpm: f.rpm,
            rpd: f.rpd,
            tpm: f.tpm,
            daily_tokens: f.daily_tokens,
            quota_tokens: f.quota_tokens,
        }
    }
}

#[derive(Debug, Clone)]
enum Circuit {
    Closed,
    Open { until: Instant, reason: String },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct Entry {
    circuit: Circuit,
    consecutive_failures: u32,
    /// Calls within `window` in one-second buckets: (bucket start, calls, failures).
    /// Bounded by the window's seconds, whatever the request rate.
    recent: VecDeque<(Instant, u32, u32)>,
    /// Sums over `recent`.
    window_calls: usize,
    window_failures: usize,
    ttft_ewma_ms: Option<f64>,
    successes: u64,
    failures: u64,
    opened: u64,
    last_error: Option<String>,
}

impl Entry {
    fn new() -> Self {
        Entry {
            circuit: Circuit::Closed,
            consecutive_failures: 0,
            recent: VecDeque::new(),
            window_calls: 0,
            window_failures: 0,
            ttft_ewma_ms: None,
            successes: 0,
            failures: 0,
            opened: 0,
            last_error: None,
        }
    }

    fn prune(&mut self, now: Instant, window: Duration) {
        while let Some(&(t, calls, failures)) = self.recent.front() {
            if now.duration_since(t) > window {
                self.window_calls -= calls as usize;
                self.window_failures -= failures as usize;
                self.recent.pop_front();
            } else {
                break;
            }
        }
    }

    fn record(&mut self, now: Instant, failed: bool) {
        let f = u32::from(failed);
        match self.recent.back_mut() {
            Some(b) if now.duration_since(b.0) < Duration::from_secs(1) => {
                b.1 += 1;
                b.2 += f;
            }
            _ => self.recent.push_back((now, 1, f)),
        }
        self.window_calls += 1;
        self.window_failures += f as usize;
    }
}

#[derive(Debug, Default)]
struct FreeUsage {
    /// Requests in the last minute.
    minute_requests: crate::window::Minute,
    /// Tokens in the last minute.
    minute_tokens: crate::window::Minute,
    day: Option<NaiveDate>,
    day_requests: u64,
    day_tokens: u64,
    total_tokens: u64,
    /// The vendor said 429: exhausted until then (wall-clock ms).
    throttled_until_ms: Option<i64>,
}

impl FreeUsage {
    fn roll(&mut self, now: DateTime<Utc>) {
        let ms = now.timestamp_millis();
        self.minute_requests.roll(ms);
        self.minute_tokens.roll(ms);
        let today = now.date_naive();
        if self.day != Some(today) {
            self.day = Some(today);
            self.day_requests = 0;
            self.day_tokens = 0;
        }
    }
}

/// A permission to call an upstream; a half-open probe when `probe` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    pub probe: bool,
}

/// Health of every upstream model this process has called.
#[derive(Debug)]
pub struct Health {
    cfg: BreakerConfig,
    models: Mutex<FastMap<String, Entry>>,
    free: Mutex<FastMap<String, FreeUsage>>,
}

/// One row of `GET /admin/health`.
#[derive(Debug, Clone, Serialize)]
pub struct HealthRow {
    pub model: String,
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    pub consecutive_failures: u32,
    pub window_calls: usize,
    pub window_failures: usize,
    pub ttft_ewma_ms: Option<f64>,
    pub successes: u64,
    pub failures: u64,
    /// How many times the circuit opened.
    pub opened: u64,
    /// While open: milliseconds until a probe is allowed.
    pub retry_in_ms: Option<u64>,
    pub open_reason: Option<String>,
    pub last_error: Option<String>,
}

/// Free-tier usage of one model, as tollgate counts it.
#[derive(Debug, Clone, Serialize)]
pub struct FreeRow {
    pub model: String,
    pub requests_last_minute: usize,
    pub tokens_last_minute: u64,
    pub requests_today: u64,
    pub tokens_today: u64,
    pub tokens_total: u64,
    pub throttled: bool,
}

/// Everything `GET /admin/health` shows (also the metrics snapshot).
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub models: Vec<HealthRow>,
    pub free_tiers: Vec<FreeRow>,
}

impl Health {
    pub fn new(cfg: BreakerConfig) -> Self {
        Health {
            cfg,
            models: Mutex::new(FastMap::default()),
            free: Mutex::new(FastMap::default()),
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// `Some(why)` when calls to `model` are refused right now (open and cooling down,
    /// or half-open with its probe in flight). Does not change state.
    pub fn open_reason(&self, model: &str) -> Option<String> {
        let map = self.models.lock().ok()?;
        let e = map.get(model)?;
        match &e.circuit {
            Circuit::Closed => None,
            Circuit::Open { until, reason } => {
                let now = Instant::now();
                (now < *until).then(|| {
                    format!(
                        "{reason}; probe in {}s",
                        until.saturating_duration_since(now).as_secs_f64().ceil() as u64
                    )
                })
            }
            Circuit::HalfOpen { probing: true } => Some("half-open, probe in flight".to_owned()),
            Circuit::HalfOpen { probing: false } => None,
        }
    }

    /// Asks to call `model`: `Err(why)` while its circuit refuses calls; a probe permit
    /// when the cool-down is over.
    pub fn acquire(&self, model: &str) -> Result<Permit, String> {
        let Ok(mut map) = self.models.lock() else {
            return Ok(Permit { probe: false });
        };
        let e = crate::slot(&mut map, model, Entry::new);
        let now = Instant::now();
        match &e.circuit {
            Circuit::Closed => Ok(Permit { probe: false }),
            Circuit::Open { until, reason } if now < *until => Err(format!(
                "{reason}; probe in {}s",
                until.saturating_duration_since(now).as_secs_f64().ceil() as u64
            )),
            Circuit::Open { .. } | Circuit::HalfOpen { probing: false } => {
                e.circuit = Circuit::HalfOpen { probing: true };
                Ok(Permit { probe: true })
            }
            Circuit::HalfOpen { probing: true } => Err("half-open, probe in flight".to_owned()),
        }
    }

    /// A call succeeded (the upstream answered; `ttft` when it was measured).
    pub fn success(&self, model: &str, ttft: Option<Duration>) {
        let Ok(mut map) = self.models.lock() else {
            return;
        };
        let e = crate::slot(&mut map, model, Entry::new);
        let now = Instant::now();
        e.prune(now, self.cfg.window);
        e.record(now, false);
        e.successes += 1;
        e.consecutive_failures = 0;
        e.circuit = Circuit::Closed;
        if let Some(t) = ttft {
            let ms = t.as_secs_f64() * 1000.0;
            let a = self.cfg.ewma_alpha;
            e.ttft_ewma_ms = Some(match e.ttft_ewma_ms {
                Some(old) => a * ms + (1.0 - a) * old,
                None => ms,
            });
        }
    }

    /// A call failed in a way that says the upstream is unwell.
    pub fn failure(&self, model: &str, why: &str) {
        let Ok(mut map) = self.models.lock() else {
            return;
        };
        let cfg = self.cfg;
        let e = crate::slot(&mut map, model, Entry::new);
        let now = Instant::now();
        e.prune(now, cfg.window);
        e.record(now, true);
        e.failures += 1;
        e.consecutive_failures += 1;
        e.last_error = Some(why.to_owned());
        let failed = e.window_failures;
        let calls = e.window_calls;
        let reason = match &e.circuit {
            Circuit::HalfOpen { .. } => Some(format!("probe failed: {why}")),
            Circuit::Open { .. } => None,
            Circuit::Closed if e.consecutive_failures >= cfg.failure_threshold => Some(format!(
                "{} consecutive failures, last: {why}",
                e.consecutive_failures
            )),
            Circuit::Closed
                if calls >= cfg.min_requests as usize
                    && failed * 100 >= calls * cfg.error_rate_percent as usize =>
            {
                Some(format!(
                    "{failed} of {calls} calls failed in {}s",
                    cfg.window.as_secs()
                ))
            }
            Circuit::Closed => None,
        };
        if let Some(reason) = reason {
            tracing::warn!(model, %reason, "circuit opened");
            e.opened += 1;
            e.circuit = Circuit::Open {
                until: now + cfg.cool_down,
                reason,
            };
        }
    }

    /// A permitted call ended with no verdict on health (e.g. the client left): a probe
    /// slot is given back.
    pub fn release(&self, model: &str, permit: Permit) {
        if !permit.probe {
            return;
        }
        if let Ok(mut map) = self.models.lock() {
            if let Some(e) = map.get_mut(model) {
                if let Circuit::HalfOpen { probing: true } = e.circuit {
                    e.circuit = Circuit::HalfOpen { probing: false };
                }
            }
        }
    }

    /// The TTFT EWMA of `model`, in milliseconds.
    pub fn ttft_ms(&self, model: &str) -> Option<f64> {
        self.models.lock().ok()?.get(model)?.ttft_ewma_ms
    }

    /// `Some(why)` when the free tier of `model` is used up at `now`.
    pub fn free_exhausted(
        &self,
        model: &str,
        limits: &FreeLimits,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let mut map = self.free.lock().ok()?;
        let u = map.get_mut(model)?;
        u.roll(now);
        if let Some(until) = u.throttled_until_ms {
            if now.timestamp_millis() < until {
                return Some("the vendor answered 429".to_owned());
            }
            u.throttled_until_ms = None;
        }
        let minute_tokens = u.minute_tokens.total();
        let checks = [
            (limits.rpm, u.minute_requests.total(), "requests per minute"),
            (limits.rpd, u.day_requests, "requests today"),
            (limits.tpm, minute_tokens, "tokens per minute"),
            (limits.daily_tokens, u.day_tokens, "tokens today"),
            (
                limits.quota_tokens,
                u.total_tokens,
                "tokens of the free quota",
            ),
        ];
        checks.into_iter().find_map(|(limit, used, what)| {
            limit
                .filter(|l| used >= *l)
                .map(|l| format!("{used} of {l} {what} used"))
        })
    }

    /// Counts one request to `model` (at the start of the attempt, so concurrent
    /// requests see it).
    pub fn free_request(&self, model: &str, now: DateTime<Utc>) {
        if let Ok(mut map) = self.free.lock() {
            let u = crate::slot(&mut map, model, FreeUsage::default);
            u.roll(now);
            u.minute_requests.add(now.timestamp_millis(), 1);
            u.day_requests += 1;
        }
    }

    /// Counts the tokens a request to `model` used.
    pub fn free_tokens(&self, model: &str, tokens: u64, now: DateTime<Utc>) {
        if let Ok(mut map) = self.free.lock() {
            let u = crate::slot(&mut map, model, FreeUsage::default);
            u.roll(now);
            u.minute_tokens.add(now.timestamp_millis(), tokens);
            u.day_tokens += tokens;
            u.total_tokens += tokens;
        }
    }

    /// The vendor rate-limited a free model: treat it as used up until `until`.
    pub fn free_throttled(&self, model: &str, until: DateTime<Utc>) {
        if let Ok(mut map) = self.free.lock() {
            map.entry(model.to_owned()).or_default().throttled_until_ms =
                Some(until.timestamp_millis());
        }
    }

    /// Everything, sorted by model.
    pub fn snapshot(&self, now: DateTime<Utc>) -> Snapshot {
        let inst = Instant::now();
        let mut models = Vec::new();
        if let Ok(mut map) = self.models.lock() {
            let sorted: BTreeMap<&String, &mut Entry> = map.iter_mut().collect();
            for (name, e) in sorted {
                e.prune(inst, self.cfg.window);
                let (state, retry_in_ms, open_reason) = match &e.circuit {
                    Circuit::Closed => ("closed", None, None),
                    Circuit::Open { until, reason } => (
                        "open",
                        Some(until.saturating_duration_since(inst).as_millis() as u64),
                        Some(reason.clone()),
                    ),
                    Circuit::HalfOpen { .. } => ("half_open", None, None),
                };
                models.push(HealthRow {
                    model: name.clone(),
                    state,
                    consecutive_failures: e.consecutive_failures,
                    window_calls: e.window_calls,
                    window_failures: e.window_failures,
                    ttft_ewma_ms: e.ttft_ewma_ms.map(|v| (v * 10.0).round() / 10.0),
                    successes: e.successes,
                    failures: e.failures,
                    opened: e.opened,
                    retry_in_ms,
                    open_reason,
                    last_error: e.last_error.clone(),
                });
            }
        }
        let mut free_tiers = Vec::new();
        if let Ok(mut map) = self.free.lock() {
            let mut names: Vec<String> = map.keys().cloned().collect();
            names.sort();
            for name in names {
                if let Some(u) = map.get_mut(&name) {
                    u.roll(now);
                    free_tiers.push(FreeRow {
                        model: name.clone(),
                        requests_last_minute: u.minute_requests.total() as usize,
                        tokens_last_minute: u.minute_tokens.total(),
                        requests_today: u.day_requests,
                        tokens_today: u.day_tokens,
                        tokens_total: u.total_tokens,
                        throttled: u
                            .throttled_until_ms
                            .is_some_and(|t| now.timestamp_millis() < t),
                    });
                }
            }
        }
        Snapshot { models, free_tiers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            error_rate_percent: 50,
            min_requests: 6,
            window: Duration::from_secs(60),
            cool_down: Duration::from_secs(30),
            ewma_alpha: 0.5,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_and_closes() {
        let h = Health::new(cfg());
        let m = "deepseek/deepseek-chat";
        assert!(h.acquire(m).is_ok());
        h.failure(m, "503");
        h.failure(m, "503");
        assert!(h.open_reason(m).is_none());
        h.failure(m, "503");
        let why = h.open_reason(m).unwrap();
        assert!(why.contains("3 consecutive failures"), "{why}");
        assert!(h.acquire(m).is_err());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(h.acquire(m).is_err());
        tokio::time::advance(Duration::from_secs(2)).await;
        // Cool-down over: one probe, the next caller waits.
        assert!(h.open_reason(m).is_none());
        let p = h.acquire(m).unwrap();
        assert!(p.probe);
        assert!(h.acquire(m).is_err());
        h.success(m, Some(Duration::from_millis(100)));
        assert!(h.acquire(m).is_ok());
        let snap = h.snapshot(Utc::now());
        assert_eq!(snap.models[0].state, "closed");
        assert_eq!(snap.models[0].opened, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens() {
        let h = Health::new(cfg());
        let m = "a/b";
        for _ in 0..3 {
            h.failure(m, "timeout");
        }
        tokio::time::advance(Duration::from_secs(31)).await;
        let p = h.acquire(m).unwrap();
        assert!(p.probe);
        h.failure(m, "timeout");
        let why = h.open_reason(m).unwrap();
        assert!(why.contains("probe failed"), "{why}");
        assert_eq!(h.snapshot(Utc::now()).models[0].opened, 2);
        // A released probe lets the next caller probe.
        tokio::time::advance(Duration::from_secs(31)).await;
        let p = h.acquire(m).unwrap();
        h.release(m, p);
        assert!(h.acquire(m).unwrap().probe);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_error_rate_over_the_window() {
        let h = Health::new(cfg());
        let m = "a/b";
        // Alternate: never 3 in a row, but 50% of 6 calls.
        for _ in 0..2 {
            h.success(m, None);
            h.failure(m, "503");
        }
        h.success(m, None);
        assert!(h.open_reason(m).is_none());
        h.failure(m, "503");
        assert!(h.open_reason(m).unwrap().contains("3 of 6 calls failed"));
        // Old calls leave the window.
        let h = Health::new(cfg());
        for _ in 0..3 {
            h.success(m, None);
            h.failure(m, "503");
            tokio::time::advance(Duration::from_secs(61)).await;
        }
        assert!(h.open_reason(m).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn ttft_ewma() {
        let h = Health::new(cfg());
        h.success("m", Some(Duration::from_millis(100)));
        assert_eq!(h.ttft_ms("m"), Some(100.0));
        h.success("m", Some(Duration::from_millis(300)));
        assert_eq!(h.ttft_ms("m"), Some(200.0));
        h.success("m", None);
        assert_eq!(h.ttft_ms("m"), Some(200.0));
    }

    #[test]
    fn free_tier_counters() {
        let h = Health::new(cfg());
        let m = "zhipu/glm-4-flash";
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T23:59:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let lim = FreeLimits {
            rpd: Some(2),
            ..Default::default()
        };
        assert!(h.free_exhausted(m, &lim, t0).is_none());
        h.free_request(m, t0);
        h.free_request(m, t0);
        assert_eq!(
            h.free_exhausted(m, &lim, t0).unwrap(),
            "2 of 2 requests today used"
        );
        // A new UTC day resets the daily counters.
        let t1 = t0 + chrono::Duration::minutes(2);
        assert!(h.free_exhausted(m, &lim, t1).is_none());
        let lim = FreeLimits {
            rpm: Some(1),
            quota_tokens: Some(1000),
            ..Default::default()
        };
        h.free_request(m, t1);
        assert!(h
            .free_exhausted(m, &lim, t1)
            .unwrap()
            .contains("per minute"));
        let t2 = t1 + chrono::Duration::seconds(61);
        assert!(h.free_exhausted(m, &lim, t2).is_none());
        h.free_tokens(m, 1000, t2);
        assert!(h
            .free_exhausted(m, &lim, t2)
            .unwrap()
            .contains("free quota"));
        h.free_throttled("x/y", t2 + chrono::Duration::seconds(10));
        assert!(h
            .free_exhausted("x/y", &FreeLimits::default(), t2)
            .unwrap()
            .contains("429"));
        assert!(h
            .free_exhausted(
                "x/y",
                &FreeLimits::default(),
                t2 + chrono::Duration::seconds(11)
            )
            .is_none());
    }
}
