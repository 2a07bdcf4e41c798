//! `/admin/*`: key management over HTTP, with the admin key from config.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tollgate_core::error::ErrorKind;
use tollgate_core::GatewayError;
use tollgate_store::{NewKey, StoreError};

use crate::chat::{created, decode_json, presented_key, read_body};
use crate::error::ApiError;
use crate::state::AppState;

/// Checks the admin key in constant time.
fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), GatewayError> {
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
    admin(&state, &headers)?;
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
}

/// `POST /admin/keys` `{"name": "...", "models": ["deepseek/*"]}` → 201 with the key,
/// shown this once.
pub async fn create_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    admin(&state, &headers)?;
    let bytes = read_body(body, 64 * 1024).await?;
    let req: CreateKey = decode_json(&bytes)?;
    let store = state.store.clone();
    let new = NewKey {
        name: req.name,
        models: req.models,
    };
    let (rec, key) = blocking(move || store.create_key(&new)).await?;
    let mut v = serde_json::to_value(&rec).map_err(|_| GatewayError::internal())?;
    v["key"] = serde_json::Value::String(key);
    Ok(created(&v))
}

/// `DELETE /admin/keys/{id}` (id, name or prefix): revokes at once in this process and
/// within a second everywhere else.
pub async fn revoke_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin(&state, &headers)?;
    let store = state.store.clone();
    let rec = blocking(move || store.revoke_key(&id)).await?;
    state.keys.clear();
    Ok(axum::Json(rec).into_response())
}
