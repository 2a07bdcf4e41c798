//! Read-only API routes: `GET /v1/prices` (the catalog, any valid key) and
//! `GET /admin/usage` (ledger reports, admin key).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tollgate_core::error::ErrorKind;
use tollgate_core::pricing::{history_rows, price_rows, PriceQuery};
use tollgate_core::{Currency, GatewayError};
use tollgate_store::{GroupBy, LedgerFilter};

use crate::chat::presented_key;
use crate::error::ApiError;
use crate::state::AppState;

/// Query parameters of `GET /v1/prices`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricesParams {
    /// `YYYY-MM-DD`; default today (UTC).
    pub at: Option<String>,
    pub currency: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub capability: Option<String>,
    /// A model whose whole price history to return instead.
    pub history: Option<String>,
}

/// Parses a `YYYY-MM-DD` date parameter.
pub fn parse_date(name: &str, v: &str) -> Result<chrono::NaiveDate, GatewayError> {
    chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
        GatewayError::invalid_param(
            name,
            &format!("'{name}' must be a date like 2024-05-21, got '{v}'"),
        )
    })
}

/// Parses a currency parameter.
pub fn parse_currency(v: &str) -> Result<Currency, GatewayError> {
    v.parse().map_err(|_| {
        GatewayError::invalid_param(
            "currency",
            &format!("unknown currency '{v}' (CNY, USD, EUR)"),
        )
    })
}

/// `GET /v1/prices`.
pub async fn prices(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<PricesParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    state.authenticate(presented_key(&headers)).await?;
    let Query(p) = params.map_err(|e| GatewayError::invalid_request(e.body_text()))?;
    let currency = p.currency.as_deref().map(parse_currency).transpose()?;
    if let Some(model) = &p.history {
        let rows = history_rows(&state.catalog, model, currency).ok_or_else(|| {
            GatewayError::new(
                ErrorKind::NotFound,
                format!("no model '{model}' in the catalog"),
            )
            .with_param("history")
        })?;
        return Ok(
            axum::Json(serde_json::json!({"object": "list", "model": model, "data": rows}))
                .into_response(),
        );
    }
    let at = match &p.at {
        Some(d) => parse_date("at", d)?,
        None => chrono::Utc::now().date_naive(),
    };
    let q = PriceQuery {
        at,
        currency,
        provider: p.provider,
        model: p.model,
        capability: p.capability,
    };
    let rows = price_rows(&state.catalog, &q);
    Ok(
        axum::Json(serde_json::json!({"object": "list", "at": at.to_string(), "data": rows}))
            .into_response(),
    )
}

/// Query parameters of `GET /admin/usage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    pub by: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub currency: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
    /// `by=request` only: requests per page (default 1,000, at most 100,000).
    pub limit: Option<u64>,
    /// `by=request` only: the page after this request id (the last page's
    /// `next_after`).
    pub after: Option<String>,
}

/// `[since, until)` in Unix ms from `YYYY-MM-DD` dates (UTC; `until` inclusive of its day).
pub fn date_range(since: Option<&str>, until: Option<&str>) -> Result<LedgerFilter, GatewayError> {
    let ms = |d: chrono::NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_millis())
    };
    let since_ms = since
        .map(|s| parse_date("since", s))
        .transpose()?
        .and_then(ms);
    let until_ms = until
        .map(|s| parse_date("until", s))
        .transpose()?
        .and_then(|d| d.succ_opt())
        .and_then(ms);
    Ok(LedgerFilter {
        since_ms,
        until_ms,
        ..Default::default()
    })
}

/// `GET /admin/usage`.
pub async fn usage(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<UsageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    crate::admin::check_admin(&state, &headers)?;
    let Query(p) = params.map_err(|e| GatewayError::invalid_request(e.body_text()))?;
    let by: GroupBy =
        p.by.as_deref()
            .unwrap_or("key")
            .parse()
            .map_err(|e: String| GatewayError::invalid_param("by", &e))?;
    let currency = match &p.currency {
        Some(c) => parse_currency(c)?,
        None => parse_currency(&state.config.reporting_currency)?,
    };
    let filter = date_range(p.since.as_deref(), p.until.as_deref())?;
    // The options are checked before the journal is synced and the ledger read.
    let page = crate::reports::page_size(
        by,
        p.limit,
        p.after.as_deref(),
        Some(crate::reports::DEFAULT_PAGE),
    )
    .map_err(report_error)?;
    let st = state.clone();
    let after = p.after.clone();
    let rep = tokio::task::spawn_blocking(move || {
        // Rows still in the journal first, so the report sees every answered request.
        st.ledger
            .sync()
            .map_err(crate::reports::ReportError::Internal)?;
        // Row by row: a report over a busy month must not hold the month in memory.
        crate::reports::report(
            st.ledger_store.as_ref(),
            &st.catalog,
            by,
            currency,
            &filter,
            page,
            after.as_deref(),
        )
    })
    .await
    .map_err(|_| GatewayError::internal())?
    .map_err(report_error)?;
    let next = rep
        .next_after
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok());
    let mut r = if p.format.as_deref() == Some("csv") {
        let mut r = crate::reports::render_csv(&rep).into_response();
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        r
    } else {
        axum::Json(rep).into_response()
    };
    // The cursor of the next page, for CSV (which has no place for it) and JSON alike.
    if let Some(v) = next {
        r.headers_mut().insert("x-tollgate-next-after", v);
    }
    Ok(r)
}

fn report_error(e: crate::reports::ReportError) -> GatewayError {
    match e {
        crate::reports::ReportError::Param(param, message) => {
            GatewayError::invalid_param(param, &message)
        }
        crate::reports::ReportError::Internal(e) => {
            tracing::error!(error = %e, "usage report failed");
            GatewayError::internal()
        }
    }
}
