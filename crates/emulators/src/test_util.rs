//! Helpers for the emulators' tests: drive a router without a socket, and decode a
//! stream body with a provider codec.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request};
use axum::Router;
use http_body_util::BodyExt;
use tollgate_core::ChatResponse;
use tollgate_providers::aggregate::aggregate;
use tollgate_providers::{DecodeCtx, StreamDecoder};
use tower::ServiceExt;

/// Sends one request through `router`; returns the status, headers and whole body.
pub async fn call(router: Router, req: Request<Body>) -> (u16, HeaderMap, Bytes) {
    let resp = router.oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

/// Feeds `body` to `decoder` in uneven pieces and aggregates the events.
pub fn collect(mut decoder: Box<dyn StreamDecoder>, body: &[u8], ctx: &DecodeCtx) -> ChatResponse {
    let mut events = Vec::new();
    for piece in body.chunks(7) {
        decoder.feed(piece, &mut events).unwrap();
    }
    decoder.finish(&mut events).unwrap();
    aggregate(events, ctx).unwrap()
}
