//! `/admin/*`: key management over HTTP, with the admin key from config.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tollgate_core::error::ErrorKind;
use tollgate_core::GatewayError;
use tollgate_store::{BudgetSpec, NewKey, StoreError};

use crate::chat::{created, decode_json, presented_key, read_body};
use crate::error::ApiError;
use crate::state::AppState;

/// Checks the admin key in constant time.
pub fn check_admin(state: &AppState, headers: &HeaderMap) -> Result<(), GatewayError> {
    let Some(expected) = state.config.admin_key.as_ref() else {
        return Err(GatewayError::new(
            ErrorKind::PermissionDenied,
            "The admin API is disabled: set admin_key in the configuration",
        ));
    };
    let given = presented_key(headers).unwrap_or_default();
    let (a, b) = (given.as_bytes(), expected.expose().as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
        Ok(())
    } else {
        Err(GatewayError::unauthenticated("Incorrect admin key."))
    }
}

fn store_err(e: StoreError) -> GatewayError {
    match e {
        StoreError::NotFound(w) => {
            GatewayError::new(ErrorKind::NotFound, format!("no key matches '{w}'"))
        }
        StoreError::Invalid(m) => GatewayError::invalid_request(m),
        other => {
            tracing::error!(error = %other, "store error");
            GatewayError::internal()
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, GatewayError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| GatewayError::internal())?
        .map_err(store_err)
}

/// `GET /admin/keys`.
pub async fn list_keys(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let store = state.store.clone();
    let keys = blocking(move || store.list_keys()).await?;
    Ok(axum::Json(serde_json::json!({"object": "list", "data": keys})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    group: Option<String>,
    /// Budget amount as decimal text (`"500"`); with `currency` and `period`.
    #[serde(default)]
    budget: Option<String>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    period: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    rpm: Option<u32>,
    #[serde(default)]
    tpm: Option<u32>,
}

/// `POST /admin/keys` `{"name": "...", "models": ["deepseek/*"]}` → 201 with the key,
/// shown this once.
pub async fn create_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let bytes = read_body(body, 64 * 1024).await?;
    let req: CreateKey = decode_json(&bytes)?;
    let budget = budget_spec(req.budget, req.currency, req.period, req.time_zone)?;
    let store = state.store.clone();
    let new = NewKey {
        name: req.name,
        models: req.models,
        group: req.group,
        budget,
        rpm: req.rpm,
        tpm: req.tpm,
    };
    let (rec, key) = blocking(move || store.create_key(&new)).await?;
    let mut v = serde_json::to_value(&rec).map_err(|_| GatewayError::internal())?;
    v["key"] = serde_json::Value::String(key);
    Ok(created(&v))
}

/// Validates budget fields into a [`BudgetSpec`]: all three or none.
pub fn budget_spec(
    amount: Option<String>,
    currency: Option<String>,
    period: Option<String>,
    time_zone: Option<String>,
) -> Result<Option<BudgetSpec>, GatewayError> {
    let Some(amount) = amount else {
        if currency.is_some() || period.is_some() {
            return Err(GatewayError::invalid_param(
                "budget",
                "'currency' and 'period' need a 'budget' amount",
            ));
        }
        return Ok(None);
    };
    let spec = BudgetSpec {
        amount,
        currency: currency.unwrap_or_else(|| "CNY".to_owned()),
        period: period.unwrap_or_else(|| "month".to_owned()),
        time_zone,
    };
    let b = crate::metering::parse_budget("key:new", "new key", &spec)
        .map_err(|_| GatewayError::invalid_param("budget", "invalid budget: amount must be a decimal number, currency CNY, USD or EUR, period day, month or total, time_zone like Asia/Shanghai or +08:00"))?;
    if b.limit.nanos <= 0 {
        return Err(GatewayError::invalid_param(
            "budget",
            "the budget must be more than 0",
        ));
    }
    Ok(Some(spec))
}

/// `DELETE /admin/keys/{id}` (id, name or prefix): revokes at once in this process and
/// within a second everywhere else.
pub async fn revoke_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let store = state.store.clone();
    let rec = blocking(move || store.revoke_key(&id)).await?;
    state.keys.clear();
    Ok(axum::Json(rec).into_response())
}

/// `GET /admin/health`: circuit breakers, TTFT EWMAs and free-tier usage per
/// `provider/model`, plus each virtual model's candidates.
pub async fn health(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let snap = state.health.snapshot(chrono::Utc::now());
    let vms: serde_json::Map<String, serde_json::Value> = state
        .virtual_models
        .iter()
        .map(|(name, vr)| {
            (
                name.clone(),
                serde_json::json!({
                    "strategy": vr.cfg.strategy.as_str(),
                    "candidates": vr.candidates.iter().map(|c| c.name()).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    Ok(axum::Json(serde_json::json!({
        "models": snap.models,
        "free_tiers": snap.free_tiers,
        "virtual_models": vms,
    }))
    .into_response())
}
