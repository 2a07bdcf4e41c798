//! Budgets, enforced by reserve-then-settle: before the upstream call the worst-case
//! cost is reserved atomically against every budget that applies (the key's and its
//! group's); after it, the reservation is replaced by the actual cost. A request that
//! does not fit is refused, so concurrent requests can never together overspend.
//!
//! Windows are aligned to the calendar in the budget's time zone: a `day` budget resets
//! at local midnight, a `month` budget on the 1st; `total` never resets. The default
//! zone is Asia/Shanghai for CNY budgets and UTC otherwise.
//!
//! State lives in memory (one node); each budget's spend in its current window is read
//! from the ledger the first time it is used, so a restart loses nothing.

use crate::FastMap;
use std::sync::Mutex;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use tollgate_core::money::format_nanos;
use tollgate_core::{Currency, Money};

/// A budget's reset period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
    Total,
}

impl std::str::FromStr for Period {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "day" | "daily" => Ok(Period::Day),
            "month" | "monthly" => Ok(Period::Month),
            "total" => Ok(Period::Total),
            other => Err(format!(
                "'{other}' is not a budget period (day, month, total)"
            )),
        }
    }
}

impl Period {
    pub fn as_str(&self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
            Period::Total => "total",
        }
    }
}

/// A budget as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// `key:<id>` or `group:<name>`.
    pub id: String,
    /// For people: `key 'ci'`, `group 'team-a'`.
    pub owner: String,
    pub limit: Money,
    pub period: Period,
    /// Minutes east of UTC of the zone the windows follow.
    pub utc_offset_minutes: i32,
}

impl Budget {
    /// The default zone: Asia/Shanghai for CNY, UTC otherwise.
    pub fn default_offset(currency: Currency) -> i32 {
        if currency == Currency::Cny {
            480
        } else {
            0
        }
    }

    /// `[start, end)` of the window holding `now`, in Unix milliseconds.
    pub fn window(&self, now: DateTime<Utc>) -> (i64, i64) {
        let off = Duration::minutes(i64::from(self.utc_offset_minutes));
        let local = (now + off).date_naive();
        let to_ms = |d: NaiveDate| {
            d.and_hms_opt(0, 0, 0)
                .map(|t| Utc.from_utc_datetime(&t) - off)
                .map(|t| t.timestamp_millis())
                .unwrap_or(0)
        };
        match self.period {
            Period::Total => (i64::MIN, i64::MAX),
            Period::Day => {
                let next = local.succ_opt().unwrap_or(local);
                (to_ms(local), to_ms(next))
            }
            Period::Month => {
                let first = local.with_day(1).unwrap_or(local);
                let next = if first.month() == 12 {
                    NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
                }
                .unwrap_or(first);
                (to_ms(first), to_ms(next))
            }
        }
    }

    /// `key 'ci' month budget of 500 CNY`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} budget of {} {}",
            self.owner,
            self.period.as_str(),
            format_nanos(self.limit.nanos, 2),
            self.limit.currency
        )
    }
}

#[derive(Debug)]
struct State {
    budget: Budget,
    window: (i64, i64),
    spent: i128,
    reserved: i128,
}

impl State {
    fn roll(&mut self, now: DateTime<Utc>) {
        let ms = now.timestamp_millis();
        if ms >= self.window.1 || ms < self.window.0 {
            self.window = self.budget.window(now);
            self.spent = 0;
        }
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
}

/// A budget's standing, for reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Standing {
    pub limit: String,
    pub spent: String,
    pub reserved: String,
    pub remaining: String,
    pub currency: String,
    pub period: String,
    pub window_start_ms: Option<i64>,
}

/// Every budget's state.
#[derive(Default)]
pub struct Budgets {
    states: Mutex<FastMap<String, State>>,
    /// Held while a budget's spend is read from the ledger, so a burst of first
    /// requests reads it once rather than once each.
    pub loading: tokio::sync::Mutex<()>,
}

impl Budgets {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a budget's state is loaded with the same definition.
    pub fn is_loaded(&self, b: &Budget) -> bool {
        self.states
            .lock()
            .map(|m| m.get(&b.id).is_some_and(|s| s.budget == *b))
            .unwrap_or(false)
    }

    /// Installs a budget with what the ledger says was spent in its current window.
    /// Keeps a loaded state with the same definition (its reservations are live).
    pub fn load(&self, b: Budget, spent_in_window: i128, now: DateTime<Utc>) {
        if let Ok(mut m) = self.states.lock() {
            let keep = m.get(&b.id).is_some_and(|s| s.budget == b);
            if !keep {
                let reserved = m.get(&b.id).map(|s| s.reserved).unwrap_or(0);
                m.insert(
                    b.id.clone(),
                    State {
                        window: b.window(now),
                        budget: b,
                        spent: spent_in_window,
                        reserved,
                    },
                );
            }
        }
    }

    /// Reserves `amount` (in each budget's own currency) against every listed budget,
    /// all or none.
    pub fn reserve(&self, items: &[(String, i128)], now: DateTime<Utc>) -> Result<(), Refusal> {
        let mut m = self.states.lock().map_err(|_| Refusal {
            message: "budget state unavailable".into(),
        })?;
        for (id, amount) in items {
            if let Some(s) = m.get_mut(id) {
                s.roll(now);
                let limit = s.budget.limit.nanos;
                if s.spent + s.reserved + amount > limit {
                    let left = (limit - s.spent - s.reserved).max(0);
                    let cur = s.budget.limit.currency;
                    return Err(Refusal {
                        message: format!(
                            "This request could cost up to {} {cur}, more than is left of the {} \
                             ({} {cur} left, {} {cur} spent, {} {cur} reserved by requests in flight). \
                             Lower max_tokens, use a cheaper model, or wait for the budget to reset.",
                            format_nanos(*amount, 6),
                            s.budget.describe(),
                            format_nanos(left, 6),
                            format_nanos(s.spent, 6),
                            format_nanos(s.reserved, 6),
                        ),
                    });
                }
            }
        }
        for (id, amount) in items {
            if let Some(s) = m.get_mut(id) {
                s.reserved += amount;
            }
        }
        Ok(())
    }

    /// Replaces reservations by actual costs: `(id, reserved, actual)`.
    pub fn settle(&self, items: &[(String, i128, i128)], now: DateTime<Utc>) {
        if let Ok(mut m) = self.states.lock() {
            for (id, reserved, actual) in items {
                if let Some(s) = m.get_mut(id) {
                    s.roll(now);
                    s.reserved = (s.reserved - reserved).max(0);
                    s.spent += actual;
                }
            }
        }
    }

    /// A budget's standing now.
    pub fn standing(&self, id: &str, now: DateTime<Utc>) -> Option<Standing> {
        let mut m = self.states.lock().ok()?;
        let s = m.get_mut(id)?;
        s.roll(now);
        let limit = s.budget.limit.nanos;
        Some(Standing {
            limit: format_nanos(limit, 2),
            spent: format_nanos(s.spent, 6),
            reserved: format_nanos(s.reserved, 6),
            remaining: format_nanos((limit - s.spent - s.reserved).max(0), 6),
            currency: s.budget.limit.currency.to_string(),
            period: s.budget.period.as_str().to_owned(),
            window_start_ms: (s.window.0 != i64::MIN).then_some(s.window.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(period: Period, limit: i128) -> Budget {
        Budget {
            id: "key:k".into(),
            owner: "key 'k'".into(),
            limit: Money::new(limit, Currency::Cny),
            period,
            utc_offset_minutes: 480,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn windows_follow_the_local_calendar() {
        let b = budget(Period::Day, 1);
        // 2026-11-28 17:00 UTC is 2026-11-29 01:00 in Shanghai.
        let (s, e) = b.window(at("2026-11-28T17:00:00Z"));
        assert_eq!(s, at("2026-11-28T16:00:00Z").timestamp_millis());
        assert_eq!(e, at("2026-11-29T16:00:00Z").timestamp_millis());
        let m = budget(Period::Month, 1);
        let (s, e) = m.window(at("2026-12-31T20:00:00Z"));
        assert_eq!(s, at("2026-12-31T16:00:00Z").timestamp_millis());
        assert_eq!(e, at("2027-01-31T16:00:00Z").timestamp_millis());
    }

    #[test]
    fn reserve_refuses_what_does_not_fit_and_settle_releases() {
        const U: i128 = 1_000_000_000; // one currency unit in nanos
        let now = at("2026-11-28T10:00:00Z");
        let bs = Budgets::new();
        bs.load(budget(Period::Month, 100 * U), 20 * U, now);
        let id = "key:k".to_owned();
        assert!(bs.reserve(&[(id.clone(), 50 * U)], now).is_ok());
        let e = bs.reserve(&[(id.clone(), 31 * U)], now).unwrap_err();
        assert!(
            e.message.contains("key 'k' month budget of 100.00 CNY"),
            "{}",
            e.message
        );
        assert!(e.message.contains("30.000000 CNY left"), "{}", e.message);
        bs.settle(&[(id.clone(), 50 * U, 10 * U)], now);
        assert!(bs.reserve(&[(id.clone(), 70 * U)], now).is_ok());
        let st = bs.standing(&id, now).unwrap();
        assert_eq!(
            (st.spent.as_str(), st.reserved.as_str()),
            ("30.000000", "70.000000")
        );
        // A new month starts from zero.
        bs.settle(&[(id.clone(), 70 * U, 70 * U)], now);
        assert!(bs.reserve(&[(id.clone(), 1)], now).is_err());
        assert!(bs
            .reserve(&[(id, 90 * U)], at("2026-12-01T00:00:00Z"))
            .is_ok());
    }

    #[test]
    fn all_or_none_across_budgets() {
        let now = at("2026-11-28T10:00:00Z");
        let bs = Budgets::new();
        bs.load(budget(Period::Total, 100), 0, now);
        let mut g = budget(Period::Total, 10);
        g.id = "group:g".into();
        bs.load(g, 0, now);
        assert!(bs
            .reserve(&[("key:k".into(), 50), ("group:g".into(), 50)], now)
            .is_err());
        assert_eq!(bs.standing("key:k", now).unwrap().reserved, "0.000000");
    }
}
