//! Errors, typed per layer. [`GatewayError`] is what a client is told; the server maps
//! its [`ErrorKind`] to an HTTP status and OpenAI's error body in exactly one place.
//! [`UpstreamError`] is what a vendor said or did, classified so routing knows whether
//! a retry is safe and who is to blame.

use std::fmt;

/// What went wrong, from the client's point of view. Each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: malformed JSON or an invalid field.
    InvalidRequest,
    /// 401: missing, unknown or revoked key.
    Authentication,
    /// 403: the key may not use this model (or route).
    PermissionDenied,
    /// 404: unknown model or route.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 413: body over the configured limit.
    PayloadTooLarge,
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    /// 429: a rate limit (ours or the upstream's).
    RateLimited,
    /// 429 with code `insufficient_quota`: a budget would be exceeded.
    InsufficientQuota,
    /// 400 with code `content_filter`: the vendor's moderation refused the request.
    ContentFilter,
    /// 502: the upstream failed or answered something unusable.
    BadGateway,
    /// 503: every candidate is unavailable (overloaded, circuit open).
    Unavailable,
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
    /// 500: a bug in tollgate. The message never carries internal details.
    Internal,
}

impl ErrorKind {
    /// OpenAI's `error.type` for this kind.
    pub fn openai_type(&self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::ContentFilter => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::InsufficientQuota => "insufficient_quota",
            ErrorKind::BadGateway | ErrorKind::Unavailable | ErrorKind::GatewayTimeout => {
                "upstream_error"
            }
            ErrorKind::Internal => "server_error",
        }
    }

    /// The HTTP status the official SDKs map to the right exception class.
    pub fn http_status(&self) -> u16 {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::ContentFilter => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::RateLimited | ErrorKind::InsufficientQuota => 429,
            ErrorKind::BadGateway => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::GatewayTimeout => 504,
            ErrorKind::Internal => 500,
        }
    }
}

/// An error as the client sees it: OpenAI's `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
    /// Seconds the client should wait, sent as `retry-after`.
    pub retry_after_secs: Option<u64>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        GatewayError {
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after_secs: None,
        }
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_retry_after(mut self, secs: Option<u64>) -> Self {
        self.retry_after_secs = secs;
        self
    }

    /// 400 naming the field at fault.
    pub fn invalid_param(param: &str, message: &str) -> Self {
        GatewayError::new(ErrorKind::InvalidRequest, message)
            .with_param(param)
            .with_code("invalid_value")
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        GatewayError::new(ErrorKind::InvalidRequest, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        GatewayError::new(ErrorKind::Authentication, message).with_code("invalid_api_key")
    }

    pub fn internal() -> Self {
        GatewayError::new(
            ErrorKind::Internal,
            "internal error in the gateway; the request id identifies it in the logs",
        )
    }

    /// The OpenAI error body.
    pub fn to_openai_json(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind.openai_type(),
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for GatewayError {}

/// How an upstream call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// The vendor rejected the request as invalid (400/422): the client's fault.
    BadRequest,
    /// The vendor refused our credentials or signature: the operator's fault.
    Auth,
    /// The vendor forbids this account the model or region.
    PermissionDenied,
    /// The vendor does not know the model or endpoint.
    NotFound,
    /// A rate limit at the vendor (429, QPS/RPM/TPM codes).
    RateLimited,
    /// The account is out of balance or quota at the vendor (402, arrears codes).
    QuotaExhausted,
    /// The vendor's moderation refused the input or output.
    ContentFilter,
    /// The vendor is overloaded (503, Anthropic 529, engine-busy codes).
    Overloaded,
    /// A 5xx or an internal error code.
    Server,
    /// No answer (or no next chunk) in time.
    Timeout,
    /// Could not connect.
    Connect,
    /// The vendor answered something we cannot parse.
    Protocol,
}

impl UpstreamErrorKind {
    /// Whether trying the same request elsewhere (or later) is safe and useful: the
    /// upstream was unreachable, slow, overloaded, rate-limited or out of balance. A
    /// request the vendor found invalid, or credentials it refused, fail at once (a
    /// misconfigured key is an operator's error to surface, not to hide behind a
    /// fallback).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            UpstreamErrorKind::RateLimited
                | UpstreamErrorKind::Overloaded
                | UpstreamErrorKind::Server
                | UpstreamErrorKind::Timeout
                | UpstreamErrorKind::Connect
                | UpstreamErrorKind::QuotaExhausted
        )
    }
}

/// What an upstream said or did. Messages never contain credentials: codecs build
/// them from the vendor's error text only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    /// The vendor's HTTP status, when there was one.
    pub status: Option<u16>,
    /// The vendor's own error code (`"1301"`, `"Throttling.RateQuota"`, `110`, ...).
    pub vendor_code: Option<String>,
    pub message: String,
    /// From `retry-after` or the vendor's retry hint.
    pub retry_after_secs: Option<u64>,
}

impl UpstreamError {
    pub fn new(kind: UpstreamErrorKind, message: impl Into<String>) -> Self {
        UpstreamError {
            kind,
            status: None,
            vendor_code: None,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub fn with_vendor_code(mut self, code: impl Into<String>) -> Self {
        self.vendor_code = Some(code.into());
        self
    }

    pub fn with_retry_after(mut self, secs: Option<u64>) -> Self {
        self.retry_after_secs = secs;
        self
    }

    /// A response we could not parse.
    pub fn protocol(message: impl Into<String>) -> Self {
        UpstreamError::new(UpstreamErrorKind::Protocol, message)
    }

    /// Classify a bare HTTP status (for vendors whose error body says nothing more).
    pub fn kind_for_status(status: u16) -> UpstreamErrorKind {
        match status {
            400 | 409 | 413 | 422 => UpstreamErrorKind::BadRequest,
            401 => UpstreamErrorKind::Auth,
            402 => UpstreamErrorKind::QuotaExhausted,
            403 => UpstreamErrorKind::PermissionDenied,
            404 => UpstreamErrorKind::NotFound,
            408 | 504 => UpstreamErrorKind::Timeout,
            429 => UpstreamErrorKind::RateLimited,
            503 | 529 => UpstreamErrorKind::Overloaded,
            _ => UpstreamErrorKind::Server,
        }
    }

    /// What the client is told. The vendor's message is kept (it helps the client fix a
    /// bad request) but prefixed with who said it; auth failures are reported as a
    /// gateway-side misconfiguration, never echoing anything credential-like.
    pub fn to_gateway_error(&self, provider: &str) -> GatewayError {
        use ErrorKind as K;
        use UpstreamErrorKind as U;
        let (kind, code) = match self.kind {
            U::BadRequest => (K::InvalidRequest, "upstream_invalid_request"),
            U::Auth => (K::BadGateway, "upstream_auth_failed"),
            U::PermissionDenied => (K::BadGateway, "upstream_permission_denied"),
            U::NotFound => (K::NotFound, "model_not_found"),
            U::RateLimited => (K::RateLimited, "rate_limit_exceeded"),
            U::QuotaExhausted => (K::BadGateway, "upstream_quota_exhausted"),
            U::ContentFilter => (K::ContentFilter, "content_filter"),
            U::Overloaded => (K::Unavailable, "upstream_overloaded"),
            U::Server => (K::BadGateway, "upstream_error"),
            U::Timeout => (K::GatewayTimeout, "upstream_timeout"),
            U::Connect => (K::BadGateway, "upstream_unreachable"),
            U::Protocol => (K::BadGateway, "upstream_bad_response"),
        };
        let message = match self.kind {
            U::Auth => format!(
                "upstream provider '{provider}' rejected the gateway's credentials; \
                 check the provider's key in the gateway configuration"
            ),
            _ => format!("upstream provider '{provider}': {}", self.message),
        };
        GatewayError::new(kind, message)
            .with_code(code)
            .with_retry_after(self.retry_after_secs)
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.kind)?;
        if let Some(s) = self.status {
            write!(f, " (HTTP {s})")?;
        }
        if let Some(c) = &self.vendor_code {
            write!(f, " [{c}]")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for UpstreamError {}
