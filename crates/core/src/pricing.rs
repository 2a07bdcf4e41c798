//! The cost of a request: usage times the price in force, exact, rounded once; and the `tollgate prices` views.
//!
//! # Cost rule
//! For the period in force at the request's instant (default region):
//! 1. the **tier** is the first whose limits the request meets (prompt length, and for
//!    some vendors completion length); it prices the WHOLE request;
//! 2. inside the period's **off-peak** window (local time), the discounted prices of
//!    that tier replace the standard ones;
//! 3. with `uncached = prompt - cached - cache_write` (canonical usage counts cache
//!    reads and writes inside `prompt_tokens`), the exact numerator is
//!    `uncached*input + cached*cached_input + cache_write*cache_write_price
//!     + completion*output (+ request_fee * 1e6)` in nano-units x tokens per 1M tokens,
//!    where an absent cached/cache-write price falls back to `input`, and `output` is the
//!    `thinking_output` price when the response has reasoning tokens and the tier has one;
//! 4. the numerator is divided by 1,000,000 and rounded **once, up** (toward +infinity)
//!    to a whole nano-unit. A request therefore never costs less than its exact price
//!    and at most 1e-9 currency units more.

use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde::Serialize;

use crate::catalog::{Capabilities, Catalog, Confidence, ModelEntry, PricePeriod, Prices};
use crate::chat::Usage;
use crate::money::{div_ceil, format_nanos, Currency, Money, TOKENS_PER_PRICE_UNIT};

/// What a request cost, and which price produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cost {
    /// In the period's (the vendor's) currency.
    pub amount: Money,
    /// [`PricePeriod::id`] of the period used, e.g. `zhipu/glm-3-turbo@2024-05-11`.
    pub price_id: String,
    /// The tier's name when the period has more than one tier.
    pub tier: Option<String>,
    /// The off-peak prices applied.
    pub off_peak: bool,
}

/// Why a request could not be priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error("no price for {provider}/{model} on {at}")]
    NoPrice {
        provider: String,
        model: String,
        at: NaiveDate,
    },
    #[error("usage reports {cached} cached + {cache_write} cache-write tokens but only {prompt} prompt tokens")]
    InconsistentUsage {
        prompt: u64,
        cached: u64,
        cache_write: u64,
    },
    #[error("cost overflows")]
    Overflow,
}

fn period_at<'a>(
    entry: &'a ModelEntry,
    at: DateTime<Utc>,
) -> Result<&'a PricePeriod, PricingError> {
    entry.price_at(at).ok_or_else(|| PricingError::NoPrice {
        provider: entry.provider.clone(),
        model: entry.id.clone(),
        at: at.date_naive(),
    })
}

fn tier_label(period: &PricePeriod, idx: usize) -> Option<String> {
    (period.tiers.len() > 1)
        .then(|| period.tiers.get(idx).map(|t| t.name.clone()))
        .flatten()
}

fn mul(tokens: u64, price: i128) -> Result<i128, PricingError> {
    i128::from(tokens)
        .checked_mul(price)
        .ok_or(PricingError::Overflow)
}

fn sum(parts: &[i128]) -> Result<i128, PricingError> {
    parts
        .iter()
        .try_fold(0i128, |acc, p| acc.checked_add(*p))
        .ok_or(PricingError::Overflow)
}

/// The cost of a finished request from the vendor's usage, at the price in force at
/// `at` (the module docs give the rule).
pub fn cost_of(entry: &ModelEntry, usage: &Usage, at: DateTime<Utc>) -> Result<Cost, PricingError> {
    let period = period_at(entry, at)?;
    cost_with_period(period, usage, at)
}

/// [`cost_of`] with an explicit period (e.g. a non-default region's).
pub fn cost_with_period(
    period: &PricePeriod,
    usage: &Usage,
    at: DateTime<Utc>,
) -> Result<Cost, PricingError> {
    let inconsistent = || PricingError::InconsistentUsage {
        prompt: usage.prompt_tokens,
        cached: usage.cached_tokens,
        cache_write: usage.cache_write_tokens,
    };
    let uncached = usage
        .prompt_tokens
        .checked_sub(usage.cached_tokens)
        .and_then(|r| r.checked_sub(usage.cache_write_tokens))
        .ok_or_else(inconsistent)?;
    let (idx, tier) = period
        .tier_for(usage.prompt_tokens, usage.completion_tokens)
        .ok_or(PricingError::Overflow)?;
    let off = period
        .off_peak
        .as_ref()
        .filter(|o| o.contains(at))
        .and_then(|o| o.tiers.get(idx));
    let prices: &Prices = off.unwrap_or(&tier.prices);
    let output_price = if usage.reasoning_tokens > 0 {
        prices.thinking_or_output()
    } else {
        prices.output
    };
    let fee = period.request_fee.unwrap_or(0);
    let num = sum(&[
        mul(uncached, prices.input)?,
        mul(usage.cached_tokens, prices.cached_or_input())?,
        mul(usage.cache_write_tokens, prices.cache_write_or_input())?,
        mul(usage.completion_tokens, output_price)?,
        fee.checked_mul(TOKENS_PER_PRICE_UNIT)
            .ok_or(PricingError::Overflow)?,
    ])?;
    Ok(Cost {
        amount: Money::new(div_ceil(num, TOKENS_PER_PRICE_UNIT), period.currency),
        price_id: period.id.clone(),
        tier: tier_label(period, idx),
        off_peak: off.is_some(),
    })
}

/// The most a request with this prompt and output cap can cost at `at`: every prompt
/// token at the dearest input-side price (input, cache read or cache write), every
/// output token at the dearest output price (thinking included), the tier the request
/// would fall in with the full output, standard (peak) prices, plus the request fee.
/// For reservations and routing; never below [`cost_of`] for a usage within the limits.
pub fn estimate_max_cost(
    entry: &ModelEntry,
    prompt_tokens: u64,
    max_output_tokens: u64,
    at: DateTime<Utc>,
) -> Result<Cost, PricingError> {
    let period = period_at(entry, at)?;
    // The highest tier any completion length up to the cap can reach is the one the cap
    // itself reaches (tiers are ordered and later tiers are never cheaper).
    let (idx, tier) = period
        .tier_for(prompt_tokens, max_output_tokens)
        .ok_or(PricingError::Overflow)?;
    let p = &tier.prices;
    let input_max = p
        .input
        .max(p.cached_or_input())
        .max(p.cache_write_or_input());
    let output_max = p.output.max(p.thinking_or_output());
    let fee = period.request_fee.unwrap_or(0);
    let num = sum(&[
        mul(prompt_tokens, input_max)?,
        mul(max_output_tokens, output_max)?,
        fee.checked_mul(TOKENS_PER_PRICE_UNIT)
            .ok_or(PricingError::Overflow)?,
    ])?;
    Ok(Cost {
        amount: Money::new(div_ceil(num, TOKENS_PER_PRICE_UNIT), period.currency),
        price_id: period.id.clone(),
        tier: tier_label(period, idx),
        off_peak: false,
    })
}

/// Filters for `tollgate prices` and `GET /v1/prices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceQuery {
    /// Prices in force on this (UTC) date.
    pub at: NaiveDate,
    /// Convert to this currency with the month's FX rate; `None` = native currencies.
    pub currency: Option<Currency>,
    /// Exact provider id.
    pub provider: Option<String>,
    /// Case-insensitive substring of the model id or an alias.
    pub model: Option<String>,
    /// `tools`, `vision`, `json_mode`, `streaming`, or `free`.
    pub capability: Option<String>,
}

/// One model's current price, for tables and JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceRow {
    pub provider: String,
    pub model: String,
    pub region: String,
    /// Currency of the `*_per_m` fields (the target, or native when not converted).
    pub currency: Currency,
    pub input_per_m: String,
    pub output_per_m: String,
    pub cached_input_per_m: Option<String>,
    pub cache_write_per_m: Option<String>,
    pub native_currency: Currency,
    pub native_input_per_m: String,
    pub native_output_per_m: String,
    pub native_cached_input_per_m: Option<String>,
    /// Exact quote used (`1 fx_rate_base = fx_rate fx_rate_quote`); none if not converted.
    pub fx_rate: Option<String>,
    pub fx_rate_base: Option<Currency>,
    pub fx_rate_quote: Option<Currency>,
    pub fx_rate_month: Option<String>,
    pub effective_from: NaiveDate,
    pub price_id: String,
    /// Prices shown are the first (cheapest) tier of several.
    pub tiered: bool,
    /// The period has an off-peak window with lower prices.
    pub off_peak: bool,
    pub context_window: u64,
    pub max_output: u64,
    pub capabilities: Capabilities,
    pub free: bool,
    pub confidence: Confidence,
    pub estimate: bool,
    #[serde(skip)]
    sort_nanos: i128,
}

/// One dated price change of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryRow {
    pub provider: String,
    pub model: String,
    pub region: String,
    pub effective_from: NaiveDate,
    pub currency: Currency,
    pub input_per_m: String,
    pub output_per_m: String,
    pub cached_input_per_m: Option<String>,
    pub native_currency: Currency,
    pub native_input_per_m: String,
    pub native_output_per_m: String,
    pub fx_rate: Option<String>,
    pub fx_rate_month: Option<String>,
    /// Change of the native input price vs the previous period of the same region,
    /// e.g. "-80%"; none for the first period or when the currency changed.
    pub input_change: Option<String>,
    pub output_change: Option<String>,
    pub tiered: bool,
    pub off_peak: bool,
    pub free: bool,
    pub confidence: Confidence,
    pub estimate: bool,
    pub price_id: String,
    pub source: String,
    pub note: Option<String>,
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_time(NaiveTime::MIN).and_utc()
}

/// A per-1M price as text: `"0.8"`, `"5"` (trailing zeros trimmed).
fn per_m(nanos: i128) -> String {
    format_nanos(nanos, 0)
}

struct Converted {
    currency: Currency,
    input: i128,
    output: i128,
    cached: Option<i128>,
    cache_write: Option<i128>,
    rate: Option<(String, Currency, Currency, String)>,
}

/// The base prices of a period in `to` at the FX rate of `on`'s month (native when `to`
/// is `None` or no rate exists).
fn convert_prices(
    catalog: &Catalog,
    p: &PricePeriod,
    to: Option<Currency>,
    on: NaiveDate,
) -> Converted {
    let b = p.base();
    let native = Converted {
        currency: p.currency,
        input: b.input,
        output: b.output,
        cached: b.cached_input,
        cache_write: b.cache_write,
        rate: None,
    };
    let Some(to) = to else { return native };
    if to == p.currency {
        return native;
    }
    let fx = catalog.fx();
    let conv = |n: i128| fx.convert(&Money::new(n, p.currency), to, on);
    let (Ok(i), Ok(o)) = (conv(b.input), conv(b.output)) else {
        return native;
    };
    let opt = |v: Option<i128>| v.and_then(|n| conv(n).ok()).map(|c| c.amount.nanos);
    Converted {
        currency: to,
        input: i.amount.nanos,
        output: o.amount.nanos,
        cached: opt(b.cached_input),
        cache_write: opt(b.cache_write),
        rate: Some((i.rate, i.rate_base, i.rate_quote, i.rate_month)),
    }
}

fn matches_query(e: &ModelEntry, period: &PricePeriod, q: &PriceQuery) -> bool {
    if let Some(p) = &q.provider {
        if !e.provider.eq_ignore_ascii_case(p.trim()) {
            return false;
        }
    }
    if let Some(m) = &q.model {
        let m = m.trim().to_ascii_lowercase();
        let hit = |s: &str| s.to_ascii_lowercase().contains(&m);
        if !hit(&e.id)
            && !e.aliases.iter().any(|a| hit(a))
            && !hit(&format!("{}/{}", e.provider, e.id))
        {
            return false;
        }
    }
    if let Some(c) = &q.capability {
        let c = c.trim();
        let ok = if c.eq_ignore_ascii_case("free") {
            period.is_free()
        } else {
            e.capabilities.has(c).unwrap_or(false)
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Every model with a price in force on `q.at` that passes the filters, converted when
/// asked, sorted by input + output per 1M tokens (compared in USD when not converted),
/// then provider and model.
pub fn price_rows(catalog: &Catalog, q: &PriceQuery) -> Vec<PriceRow> {
    let at = midnight(q.at);
    let mut rows: Vec<PriceRow> = Vec::new();
    for e in catalog.models() {
        let Some(p) = e.price_at(at) else { continue };
        if !matches_query(e, p, q) {
            continue;
        }
        let c = convert_prices(catalog, p, q.currency, q.at);
        let sort_nanos = match q.currency {
            Some(_) => c.input.saturating_add(c.output),
            None => {
                let u = convert_prices(catalog, p, Some(Currency::Usd), q.at);
                u.input.saturating_add(u.output)
            }
        };
        let b = p.base();
        rows.push(PriceRow {
            provider: e.provider.clone(),
            model: e.id.clone(),
            region: p.region.clone(),
            currency: c.currency,
            input_per_m: per_m(c.input),
            output_per_m: per_m(c.output),
            cached_input_per_m: c.cached.map(per_m),
            cache_write_per_m: c.cache_write.map(per_m),
            native_currency: p.currency,
            native_input_per_m: per_m(b.input),
            native_output_per_m: per_m(b.output),
            native_cached_input_per_m: b.cached_input.map(per_m),
            fx_rate: c.rate.as_ref().map(|r| r.0.clone()),
            fx_rate_base: c.rate.as_ref().map(|r| r.1),
            fx_rate_quote: c.rate.as_ref().map(|r| r.2),
            fx_rate_month: c.rate.as_ref().map(|r| r.3.clone()),
            effective_from: p.effective_from,
            price_id: p.id.clone(),
            tiered: p.tiers.len() > 1,
            off_peak: p.off_peak.is_some(),
            context_window: e.context_window,
            max_output: e.max_output,
            capabilities: e.capabilities,
            free: p.is_free(),
            confidence: p.confidence,
            estimate: p.estimate,
            sort_nanos,
        });
    }
    rows.sort_by(|a, b| {
        (a.sort_nanos, &a.provider, &a.model).cmp(&(b.sort_nanos, &b.provider, &b.model))
    });
    rows
}

/// Percent change from `old` to `new`, rounded half away from zero: "-80%", "+100%", "0%".
fn percent_change(old: i128, new: i128) -> Option<String> {
    if old == 0 {
        return (new == 0).then(|| "0%".to_owned());
    }
    let diff = new.checked_sub(old)?.checked_mul(100)?;
    let q = diff / old;
    let r = diff % old;
    let rounded = if (r.abs() * 2) >= old.abs() {
        q + diff.signum()
    } else {
        q
    };
    Some(if rounded > 0 {
        format!("+{rounded}%")
    } else {
        format!("{rounded}%")
    })
}

/// Every dated price of the model named `model` (`provider/model`, id or alias), oldest
/// first, with the change vs the previous period of the same region. Converted prices
/// use the FX rate of each period's start month; percent changes compare native prices.
pub fn history_rows(
    catalog: &Catalog,
    model: &str,
    currency: Option<Currency>,
) -> Option<Vec<HistoryRow>> {
    let e = catalog.find_any(model.trim())?;
    let mut rows = Vec::new();
    for (i, p) in e.periods.iter().enumerate() {
        let prev = e.periods[..i]
            .iter()
            .rev()
            .find(|q| q.region == p.region)
            .filter(|q| q.currency == p.currency);
        let b = p.base();
        let c = convert_prices(catalog, p, currency, p.effective_from);
        rows.push(HistoryRow {
            provider: e.provider.clone(),
            model: e.id.clone(),
            region: p.region.clone(),
            effective_from: p.effective_from,
            currency: c.currency,
            input_per_m: per_m(c.input),
            output_per_m: per_m(c.output),
            cached_input_per_m: c.cached.map(per_m),
            native_currency: p.currency,
            native_input_per_m: per_m(b.input),
            native_output_per_m: per_m(b.output),
            fx_rate: c.rate.as_ref().map(|r| r.0.clone()),
            fx_rate_month: c.rate.as_ref().map(|r| r.3.clone()),
            input_change: prev.and_then(|q| percent_change(q.base().input, b.input)),
            output_change: prev.and_then(|q| percent_change(q.base().output, b.output)),
            tiered: p.tiers.len() > 1,
            off_peak: p.off_peak.is_some(),
            free: p.is_free(),
            confidence: p.confidence,
            estimate: p.estimate,
            price_id: p.id.clone(),
            source: p.source.clone(),
            note: p.note.clone(),
        });
    }
    Some(rows)
}

/// Left-aligned text columns, two spaces apart; numeric columns right-aligned.
fn render(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let width = w.get(i).copied().unwrap_or(0);
            let pad = width.saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    line(
        &header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
        &mut out,
    );
    for r in rows {
        line(r, &mut out);
    }
    out
}

fn flags(free: bool, tiered: bool, off_peak: bool, estimate: bool) -> String {
    let mut f = Vec::new();
    if free {
        f.push("free");
    }
    if tiered {
        f.push("tiered");
    }
    if off_peak {
        f.push("off-peak");
    }
    if estimate {
        f.push("estimate");
    }
    f.join(",")
}

/// A plain-text table of [`price_rows`] for people.
pub fn render_price_table(rows: &[PriceRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.provider.clone(),
                r.model.clone(),
                r.input_per_m.clone(),
                r.output_per_m.clone(),
                r.cached_input_per_m
                    .clone()
                    .unwrap_or_else(|| "-".to_owned()),
                r.currency.to_string(),
                r.context_window.to_string(),
                r.effective_from.to_string(),
                flags(r.free, r.tiered, r.off_peak, r.estimate),
            ]
        })
        .collect();
    render(
        &[
            "PROVIDER",
            "MODEL",
            "INPUT/1M",
            "OUTPUT/1M",
            "CACHED/1M",
            "CUR",
            "CONTEXT",
            "SINCE",
            "NOTES",
        ],
        &[false, false, true, true, true, false, true, false, false],
        &body,
    )
}

/// A plain-text table of [`history_rows`] for people.
pub fn render_history_table(rows: &[HistoryRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.effective_from.to_string(),
                r.region.clone(),
                r.input_per_m.clone(),
                r.output_per_m.clone(),
                r.cached_input_per_m
                    .clone()
                    .unwrap_or_else(|| "-".to_owned()),
                r.currency.to_string(),
                r.input_change.clone().unwrap_or_default(),
                r.output_change.clone().unwrap_or_default(),
                r.confidence.as_str().to_owned(),
                flags(r.free, r.tiered, r.off_peak, r.estimate),
            ]
        })
        .collect();
    render(
        &[
            "SINCE",
            "REGION",
            "INPUT/1M",
            "OUTPUT/1M",
            "CACHED/1M",
            "CUR",
            "IN CHG",
            "OUT CHG",
            "CONF",
            "NOTES",
        ],
        &[
            false, false, true, true, true, false, true, true, false, false,
        ],
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
}
