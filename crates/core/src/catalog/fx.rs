//! Dated FX rates: a monthly table of exact decimal quotes and conversions that say which rate they used.
//!
//! Rule: a conversion on date D uses the rate of the calendar month containing D. If that
//! month has no quote for the pair, the most recent earlier month that has one is used
//! and reported in [`Conversion::rate_month`] (so a stale rate is visible, never silent).
//! Before the first quoted month there is no rate and conversion fails. A pair may be
//! quoted in either direction (`USD->CNY 7.1268` also converts CNY to USD, by division);
//! no cross rates are derived. Results are rounded once, up (toward +infinity), to the
//! nano-unit.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use crate::money::{div_ceil, Currency, Decimal, Money};

/// A calendar month, written `"2024-05"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct YearMonth {
    pub year: i32,
    pub month: u32,
}

impl YearMonth {
    pub fn of(date: NaiveDate) -> YearMonth {
        YearMonth {
            year: date.year(),
            month: date.month(),
        }
    }
}

impl fmt::Display for YearMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for YearMonth {
    type Err = FxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || FxError::InvalidMonth(s.to_owned());
        let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if y.len() != 4 || m.len() != 2 || !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(YearMonth { year, month })
    }
}

/// One quote: `1 base = rate quote` for a month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FxEntry {
    pub rate: Decimal,
    /// The value is carried forward or otherwise unverified.
    pub estimate: bool,
    pub note: Option<String>,
    pub source: Option<String>,
}

/// Why a conversion or a rate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FxError {
    #[error("no {from}->{to} rate for {on} or any earlier month")]
    NoRate {
        from: Currency,
        to: Currency,
        on: NaiveDate,
    },
    #[error("`{0}` is not a month like 2024-05")]
    InvalidMonth(String),
    #[error("invalid rate `{rate}`: {reason}")]
    InvalidRate { rate: String, reason: String },
    #[error("{base}->{base} is not a rate")]
    SameCurrency { base: Currency },
    #[error("amount too large to convert")]
    Overflow,
}

/// The result of a conversion, with the rate that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conversion {
    pub amount: Money,
    /// The exact quote used, as written in the table (`"7.1268"`): `1 rate_base = rate rate_quote`.
    pub rate: String,
    /// The month whose quote was used, `"2024-05"`.
    pub rate_month: String,
    pub from: Currency,
    pub to: Currency,
    pub rate_base: Currency,
    pub rate_quote: Currency,
    /// The quote used is marked as an estimate in the table.
    pub estimate: bool,
}

/// The monthly FX table. Built from `catalog/fx.toml`; config may add or override quotes
/// with [`FxTable::set_rate`].
#[derive(Debug, Clone, Default)]
pub struct FxTable {
    months: BTreeMap<YearMonth, HashMap<(Currency, Currency), FxEntry>>,
    source: Option<String>,
}

impl FxTable {
    pub fn new() -> FxTable {
        FxTable::default()
    }

    /// Where the shipped table comes from.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    pub fn set_source(&mut self, source: &str) {
        self.source = Some(source.to_owned());
    }

    /// Adds or overrides `1 base = rate quote` for `month` ("2024-05"); `rate` is exact
    /// decimal text. A quote of the inverse pair in the same month is replaced.
    pub fn set_rate(
        &mut self,
        month: &str,
        base: Currency,
        quote: Currency,
        rate: &str,
    ) -> Result<(), FxError> {
        let ym: YearMonth = month.parse()?;
        let d = Decimal::parse(rate).map_err(|e| FxError::InvalidRate {
            rate: rate.to_owned(),
            reason: e.to_string(),
        })?;
        self.set_entry(
            ym,
            base,
            quote,
            FxEntry {
                rate: d,
                estimate: false,
                note: None,
                source: Some("config".to_owned()),
            },
        )
    }

    /// Adds or overrides a quote with its metadata.
    pub fn set_entry(
        &mut self,
        month: YearMonth,
        base: Currency,
        quote: Currency,
        entry: FxEntry,
    ) -> Result<(), FxError> {
        if base == quote {
            return Err(FxError::SameCurrency { base });
        }
        if entry.rate.is_negative() || entry.rate.is_zero() {
            return Err(FxError::InvalidRate {
                rate: entry.rate.to_string(),
                reason: "must be greater than zero".to_owned(),
            });
        }
        let m = self.months.entry(month).or_default();
        m.remove(&(quote, base));
        m.insert((base, quote), entry);
        Ok(())
    }

    /// Months that have at least one quote, ascending.
    pub fn months(&self) -> impl Iterator<Item = YearMonth> + '_ {
        self.months.keys().copied()
    }

    /// The quote stored for exactly this month and direction.
    pub fn get(&self, month: YearMonth, base: Currency, quote: Currency) -> Option<&FxEntry> {
        self.months.get(&month)?.get(&(base, quote))
    }

    /// The quote a conversion from `from` to `to` on `on` would use:
    /// (month, base, quote, entry).
    pub fn quote_for(
        &self,
        from: Currency,
        to: Currency,
        on: NaiveDate,
    ) -> Result<(YearMonth, Currency, Currency, &FxEntry), FxError> {
        let ym = YearMonth::of(on);
        for (month, quotes) in self.months.range(..=ym).rev() {
            if let Some(e) = quotes.get(&(from, to)) {
                return Ok((*month, from, to, e));
            }
            if let Some(e) = quotes.get(&(to, from)) {
                return Ok((*month, to, from, e));
            }
        }
        Err(FxError::NoRate { from, to, on })
    }

    /// Converts `m` into `to` at the rate of the month containing `on`, rounding once, up,
    /// to the nano-unit. Same-currency conversion returns the amount with rate "1".
    pub fn convert(&self, m: &Money, to: Currency, on: NaiveDate) -> Result<Conversion, FxError> {
        if m.currency == to {
            return Ok(Conversion {
                amount: *m,
                rate: "1".to_owned(),
                rate_month: YearMonth::of(on).to_string(),
                from: to,
                to,
                rate_base: to,
                rate_quote: to,
                estimate: false,
            });
        }
        let (month, base, quote, entry) = self.quote_for(m.currency, to, on)?;
        let pow = 10i128
            .checked_pow(entry.rate.scale())
            .ok_or(FxError::Overflow)?;
        let nanos = if base == m.currency {
            let num = m
                .nanos
                .checked_mul(entry.rate.mantissa())
                .ok_or(FxError::Overflow)?;
            div_ceil(num, pow)
        } else {
            let num = m.nanos.checked_mul(pow).ok_or(FxError::Overflow)?;
            div_ceil(num, entry.rate.mantissa())
        };
        Ok(Conversion {
            amount: Money::new(nanos, to),
            rate: entry.rate.to_string(),
            rate_month: month.to_string(),
            from: m.currency,
            to,
            rate_base: base,
            rate_quote: quote,
            estimate: entry.estimate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn converts_with_the_month_rate_both_ways() {
        let mut t = FxTable::new();
        t.set_rate("2024-05", Currency::Usd, Currency::Cny, "7.2331")
            .unwrap();
        t.set_rate("2024-06", Currency::Usd, Currency::Cny, "7.2545")
            .unwrap();
        // 1 CNY -> USD in May: 1 / 7.2331 = 0.1382533077...; rounded up at 1e-9.
        let c = t
            .convert(
                &Money::new(1_000_000_000, Currency::Cny),
                Currency::Usd,
                d("2024-05-20"),
            )
            .unwrap();
        assert_eq!(c.amount, Money::new(138_253_308, Currency::Usd));
        assert_eq!(
            (c.rate.as_str(), c.rate_month.as_str()),
            ("7.2331", "2024-05")
        );
        assert_eq!((c.rate_base, c.rate_quote), (Currency::Usd, Currency::Cny));
        let c = t
            .convert(
                &Money::new(2_000_000_000, Currency::Usd),
                Currency::Cny,
                d("2024-06-01"),
            )
            .unwrap();
        assert_eq!(c.amount, Money::new(14_509_000_000, Currency::Cny));
        // A later month without a quote falls back to the latest earlier one, visibly.
        let c = t
            .convert(
                &Money::new(1_000_000_000, Currency::Usd),
                Currency::Cny,
                d("2024-09-01"),
            )
            .unwrap();
        assert_eq!(c.rate_month, "2024-06");
        assert!(t
            .convert(
                &Money::new(1, Currency::Usd),
                Currency::Cny,
                d("2024-04-30")
            )
            .is_err());
        assert!(t
            .convert(
                &Money::new(1, Currency::Usd),
                Currency::Eur,
                d("2024-05-30")
            )
            .is_err());
        assert!(t
            .set_rate("2024-13", Currency::Usd, Currency::Cny, "7")
            .is_err());
        assert!(t
            .set_rate("2024-07", Currency::Usd, Currency::Cny, "0")
            .is_err());
        assert!(t
            .set_rate("2024-07", Currency::Usd, Currency::Usd, "1")
            .is_err());
    }

    #[test]
    fn override_replaces_the_inverse_quote() {
        let mut t = FxTable::new();
        t.set_rate("2024-05", Currency::Usd, Currency::Cny, "7.2")
            .unwrap();
        t.set_rate("2024-05", Currency::Cny, Currency::Usd, "0.125")
            .unwrap();
        let c = t
            .convert(
                &Money::new(8_000_000_000, Currency::Cny),
                Currency::Usd,
                d("2024-05-02"),
            )
            .unwrap();
        assert_eq!(c.amount, Money::new(1_000_000_000, Currency::Usd));
        assert_eq!(c.rate, "0.125");
    }
}
