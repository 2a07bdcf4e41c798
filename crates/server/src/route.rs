//! Routing a request: a virtual model's candidates (expanded once from config), the per-request controls (headers), and the plan with health signals.
//!
//! The decision itself is pure ([`tollgate_core::routing::plan`]); this module feeds it
//! what the server knows (catalog entries, open circuits, TTFT EWMAs, free-tier usage,
//! the key's allowed models) and hands the ordered candidates to the attempt loop in
//! [`crate::chat`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use tollgate_core::error::ErrorKind;
use tollgate_core::routing::{self, Candidate, Needs, Plan, RouteOptions, Signals, Strategy};
use tollgate_core::{ChatRequest, Currency, GatewayError, Money};
use tollgate_store::KeyRecord;

use crate::config::{Retry, VirtualModel};
use crate::health::FreeLimits;
use crate::state::{AppState, Resolved};
use crate::tokens;

/// A virtual model with its candidates resolved against the configured providers.
pub struct VirtualRoute {
    pub cfg: VirtualModel,
    pub candidates: Vec<Resolved>,
}

/// Expands a virtual model: its explicit candidates (which must be served), then every
/// served catalog model its filter matches.
pub fn expand(state: &AppState, vm: &VirtualModel) -> Result<VirtualRoute, String> {
    let path = format!("virtual_models.{}", vm.name);
    let mut candidates: Vec<Resolved> = Vec::new();
    for c in &vm.candidates {
        let r = state
            .resolve(c)
            .map_err(|e| format!("{path}.candidates: '{c}': {}", e.message))?;
        if !candidates.iter().any(|x| x.name() == r.name()) {
            candidates.push(r);
        }
    }
    if let Some(f) = &vm.filter {
        for (id, p) in &state.providers {
            if !f.providers.is_empty() && !f.providers.contains(id) {
                continue;
            }
            for m in &p.models {
                let Some(e) = p.entries.get(m) else { continue };
                let caps_ok = f
                    .capabilities
                    .iter()
                    .all(|c| e.capabilities.has(c).unwrap_or(false));
                let quality_ok = match &f.min_quality {
                    None => true,
                    Some(min) => e.quality.as_ref().is_some_and(|q| q.score >= *min),
                };
                let free_ok =
                    !f.free || routing::free_by_price(e, Utc::now()) || routing::has_free_quota(e);
                if caps_ok && quality_ok && free_ok {
                    let r = state
                        .resolve(&format!("{id}/{m}"))
                        .map_err(|e| format!("{path}.filter: {}", e.message))?;
                    if !candidates.iter().any(|x| x.name() == r.name()) {
                        candidates.push(r);
                    }
                }
            }
        }
    }
    if candidates.is_empty() {
        return Err(format!(
            "{path}: no served model matches its candidates or filter"
        ));
    }
    for w in vm.weights.keys() {
        if !candidates.iter().any(|c| c.name() == w) {
            return Err(format!(
                "{path}.weights: '{w}' is not one of its candidates"
            ));
        }
    }
    Ok(VirtualRoute {
        cfg: vm.clone(),
        candidates,
    })
}

/// The client's routing controls, from request headers.
#[derive(Debug, Clone, Default)]
pub struct Controls {
    /// `x-tollgate-max-cost: 0.01` (routing currency) or `0.01 USD`.
    pub max_cost: Option<Money>,
    /// `x-tollgate-strategy: cheapest`.
    pub strategy: Option<Strategy>,
    /// `x-tollgate-now: RFC3339`, honoured only with `testing.clock_override`.
    pub now: Option<DateTime<Utc>>,
}

impl Controls {
    /// Reads the headers; a malformed value is a 400 naming the header.
    pub fn from_headers(state: &AppState, h: &HeaderMap) -> Result<Controls, GatewayError> {
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
        let mut c = Controls::default();
        if let Some(v) = get("x-tollgate-max-cost") {
            let bad = || {
                GatewayError::invalid_param(
                    "x-tollgate-max-cost",
                    &format!("Invalid x-tollgate-max-cost '{v}': write an amount, optionally with a currency, like '0.01' or '0.01 USD'"),
                )
            };
            let money = match v.split_once(' ') {
                Some((amount, cur)) => {
                    let cur: Currency = cur.trim().parse().map_err(|_| bad())?;
                    Money::from_decimal(amount.trim(), cur).map_err(|_| bad())?
                }
                None => Money::from_decimal(v, currency(state)).map_err(|_| bad())?,
            };
            if money.nanos < 0 {
                return Err(bad());
            }
            c.max_cost = Some(money);
        }
        if let Some(v) = get("x-tollgate-strategy") {
            c.strategy = Some(
                v.parse()
                    .map_err(|e: String| GatewayError::invalid_param("x-tollgate-strategy", &e))?,
            );
        }
        if state.config.routing.clock_override {
            if let Some(v) = get("x-tollgate-now") {
                c.now = Some(
                    DateTime::parse_from_rfc3339(v)
                        .map_err(|_| {
                            GatewayError::invalid_param(
                                "x-tollgate-now",
                                "x-tollgate-now must be RFC 3339",
                            )
                        })?
                        .with_timezone(&Utc),
                );
            }
        }
        Ok(c)
    }
}

/// The currency routing compares costs in.
pub fn currency(state: &AppState) -> Currency {
    state.config.routing.currency.unwrap_or_else(|| {
        state
            .config
            .reporting_currency
            .parse()
            .unwrap_or(Currency::Cny)
    })
}

/// The free-tier limits tollgate enforces for a candidate: config's, else the catalog's.
/// Whether `provider/model` has free-tier limits (the catalog's or the config's), so its
/// usage must be counted. Other models are only marked used up by a vendor's 429.
pub fn has_free_tier(
    state: &AppState,
    entry: Option<&tollgate_core::catalog::ModelEntry>,
    name: impl FnOnce() -> String,
) -> bool {
    entry.is_some_and(|e| e.free_tier.is_some())
        || (!state.config.routing.free_tiers.is_empty()
            && state.config.routing.free_tiers.contains_key(&name()))
}

pub fn free_limits(state: &AppState, r: &Resolved) -> Option<FreeLimits> {
    if let Some(l) = state.config.routing.free_tiers.get(r.name()) {
        return Some(*l);
    }
    r.entry
        .as_ref()
        .and_then(|e| e.free_tier.as_ref())
        .map(FreeLimits::from_catalog)
}

/// The candidates to try, in order, and how.
pub struct Route {
    /// The plan, for a virtual model.
    pub plan: Option<Plan>,
    /// Kept candidates in the order to try them, with their plan verdict index.
    pub tries: Vec<(Resolved, Option<usize>)>,
    pub retry: Retry,
}

impl Route {
    /// A direct `provider/model` request: one candidate, no fallback.
    pub fn direct(r: Resolved) -> Route {
        Route {
            plan: None,
            tries: vec![(r, None)],
            retry: Retry {
                max_attempts: 1,
                ..Retry::default()
            },
        }
    }

    /// The first candidate (admission reserves for it).
    pub fn first(&self) -> Result<Resolved, GatewayError> {
        self.tries
            .first()
            .map(|(r, _)| r.clone())
            .ok_or_else(GatewayError::internal)
    }

    /// `x-tollgate-route` for the candidate at `verdict`, on attempt `attempt`.
    pub fn header(&self, verdict: Option<usize>, attempt: usize) -> Option<String> {
        let plan = self.plan.as_ref()?;
        plan.verdicts.get(verdict?).map(|v| plan.header(v, attempt))
    }
}

static RNG: Mutex<Option<routing::SplitMix64>> = Mutex::new(None);

/// The process's random source for routing (seeded from the clock once).
struct ProcessRng;

impl routing::RandomSource for ProcessRng {
    fn next_u64(&mut self) -> u64 {
        let Ok(mut g) = RNG.lock() else {
            return 0;
        };
        let rng = g.get_or_insert_with(|| {
            routing::SplitMix64(
                Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64
                    ^ u64::from(std::process::id()),
            )
        });
        rng.next_u64()
    }
}

/// A random number for jitter.
pub fn random_u64() -> u64 {
    use routing::RandomSource;
    ProcessRng.next_u64()
}

/// Plans a virtual model for this request and key.
pub fn plan_virtual(
    state: &AppState,
    vr: &VirtualRoute,
    key: &KeyRecord,
    req: &ChatRequest,
    controls: &Controls,
) -> Result<Route, GatewayError> {
    let allowed_all = key.allows("", &vr.cfg.name);
    let usable: Vec<&Resolved> = vr
        .candidates
        .iter()
        .filter(|r| allowed_all || key.allows(&r.provider.cfg.id, &r.model))
        .collect();
    if usable.is_empty() {
        return Err(GatewayError::new(
            ErrorKind::PermissionDenied,
            format!(
                "This API key may not use the model '{}' nor any of its candidates",
                vr.cfg.name
            ),
        )
        .with_code("model_not_allowed")
        .with_param("model"));
    }
    let now = controls.now.unwrap_or_else(Utc::now);
    let plan = plan_with(
        state,
        &vr.cfg,
        &usable,
        req,
        controls.strategy,
        controls.max_cost,
        now,
    );
    let tries: Vec<(Resolved, Option<usize>)> = plan
        .verdicts
        .iter()
        .enumerate()
        .filter(|(_, v)| v.kept)
        .filter_map(|(i, v)| usable.get(v.index).map(|r| ((*r).clone(), Some(i))))
        .collect();
    if tries.is_empty() {
        let all_open = plan
            .verdicts
            .iter()
            .all(|v| v.reason.starts_with("circuit open"));
        let over_cost = plan
            .verdicts
            .iter()
            .any(|v| v.reason.contains("x-tollgate-max-cost"));
        let msg = format!(
            "No candidate of '{}' can serve this request: {}",
            vr.cfg.name,
            plan.why_none()
        );
        return Err(if all_open {
            GatewayError::new(ErrorKind::Unavailable, msg).with_code("no_healthy_candidate")
        } else if over_cost {
            // 400, not 402: the official SDKs raise BadRequestError and do not retry, and
            // the fix is in the request (a higher cap or a smaller max_tokens).
            GatewayError::invalid_param("x-tollgate-max-cost", &msg).with_code("max_cost_exceeded")
        } else {
            GatewayError::invalid_param("model", &msg).with_code("no_candidate")
        });
    }
    Ok(Route {
        plan: Some(plan),
        tries,
        retry: vr.cfg.retry,
    })
}

/// The plan of `vm` over `candidates` (shared by requests and `tollgate route`).
pub fn plan_with(
    state: &AppState,
    vm: &VirtualModel,
    candidates: &[&Resolved],
    req: &ChatRequest,
    strategy: Option<Strategy>,
    max_cost: Option<Money>,
    now: DateTime<Utc>,
) -> Plan {
    let prompt = candidates
        .first()
        .map(|r| tokens::prompt_tokens(req, r.provider.cfg.kind, &r.model))
        .unwrap_or(0);
    plan_for_tokens(
        state,
        vm,
        candidates,
        Needs::of(req, prompt),
        strategy,
        max_cost,
        now,
    )
}

/// [`plan_with`] for given needs (the CLI states prompt tokens instead of a prompt).
pub fn plan_for_tokens(
    state: &AppState,
    vm: &VirtualModel,
    candidates: &[&Resolved],
    needs: Needs,
    strategy: Option<Strategy>,
    max_cost: Option<Money>,
    now: DateTime<Utc>,
) -> Plan {
    let cands: Vec<Candidate<'_>> = candidates
        .iter()
        .map(|r| {
            let name = r.name();
            let free_exhausted = free_limits(state, r)
                .and_then(|l| state.health.free_exhausted(name, &l, now))
                .or_else(|| {
                    // No published limits: only the vendor's 429 marks it used up.
                    state
                        .health
                        .free_exhausted(name, &FreeLimits::default(), now)
                });
            Candidate {
                weight: vm.weights.get(name).copied().unwrap_or(1),
                entry: r.entry.as_deref(),
                signals: Signals {
                    circuit_open: state.health.open_reason(name),
                    ttft_ewma_ms: state.health.ttft_ms(name),
                    free_exhausted,
                },
                name: name.to_owned(),
            }
        })
        .collect();
    let opts = RouteOptions {
        strategy: strategy.unwrap_or(vm.strategy),
        quality_floor: vm.quality_floor,
        currency: currency(state),
        at: now,
        max_cost,
        default_max_tokens: state.config.routing.default_max_tokens,
        explore_per_mille: state.config.routing.explore_per_mille,
    };
    routing::plan(&cands, &needs, &opts, state.catalog.fx(), &mut ProcessRng)
}

/// Checks a direct request against `x-tollgate-max-cost`.
pub fn check_direct_cost(
    state: &AppState,
    r: &Resolved,
    req: &ChatRequest,
    controls: &Controls,
) -> Result<(), GatewayError> {
    let Some(max) = controls.max_cost else {
        return Ok(());
    };
    let now = controls.now.unwrap_or_else(Utc::now);
    let vm = VirtualModel::single(r.name().to_owned());
    let plan = plan_with(state, &vm, &[r], req, None, Some(max), now);
    match plan.verdicts.first() {
        Some(v) if v.kept || !v.reason.contains("x-tollgate-max-cost") => Ok(()),
        Some(v) => Err(GatewayError::invalid_param(
            "x-tollgate-max-cost",
            &format!("Refused: {} {}", v.candidate, v.reason),
        )
        .with_code("max_cost_exceeded")),
        None => Ok(()),
    }
}

/// Virtual models by name, expanded at start-up.
pub type VirtualRoutes = BTreeMap<String, VirtualRoute>;
