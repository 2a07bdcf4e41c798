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

fn period_at(entry: &ModelEntry, at: DateTime<Utc>) -> Result<&PricePeriod, PricingError> {
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

/// A plain-text table of [`history_rows`] for people (prices as in the price table).
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

    fn cat() -> Catalog {
        Catalog::embedded().unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        if s.len() == 10 {
            return midnight(NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap());
        }
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn usage(prompt: u64, cached: u64, cache_write: u64, completion: u64, reasoning: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: cached,
            cache_write_tokens: cache_write,
            reasoning_tokens: reasoning,
            cost: None,
        }
    }

    fn cost(c: &Catalog, provider: &str, model: &str, u: &Usage, at: &str) -> Cost {
        cost_of(c.find(provider, model).unwrap(), u, t(at)).unwrap()
    }

    #[test]
    fn flat_price_and_free_models() {
        let c = cat();
        // glm-3-turbo after the cut: 1 CNY/M in and out. 300 + 112 tokens = 0.000412 CNY.
        let k = cost(
            &c,
            "zhipu",
            "glm-3-turbo",
            &usage(300, 0, 0, 112, 0),
            "2024-06-01",
        );
        assert_eq!(k.amount.to_string(), "0.000412 CNY");
        assert_eq!(k.price_id, "zhipu/glm-3-turbo@2024-05-11");
        assert_eq!((k.tier, k.off_peak), (None, false));
        // Before the cut: 5 CNY/M.
        let k = cost(
            &c,
            "zhipu",
            "glm-3-turbo",
            &usage(300, 0, 0, 112, 0),
            "2024-05-10T23:59:59Z",
        );
        assert_eq!(k.amount.to_string(), "0.002060 CNY");
        // Free models cost exactly zero.
        for (p, m) in [
            ("ernie", "ernie-speed-128k"),
            ("ernie", "ernie-lite-8k"),
            ("spark", "lite"),
            ("hunyuan", "hunyuan-lite"),
            ("zhipu", "glm-4-flash"),
        ] {
            let k = cost(&c, p, m, &usage(100_000, 0, 0, 50_000, 0), "2025-01-01");
            assert_eq!(k.amount.nanos, 0, "{p}/{m}");
        }
        // Spark bills input and output at one rate: 1000 + 1000 tokens at 21 CNY/M.
        let k = cost(
            &c,
            "spark",
            "generalv3",
            &usage(1000, 0, 0, 1000, 0),
            "2024-06-01",
        );
        assert_eq!(k.amount.nanos, 42_000_000);
        // No price before the first period.
        let e = c.find("zhipu", "glm-3-turbo").unwrap();
        assert!(matches!(
            cost_of(e, &usage(1, 0, 0, 1, 0), t("2023-01-01")),
            Err(PricingError::NoPrice { .. })
        ));
        assert!(matches!(
            cost_of(e, &usage(1, 1, 1, 1, 0), t("2024-06-01")),
            Err(PricingError::InconsistentUsage { .. })
        ));
    }

    #[test]
    fn gemini_tier_boundary_prices_the_whole_request() {
        let c = cat();
        // gemini-1.5-pro from 2024-10-01: <=128K 1.25/5, >128K 2.5/10 USD/M.
        let k = cost(
            &c,
            "gemini",
            "gemini-1.5-pro",
            &usage(128_000, 0, 0, 1000, 0),
            "2024-10-15",
        );
        assert_eq!(k.amount.nanos, 165_000_000); // 128000*1.25 + 1000*5 = 165000 / 1e6 USD
        assert_eq!(k.tier.as_deref(), Some("prompt<=128000"));
        let k = cost(
            &c,
            "gemini",
            "gemini-1.5-pro",
            &usage(128_001, 0, 0, 1000, 0),
            "2024-10-15",
        );
        assert_eq!(k.amount.nanos, 330_002_500); // 128001*2.5 + 1000*10 = 330002.5 / 1e6 USD
        assert_eq!(k.tier.as_deref(), Some("prompt>128000"));
        // Cached tokens count toward the prompt length for the tier.
        let k = cost(
            &c,
            "gemini",
            "gemini-2.5-pro",
            &usage(200_001, 100_000, 0, 0, 0),
            "2025-07-01",
        );
        assert_eq!(k.amount.nanos, 275_002_500); // 100001*2.5 + 100000*0.25 = 275002.5
                                                 // Anthropic Sonnet 4.5 long context: >200K billed 6/22.5 with cache 0.6/7.5.
        let k = cost(
            &c,
            "anthropic",
            "claude-sonnet-4-5",
            &usage(300_000, 50_000, 10_000, 2000, 0),
            "2025-10-01",
        );
        // 240000*6 + 50000*0.6 + 10000*7.5 + 2000*22.5 = 1440000+30000+75000+45000
        assert_eq!(k.amount.nanos, 1_590_000_000);
    }

    #[test]
    fn doubao_seed_bands_use_prompt_and_completion_length() {
        let c = cat();
        let seed = |p, o| {
            cost(
                &c,
                "doubao",
                "doubao-seed-1.6",
                &usage(p, 0, 0, o, 0),
                "2025-07-01",
            )
        };
        assert_eq!(seed(10_000, 200).amount.nanos, 8_400_000); // 10000*0.8 + 200*2
        assert_eq!(seed(10_000, 201).amount.nanos, 9_608_000); // 10000*0.8 + 201*8
        assert_eq!(seed(32_768, 1000).amount.nanos, 34_214_400); // 32768*0.8 + 1000*8
        assert_eq!(seed(32_769, 1000).amount.nanos, 55_322_800); // 32769*1.2 + 1000*16
        assert_eq!(seed(131_073, 10).amount.nanos, 314_815_200); // 131073*2.4 + 10*24
        assert_eq!(seed(131_073, 10).tier.as_deref(), Some("in<=256K"));
    }

    #[test]
    fn cache_reads_and_anthropic_cache_writes() {
        let c = cat();
        // gpt-4o (alias, from 2024-10-02): 2.5 in, 1.25 cached, 10 out.
        let k = cost(
            &c,
            "openai",
            "gpt-4o",
            &usage(10_000, 4000, 0, 500, 0),
            "2024-11-01",
        );
        assert_eq!(k.amount.nanos, 25_000_000); // 6000*2.5 + 4000*1.25 + 500*10 = 25000
                                                // Claude 3.5 Sonnet: 3 in, 0.3 read, 3.75 write (1.25x), 15 out.
        let k = cost(
            &c,
            "anthropic",
            "claude-3-5-sonnet-20241022",
            &usage(10_000, 2000, 3000, 1000, 0),
            "2025-01-01",
        );
        assert_eq!(k.amount.nanos, 41_850_000); // 5000*3 + 2000*0.3 + 3000*3.75 + 1000*15 = 41850
                                                // Claude 3 Opus cache write 18.75 from 2024-08-14.
        let k = cost(
            &c,
            "anthropic",
            "claude-3-opus-20240229",
            &usage(1000, 0, 1000, 0, 0),
            "2024-09-01",
        );
        assert_eq!(k.amount.nanos, 18_750_000);
        // Before caching existed, cache tokens are billed as input.
        let k = cost(
            &c,
            "anthropic",
            "claude-3-opus-20240229",
            &usage(1000, 0, 1000, 0, 0),
            "2024-05-01",
        );
        assert_eq!(k.amount.nanos, 15_000_000);
        // DeepSeek cache hits (CNY, China site): 2 miss / 0.5 hit / 8 out.
        let k = cost(
            &c,
            "deepseek",
            "deepseek-chat",
            &usage(1000, 600, 0, 100, 0),
            "2025-02-20T12:00:00Z",
        );
        assert_eq!(k.amount.nanos, 1_900_000); // 400*2 + 600*0.5 + 100*8 = 1900
                                               // Gemini 2.5 Flash preview: thinking output 3.5 instead of 0.6.
        let k = cost(
            &c,
            "gemini",
            "gemini-2.5-flash-preview-04-17",
            &usage(1000, 0, 0, 1000, 400),
            "2025-05-01",
        );
        assert_eq!(k.amount.nanos, 3_650_000); // 1000*0.15 + 1000*3.5
        let k = cost(
            &c,
            "gemini",
            "gemini-2.5-flash-preview-04-17",
            &usage(1000, 0, 0, 1000, 0),
            "2025-05-01",
        );
        assert_eq!(k.amount.nanos, 750_000);
    }

    #[test]
    fn deepseek_off_peak_window_in_and_out() {
        let c = cat();
        let u = usage(1000, 200, 0, 100, 0);
        let ds = |at: &str| cost(&c, "deepseek", "deepseek-chat", &u, at);
        // 01:00 Beijing: off-peak 1 / 0.25 / 4 CNY/M.
        let k = ds("2025-03-01T17:00:00Z");
        assert_eq!((k.amount.nanos, k.off_peak), (1_250_000, true)); // 800*1 + 200*0.25 + 100*4
        assert_eq!(k.price_id, "deepseek/deepseek-chat@2025-02-26");
        // 16:00 Beijing: standard 2 / 0.5 / 8.
        let k = ds("2025-03-01T08:00:00Z");
        assert_eq!((k.amount.nanos, k.off_peak), (2_500_000, false));
        // Window edges: 00:30 Beijing (16:30 UTC) is in, 08:30 Beijing (00:30 UTC) is out.
        assert!(ds("2025-03-01T16:30:00Z").off_peak);
        assert!(!ds("2025-03-01T16:29:59Z").off_peak);
        assert!(ds("2025-03-02T00:29:59Z").off_peak);
        assert!(!ds("2025-03-02T00:30:00Z").off_peak);
        // Before 2025-02-26 and after the 2025-09-05 repricing there is no off-peak.
        assert!(!ds("2025-02-20T17:00:00Z").off_peak);
        let k = ds("2025-09-10T17:00:00Z");
        assert_eq!((k.amount.nanos, k.off_peak), (4_500_000, false)); // 800*4 + 200*0.5 + 100*12
                                                                      // R1 off-peak is 75% off: 4/1/16 -> 1/0.25/4.
        let k = cost(
            &c,
            "deepseek",
            "deepseek-reasoner",
            &usage(1000, 0, 0, 1000, 800),
            "2025-04-01T18:00:00Z",
        );
        assert_eq!((k.amount.nanos, k.off_peak), (5_000_000, true));
        // The USD (international) list has its own off-peak prices.
        let e = c.find("deepseek", "deepseek-chat").unwrap();
        let p = e
            .price_at_region(t("2025-03-01T17:00:00Z"), "intl")
            .unwrap();
        let k = cost_with_period(p, &u, t("2025-03-01T17:00:00Z")).unwrap();
        assert_eq!(k.amount.to_string(), "0.000170 USD"); // 800*0.135 + 200*0.035 + 100*0.55 = 170
    }

    fn user_catalog(snippet: &str) -> Catalog {
        let mut c = Catalog::empty();
        c.add_toml("test.toml", snippet).unwrap();
        c
    }

    #[test]
    fn per_request_fee_and_percentage_off_peak() {
        let c = user_catalog(
            r#"
provider = "moonshot"
[[models]]
id = "cached-call"
context_window = 8192
max_output = 1024
[[models.periods]]
effective_from = 2024-07-01
currency = "CNY"
input = "12"
output = "12"
request_fee = "0.02"
off_peak = { start = "22:00", end = "06:00", time_zone = "+08:00", discount_percent = "25" }
confidence = "med"
source = "test"
"#,
        );
        let e = c.find("moonshot", "cached-call").unwrap();
        // 1000 tokens * 12 / 1e6 = 0.012, plus 0.02 per request.
        let k = cost_of(e, &usage(500, 0, 0, 500, 0), t("2024-07-02T04:00:00Z")).unwrap();
        assert_eq!(k.amount.to_string(), "0.032000 CNY");
        // 23:00 local: 25% off the token prices (9 CNY/M), the fee is unchanged.
        let k = cost_of(e, &usage(500, 0, 0, 500, 0), t("2024-07-02T15:00:00Z")).unwrap();
        assert_eq!((k.amount.nanos, k.off_peak), (29_000_000, true));
        // The worst-case estimate includes the fee and ignores the discount.
        let k = estimate_max_cost(e, 500, 500, t("2024-07-02T15:00:00Z")).unwrap();
        assert_eq!(k.amount.nanos, 32_000_000);
    }

    #[test]
    fn rounds_once_up_per_request() {
        let c = user_catalog(
            r#"
provider = "x"
[[models]]
id = "tiny"
context_window = 1
max_output = 1
periods = [{ effective_from = 2024-01-01, currency = "USD", input = "0.0000015", cached_input = "0.0000005", output = "0.000001", confidence = "high", source = "test" }]
"#,
        );
        let e = c.find("x", "tiny").unwrap();
        // 1*1500 + 1*500 = 2000 nano-units per 1M tokens -> 0.002 nano -> rounds up to 1,
        // where rounding each token class would give 2.
        let k = cost_of(e, &usage(2, 1, 0, 0, 0), t("2024-06-01")).unwrap();
        assert_eq!(k.amount.nanos, 1);
        // 1000 uncached tokens = 1.5 nanos -> 2; 1_000_000 tokens exact.
        assert_eq!(
            cost_of(e, &usage(1000, 0, 0, 0, 0), t("2024-06-01"))
                .unwrap()
                .amount
                .nanos,
            2
        );
        assert_eq!(
            cost_of(e, &usage(1_000_000, 0, 0, 0, 0), t("2024-06-01"))
                .unwrap()
                .amount
                .nanos,
            1500
        );
        assert_eq!(
            cost_of(e, &usage(0, 0, 0, 0, 0), t("2024-06-01"))
                .unwrap()
                .amount
                .nanos,
            0
        );
    }

    /// A deterministic pseudo-random sequence (no extra crate).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// Instants to test each model at: every period start, plus 17:00 UTC (off-peak for
    /// DeepSeek) on the same day.
    fn instants(e: &ModelEntry) -> Vec<DateTime<Utc>> {
        e.periods
            .iter()
            .flat_map(|p| {
                let d = midnight(p.effective_from);
                [d, d + chrono::Duration::hours(17)]
            })
            .collect()
    }

    fn random_usage(r: &mut Lcg) -> Usage {
        let scale = [10, 1000, 50_000, 300_000][r.below(4) as usize];
        let uncached = r.below(scale);
        let cached = r.below(scale / 2 + 1);
        let write = if r.below(3) == 0 {
            r.below(scale / 4 + 1)
        } else {
            0
        };
        let completion = r.below(scale / 2 + 1);
        let reasoning = if r.below(3) == 0 {
            r.below(completion + 1)
        } else {
            0
        };
        usage(
            uncached + cached + write,
            cached,
            write,
            completion,
            reasoning,
        )
    }

    #[test]
    fn property_cost_never_negative_and_monotone_in_every_token_count() {
        let c = cat();
        let mut r = Lcg(42);
        let mut checked = 0;
        for e in c.models() {
            for at in instants(e) {
                for _ in 0..12 {
                    let u = random_usage(&mut r);
                    let base = cost_of(e, &u, at).unwrap();
                    assert!(base.amount.nanos >= 0, "{} {u:?}", e.id);
                    let d = 1 + r.below(5000);
                    // More uncached input, cache reads, cache writes or output never costs less.
                    let more = [
                        usage(
                            u.prompt_tokens + d,
                            u.cached_tokens,
                            u.cache_write_tokens,
                            u.completion_tokens,
                            u.reasoning_tokens,
                        ),
                        usage(
                            u.prompt_tokens + d,
                            u.cached_tokens + d,
                            u.cache_write_tokens,
                            u.completion_tokens,
                            u.reasoning_tokens,
                        ),
                        usage(
                            u.prompt_tokens + d,
                            u.cached_tokens,
                            u.cache_write_tokens + d,
                            u.completion_tokens,
                            u.reasoning_tokens,
                        ),
                        usage(
                            u.prompt_tokens,
                            u.cached_tokens,
                            u.cache_write_tokens,
                            u.completion_tokens + d,
                            u.reasoning_tokens,
                        ),
                        usage(
                            u.prompt_tokens,
                            u.cached_tokens,
                            u.cache_write_tokens,
                            u.completion_tokens + d,
                            u.reasoning_tokens + d,
                        ),
                    ];
                    for m in more {
                        let k = cost_of(e, &m, at).unwrap();
                        assert!(
                            k.amount.nanos >= base.amount.nanos,
                            "{}@{at}: {u:?} -> {m:?}: {} < {}",
                            e.id,
                            k.amount,
                            base.amount
                        );
                    }
                    // The reservation estimate covers the actual cost.
                    let est =
                        estimate_max_cost(e, u.prompt_tokens, u.completion_tokens, at).unwrap();
                    assert!(
                        est.amount.nanos >= base.amount.nanos,
                        "{}@{at}: estimate {} < cost {}",
                        e.id,
                        est.amount,
                        base.amount
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 3000, "{checked}");
    }

    #[test]
    fn property_cost_is_additive_over_splits_within_one_rule() {
        let c = cat();
        let mut r = Lcg(7);
        let mut checked = 0;
        for e in c.models() {
            for at in instants(e) {
                let Some(p) = e.price_at(at) else { continue };
                for _ in 0..10 {
                    let u = random_usage(&mut r);
                    let u = usage(
                        u.prompt_tokens,
                        u.cached_tokens,
                        u.cache_write_tokens,
                        u.completion_tokens,
                        0,
                    );
                    // Split every token class in two.
                    let split = |n: u64, r: &mut Lcg| {
                        let a = r.below(n + 1);
                        (a, n - a)
                    };
                    let (c1, c2) = split(u.cached_tokens, &mut r);
                    let (w1, w2) = split(u.cache_write_tokens, &mut r);
                    let (n1, n2) = split(
                        u.prompt_tokens - u.cached_tokens - u.cache_write_tokens,
                        &mut r,
                    );
                    let (o1, o2) = split(u.completion_tokens, &mut r);
                    let a = usage(n1 + c1 + w1, c1, w1, o1, 0);
                    let b = usage(n2 + c2 + w2, c2, w2, o2, 0);
                    // Additive only when the halves fall in the same tier as the whole.
                    let tier = |x: &Usage| {
                        p.tier_for(x.prompt_tokens, x.completion_tokens)
                            .map(|t| t.0)
                    };
                    if tier(&a) != tier(&u) || tier(&b) != tier(&u) {
                        continue;
                    }
                    let whole = cost_of(e, &u, at).unwrap().amount.nanos;
                    let parts = cost_of(e, &a, at).unwrap().amount.nanos
                        + cost_of(e, &b, at).unwrap().amount.nanos;
                    // Each cost is rounded up once: the parts exceed the whole by at most 1 nano.
                    assert!(
                        parts >= whole && parts <= whole + 1,
                        "{}@{at}: {whole} vs {parts}",
                        e.id
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 2000, "{checked}");
    }

    #[test]
    fn estimate_is_the_worst_case() {
        let c = cat();
        let e = c.find("anthropic", "claude-3-5-sonnet-20241022").unwrap();
        // Every prompt token at the cache-write price (3.75), output at 15.
        let k = estimate_max_cost(e, 1000, 1000, t("2025-01-01")).unwrap();
        assert_eq!(k.amount.nanos, 18_750_000);
        // DeepSeek at an off-peak instant is still reserved at peak prices.
        let e = c.find("deepseek", "deepseek-chat").unwrap();
        let k = estimate_max_cost(e, 1000, 1000, t("2025-03-01T17:00:00Z")).unwrap();
        assert_eq!((k.amount.nanos, k.off_peak), (10_000_000, false));
        // Seed 1.6 with a big output cap falls in the dearer band of the prompt's range.
        let e = c.find("doubao", "doubao-seed-1.6").unwrap();
        let k = estimate_max_cost(e, 1000, 4096, t("2025-07-01")).unwrap();
        assert_eq!(k.tier.as_deref(), Some("in<=32K"));
    }
}
