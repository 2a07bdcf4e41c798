//! Round trips over a real socket: each codec's request (signed as the vendor wants) sent
//! to the matching emulator, its answer decoded back by the codec. Zhipu (JWT and plain
//! key), Doubao on Ark, Qwen native and compatible mode.

// A test crate: its helpers may unwrap like its tests.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tollgate_core::{ChatRequest, Secret, UpstreamError, UpstreamErrorKind};
use tollgate_emulators::{router_for, EmulatorKind, EmulatorOptions};
use tollgate_providers::aggregate::aggregate;
use tollgate_providers::{
    codec_for, Codec, Credentials, DecodeCtx, EncodeCtx, Mode, Outbound, StreamEvent,
};

async fn start(kind: EmulatorKind) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = router_for(kind, EmulatorOptions::default());
    tokio::spawn(tollgate_emulators::serve(
        listener,
        router,
        std::future::pending(),
    ));
    format!("http://{addr}{}", kind.base_path())
}

struct Case {
    kind: EmulatorKind,
    provider: tollgate_core::ProviderKind,
    mode: Mode,
    key: &'static str,
    model: &'static str,
}

fn cases() -> Vec<Case> {
    use tollgate_core::ProviderKind as P;
    vec![
        Case {
            kind: EmulatorKind::Zhipu,
            provider: P::Zhipu,
            mode: Mode::Native,
            key: "emulator-key.emulator-secret",
            model: "glm-4-flash",
        },
        Case {
            kind: EmulatorKind::Zhipu,
            provider: P::Zhipu,
            mode: Mode::OpenAi,
            key: "emulator-key.emulator-secret",
            model: "glm-4-flash",
        },
        Case {
            kind: EmulatorKind::Doubao,
            provider: P::Doubao,
            mode: Mode::Native,
            key: "emulator-key",
            model: "ep-20250118155555-abcde",
        },
        Case {
            kind: EmulatorKind::DashScope,
            provider: P::Qwen,
            mode: Mode::Native,
            key: "emulator-key",
            model: "qwen-plus",
        },
        Case {
            kind: EmulatorKind::DashScope,
            provider: P::Qwen,
            mode: Mode::OpenAi,
            key: "emulator-key",
            model: "qwen-plus",
        },
    ]
}

fn dctx() -> DecodeCtx {
    DecodeCtx {
        request_id: "req-rt".into(),
        created: 1,
        model: "m".into(),
    }
}

/// What came back: the status and either the decoded events (stream) or the body.
struct Answer {
    status: u16,
    events: Result<Vec<StreamEvent>, UpstreamError>,
    body: Vec<u8>,
    retry_after: Option<u64>,
}

async fn send(
    codec: &Arc<dyn Codec>,
    base: &str,
    key: &str,
    model: &str,
    req: &ChatRequest,
    stream: bool,
    fault: Option<&str>,
) -> Answer {
    let creds = Credentials {
        api_key: Some(Secret::new(key)),
        ..Default::default()
    };
    let ctx = EncodeCtx {
        base_url: base,
        upstream_model: model,
        credentials: &creds,
        now: chrono::Utc::now(),
        stream,
    };
    let Outbound::Http(h) = codec.encode(req, &ctx).unwrap() else {
        unreachable!()
    };
    let mut b = Request::builder().method(h.method).uri(&h.url);
    for (k, v) in &h.headers {
        b = b.header(k, v);
    }
    if let Some(f) = fault {
        b = b.header("x-emulator-fault", f);
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let resp = client
        .request(b.body(Full::from(h.body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = resp.into_body();
    let mut all = Vec::new();
    let mut dec = codec.stream_decoder(&dctx(), ct.as_deref());
    let mut events = Vec::new();
    let mut failed = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break }; // an emulated disconnect
        if let Ok(data) = frame.into_data() {
            all.extend_from_slice(&data);
            if stream && status == 200 && failed.is_none() {
                if let Err(e) = dec.feed(&data, &mut events) {
                    failed = Some(e);
                }
            }
        }
    }
    if stream && status == 200 && failed.is_none() {
        if let Err(e) = dec.finish(&mut events) {
            failed = Some(e);
        }
    }
    Answer {
        status,
        events: match failed {
            Some(e) => Err(e),
            None => Ok(events),
        },
        body: all,
        retry_after,
    }
}

fn request(v: serde_json::Value) -> ChatRequest {
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn plain_stream_and_tools_round_trip() {
    for c in cases() {
        let base = start(c.kind).await;
        let codec = codec_for(c.provider, c.mode);
        let label = format!("{:?} {:?}", c.provider, c.mode);
        let req = request(
            json!({"model":"x","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello round trip"}],"temperature":0}),
        );

        let a = send(&codec, &base, c.key, c.model, &req, false, None).await;
        assert_eq!(
            a.status,
            200,
            "{label}: {}",
            String::from_utf8_lossy(&a.body)
        );
        let r = codec.decode(a.status, &a.body, &dctx()).unwrap();
        assert!(
            r.choices[0]
                .message
                .content
                .as_deref()
                .unwrap()
                .contains("hello round trip"),
            "{label}"
        );
        let u = r.usage.unwrap();
        assert!(u.prompt_tokens > 0 && u.completion_tokens > 0, "{label}");

        let a = send(&codec, &base, c.key, c.model, &req, true, None).await;
        let events = a.events.unwrap();
        assert_eq!(events.last(), Some(&StreamEvent::Done), "{label}");
        let r = aggregate(events, &dctx()).unwrap();
        assert!(
            r.choices[0]
                .message
                .content
                .as_deref()
                .unwrap()
                .contains("hello round trip"),
            "{label}"
        );
        assert_eq!(
            r.choices[0].finish_reason.as_deref(),
            Some("stop"),
            "{label}"
        );
        let u = r.usage.unwrap();
        assert!(u.prompt_tokens > 0 && u.completion_tokens > 0, "{label}");

        let tools = request(
            json!({"model":"x","messages":[{"role":"user","content":"weather?"}],
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]}),
        );
        for stream in [false, true] {
            let a = send(&codec, &base, c.key, c.model, &tools, stream, None).await;
            let r = if stream {
                aggregate(a.events.unwrap(), &dctx()).unwrap()
            } else {
                codec.decode(a.status, &a.body, &dctx()).unwrap()
            };
            assert_eq!(
                r.choices[0].finish_reason.as_deref(),
                Some("tool_calls"),
                "{label} stream={stream}"
            );
            let call = &r.choices[0].message.tool_calls.as_ref().unwrap()[0];
            assert_eq!(call.function.name, "get_weather");
            assert_eq!(
                call.function.arguments, r#"{"city":"example"}"#,
                "{label} stream={stream}"
            );
        }
    }
}

#[tokio::test]
async fn errors_and_faults_round_trip() {
    for c in cases() {
        let base = start(c.kind).await;
        let codec = codec_for(c.provider, c.mode);
        let label = format!("{:?} {:?}", c.provider, c.mode);
        let req = request(json!({"model":"x","messages":[{"role":"user","content":"hi"}]}));

        // A wrong secret (Zhipu: a JWT signed with it) is the vendor's auth error.
        let wrong = if c.key.contains('.') {
            "emulator-key.wrong"
        } else {
            "wrong"
        };
        let a = send(&codec, &base, wrong, c.model, &req, false, None).await;
        let e = codec.decode_error(a.status, &a.body, a.retry_after);
        assert_eq!(
            (e.kind, e.status),
            (UpstreamErrorKind::Auth, Some(401)),
            "{label}"
        );
        assert!(!e.message.contains("wrong"), "{label}");

        let a = send(
            &codec,
            &base,
            c.key,
            c.model,
            &req,
            false,
            Some("rate_limit=7"),
        )
        .await;
        let e = codec.decode_error(a.status, &a.body, a.retry_after);
        assert_eq!(
            (e.kind, e.retry_after_secs),
            (UpstreamErrorKind::RateLimited, Some(7)),
            "{label}"
        );

        for (status, kind) in [
            (400, UpstreamErrorKind::BadRequest),
            (500, UpstreamErrorKind::Server),
            (503, UpstreamErrorKind::Overloaded),
        ] {
            let a = send(
                &codec,
                &base,
                c.key,
                c.model,
                &req,
                false,
                Some(&format!("status={status}")),
            )
            .await;
            let e = codec.decode_error(a.status, &a.body, a.retry_after);
            assert_eq!(e.kind, kind, "{label} status={status}");
        }

        let a = send(
            &codec,
            &base,
            c.key,
            c.model,
            &req,
            true,
            Some("stream_error_after=2"),
        )
        .await;
        assert_eq!(
            a.events.unwrap_err().kind,
            UpstreamErrorKind::Server,
            "{label}"
        );

        let a = send(
            &codec,
            &base,
            c.key,
            c.model,
            &req,
            true,
            Some("disconnect_after=2"),
        )
        .await;
        assert!(!a.events.unwrap().contains(&StreamEvent::Done), "{label}");

        let a = send(
            &codec,
            &base,
            c.key,
            c.model,
            &req,
            true,
            Some("malformed=1"),
        )
        .await;
        assert_eq!(
            a.events.unwrap_err().kind,
            UpstreamErrorKind::Protocol,
            "{label}"
        );

        let a = send(&codec, &base, c.key, "no-such-model", &req, false, None).await;
        let e = codec.decode_error(a.status, &a.body, a.retry_after);
        let expect = if c.provider == tollgate_core::ProviderKind::Qwen && c.mode == Mode::Native {
            UpstreamErrorKind::BadRequest // DashScope: 400 InvalidParameter "Model not exist."
        } else {
            UpstreamErrorKind::NotFound
        };
        assert_eq!(e.kind, expect, "{label}");
    }
}
