//! Routing decisions for virtual models: which candidates can serve a request, in which order, and why — pure, no IO.
//!
//! [`plan`] takes the candidates of a virtual model (each a `provider/model` with its
//! catalog entry and the health signals the server tracks), the request's [`Needs`] and
//! the [`RouteOptions`], and returns a [`Plan`]: every candidate with a [`Verdict`]
//! (kept with its rank, or dropped with the reason) and its estimated cost. The same plan
//! feeds the gateway's attempt loop, the `x-tollgate-route` header and `tollgate route`.
//!
//! # The rule
//! 1. **Drop** a candidate that cannot serve the request: a capability it lacks (tools,
//!    vision, JSON mode), a context window smaller than `prompt + max_tokens`, a
//!    `max_tokens` over its output limit, a quality under the floor (or no quality score
//!    when there is a floor), no price in force, an estimate over the client's
//!    `x-tollgate-max-cost`, an open circuit, or a free model whose free-tier limits are
//!    used up.
//! 2. **Order** the rest by the strategy:
//!    - `cheapest`: the estimated cost of this request ([`estimate`]: its prompt tokens,
//!      its `max_tokens` (or `default_max_tokens`), the tier it falls in, off-peak prices
//!      when `at` is inside the window, the request fee), converted into one currency
//!      with the FX rate of `at`'s month; ties go to the higher quality, then to the
//!      order in config. Candidates without a price in the catalog come last.
//!    - `free-first`: candidates that are free right now (a zero price, or a free quota
//!      with tokens left as tollgate counts them) first — zero-priced ones before free
//!      quotas, then by quality — and the rest after them as `cheapest`.
//!    - `latency`: lowest time-to-first-token EWMA first; candidates never measured come
//!      first (so they get measured). With probability `explore_per_mille / 1000` a random
//!      other kept candidate is moved to the front, so an upstream that was slow and
//!      recovered is noticed. The random source is injected ([`RandomSource`]).
//!    - `weighted`: a weighted random order (drawn without replacement).
//!    - `ordered`: the order in config (a plain fallback chain).
//!
//! Costs are exact ([`Money`]); there are no floats except the latency EWMA.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{FxTable, ModelEntry};
use crate::chat::ChatRequest;
use crate::money::{div_ceil, Currency, Decimal, Money, TOKENS_PER_PRICE_UNIT};
use crate::pricing::{Cost, PricingError};

/// How a virtual model orders its candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Cheapest,
    FreeFirst,
    Latency,
    Weighted,
    Ordered,
}

impl Strategy {
    pub const ALL: [Strategy; 5] = [
        Strategy::Cheapest,
        Strategy::FreeFirst,
        Strategy::Latency,
        Strategy::Weighted,
        Strategy::Ordered,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Cheapest => "cheapest",
            Strategy::FreeFirst => "free-first",
            Strategy::Latency => "latency",
            Strategy::Weighted => "weighted",
            Strategy::Ordered => "ordered",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        Strategy::ALL
            .into_iter()
            .find(|st| st.as_str() == norm)
            .ok_or_else(|| {
                format!(
                    "unknown strategy '{s}'; one of: cheapest, free-first, latency, weighted, ordered"
                )
            })
    }
}

/// What a request needs from a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Needs {
    pub tools: bool,
    pub vision: bool,
    pub json: bool,
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// The request's `max_tokens` / `max_completion_tokens`, if it set one.
    pub max_tokens: Option<u64>,
}

impl Needs {
    /// The needs of a chat request whose prompt was counted as `prompt_tokens`.
    pub fn of(req: &ChatRequest, prompt_tokens: u64) -> Needs {
        Needs {
            tools: req.uses_tools(),
            vision: req.has_images(),
            json: req.wants_json(),
            prompt_tokens,
            max_tokens: req.max_output_tokens().map(u64::from),
        }
    }
}

/// What the server knows about a candidate's health right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    /// `Some(why)` when its circuit is open (and not due for a probe).
    pub circuit_open: Option<String>,
    /// Time-to-first-token EWMA in milliseconds, if measured.
    pub ttft_ewma_ms: Option<f64>,
    /// `Some(why)` when its free-tier limits (as tollgate counts them) are used up.
    pub free_exhausted: Option<String>,
}

/// One candidate of a virtual model.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// `provider/model`.
    pub name: String,
    /// Its catalog entry; `None` for a model without a price (kept, but its needs and
    /// cost are unknown).
    pub entry: Option<&'a ModelEntry>,
    /// For `weighted`; 1 unless configured.
    pub weight: u32,
    pub signals: Signals,
}

/// The knobs of one routing decision.
#[derive(Debug, Clone)]
pub struct RouteOptions {
    pub strategy: Strategy,
    /// Minimum [`crate::catalog::Quality`] score; candidates without a score are dropped
    /// when a floor is set.
    pub quality_floor: Option<Decimal>,
    /// The currency costs are compared in.
    pub currency: Currency,
    /// The instant prices (and off-peak windows, and FX months) are taken at.
    pub at: DateTime<Utc>,
    /// Drop candidates whose estimate exceeds this (the client's `x-tollgate-max-cost`).
    pub max_cost: Option<Money>,
    /// Output tokens assumed when the request sets no `max_tokens`.
    pub default_max_tokens: u64,
    /// `latency`: how often (per thousand decisions) another candidate is tried first.
    pub explore_per_mille: u32,
}

/// Random numbers for `weighted` and `latency` exploration; injected so that tests are
/// deterministic.
pub trait RandomSource {
    fn next_u64(&mut self) -> u64;
}

/// SplitMix64: small, fast, good enough for load spreading (not for secrets).
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl RandomSource for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn below(rng: &mut dyn RandomSource, n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        rng.next_u64() % n
    }
}

/// One candidate's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// `provider/model`.
    pub candidate: String,
    /// Index in the candidate list given to [`plan`].
    #[serde(skip)]
    pub index: usize,
    pub kept: bool,
    /// 1-based position among the kept candidates.
    pub rank: Option<usize>,
    /// Why it was kept (and where it ranks) or dropped.
    pub reason: String,
    /// The estimate in the model's own currency.
    pub estimate: Option<Money>,
    /// The estimate in the plan's currency.
    pub estimate_converted: Option<Money>,
    /// Free right now (zero price, or free quota left).
    pub free: bool,
    pub quality: Option<Decimal>,
    pub ttft_ewma_ms: Option<f64>,
}

/// The ranked candidates of one request.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub strategy: Strategy,
    pub currency: Currency,
    pub at: DateTime<Utc>,
    pub prompt_tokens: u64,
    /// Output tokens the estimates assume.
    pub max_tokens: u64,
    /// Kept candidates in the order to try them, then the dropped ones.
    pub verdicts: Vec<Verdict>,
    /// `latency` moved a candidate to the front to re-measure it.
    pub explored: bool,
}

impl Plan {
    /// Kept candidates, in the order to try them.
    pub fn kept(&self) -> impl Iterator<Item = &Verdict> {
        self.verdicts.iter().filter(|v| v.kept)
    }

    pub fn kept_count(&self) -> usize {
        self.kept().count()
    }

    /// `x-tollgate-route`: `cheapest; 3 candidates; chose qwen/qwen-turbo at 0.00021 CNY est.`
    pub fn header(&self, chosen: &Verdict, attempt: usize) -> String {
        let cost = match (&chosen.estimate, &chosen.estimate_converted) {
            (Some(e), _) => format!(" at {e} est."),
            (None, _) => " (unpriced)".to_owned(),
        };
        let n = self.kept_count();
        let mut s = format!(
            "{}; {} candidate{}; chose {}{}",
            self.strategy,
            n,
            if n == 1 { "" } else { "s" },
            chosen.candidate,
            cost
        );
        if attempt > 1 {
            s.push_str(&format!("; attempt {attempt}"));
        }
        if self.explored && chosen.rank == Some(1) {
            s.push_str("; exploring");
        }
        s
    }

    /// Why nothing was kept: one line naming each candidate and its reason.
    pub fn why_none(&self) -> String {
        self.verdicts
            .iter()
            .map(|v| format!("{}: {}", v.candidate, v.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The estimated cost of one request on `entry` at `at`: every prompt token at the input
/// price, `max_tokens` output tokens at the output price, the tier the request falls in,
/// off-peak prices when `at` is inside the window, plus the request fee; rounded once, up.
/// Unlike [`crate::pricing::estimate_max_cost`] (the reservation's worst case) it applies
/// off-peak discounts, because routing compares what the request will likely cost now.
pub fn estimate(
    entry: &ModelEntry,
    prompt_tokens: u64,
    max_tokens: u64,
    at: DateTime<Utc>,
) -> Result<Cost, PricingError> {
    let period = entry.price_at(at).ok_or_else(|| PricingError::NoPrice {
        provider: entry.provider.clone(),
        model: entry.id.clone(),
        at: at.date_naive(),
    })?;
    let (idx, tier) = period
        .tier_for(prompt_tokens, max_tokens)
        .ok_or(PricingError::Overflow)?;
    let off = period
        .off_peak
        .as_ref()
        .filter(|o| o.contains(at))
        .and_then(|o| o.tiers.get(idx));
    let p = off.unwrap_or(&tier.prices);
    let mul = |t: u64, price: i128| {
        i128::from(t)
            .checked_mul(price)
            .ok_or(PricingError::Overflow)
    };
    let fee = period
        .request_fee
        .unwrap_or(0)
        .checked_mul(TOKENS_PER_PRICE_UNIT)
        .ok_or(PricingError::Overflow)?;
    let num = mul(prompt_tokens, p.input)?
        .checked_add(mul(max_tokens, p.output)?)
        .and_then(|n| n.checked_add(fee))
        .ok_or(PricingError::Overflow)?;
    Ok(Cost {
        amount: Money::new(div_ceil(num, TOKENS_PER_PRICE_UNIT), period.currency),
        price_id: period.id.clone(),
        tier: (period.tiers.len() > 1).then(|| tier.name.clone()),
        off_peak: off.is_some(),
    })
}

/// Whether a model is free at `at` by price (every price zero, no fee).
pub fn free_by_price(entry: &ModelEntry, at: DateTime<Utc>) -> bool {
    entry.price_at(at).is_some_and(|p| p.is_free())
}

/// Whether a model has a free quota (tokens granted, then billed at list price).
pub fn has_free_quota(entry: &ModelEntry) -> bool {
    entry
        .free_tier
        .as_ref()
        .is_some_and(|f| f.quota_tokens.is_some())
}

/// Decides the order of `candidates` for a request with `needs`.
pub fn plan(
    candidates: &[Candidate<'_>],
    needs: &Needs,
    opts: &RouteOptions,
    fx: &FxTable,
    rng: &mut dyn RandomSource,
) -> Plan {
    let max_tokens = needs.max_tokens.unwrap_or(opts.default_max_tokens);
    let mut kept: Vec<Verdict> = Vec::new();
    let mut dropped: Vec<Verdict> = Vec::new();
    for (index, c) in candidates.iter().enumerate() {
        let mut v = Verdict {
            candidate: c.name.clone(),
            index,
            kept: false,
            rank: None,
            reason: String::new(),
            estimate: None,
            estimate_converted: None,
            free: false,
            quality: c.entry.and_then(|e| e.quality.as_ref().map(|q| q.score)),
            ttft_ewma_ms: c.signals.ttft_ewma_ms,
        };
        match check(c, needs, max_tokens, opts, fx, &mut v) {
            Ok(()) => {
                v.kept = true;
                kept.push(v);
            }
            Err(reason) => {
                v.reason = reason;
                dropped.push(v);
            }
        }
    }
    let explored = order(&mut kept, candidates, opts, rng);
    for (i, v) in kept.iter_mut().enumerate() {
        v.rank = Some(i + 1);
    }
    kept.extend(dropped);
    Plan {
        strategy: opts.strategy,
        currency: opts.currency,
        at: opts.at,
        prompt_tokens: needs.prompt_tokens,
        max_tokens,
        verdicts: kept,
        explored,
    }
}

/// Fills the estimate of `v`, or says why the candidate cannot serve.
fn check(
    c: &Candidate<'_>,
    needs: &Needs,
    max_tokens: u64,
    opts: &RouteOptions,
    fx: &FxTable,
    v: &mut Verdict,
) -> Result<(), String> {
    if let Some(why) = &c.signals.circuit_open {
        return Err(format!("circuit open ({why})"));
    }
    let Some(e) = c.entry else {
        if opts.quality_floor.is_some() {
            return Err("not in the catalog: no quality score for the floor".to_owned());
        }
        if opts.max_cost.is_some() {
            return Err("not in the catalog: cannot check x-tollgate-max-cost".to_owned());
        }
        return Ok(());
    };
    let caps = &e.capabilities;
    if needs.tools && !caps.tools {
        return Err("no tool support; the request uses tools".to_owned());
    }
    if needs.vision && !caps.vision {
        return Err("no vision; the request has images".to_owned());
    }
    if needs.json && !caps.json_mode {
        return Err("no JSON mode; the request asks for JSON".to_owned());
    }
    let need_ctx = needs.prompt_tokens.saturating_add(max_tokens);
    if e.context_window > 0 && need_ctx > e.context_window {
        return Err(format!(
            "context window {} < {} needed ({} prompt + {} output)",
            e.context_window, need_ctx, needs.prompt_tokens, max_tokens
        ));
    }
    if let Some(m) = needs.max_tokens {
        if e.max_output > 0 && m > e.max_output {
            return Err(format!(
                "max_tokens {m} > its output limit {}",
                e.max_output
            ));
        }
    }
    if let Some(floor) = &opts.quality_floor {
        match &e.quality {
            None => return Err(format!("no quality score (floor {floor})")),
            Some(q) if q.score < *floor => {
                return Err(format!("quality {} < floor {floor}", q.score))
            }
            Some(_) => {}
        }
    }
    let cost = estimate(e, needs.prompt_tokens, max_tokens, opts.at).map_err(|err| match err {
        PricingError::NoPrice { at, .. } => format!("no price in force on {at}"),
        other => format!("cannot estimate: {other}"),
    })?;
    let converted = fx
        .convert(&cost.amount, opts.currency, opts.at.date_naive())
        .map(|c| c.amount)
        .map_err(|err| format!("cannot convert its {} price: {err}", cost.amount.currency))?;
    v.estimate = Some(cost.amount);
    v.estimate_converted = Some(converted);
    let price_free = free_by_price(e, opts.at);
    if price_free {
        if let Some(why) = &c.signals.free_exhausted {
            return Err(format!("free-tier limit reached ({why})"));
        }
    }
    v.free = price_free || (has_free_quota(e) && c.signals.free_exhausted.is_none());
    if let Some(max) = &opts.max_cost {
        let cap = fx
            .convert(max, opts.currency, opts.at.date_naive())
            .map(|c| c.amount)
            .unwrap_or(*max);
        let mine = if opts.strategy == Strategy::FreeFirst && v.free {
            Money::zero(opts.currency)
        } else {
            converted
        };
        if mine.nanos > cap.nanos {
            return Err(format!(
                "estimate {} over x-tollgate-max-cost {max}",
                cost.amount
            ));
        }
    }
    let mut why = match &v.estimate {
        Some(e) if cost.off_peak => format!("{e} est. (off-peak)"),
        Some(e) => format!("{e} est."),
        None => String::new(),
    };
    if v.free {
        why = if price_free {
            format!("free; {why}")
        } else {
            format!("free quota left; list {why}")
        };
    }
    v.reason = why;
    Ok(())
}

/// Orders the kept verdicts; returns whether `latency` explored.
fn order(
    kept: &mut Vec<Verdict>,
    candidates: &[Candidate<'_>],
    opts: &RouteOptions,
    rng: &mut dyn RandomSource,
) -> bool {
    let by_cost = |a: &Verdict, b: &Verdict| {
        let ca = a.estimate_converted.map(|m| m.nanos);
        let cb = b.estimate_converted.map(|m| m.nanos);
        match (ca, cb) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
        .then_with(|| b.quality.cmp(&a.quality))
        .then_with(|| a.index.cmp(&b.index))
    };
    let annotate = |kept: &mut Vec<Verdict>, f: &dyn Fn(&Verdict) -> String| {
        for v in kept.iter_mut() {
            let extra = f(v);
            if !extra.is_empty() {
                v.reason = if v.reason.is_empty() {
                    extra
                } else {
                    format!("{}; {extra}", v.reason)
                };
            }
        }
    };
    match opts.strategy {
        Strategy::Cheapest => {
            kept.sort_by(by_cost);
            annotate(kept, &|v| {
                if v.estimate.is_none() {
                    "unpriced: ranked last".to_owned()
                } else {
                    String::new()
                }
            });
            false
        }
        Strategy::FreeFirst => {
            // Free ones first; among them zero-priced models before free quotas (which
            // run out), each group by estimate, quality, config order.
            kept.sort_by(|a, b| b.free.cmp(&a.free).then_with(|| by_cost(a, b)));
            annotate(kept, &|v| {
                if v.free {
                    String::new()
                } else {
                    "paid: after the free ones".to_owned()
                }
            });
            false
        }
        Strategy::Ordered => {
            kept.sort_by_key(|v| v.index);
            annotate(kept, &|v| format!("position {} in config", v.index + 1));
            false
        }
        Strategy::Weighted => {
            let total: u64 = kept
                .iter()
                .map(|v| u64::from(weight_of(candidates, v)))
                .sum();
            let mut pool: Vec<Verdict> = std::mem::take(kept);
            while !pool.is_empty() {
                let sum: u64 = pool
                    .iter()
                    .map(|v| u64::from(weight_of(candidates, v)))
                    .sum();
                let pick = if sum == 0 {
                    0
                } else {
                    let mut r = below(rng, sum);
                    let mut at = 0;
                    for (i, v) in pool.iter().enumerate() {
                        let w = u64::from(weight_of(candidates, v));
                        if r < w {
                            at = i;
                            break;
                        }
                        r -= w;
                    }
                    at
                };
                kept.push(pool.remove(pick));
            }
            annotate(kept, &|v| {
                format!("weight {} of {total}", weight_of(candidates, v))
            });
            false
        }
        Strategy::Latency => {
            kept.sort_by(|a, b| {
                // Never measured first (they need a measurement), then the fastest.
                match (a.ttft_ewma_ms, b.ttft_ewma_ms) {
                    (None, Some(_)) => std::cmp::Ordering::Less,
                    (Some(_), None) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                    (Some(x), Some(y)) => x.total_cmp(&y),
                }
                .then_with(|| a.index.cmp(&b.index))
            });
            annotate(kept, &|v| match v.ttft_ewma_ms {
                Some(ms) => format!("ttft {ms:.0} ms (ewma)"),
                None => "not measured yet".to_owned(),
            });
            let explore = kept.len() > 1
                && kept.first().is_some_and(|v| v.ttft_ewma_ms.is_some())
                && below(rng, 1000) < u64::from(opts.explore_per_mille);
            if explore {
                let i = 1 + below(rng, kept.len() as u64 - 1) as usize;
                let v = kept.remove(i);
                kept.insert(0, v);
                if let Some(first) = kept.first_mut() {
                    first.reason.push_str("; exploring");
                }
            }
            explore
        }
    }
}

fn weight_of(candidates: &[Candidate<'_>], v: &Verdict) -> u32 {
    candidates.get(v.index).map(|c| c.weight).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use chrono::TimeZone;

    fn catalog() -> Catalog {
        Catalog::embedded().unwrap()
    }

    fn cand<'a>(cat: &'a Catalog, provider: &str, model: &str) -> Candidate<'a> {
        Candidate {
            name: format!("{provider}/{model}"),
            entry: Some(cat.find(provider, model).unwrap()),
            weight: 1,
            signals: Signals::default(),
        }
    }

    fn opts(strategy: Strategy, at: DateTime<Utc>) -> RouteOptions {
        RouteOptions {
            strategy,
            quality_floor: None,
            currency: Currency::Cny,
            at,
            max_cost: None,
            default_max_tokens: 1024,
            explore_per_mille: 100,
        }
    }

    fn names(p: &Plan) -> Vec<String> {
        p.kept().map(|v| v.candidate.clone()).collect()
    }

    fn small() -> Needs {
        Needs {
            prompt_tokens: 1000,
            max_tokens: Some(200),
            ..Default::default()
        }
    }

    /// 2025-06-16 14:00 Beijing (peak) and 02:00 Beijing (DeepSeek off-peak).
    fn peak() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 6, 16, 6, 0, 0).unwrap()
    }
    fn off_peak() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 6, 15, 18, 0, 0).unwrap()
    }

    #[test]
    fn strategy_parses() {
        assert_eq!(
            "free_first".parse::<Strategy>().unwrap(),
            Strategy::FreeFirst
        );
        assert_eq!("Cheapest".parse::<Strategy>().unwrap(), Strategy::Cheapest);
        assert!("fastest".parse::<Strategy>().is_err());
    }

    #[test]
    fn cheapest_orders_by_estimate_in_one_currency() {
        let cat = catalog();
        let cands = vec![
            cand(&cat, "openai", "gpt-4o"),
            cand(&cat, "deepseek", "deepseek-chat"),
            cand(&cat, "openai", "gpt-4o-mini"),
        ];
        let p = plan(
            &cands,
            &small(),
            &opts(Strategy::Cheapest, peak()),
            cat.fx(),
            &mut SplitMix64(1),
        );
        let order = names(&p);
        assert_eq!(order.last().unwrap(), "openai/gpt-4o");
        // every kept estimate is in CNY and sorted
        let costs: Vec<i128> = p
            .kept()
            .map(|v| v.estimate_converted.unwrap().nanos)
            .collect();
        assert!(costs.windows(2).all(|w| w[0] <= w[1]), "{costs:?}");
        assert!(p
            .kept()
            .all(|v| v.estimate_converted.unwrap().currency == Currency::Cny));
        // deepseek-chat at peak (2 + 8 CNY/M): 1000*2 + 200*8 = 3600 nano-per-M units
        let ds = p
            .verdicts
            .iter()
            .find(|v| v.candidate == "deepseek/deepseek-chat")
            .unwrap();
        assert_eq!(
            ds.estimate.unwrap(),
            Money::from_decimal("0.0036", Currency::Cny).unwrap()
        );
        let h = p.header(p.kept().next().unwrap(), 1);
        assert!(h.starts_with("cheapest; 3 candidates; chose "), "{h}");
    }

    #[test]
    fn deepseek_off_peak_changes_the_order() {
        let cat = catalog();
        let cands = vec![
            cand(&cat, "deepseek", "deepseek-chat"),
            cand(&cat, "openai", "gpt-4o-mini"),
        ];
        let at_peak = plan(
            &cands,
            &small(),
            &opts(Strategy::Cheapest, peak()),
            cat.fx(),
            &mut SplitMix64(1),
        );
        let at_night = plan(
            &cands,
            &small(),
            &opts(Strategy::Cheapest, off_peak()),
            cat.fx(),
            &mut SplitMix64(1),
        );
        assert_eq!(names(&at_peak)[0], "openai/gpt-4o-mini");
        assert_eq!(names(&at_night)[0], "deepseek/deepseek-chat");
        assert!(at_night.verdicts[0].reason.contains("off-peak"));
    }

    #[test]
    fn needs_drop_candidates_with_reasons() {
        let cat = catalog();
        let cands = vec![
            cand(&cat, "openai", "o1-mini"), // no tools
            cand(&cat, "moonshot", "moonshot-v1-8k"),
            cand(&cat, "deepseek", "deepseek-chat"),
        ];
        let needs = Needs {
            tools: true,
            prompt_tokens: 9000,
            max_tokens: Some(500),
            ..Default::default()
        };
        let p = plan(
            &cands,
            &needs,
            &opts(Strategy::Cheapest, peak()),
            cat.fx(),
            &mut SplitMix64(1),
        );
        assert_eq!(names(&p), vec!["deepseek/deepseek-chat"]);
        let why = |n: &str| {
            p.verdicts
                .iter()
                .find(|v| v.candidate == n)
                .unwrap()
                .reason
                .clone()
        };
        assert!(why("openai/o1-mini").contains("no tool support"));
        assert!(why("moonshot/moonshot-v1-8k").contains("context window 8192"));
        let vision = Needs {
            vision: true,
            ..small()
        };
        let p = plan(
            &cands,
            &vision,
            &opts(Strategy::Cheapest, peak()),
            cat.fx(),
            &mut SplitMix64(1),
        );
        assert_eq!(p.kept_count(), 0);
        assert!(p.why_none().contains("no vision"));
    }

    #[test]
    fn quality_floor_and_max_cost() {
        let cat = catalog();
        let mut cands = vec![
            cand(&cat, "openai", "gpt-4o"),
            cand(&cat, "openai", "gpt-4o-mini"),
        ];
        // A test-only entry with a score, so this test does not depend on the data.
        let mut low = cat.find("openai", "gpt-4o-mini").unwrap().clone();
        low.quality = Some(crate::catalog::Quality {
            score: Decimal::from_int(1000),
            metric: "test".into(),
            source: "test".into(),
            as_of: None,
        });
        let mut high = cat.find("openai", "gpt-4o").unwrap().clone();
        high.quality = Some(crate::catalog::Quality {
            score: Decimal::from_int(1300),
            metric: "test".into(),
            source: "test".into(),
            as_of: None,
        });
        cands[0].entry = Some(&high);
        cands[1].entry = Some(&low);
        let mut o = opts(Strategy::Cheapest, peak());
        o.quality_floor = Some(Decimal::from_int(1200));
        let p = plan(&cands, &small(), &o, cat.fx(), &mut SplitMix64(1));
        assert_eq!(names(&p), vec!["openai/gpt-4o"]);
        assert!(p.verdicts[1].reason.contains("quality 1000 < floor 1200"));

        let mut o = opts(Strategy::Cheapest, peak());
        o.max_cost = Some(Money::from_decimal("0.005", Currency::Cny).unwrap());
        let p = plan(&cands, &small(), &o, cat.fx(), &mut SplitMix64(1));
        assert_eq!(names(&p), vec!["openai/gpt-4o-mini"]);
        assert!(p.verdicts[1].reason.contains("over x-tollgate-max-cost"));
    }

    #[test]
    fn shipped_quality_scores_drive_the_floor() {
        let cat = catalog();
        let cands = vec![
            cand(&cat, "openai", "gpt-4o-mini"),
            cand(&cat, "deepseek", "deepseek-chat"),
            cand(&cat, "moonshot", "moonshot-v1-8k"),
        ];
        let q = |c: &Candidate<'_>| {
            c.entry
                .unwrap()
                .quality
                .as_ref()
                .map(|q| q.score.to_string())
        };
        assert_eq!(q(&cands[0]).as_deref(), Some("1272"));
        assert_eq!(q(&cands[1]).as_deref(), Some("1318"));
        assert_eq!(q(&cands[2]), None);
        let mut o = opts(Strategy::Cheapest, peak());
        o.quality_floor = Some(Decimal::from_int(1300));
        let p = plan(&cands, &small(), &o, cat.fx(), &mut SplitMix64(1));
        assert_eq!(names(&p), vec!["deepseek/deepseek-chat"]);
        assert!(p
            .why_none()
            .contains("moonshot/moonshot-v1-8k: no quality score (floor 1300)"));
    }

    #[test]
    fn circuit_open_is_dropped() {
        let cat = catalog();
        let mut cands = vec![
            cand(&cat, "deepseek", "deepseek-chat"),
            cand(&cat, "openai", "gpt-4o-mini"),
        ];
        cands[1].signals.circuit_open = Some("5 consecutive failures".into());
        let p = plan(
            &cands,
            &small(),
            &opts(Strategy::Cheapest, peak()),
            cat.fx(),
            &mut SplitMix64(1),
        );
        assert_eq!(names(&p), vec!["deepseek/deepseek-chat"]);
        assert!(p.verdicts[1].reason.starts_with("circuit open"));
    }

    #[test]
    fn free_first_then_spills_to_cheapest_paid() {
        let cat = catalog();
        let mut cands = vec![
            cand(&cat, "openai", "gpt-4o"),
            cand(&cat, "deepseek", "deepseek-chat"),
            cand(&cat, "zhipu", "glm-4-flash"),
        ];
        let at = Utc.with_ymd_and_hms(2025, 6, 16, 6, 0, 0).unwrap();
        let p = plan(
            &cands,
            &small(),
            &opts(Strategy::FreeFirst, at),
            cat.fx(),
            &mut SplitMix64(1),
        );
        assert_eq!(
            names(&p),
            vec![
                "zhipu/glm-4-flash",
                "deepseek/deepseek-chat",
                "openai/gpt-4o"
            ]
        );
        assert!(p.verdicts[0].free);
        cands[2].signals.free_exhausted = Some("rpd 2 of 2 used".into());
        let p = plan(
            &cands,
            &small(),
            &opts(Strategy::FreeFirst, at),
            cat.fx(),
            &mut SplitMix64(1),
        );
        assert_eq!(names(&p), vec!["deepseek/deepseek-chat", "openai/gpt-4o"]);
        assert!(p
            .why_none()
            .contains("free-tier limit reached (rpd 2 of 2 used)"));
    }

    #[test]
    fn free_quota_counts_as_free_until_used_up() {
        let cat = catalog();
        let mut cands = vec![
            cand(&cat, "deepseek", "deepseek-chat"),
            cand(&cat, "qwen", "qwen-max"),
        ];
        let at = peak();
        let p = plan(
            &cands,
            &small(),
            &opts(Strategy::FreeFirst, at),
            cat.fx(),
            &mut SplitMix64(1),
        );
        assert_eq!(names(&p)[0], "qwen/qwen-max");
        assert!(p.verdicts[0].reason.contains("free quota left"));
        cands[1].signals.free_exhausted = Some("quota used".into());
        let p = plan(
            &cands,
            &small(),
            &opts(Strategy::FreeFirst, at),
            cat.fx(),
            &mut SplitMix64(1),
        );
        // Used up: a paid model like the others (still kept, ranked by price).
        assert_eq!(p.kept_count(), 2);
        assert_eq!(names(&p)[0], "deepseek/deepseek-chat");
    }

    #[test]
    fn ordered_keeps_config_order() {
        let cat = catalog();
        let cands = vec![
            cand(&cat, "openai", "gpt-4o"),
            cand(&cat, "deepseek", "deepseek-chat"),
        ];
        let p = plan(
            &cands,
            &small(),
            &opts(Strategy::Ordered, peak()),
            cat.fx(),
            &mut SplitMix64(1),
        );
        assert_eq!(names(&p), vec!["openai/gpt-4o", "deepseek/deepseek-chat"]);
    }

    #[test]
    fn weighted_follows_weights_and_is_deterministic() {
        let cat = catalog();
        let mut cands = vec![
            cand(&cat, "openai", "gpt-4o"),
            cand(&cat, "deepseek", "deepseek-chat"),
        ];
        cands[0].weight = 1;
        cands[1].weight = 3;
        let mut rng = SplitMix64(42);
        let mut first_ds = 0;
        for _ in 0..4000 {
            let p = plan(
                &cands,
                &small(),
                &opts(Strategy::Weighted, peak()),
                cat.fx(),
                &mut rng,
            );
            assert_eq!(p.kept_count(), 2);
            if p.kept().next().unwrap().candidate == "deepseek/deepseek-chat" {
                first_ds += 1;
            }
        }
        // 3/4 expected
        assert!((2800..3200).contains(&first_ds), "{first_ds}");
        let a = plan(
            &cands,
            &small(),
            &opts(Strategy::Weighted, peak()),
            cat.fx(),
            &mut SplitMix64(7),
        );
        let b = plan(
            &cands,
            &small(),
            &opts(Strategy::Weighted, peak()),
            cat.fx(),
            &mut SplitMix64(7),
        );
        assert_eq!(names(&a), names(&b));
        cands[0].weight = 0;
        for s in 0..50 {
            let p = plan(
                &cands,
                &small(),
                &opts(Strategy::Weighted, peak()),
                cat.fx(),
                &mut SplitMix64(s),
            );
            assert_eq!(names(&p)[0], "deepseek/deepseek-chat");
        }
    }

    /// A scripted random source.
    struct Script(Vec<u64>);
    impl RandomSource for Script {
        fn next_u64(&mut self) -> u64 {
            if self.0.is_empty() {
                0
            } else {
                self.0.remove(0)
            }
        }
    }

    #[test]
    fn latency_prefers_fastest_unmeasured_first_and_explores() {
        let cat = catalog();
        let mut cands = vec![
            cand(&cat, "openai", "gpt-4o"),
            cand(&cat, "deepseek", "deepseek-chat"),
            cand(&cat, "openai", "gpt-4o-mini"),
        ];
        cands[0].signals.ttft_ewma_ms = Some(900.0);
        cands[1].signals.ttft_ewma_ms = Some(120.0);
        cands[2].signals.ttft_ewma_ms = Some(400.0);
        let o = opts(Strategy::Latency, peak());
        // 999 >= 100 per mille: no exploration.
        let p = plan(&cands, &small(), &o, cat.fx(), &mut Script(vec![999]));
        assert!(!p.explored);
        assert_eq!(
            names(&p),
            vec![
                "deepseek/deepseek-chat",
                "openai/gpt-4o-mini",
                "openai/gpt-4o"
            ]
        );
        // 5 < 100: explore; then pick index 1 + (1 % 2) = 2 -> gpt-4o to the front.
        let p = plan(&cands, &small(), &o, cat.fx(), &mut Script(vec![5, 1]));
        assert!(p.explored);
        assert_eq!(names(&p)[0], "openai/gpt-4o");
        assert!(p.header(p.kept().next().unwrap(), 1).ends_with("exploring"));
        // An unmeasured candidate goes first, without exploring.
        cands[0].signals.ttft_ewma_ms = None;
        let p = plan(&cands, &small(), &o, cat.fx(), &mut Script(vec![5, 1]));
        assert_eq!(names(&p)[0], "openai/gpt-4o");
        assert!(!p.explored);
    }

    #[test]
    fn estimate_applies_tiers_and_fee() {
        let cat = catalog();
        // Every catalog model with a price today can be estimated, and the estimate
        // never exceeds the reservation's worst case at peak.
        let at = peak();
        for e in cat.models() {
            if e.price_at(at).is_none() {
                continue;
            }
            let est = estimate(e, 3000, 700, at).unwrap();
            let max = crate::pricing::estimate_max_cost(e, 3000, 700, at).unwrap();
            assert!(
                est.amount.nanos <= max.amount.nanos,
                "{}/{}",
                e.provider,
                e.id
            );
        }
    }
}
