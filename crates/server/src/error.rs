//! The one place an error becomes an HTTP response: OpenAI's error body with the status
//! the official SDKs map to the right exception, `retry-after` where known. Nothing
//! internal reaches the body; the request id (a header on every response) ties it to
//! the log line.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tollgate_core::error::ErrorKind;
use tollgate_core::GatewayError;

/// A [`GatewayError`] on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub GatewayError);

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status =
            StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if e.kind == ErrorKind::Internal {
            tracing::error!(message = %e.message, "internal error");
        }
        let mut resp = (status, axum::Json(e.to_openai_json())).into_response();
        if let Some(secs) = e.retry_after_secs {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        resp
    }
}

/// A 404 for unknown routes, in OpenAI's shape.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError(
        GatewayError::new(
            ErrorKind::NotFound,
            format!("no route {} on this server", uri.path()),
        )
        .with_code("unknown_url"),
    )
}

/// A 405 in OpenAI's shape.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError(GatewayError::new(
        ErrorKind::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    ))
}
