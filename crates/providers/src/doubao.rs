//! ByteDance Doubao on Volcengine Ark (`ark.cn-beijing.volces.com/api/v3`): OpenAI's
//! Chat Completions with Ark's dotted error codes.
//!
//! The request, response and stream are OpenAI's (../shared/vendors/PROTOCOLS.md §8):
//! bearer API key, `stream_options.include_usage` honoured (a last chunk with
//! `choices:[]` and usage, then `data: [DONE]`), `reasoning_content` on thinking models.
//! What the vendor adds is the error table ([`ark_code_kind`]), e.g.
//! `{"error":{"code":"InvalidEndpointOrModel.NotFound","message":..,"param":"","type":"NotFound"}}`.
//!
//! `model` on the wire is whatever the server puts in [`EncodeCtx::upstream_model`]:
//! either an inference endpoint id (`ep-20250118155555-xxxxx`, created in the console)
//! or a dated model id (`doubao-seed-1-6-251015`). Mapping a catalog model to the
//! user's endpoint id is configuration, done before the codec is called.

use tollgate_core::chat::{ChatRequest, ChatResponse};
use tollgate_core::{GatewayError, UpstreamError, UpstreamErrorKind};

use crate::codec::{Codec, DecodeCtx, EncodeCtx, Outbound, StreamDecoder};
use crate::dialect::{reclassify, DialectStream, Finish};
use crate::openai::{decode_openai_error, Flavor, OpenAiCodec};

/// The Ark codec.
#[derive(Debug, Clone)]
pub struct DoubaoCodec {
    openai: OpenAiCodec,
}

impl Default for DoubaoCodec {
    fn default() -> Self {
        DoubaoCodec {
            openai: OpenAiCodec::new(Flavor::Compatible),
        }
    }
}

impl DoubaoCodec {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Codec for DoubaoCodec {
    fn encode(&self, req: &ChatRequest, ctx: &EncodeCtx<'_>) -> Result<Outbound, GatewayError> {
        self.openai.encode(req, ctx)
    }

    fn decode(
        &self,
        status: u16,
        body: &[u8],
        ctx: &DecodeCtx,
    ) -> Result<ChatResponse, UpstreamError> {
        self.openai.decode(status, body, ctx).map_err(classify)
    }

    fn decode_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError {
        classify(decode_openai_error(status, body, retry_after))
    }

    fn stream_decoder(
        &self,
        ctx: &DecodeCtx,
        _content_type: Option<&str>,
    ) -> Box<dyn StreamDecoder> {
        Box::new(DialectStream::new(
            ctx.clone(),
            |r| Finish::Reason(r.to_owned()),
            classify,
        ))
    }
}

fn classify(e: UpstreamError) -> UpstreamError {
    reclassify(e, ark_code_kind)
}

/// Ark's error codes as upstream error kinds.
pub fn ark_code_kind(code: &str) -> Option<UpstreamErrorKind> {
    use UpstreamErrorKind as K;
    Some(match code {
        "AuthenticationError" => K::Auth,
        "AccountOverdueError" => K::QuotaExhausted,
        "ServerOverloaded" => K::Overloaded,
        "InternalServiceError" => K::Server,
        "ModelNotOpen" => K::NotFound,
        "InvalidEndpointOrModel.ModelIDAccessDisabled" | "AccessDenied" => K::PermissionDenied,
        c if c.starts_with("InvalidEndpointOrModel") || c.starts_with("InvalidEndpoint.") => {
            K::NotFound
        }
        c if c.starts_with("OperationDenied") => K::PermissionDenied,
        c if c.contains("SensitiveContentDetected") => K::ContentFilter,
        c if c.starts_with("RateLimitExceeded")
            || c.ends_with("RateLimitExceeded")
            || c == "QuotaExceeded"
            || c == "SetLimitExceeded" =>
        {
            K::RateLimited
        }
        c if c.starts_with("InvalidParameter") || c.starts_with("MissingParameter") => {
            K::BadRequest
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Credentials, HttpRequest, StreamEvent};
    use serde_json::{json, Value};
    use tollgate_core::Secret;

    fn dctx() -> DecodeCtx {
        DecodeCtx {
            request_id: "req-1".into(),
            created: 1,
            model: "doubao-seed-1-6".into(),
        }
    }

    fn encode(model: &str, v: Value, stream: bool) -> HttpRequest {
        let creds = Credentials {
            api_key: Some(Secret::new("ark-key")),
            ..Default::default()
        };
        let ctx = EncodeCtx {
            base_url: "http://127.0.0.1:9/api/v3",
            upstream_model: model,
            credentials: &creds,
            now: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            stream,
        };
        match DoubaoCodec::new()
            .encode(&serde_json::from_value(v).unwrap(), &ctx)
            .unwrap()
        {
            Outbound::Http(h) => h,
            Outbound::WebSocket(_) => unreachable!(),
        }
    }

    #[test]
    fn the_endpoint_id_from_config_is_the_wire_model() {
        // The client names the catalog model; the server's config maps it to the
        // user's endpoint id and hands that over as `upstream_model`.
        let h = encode(
            "ep-20250118155555-abcde",
            json!({"model":"doubao/doubao-seed-1-6","messages":[{"role":"user","content":"hi"}],"stream":true,
                "thinking":{"type":"disabled"}}),
            true,
        );
        assert_eq!(h.url, "http://127.0.0.1:9/api/v3/chat/completions");
        assert!(h
            .headers
            .contains(&("authorization".into(), "Bearer ark-key".into())));
        let b: Value = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(
            b,
            json!({"model":"ep-20250118155555-abcde","messages":[{"role":"user","content":"hi"}],
                "stream":true,"stream_options":{"include_usage":true},"thinking":{"type":"disabled"}})
        );
    }

    const STREAM: &str = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"你好\",\"role\":\"assistant\"},\"index\":0}],\"created\":1736157062,\"id\":\"0217361570617\",\"model\":\"doubao-seed-1-6-251015\",\"service_tier\":\"default\",\"object\":\"chat.completion.chunk\",\"usage\":null}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"\",\"role\":\"assistant\"},\"finish_reason\":\"stop\",\"index\":0}],\"created\":1736157062,\"id\":\"0217361570617\",\"model\":\"doubao-seed-1-6-251015\",\"service_tier\":\"default\",\"object\":\"chat.completion.chunk\",\"usage\":null}\n\n",
        "data: {\"choices\":[],\"created\":1736157062,\"id\":\"0217361570617\",\"model\":\"doubao-seed-1-6-251015\",\"service_tier\":\"default\",\"object\":\"chat.completion.chunk\",\"usage\":{\"completion_tokens\":2,\"prompt_tokens\":12,\"total_tokens\":14,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
        "data: [DONE]\n\n"
    );

    fn run(input: &str, piece: usize) -> Result<Vec<StreamEvent>, UpstreamError> {
        let mut d = DoubaoCodec::new().stream_decoder(&dctx(), Some("text/event-stream"));
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(piece) {
            d.feed(c, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn stream_with_usage_chunk_at_every_split() {
        let whole = run(STREAM, STREAM.len()).unwrap();
        for piece in 1..STREAM.len() {
            assert_eq!(run(STREAM, piece).unwrap(), whole, "piece {piece}");
        }
        assert_eq!(whole.last(), Some(&StreamEvent::Done));
        let r = crate::aggregate::aggregate(whole, &dctx()).unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id":"0217361570617","object":"chat.completion","created":1736157062,"model":"doubao-seed-1-6-251015",
              "choices":[{"index":0,"message":{"role":"assistant","content":"你好","refusal":null},"finish_reason":"stop","logprobs":null}],
              "usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14,
                "prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}})
        );
    }

    #[test]
    fn decodes_reasoning_and_cache_usage() {
        let body = br#"{"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"Hi","reasoning_content":"think","role":"assistant"}}],
          "created":1742631811,"id":"0217426318107460cfa43dc3f3683b1de1c09624ff49085a456ac","model":"doubao-seed-1-6-251015","service_tier":"default","object":"chat.completion",
          "usage":{"completion_tokens":30,"prompt_tokens":100,"total_tokens":130,"prompt_tokens_details":{"cached_tokens":64},"completion_tokens_details":{"reasoning_tokens":20}}}"#;
        let r = DoubaoCodec::new().decode(200, body, &dctx()).unwrap();
        assert_eq!(
            r.choices[0].message.reasoning_content.as_deref(),
            Some("think")
        );
        let u = r.usage.unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (100, 30, 64, 20)
        );
    }

    #[test]
    fn error_codes() {
        let c = DoubaoCodec::new();
        let cases: &[(u16, &str, UpstreamErrorKind)] = &[
            (
                404,
                "InvalidEndpointOrModel.NotFound",
                UpstreamErrorKind::NotFound,
            ),
            (404, "ModelNotOpen", UpstreamErrorKind::NotFound),
            (401, "AuthenticationError", UpstreamErrorKind::Auth),
            (400, "InvalidParameter", UpstreamErrorKind::BadRequest),
            (400, "MissingParameter", UpstreamErrorKind::BadRequest),
            (
                403,
                "AccountOverdueError",
                UpstreamErrorKind::QuotaExhausted,
            ),
            (
                400,
                "InputTextSensitiveContentDetected",
                UpstreamErrorKind::ContentFilter,
            ),
            (
                400,
                "OutputTextSensitiveContentDetected",
                UpstreamErrorKind::ContentFilter,
            ),
            (
                429,
                "RateLimitExceeded.EndpointRPMExceeded",
                UpstreamErrorKind::RateLimited,
            ),
            (
                429,
                "ModelAccountTpmRateLimitExceeded",
                UpstreamErrorKind::RateLimited,
            ),
            (429, "ServerOverloaded", UpstreamErrorKind::Overloaded),
            (403, "AccessDenied", UpstreamErrorKind::PermissionDenied),
            (
                403,
                "OperationDenied.ServiceNotOpen",
                UpstreamErrorKind::PermissionDenied,
            ),
            (500, "InternalServiceError", UpstreamErrorKind::Server),
        ];
        for (status, code, kind) in cases {
            let body =
                json!({"error":{"code":code,"message":"m","param":"","type":"T"}}).to_string();
            let e = c.decode_error(*status, body.as_bytes(), None);
            assert_eq!(
                (e.kind, e.vendor_code.as_deref()),
                (*kind, Some(*code)),
                "{code}"
            );
        }
        let e = run("data: {\"error\":{\"code\":\"OutputTextSensitiveContentDetected\",\"message\":\"m\",\"param\":\"\",\"type\":\"BadRequest\"}}\n\n", 3).unwrap_err();
        assert_eq!(e.kind, UpstreamErrorKind::ContentFilter);
    }
}
