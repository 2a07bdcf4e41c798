//! Metering one request: admission (rate limits, then a budget reservation of the
//! worst-case cost) before the upstream call, and settlement after it (the cost from
//! the vendor's usage at the price in force, budgets and token limits corrected, one
//! ledger row committed).
//!
//! A [`Ticket`] is the request's claim on limits and budgets. It is settled exactly once:
//! by [`Ticket::settle`] on every path that can wait for the ledger, or, if the request
//! is abandoned (its client went away while tollgate waited on the upstream), by `Drop`,
//! which settles with an estimate flagged as such and writes the row without waiting.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tollgate_core::catalog::Conversion;
use tollgate_core::chat::{ChatRequest, Usage};
use tollgate_core::error::ErrorKind;
use tollgate_core::pricing::{cost_of, estimate_max_cost};
use tollgate_core::{Currency, GatewayError, ModelEntry, Money};
use tollgate_store::{KeyRecord, LedgerRow};

use crate::budget::{Budget, Period};
use crate::limits::{self, Spec};
use crate::state::{AppState, KeyMeta, Resolved};
use crate::tokens;
use crate::RequestId;

/// Reservations per budget: (budget id, amount in its currency, currency).
type Reservations = Vec<(String, i128, Currency)>;

/// How a request ended, as the ledger records it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What the vendor reported, if it did.
    pub usage: Option<Usage>,
    /// Completion tokens tollgate counted itself (what a cut stream delivered), used
    /// when the vendor reported nothing.
    pub completion_estimate: u64,
    /// Whether the upstream was reached at all (a refused or unreachable call costs
    /// nothing).
    pub upstream_reached: bool,
    pub status: &'static str,
    pub http_status: u16,
    pub ttft_ms: Option<i64>,
}

/// The cost a settled request carries back to the client.
#[derive(Debug, Clone)]
pub struct Priced {
    /// In the vendor's currency; `None` when the model has no catalog price.
    pub cost: Option<Money>,
    pub conversion: Option<Conversion>,
    pub usage: Usage,
}

impl Priced {
    /// `x-tollgate-cost`: `0.000412 CNY`, or `unpriced`.
    pub fn header(&self) -> String {
        self.cost
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_else(|| "unpriced".to_owned())
    }

    /// `x-tollgate-cost-converted`: `0.000057 USD; rate USD/CNY 7.1268 (2026-11)`.
    pub fn converted_header(&self) -> Option<String> {
        self.conversion.as_ref().map(|c| {
            format!(
                "{}; rate {}/{} {} ({})",
                c.amount, c.rate_base, c.rate_quote, c.rate, c.rate_month
            )
        })
    }
}

/// A request's claim on limits and budgets, until settled.
pub struct Ticket {
    state: Arc<AppState>,
    row: LedgerRow,
    entry: Option<Arc<ModelEntry>>,
    prompt_estimate: u64,
    budgets: Vec<(String, i128, Currency)>,
    scopes: Vec<(Arc<str>, Spec)>,
    tpm_reserved: u64,
    admitted_ms: i64,
    started: Instant,
    /// The worst case reserved, in the vendor's currency.
    pub max_cost: Option<Money>,
    /// `x-ratelimit-*` headers for the key.
    pub rate_headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
    /// Earlier attempts of a routed request (failed candidates), for the ledger row.
    attempts: Vec<serde_json::Value>,
    settled: bool,
}

fn convert(state: &AppState, m: &Money, to: Currency, at: DateTime<Utc>) -> Option<Conversion> {
    state.catalog.fx().convert(m, to, at.date_naive()).ok()
}

fn amount_in(
    state: &AppState,
    m: &Money,
    to: Currency,
    at: DateTime<Utc>,
) -> Result<i128, GatewayError> {
    if m.currency == to {
        return Ok(m.nanos);
    }
    convert(state, m, to, at)
        .map(|c| c.amount.nanos)
        .ok_or_else(|| {
            tracing::error!(from = %m.currency, to = %to, "no FX rate");
            GatewayError::internal()
        })
}

/// The budgets that apply to a key (its own and its group's) and its rate-limit scope.
/// Made once per key and kept while the key's budget spec, group and name stay the same.
pub fn key_meta(state: &AppState, key: &KeyRecord) -> Result<Arc<KeyMeta>, GatewayError> {
    if let Ok(m) = state.key_budgets.read() {
        if let Some((spec, group, name, b)) = m.get(&key.id) {
            if *spec == key.budget && *group == key.group && *name == key.name {
                return Ok(b.clone());
            }
        }
    }
    let budgets = budgets_for_config(&state.config, key).map_err(|e| {
        tracing::error!(key = %key.id, "{e}");
        GatewayError::internal()
    })?;
    let b = Arc::new(KeyMeta {
        budgets,
        rate_scope: Arc::from(format!("key '{}'", key.name)),
    });
    if let Ok(mut m) = state.key_budgets.write() {
        if m.len() > 100_000 {
            m.clear();
        }
        m.insert(
            key.id.clone(),
            (
                key.budget.clone(),
                key.group.clone(),
                key.name.clone(),
                b.clone(),
            ),
        );
    }
    Ok(b)
}

/// The budgets of [`key_meta`], from a config alone (for the CLI).
pub fn budgets_for_config(config: &crate::Config, key: &KeyRecord) -> Result<Vec<Budget>, String> {
    let mut out = Vec::new();
    let bad = |e: GatewayError| e.message;
    if let Some(spec) = &key.budget {
        out.push(
            parse_budget(
                &format!("key:{}", key.id),
                &format!("key '{}'", key.name),
                spec,
            )
            .map_err(bad)?,
        );
    }
    if let Some(g) = &key.group {
        if let Some(spec) = config.groups.get(g) {
            out.push(
                parse_budget(&format!("group:{g}"), &format!("group '{g}'"), spec).map_err(bad)?,
            );
        }
    }
    Ok(out)
}

/// A stored or configured budget spec, validated.
pub fn parse_budget(
    id: &str,
    owner: &str,
    spec: &tollgate_store::BudgetSpec,
) -> Result<Budget, GatewayError> {
    let bad = |m: String| {
        tracing::error!(budget = id, "{m}");
        GatewayError::internal()
    };
    let currency: Currency = spec
        .currency
        .parse()
        .map_err(|_| bad(format!("bad currency {}", spec.currency)))?;
    let limit =
        Money::from_decimal(&spec.amount, currency).map_err(|e| bad(format!("bad amount: {e}")))?;
    let period: Period = spec.period.parse().map_err(bad)?;
    let utc_offset_minutes = match &spec.time_zone {
        Some(tz) => tollgate_core::catalog::zone_offset(tz)
            .ok_or_else(|| bad(format!("bad time zone {tz}")))?,
        None => Budget::default_offset(currency),
    };
    Ok(Budget {
        id: id.to_owned(),
        owner: owner.to_owned(),
        limit,
        period,
        utc_offset_minutes,
    })
}

/// Spend of a budget in its current window, from the ledger (converted with dated FX).
pub fn spent_in_window(
    catalog: &tollgate_core::Catalog,
    ledger: &dyn tollgate_store::LedgerStore,
    b: &Budget,
    key: &KeyRecord,
    now: DateTime<Utc>,
) -> Result<i128, String> {
    let (start, _) = b.window(now);
    let rows = if b.id.starts_with("group:") {
        ledger.spend_since(None, key.group.as_deref(), start)
    } else {
        ledger.spend_since(Some(&key.id), None, start)
    }
    .map_err(|e| e.to_string())?;
    let mut spent: i128 = 0;
    for (ts, nanos, cur) in rows {
        let Ok(cur) = cur.parse::<Currency>() else {
            continue;
        };
        let m = Money::new(i128::from(nanos), cur);
        if cur == b.limit.currency {
            spent += m.nanos;
        } else {
            let at = DateTime::from_timestamp_millis(ts)
                .unwrap_or(now)
                .date_naive();
            let c = catalog
                .fx()
                .convert(&m, b.limit.currency, at)
                .map_err(|e| e.to_string())?;
            spent += c.amount.nanos;
        }
    }
    Ok(spent)
}

/// Makes sure a budget's state is loaded: its spend in the current window, from the
/// ledger.
async fn ensure_loaded(
    state: &Arc<AppState>,
    b: &Budget,
    key: &KeyRecord,
    now: DateTime<Utc>,
) -> Result<(), GatewayError> {
    if state.budgets.is_loaded(b) {
        return Ok(());
    }
    let _one_at_a_time = state.budgets.loading.lock().await;
    if state.budgets.is_loaded(b) {
        return Ok(());
    }
    let st = state.clone();
    let (b2, key2) = (b.clone(), key.clone());
    let spent = tokio::task::spawn_blocking(move || {
        st.ledger.sync()?;
        spent_in_window(&st.catalog, st.ledger_store.as_ref(), &b2, &key2, now)
    })
    .await
    .map_err(|_| GatewayError::internal())?
    .map_err(|e| {
        tracing::error!(error = %e, "reading spend failed");
        GatewayError::internal()
    })?;
    state.budgets.load(b.clone(), spent, now);
    Ok(())
}

/// Rate limits, then the budget reservation. Refusals are 429s.
pub async fn admit(
    state: &Arc<AppState>,
    rid: &RequestId,
    key: &KeyRecord,
    req: &ChatRequest,
    r: &Resolved,
) -> Result<Ticket, GatewayError> {
    let now = Utc::now();
    let now_ms = now.timestamp_millis();
    let entry = r.entry.clone();
    let kind = r.provider.cfg.kind;
    let count = tokens::count(req, kind, &r.model);
    let mut prompt_estimate = count.estimate;
    // Prompt tokens to reserve: first the cheap bound; tiktoken's exact count only when
    // that does not fit (see `tokens`).
    let mut prompt_reserve = count.reserve;
    let mut exact_done = !count.exact_possible;
    let mut go_exact = |prompt_reserve: &mut u64, prompt_estimate: &mut u64| -> bool {
        if exact_done {
            return false;
        }
        exact_done = true;
        match tokens::exact_reservation(req, kind, &r.model) {
            Some(e) if e < *prompt_reserve => {
                *prompt_reserve = e;
                *prompt_estimate = tokens::prompt_tokens_exact(req, kind, &r.model);
                true
            }
            _ => false,
        }
    };
    let max_out = req
        .max_output_tokens()
        .map(u64::from)
        .or(entry.as_ref().map(|e| e.max_output).filter(|m| *m > 0))
        .unwrap_or(4_096);

    let meta = key_meta(state, key)?;
    let mut scopes: Vec<(Arc<str>, Spec)> = Vec::new();
    if key.rpm.is_some() || key.tpm.is_some() {
        scopes.push((
            meta.rate_scope.clone(),
            Spec {
                rpm: key.rpm,
                tpm: key.tpm,
            },
        ));
    }
    let model_id = r.name();
    if let Some(limit) = r.provider.limit_of(&r.model) {
        scopes.push(limit.clone());
    }
    let mut rate_headers = Vec::new();
    if !scopes.is_empty() {
        let mut admitted = state
            .limits
            .admit(&scopes, prompt_reserve + max_out, now_ms);
        if matches!(&admitted, Err(refusal) if refusal.tokens)
            && go_exact(&mut prompt_reserve, &mut prompt_estimate)
        {
            admitted = state
                .limits
                .admit(&scopes, prompt_reserve + max_out, now_ms);
        }
        match admitted {
            Ok(Some(rem)) if scopes[0].0.starts_with("key ") => {
                rate_headers = limits::headers(&rem)
            }
            Ok(_) => {}
            Err(refusal) => {
                return Err(GatewayError::new(ErrorKind::RateLimited, refusal.message)
                    .with_code("rate_limit_exceeded")
                    .with_retry_after(Some(refusal.retry_after_secs)))
            }
        }
    }
    let release_tokens = |held: u64| state.limits.settle_tokens(&scopes, held, 0, now_ms);

    // Reserve before the ticket exists: a refused request leaves no ledger row.
    let mut max_cost = None;
    let mut reserved = Vec::new();
    let budgets = &meta.budgets;
    if let Some(e) = &entry {
        for b in budgets.iter() {
            if let Err(err) = ensure_loaded(state, b, key, now).await {
                release_tokens(prompt_reserve + max_out);
                return Err(err);
            }
        }
        let amounts = |prompt: u64| -> Result<(Money, Reservations), GatewayError> {
            let max = estimate_max_cost(e, prompt, max_out, now).map_err(|err| {
                tracing::error!(error = %err, model = %model_id, "cannot estimate cost");
                GatewayError::internal()
            })?;
            let mut items = Vec::new();
            for b in budgets.iter() {
                items.push((
                    b.id.clone(),
                    amount_in(state, &max.amount, b.limit.currency, now)?,
                    b.limit.currency,
                ));
            }
            Ok((max.amount, items))
        };
        let try_reserve = |items: &[(String, i128, Currency)]| {
            let reserve: Vec<(String, i128)> =
                items.iter().map(|(i, a, _)| (i.clone(), *a)).collect();
            state.budgets.reserve(&reserve, now)
        };
        let (mut max, mut items) = match amounts(prompt_reserve) {
            Ok(x) => x,
            Err(err) => {
                release_tokens(prompt_reserve + max_out);
                return Err(err);
            }
        };
        let mut outcome = if budgets.is_empty() {
            Ok(())
        } else {
            try_reserve(&items)
        };
        if outcome.is_err() {
            let before = prompt_reserve + max_out;
            if go_exact(&mut prompt_reserve, &mut prompt_estimate) {
                // Keep the request's RPM slot; shrink what TPM holds to the exact count.
                state
                    .limits
                    .settle_tokens(&scopes, before, prompt_reserve + max_out, now_ms);
                match amounts(prompt_reserve) {
                    Ok((m, i)) => {
                        max = m;
                        items = i;
                        outcome = try_reserve(&items);
                    }
                    Err(err) => {
                        release_tokens(prompt_reserve + max_out);
                        return Err(err);
                    }
                }
            }
        }
        if let Err(refusal) = outcome {
            release_tokens(prompt_reserve + max_out);
            return Err(
                GatewayError::new(ErrorKind::InsufficientQuota, refusal.message)
                    .with_code("insufficient_quota"),
            );
        }
        max_cost = Some(max);
        if !budgets.is_empty() {
            reserved = items;
        }
    } else if !budgets.is_empty() {
        release_tokens(prompt_reserve + max_out);
        // A budget cannot be enforced on a model without a price: refuse rather than
        // spend blindly.
        return Err(GatewayError::new(
            ErrorKind::InsufficientQuota,
            format!(
                "The model '{model_id}' has no price in the catalog, so the {} cannot be enforced for it",
                budgets[0].describe()
            ),
        )
        .with_code("insufficient_quota"));
    }
    let reserve_tokens = prompt_reserve + max_out;
    Ok(Ticket {
        state: state.clone(),
        row: LedgerRow {
            id: rid.0.clone(),
            ts_ms: now_ms,
            key_id: key.id.clone(),
            key_name: key.name.clone(),
            group: key.group.clone(),
            requested_model: req.model.clone(),
            provider: r.provider.cfg.id.clone(),
            model: r.model.clone(),
            stream: req.is_stream(),
            report_currency: state.config.reporting_currency.clone(),
            ..Default::default()
        },
        entry: entry.clone(),
        prompt_estimate,
        budgets: reserved,
        scopes,
        tpm_reserved: reserve_tokens,
        admitted_ms: now_ms,
        started: Instant::now(),
        max_cost,
        rate_headers,
        attempts: Vec::new(),
        settled: false,
    })
}

impl Ticket {
    /// Records a failed or skipped attempt of a routed request (one ledger row holds
    /// them all; the row's provider/model is the candidate that served).
    pub fn record_attempt(&mut self, attempt: serde_json::Value) {
        self.attempts.push(attempt);
    }

    /// Moves the request to another candidate before it is tried: the previous
    /// candidate's budget reservation is released (its attempt failed before the vendor
    /// accepted the request, so it cost nothing) and the new candidate's worst case is
    /// reserved. Re-reserving per attempt, rather than the maximum over all candidates
    /// up front, keeps a cheap request from being refused because an expensive fallback
    /// exists, and never lets an attempt run unreserved. The key's RPM/TPM were counted
    /// once at admission: one client request is one request.
    pub fn retarget(
        &mut self,
        req: &ChatRequest,
        r: &Resolved,
        now: DateTime<Utc>,
    ) -> Result<(), GatewayError> {
        let release: Vec<(String, i128, i128)> = self
            .budgets
            .iter()
            .map(|(id, reserved, _)| (id.clone(), *reserved, 0))
            .collect();
        self.state.budgets.settle(&release, now);
        let currencies: Vec<(String, Currency)> =
            self.budgets.drain(..).map(|(id, _, c)| (id, c)).collect();
        match self.reserve_for(req, r, &currencies, now) {
            Ok(items) => {
                self.budgets = items;
                Ok(())
            }
            Err(e) => {
                // Keep the budgets (with nothing reserved) so that the next candidate
                // is reserved against them too.
                self.budgets = currencies.into_iter().map(|(id, c)| (id, 0, c)).collect();
                Err(e)
            }
        }
    }

    /// Points the ticket at `r` and reserves its worst case against `budgets`.
    fn reserve_for(
        &mut self,
        req: &ChatRequest,
        r: &Resolved,
        currencies: &[(String, Currency)],
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, i128, Currency)>, GatewayError> {
        let model_id = || format!("{}/{}", r.provider.cfg.id, r.model);
        self.row.provider = r.provider.cfg.id.clone();
        self.row.model = r.model.clone();
        self.entry = r.entry.clone();
        let kind = r.provider.cfg.kind;
        let count = tokens::count(req, kind, &r.model);
        self.prompt_estimate = count.estimate;
        self.max_cost = None;
        let Some(e) = r.entry.clone() else {
            if currencies.is_empty() {
                return Ok(Vec::new());
            }
            return Err(GatewayError::new(
                ErrorKind::InsufficientQuota,
                format!("The model '{}' has no price in the catalog, so budgets cannot be enforced for it", model_id()),
            )
            .with_code("insufficient_quota"));
        };
        let max_out = req
            .max_output_tokens()
            .map(u64::from)
            .or(Some(e.max_output).filter(|m| *m > 0))
            .unwrap_or(4_096);
        let reserve = |prompt: u64| -> Result<(Money, Reservations), GatewayError> {
            let max = estimate_max_cost(&e, prompt, max_out, now).map_err(|err| {
                tracing::error!(error = %err, model = %model_id(), "cannot estimate cost");
                GatewayError::internal()
            })?;
            let mut items = Vec::new();
            for (id, cur) in currencies {
                items.push((
                    id.clone(),
                    amount_in(&self.state, &max.amount, *cur, now)?,
                    *cur,
                ));
            }
            let ids: Vec<(String, i128)> = items.iter().map(|(i, a, _)| (i.clone(), *a)).collect();
            self.state.budgets.reserve(&ids, now).map_err(|refusal| {
                GatewayError::new(ErrorKind::InsufficientQuota, refusal.message)
                    .with_code("insufficient_quota")
            })?;
            Ok((max.amount, items))
        };
        // The cheap bound first; tiktoken's exact count only if that does not fit.
        let (max, items) = match reserve(count.reserve) {
            Err(err) if err.kind == ErrorKind::InsufficientQuota && count.exact_possible => {
                match tokens::exact_reservation(req, kind, &r.model) {
                    Some(exact) if exact < count.reserve => reserve(exact)?,
                    _ => return Err(err),
                }
            }
            other => other?,
        };
        self.max_cost = Some(max);
        Ok(items)
    }

    /// The prompt tokens tollgate counted before the call.
    pub fn prompt_estimate(&self) -> u64 {
        self.prompt_estimate
    }

    /// Milliseconds since admission.
    pub fn elapsed_ms(&self) -> i64 {
        self.started.elapsed().as_millis() as i64
    }

    /// Prices the outcome, settles budgets and limits, and commits the ledger row. An
    /// `Err` means the row could not be written: the caller must not deliver the answer
    /// as if it were recorded.
    pub fn settle(mut self, outcome: Outcome) -> Result<Priced, GatewayError> {
        let (row, priced) = self.price_and_release(&outcome);
        self.settled = true;
        self.state.metrics.record(&row);
        self.state.ledger.append(row).map_err(|failed| {
            let (e, row) = &*failed;
            tracing::error!(error = %e, request_id = %row.id, "ledger write failed");
            GatewayError::new(
                ErrorKind::Internal,
                "the gateway could not record this request; it was not delivered",
            )
        })?;
        Ok(priced)
    }

    fn price_and_release(&mut self, outcome: &Outcome) -> (LedgerRow, Priced) {
        let now = Utc::now();
        let (usage, source) = match (&outcome.usage, outcome.upstream_reached) {
            (Some(u), _) => (u.clone(), "vendor"),
            (None, true) => (
                Usage {
                    prompt_tokens: self.prompt_estimate,
                    completion_tokens: outcome.completion_estimate,
                    ..Default::default()
                },
                "estimated",
            ),
            (None, false) => (Usage::default(), "none"),
        };
        // Settling happens once (settle or drop): the row moves out of the ticket.
        let mut row = std::mem::take(&mut self.row);
        let mut priced = Priced {
            cost: None,
            conversion: None,
            usage: usage.clone(),
        };
        if let Some(e) = &self.entry {
            match cost_of(
                e,
                &usage,
                DateTime::from_timestamp_millis(row.ts_ms).unwrap_or(now),
            ) {
                Ok(c) => {
                    row.price_id = Some(c.price_id.clone());
                    priced.cost = Some(c.amount);
                }
                Err(err) => tracing::error!(error = %err, request_id = %row.id, "pricing failed"),
            }
        }
        let cost = priced.cost.unwrap_or_else(|| Money::zero(Currency::Usd));
        let report: Currency = row.report_currency.parse().unwrap_or(Currency::Cny);
        row.cost_nanos = i64::try_from(cost.nanos).unwrap_or(i64::MAX);
        row.cost_currency = cost.currency.to_string();
        if cost.currency == report {
            row.report_cost_nanos = row.cost_nanos;
        } else if let Some(conv) = convert(&self.state, &cost, report, now) {
            row.report_cost_nanos = i64::try_from(conv.amount.nanos).unwrap_or(i64::MAX);
            row.fx_rate = Some(format!(
                "{}/{} {}",
                conv.rate_base, conv.rate_quote, conv.rate
            ));
            row.fx_month = Some(conv.rate_month.clone());
            priced.conversion = Some(conv);
        }
        // Budgets: replace each reservation by the actual cost in its currency.
        let settle: Vec<(String, i128, i128)> = self
            .budgets
            .iter()
            .map(|(id, reserved, cur)| {
                let actual = if cost.currency == *cur {
                    cost.nanos
                } else {
                    convert(&self.state, &cost, *cur, now)
                        .map(|c| c.amount.nanos)
                        .unwrap_or(*reserved)
                };
                (id.clone(), *reserved, actual)
            })
            .collect();
        self.state.budgets.settle(&settle, now);
        self.state.limits.settle_tokens(
            &self.scopes,
            self.tpm_reserved,
            usage.total_tokens(),
            self.admitted_ms,
        );
        row.prompt_tokens = usage.prompt_tokens as i64;
        row.completion_tokens = usage.completion_tokens as i64;
        row.cached_tokens = usage.cached_tokens as i64;
        row.cache_write_tokens = usage.cache_write_tokens as i64;
        row.reasoning_tokens = usage.reasoning_tokens as i64;
        row.usage_source = source.to_owned();
        row.latency_ms = self.elapsed_ms();
        row.ttft_ms = outcome.ttft_ms;
        row.status = outcome.status.to_owned();
        row.http_status = i64::from(outcome.http_status);
        row.attempts = attempts_json(
            &self.attempts,
            &FinalAttempt {
                provider: &row.provider,
                model: &row.model,
                outcome: outcome.status,
                http_status: outcome.http_status,
                latency_ms: row.latency_ms,
            },
        );
        if outcome.upstream_reached
            && usage.total_tokens() > 0
            && crate::route::has_free_tier(&self.state, self.entry.as_deref(), || {
                format!("{}/{}", row.provider, row.model)
            })
        {
            self.state.health.free_tokens(
                &format!("{}/{}", row.provider, row.model),
                usage.total_tokens(),
                now,
            );
        }
        (row, priced)
    }
}

/// The last attempt of a request, as its ledger row's `attempts` records it.
#[derive(serde::Serialize)]
struct FinalAttempt<'a> {
    provider: &'a str,
    model: &'a str,
    outcome: &'a str,
    http_status: u16,
    latency_ms: i64,
}

/// `[earlier..., last]` as JSON text, without building a `serde_json::Value`. (Writing
/// these into a `Vec` cannot fail: no I/O, and every map key is a string.)
fn attempts_json(earlier: &[serde_json::Value], last: &FinalAttempt<'_>) -> String {
    let mut out = Vec::with_capacity(128);
    out.push(b'[');
    for a in earlier {
        let _ = serde_json::to_writer(&mut out, a);
        out.push(b',');
    }
    let _ = serde_json::to_writer(&mut out, last);
    out.push(b']');
    String::from_utf8(out).unwrap_or_else(|_| "[]".to_owned())
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Abandoned while the upstream was working: the vendor has likely billed the
        // prompt. Settle with the estimate, flagged, and write without waiting.
        let (row, _) = self.price_and_release(&Outcome {
            usage: None,
            completion_estimate: 0,
            upstream_reached: true,
            status: "client_disconnected",
            http_status: 499,
            ttft_ms: None,
        });
        self.settled = true;
        self.state.metrics.record(&row);
        if let Err(failed) = self.state.ledger.append(row) {
            let (e, row) = &*failed;
            tracing::error!(error = %e, request_id = %row.id, "ledger write failed; a row was lost");
        }
    }
}
