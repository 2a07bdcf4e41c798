//! Zhipu GLM, API v4 (`open.bigmodel.cn/api/paas/v4`): OpenAI's shape with Zhipu's
//! sampling ranges, tool rules, error codes, finish reasons and its JWT auth.
//!
//! What differs from OpenAI (../shared/vendors/PROTOCOLS.md §7, checked against
//! `zhipuai==2.1.5.20250825`):
//! - `temperature` and `top_p` live in the *open* interval (0, 1). Like the official
//!   SDK, a value ≤ 0 becomes 0.01 (and a temperature ≤ 0 sets `do_sample:false`, i.e.
//!   greedy decoding), a value ≥ 1 becomes 0.99.
//! - `tool_choice` only takes `"auto"`: `"none"` drops the tools, a named function keeps
//!   only that tool, `"required"` becomes `"auto"`.
//! - `stop` takes a single word: only the first is sent.
//! - `user` is spelled `user_id`; images are URLs or *bare* base64 (the SDK strips the
//!   `data:image/...;base64,` prefix, and so does this codec).
//! - Stream usage comes on the finish chunk without opting in; the stream ends
//!   `data: [DONE]`. Finish reason `sensitive` (moderation cut the answer) is reported as
//!   `content_filter`; `network_error` is an upstream failure.
//! - Errors are `{"error":{"code":"1301","message":..}}`, code a string, classified by
//!   Zhipu's table ([`zhipu_code_kind`]).
//!
//! Auth ([`ZhipuAuth`]): the configured key is Zhipu's console key `id.secret`. Either it
//! is sent as is (`Bearer id.secret`, what the SDK does by default) or a short-lived
//! HS256 JWT is minted from it per request: header `{"alg":"HS256","sign_type":"SIGN",
//! "typ":"JWT"}`, payload `{"api_key":id,"exp":now_ms+210000,"timestamp":now_ms}`, signed
//! with the raw bytes of `secret`. The registry uses the JWT in `Mode::Native` (the
//! vendor's own scheme; the secret never leaves the gateway) and the plain key in
//! `Mode::OpenAi` (the key as an OpenAI client would send it). A key without a `.`
//! cannot be signed and is sent plain.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;
use tollgate_core::chat::{ChatRequest, ChatResponse, Content, Role, ToolChoice};
use tollgate_core::{GatewayError, UpstreamError, UpstreamErrorKind};

use crate::codec::{join_url, Codec, DecodeCtx, EncodeCtx, HttpRequest, Outbound, StreamDecoder};
use crate::dialect::{reclassify, DialectStream, Finish};
use crate::openai::{decode_openai_error, drop_nulls, OpenAiCodec};

/// How the gateway authenticates to Zhipu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZhipuAuth {
    /// `Authorization: Bearer <id.secret>`.
    ApiKey,
    /// `Authorization: Bearer <JWT>` minted from `id.secret` at `ctx.now`.
    Jwt,
}

/// The Zhipu v4 codec.
#[derive(Debug, Clone)]
pub struct ZhipuCodec {
    pub auth: ZhipuAuth,
}

impl ZhipuCodec {
    pub fn new(auth: ZhipuAuth) -> Self {
        ZhipuCodec { auth }
    }
}

/// Lifetime of a minted token, as the official SDK uses (cache 180 s + 30 s).
pub const JWT_TTL_MS: i64 = 210_000;

/// Mints Zhipu's JWT from a console key `id.secret` at `now_ms` (Unix milliseconds).
/// `None` when the key has no `.`.
pub fn mint_jwt(api_key: &str, now_ms: i64) -> Option<String> {
    let (id, secret) = api_key.split_once('.')?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = r#"{"alg":"HS256","sign_type":"SIGN","typ":"JWT"}"#;
    let payload = format!(
        r#"{{"api_key":{},"exp":{},"timestamp":{}}}"#,
        Value::String(id.to_owned()),
        now_ms + JWT_TTL_MS,
        now_ms
    );
    let signing_input = format!("{}.{}", b64.encode(header), b64.encode(payload));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(signing_input.as_bytes());
    let sig = b64.encode(mac.finalize().into_bytes());
    Some(format!("{signing_input}.{sig}"))
}

/// Puts a sampling value into Zhipu's open interval (0, 1), as the SDK does.
fn open_unit(v: f64) -> f64 {
    if v <= 0.0 {
        0.01
    } else if v >= 1.0 {
        0.99
    } else {
        v
    }
}

fn message_json(m: &tollgate_core::chat::Message) -> Result<Value, GatewayError> {
    let mut v = serde_json::to_value(m).map_err(|_| GatewayError::internal())?;
    if let Value::Object(map) = &mut v {
        if matches!(m.role, Role::Developer) {
            map.insert("role".into(), "system".into());
        }
        if let Some(Content::Parts(_)) = &m.content {
            if let Some(Value::Array(parts)) = map.get_mut("content") {
                for p in parts {
                    if let Some(Value::String(url)) = p.pointer_mut("/image_url/url") {
                        if url.starts_with("data:image/") {
                            if let Some((_, b64)) = url.split_once("base64,") {
                                *url = b64.to_owned();
                            }
                        }
                    }
                    if let Some(img) = p.get_mut("image_url").and_then(Value::as_object_mut) {
                        img.remove("detail");
                    }
                }
            }
        }
        drop_nulls(map);
    }
    Ok(v)
}

/// The request body Zhipu's v4 API takes for `req`.
fn body(req: &ChatRequest, model: &str, stream: bool) -> Result<Map<String, Value>, GatewayError> {
    let mut b = Map::new();
    // Unknown fields first, so the typed ones below win.
    for (k, v) in &req.extra {
        if !v.is_null() {
            b.insert(k.clone(), v.clone());
        }
    }
    b.insert("model".into(), model.into());
    b.insert(
        "messages".into(),
        Value::Array(
            req.messages
                .iter()
                .map(message_json)
                .collect::<Result<_, _>>()?,
        ),
    );
    b.insert("stream".into(), stream.into());
    if let Some(t) = req.temperature {
        if t <= 0.0 {
            b.insert("do_sample".into(), false.into());
        }
        b.insert("temperature".into(), open_unit(t).into());
    }
    if let Some(p) = req.top_p {
        b.insert("top_p".into(), open_unit(p).into());
    }
    if let Some(m) = req.max_output_tokens() {
        b.insert("max_tokens".into(), m.into());
    }
    if let Some(s) = req
        .stop
        .as_ref()
        .and_then(|s| s.to_vec().into_iter().next())
    {
        b.insert("stop".into(), Value::Array(vec![s.into()]));
    }
    if let Some(seed) = req.seed {
        b.insert("seed".into(), seed.into());
    }
    if let Some(u) = &req.user {
        b.insert("user_id".into(), u.clone().into());
    }
    if let Some(f) = &req.response_format {
        let kind = if f.kind == "text" {
            "text"
        } else {
            "json_object"
        };
        b.insert("response_format".into(), serde_json::json!({"type": kind}));
    }
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let tools: Vec<_> = match &req.tool_choice {
            Some(ToolChoice::Mode(m)) if m == "none" => Vec::new(),
            Some(ToolChoice::Named { function, .. }) => tools
                .iter()
                .filter(|t| t.function.name == function.name)
                .collect(),
            _ => tools.iter().collect(),
        };
        if !tools.is_empty() {
            let mut list = Vec::with_capacity(tools.len());
            for t in tools {
                let mut f =
                    serde_json::to_value(&t.function).map_err(|_| GatewayError::internal())?;
                if let Value::Object(m) = &mut f {
                    m.remove("strict");
                }
                list.push(serde_json::json!({"type": "function", "function": f}));
            }
            b.insert("tools".into(), Value::Array(list));
            b.insert("tool_choice".into(), "auto".into());
        }
    }
    Ok(b)
}

impl Codec for ZhipuCodec {
    fn encode(&self, req: &ChatRequest, ctx: &EncodeCtx<'_>) -> Result<Outbound, GatewayError> {
        let body = body(req, ctx.upstream_model, ctx.stream)?;
        let body = serde_json::to_vec(&body).map_err(|_| GatewayError::internal())?;
        let mut headers = vec![
            (
                "content-type".to_owned(),
                "application/json; charset=UTF-8".to_owned(),
            ),
            (
                "accept".to_owned(),
                if ctx.stream {
                    "text/event-stream"
                } else {
                    "application/json"
                }
                .to_owned(),
            ),
        ];
        if let Some(key) = &ctx.credentials.api_key {
            let key = key.expose();
            let token = match self.auth {
                ZhipuAuth::Jwt => {
                    mint_jwt(key, ctx.now.timestamp_millis()).unwrap_or_else(|| key.to_owned())
                }
                ZhipuAuth::ApiKey => key.to_owned(),
            };
            headers.push(("authorization".to_owned(), format!("Bearer {token}")));
        }
        Ok(Outbound::Http(HttpRequest {
            method: "POST",
            url: join_url(ctx.base_url, "chat/completions"),
            headers,
            body,
        }))
    }

    fn decode(
        &self,
        status: u16,
        body: &[u8],
        ctx: &DecodeCtx,
    ) -> Result<ChatResponse, UpstreamError> {
        if status >= 400 {
            return Err(self.decode_error(status, body, None));
        }
        let mut resp = OpenAiCodec::new(crate::openai::Flavor::Compatible)
            .decode(status, body, ctx)
            .map_err(classify)?;
        for c in &mut resp.choices {
            if let Some(r) = c.finish_reason.as_deref() {
                match zhipu_finish(r) {
                    Finish::Reason(r) => c.finish_reason = Some(r),
                    Finish::Error(e) => return Err(e),
                }
            }
        }
        Ok(resp)
    }

    fn decode_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> UpstreamError {
        classify(decode_openai_error(status, body, retry_after))
    }

    fn stream_decoder(
        &self,
        ctx: &DecodeCtx,
        _content_type: Option<&str>,
    ) -> Box<dyn StreamDecoder> {
        Box::new(DialectStream::new(ctx.clone(), zhipu_finish, classify))
    }
}

fn zhipu_finish(r: &str) -> Finish {
    match r {
        "sensitive" => Finish::Reason("content_filter".to_owned()),
        "network_error" => Finish::Error(
            UpstreamError::new(
                UpstreamErrorKind::Server,
                "the model's inference failed (finish_reason network_error)",
            )
            .with_vendor_code("network_error"),
        ),
        other => Finish::Reason(other.to_owned()),
    }
}

fn classify(e: UpstreamError) -> UpstreamError {
    reclassify(e, zhipu_code_kind)
}

/// Zhipu's error codes (its 错误码 table) as upstream error kinds.
pub fn zhipu_code_kind(code: &str) -> Option<UpstreamErrorKind> {
    use UpstreamErrorKind as K;
    Some(match code {
        // 1000 auth failed, 1001 no auth header, 1002 invalid token, 1003 token
        // expired, 1004 token verification failed, 1005 ...
        "1000" | "1001" | "1002" | "1003" | "1004" | "1005" => K::Auth,
        // 1110 account inactive, 1111 account missing, 1112 account locked.
        "1110" | "1111" | "1112" => K::PermissionDenied,
        // 1113 arrears; 1308/1309/1310 usage windows and plan quotas used up.
        "1113" | "1308" | "1309" | "1310" => K::QuotaExhausted,
        "1211" => K::NotFound,
        "1210" | "1212" | "1213" | "1214" | "1215" | "1221" | "1222" | "1261" => K::BadRequest,
        "1220" => K::PermissionDenied,
        "1301" => K::ContentFilter,
        "1302" | "1303" => K::RateLimited,
        "1305" => K::Overloaded,
        "1200" | "1230" | "1234" => K::Server,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Credentials, StreamEvent};
    use serde_json::json;
    use tollgate_core::Secret;

    fn creds(key: &str) -> Credentials {
        Credentials {
            api_key: Some(Secret::new(key)),
            ..Default::default()
        }
    }

    fn ectx<'a>(c: &'a Credentials, stream: bool) -> EncodeCtx<'a> {
        EncodeCtx {
            base_url: "http://127.0.0.1:9/api/paas/v4",
            upstream_model: "glm-4-flash",
            credentials: c,
            now: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            stream,
        }
    }

    fn dctx() -> DecodeCtx {
        DecodeCtx {
            request_id: "req-1".into(),
            created: 1,
            model: "glm-4-flash".into(),
        }
    }

    fn http(o: Outbound) -> HttpRequest {
        match o {
            Outbound::Http(h) => h,
            Outbound::WebSocket(_) => unreachable!(),
        }
    }

    fn header<'a>(h: &'a HttpRequest, name: &str) -> &'a str {
        h.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    #[test]
    fn jwt_matches_the_published_vector_byte_for_byte() {
        assert_eq!(
            mint_jwt("12345678.abcdefg", 1_700_000_000_000).unwrap(),
            "eyJhbGciOiJIUzI1NiIsInNpZ25fdHlwZSI6IlNJR04iLCJ0eXAiOiJKV1QifQ.eyJhcGlfa2V5IjoiMTIzNDU2NzgiLCJleHAiOjE3MDAwMDAyMTAwMDAsInRpbWVzdGFtcCI6MTcwMDAwMDAwMDAwMH0.QwkBN-t1Q5A-mpFLcqgGAQG93TRmu1HurQNLoIcJKpY"
        );
        assert_eq!(mint_jwt("no-dot", 0), None);
    }

    #[test]
    fn auth_modes() {
        let c = creds("12345678.abcdefg");
        let h = http(
            ZhipuCodec::new(ZhipuAuth::Jwt)
                .encode(
                    &req(json!({"model":"m","messages":[{"role":"user","content":"hi"}]})),
                    &ectx(&c, false),
                )
                .unwrap(),
        );
        assert_eq!(h.url, "http://127.0.0.1:9/api/paas/v4/chat/completions");
        assert_eq!(
            header(&h, "authorization"),
            format!(
                "Bearer {}",
                mint_jwt("12345678.abcdefg", 1_700_000_000_000).unwrap()
            )
        );
        let h = http(
            ZhipuCodec::new(ZhipuAuth::ApiKey)
                .encode(
                    &req(json!({"model":"m","messages":[{"role":"user","content":"hi"}]})),
                    &ectx(&c, false),
                )
                .unwrap(),
        );
        assert_eq!(header(&h, "authorization"), "Bearer 12345678.abcdefg");
        // A key that cannot be signed is sent as it is.
        let c = creds("plainkey");
        let h = http(
            ZhipuCodec::new(ZhipuAuth::Jwt)
                .encode(
                    &req(json!({"model":"m","messages":[{"role":"user","content":"hi"}]})),
                    &ectx(&c, false),
                )
                .unwrap(),
        );
        assert_eq!(header(&h, "authorization"), "Bearer plainkey");
    }

    fn req(v: Value) -> ChatRequest {
        serde_json::from_value(v).unwrap()
    }

    fn encoded(v: Value, stream: bool) -> Value {
        let c = creds("a.b");
        let h = http(
            ZhipuCodec::new(ZhipuAuth::ApiKey)
                .encode(&req(v), &ectx(&c, stream))
                .unwrap(),
        );
        serde_json::from_slice(&h.body).unwrap()
    }

    #[test]
    fn encode_clamps_sampling_and_maps_fields() {
        let b = encoded(
            json!({"model":"zhipu/glm-4","messages":[
                {"role":"developer","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"what is this"},
                    {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0K","detail":"low"}}]}],
              "temperature":0,"top_p":1,"max_completion_tokens":64,"stop":["a","b"],
              "user":"u-123456","response_format":{"type":"json_schema","json_schema":{"name":"x"}},
              "thinking":{"type":"disabled"},"response_format_extra":null,"stream":true}),
            true,
        );
        assert_eq!(
            b,
            json!({"thinking":{"type":"disabled"},"model":"glm-4-flash","messages":[
                {"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"what is this"},
                    {"type":"image_url","image_url":{"url":"iVBORw0K"}}]}],
              "stream":true,"do_sample":false,"temperature":0.01,"top_p":0.99,"max_tokens":64,
              "stop":["a"],"user_id":"u-123456","response_format":{"type":"json_object"}})
        );
        let b = encoded(
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1.5,"top_p":0.5}),
            false,
        );
        assert_eq!(
            (
                b["temperature"].clone(),
                b["top_p"].clone(),
                b.get("do_sample")
            ),
            (json!(0.99), json!(0.5), None)
        );
    }

    #[test]
    fn tool_choice_is_only_auto() {
        let tools = json!([
            {"type":"function","function":{"name":"f","parameters":{"type":"object"},"strict":true}},
            {"type":"function","function":{"name":"g","description":"G"}}]);
        let base = |choice: Value| {
            encoded(
                json!({"model":"m","messages":[
                    {"role":"user","content":"hi"},
                    {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},
                    {"role":"tool","tool_call_id":"c1","content":"42"}],
                  "tools":tools,"tool_choice":choice}),
                false,
            )
        };
        let b = base(json!("required"));
        assert_eq!(b["tool_choice"], "auto");
        assert_eq!(
            b["tools"],
            json!([{"type":"function","function":{"name":"f","parameters":{"type":"object"}}},
                {"type":"function","function":{"name":"g","description":"G"}}])
        );
        assert_eq!(
            b["messages"][1],
            json!({"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]})
        );
        assert_eq!(
            b["messages"][2],
            json!({"role":"tool","tool_call_id":"c1","content":"42"})
        );
        let b = base(json!({"type":"function","function":{"name":"g"}}));
        assert_eq!(b["tools"].as_array().unwrap().len(), 1);
        assert_eq!(b["tools"][0]["function"]["name"], "g");
        let b = base(json!("none"));
        assert!(b.get("tools").is_none() && b.get("tool_choice").is_none());
    }

    #[test]
    fn decodes_a_response_with_tool_calls() {
        let body = br#"{"created":1703487403,"id":"8239375684858666781","model":"glm-4","request_id":"8239375684858666781",
          "choices":[{"finish_reason":"tool_calls","index":0,"message":{"content":null,"role":"assistant",
            "tool_calls":[{"function":{"arguments":"{\"location\":\"Beijing\"}","name":"get_weather"},"id":"call_8239375684858666781","index":0,"type":"function"}]}}],
          "usage":{"completion_tokens":22,"prompt_tokens":150,"total_tokens":172}}"#;
        let r = ZhipuCodec::new(ZhipuAuth::Jwt)
            .decode(200, body, &dctx())
            .unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id":"8239375684858666781","object":"chat.completion","created":1703487403,"model":"glm-4",
              "choices":[{"index":0,"message":{"role":"assistant","content":null,
                "refusal":null,"tool_calls":[{"id":"call_8239375684858666781","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Beijing\"}"}}]},
                "finish_reason":"tool_calls","logprobs":null}],
              "usage":{"prompt_tokens":150,"completion_tokens":22,"total_tokens":172,
                "prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}})
        );
    }

    #[test]
    fn non_stream_finish_reasons() {
        let body = br#"{"id":"x","created":1,"model":"glm-4","choices":[{"index":0,"finish_reason":"sensitive","message":{"role":"assistant","content":"partial"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        let r = ZhipuCodec::new(ZhipuAuth::Jwt)
            .decode(200, body, &dctx())
            .unwrap();
        assert_eq!(
            r.choices[0].finish_reason.as_deref(),
            Some("content_filter")
        );
        let body = br#"{"id":"x","created":1,"model":"glm-4","choices":[{"index":0,"finish_reason":"network_error","message":{"role":"assistant","content":""}}]}"#;
        let e = ZhipuCodec::new(ZhipuAuth::Jwt)
            .decode(200, body, &dctx())
            .unwrap_err();
        assert_eq!(e.kind, UpstreamErrorKind::Server);
    }

    const STREAM: &str = concat!(
        "data: {\"id\":\"8313807536837492492\",\"created\":1706092316,\"model\":\"glm-4\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"土\"}}]}\n\n",
        "data: {\"id\":\"8313807536837492492\",\"created\":1706092316,\"model\":\"glm-4\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"星\"}}]}\n\n",
        "data: {\"id\":\"8313807536837492492\",\"created\":1706092316,\"model\":\"glm-4\",\"choices\":[{\"index\":0,\"finish_reason\":\"stop\",\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":{\"prompt_tokens\":60,\"completion_tokens\":100,\"total_tokens\":160}}\n\n",
        "data: [DONE]\n\n"
    );

    fn run(input: &str, piece: usize) -> Result<Vec<StreamEvent>, UpstreamError> {
        let mut d =
            ZhipuCodec::new(ZhipuAuth::Jwt).stream_decoder(&dctx(), Some("text/event-stream"));
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(piece) {
            d.feed(c, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn stream_split_at_every_size() {
        let whole = run(STREAM, STREAM.len()).unwrap();
        for piece in 1..STREAM.len() {
            assert_eq!(run(STREAM, piece).unwrap(), whole, "piece {piece}");
        }
        let r = crate::aggregate::aggregate(whole, &dctx()).unwrap();
        assert_eq!(r.choices[0].message.content.as_deref(), Some("土星"));
        let u = r.usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (60, 100));
    }

    #[test]
    fn stream_sensitive_and_errors() {
        let s = STREAM.replace("\"stop\"", "\"sensitive\"");
        let ev = run(&s, 9).unwrap();
        let r = crate::aggregate::aggregate(ev, &dctx()).unwrap();
        assert_eq!(
            r.choices[0].finish_reason.as_deref(),
            Some("content_filter")
        );
        let s = STREAM.replace("\"stop\"", "\"network_error\"");
        assert_eq!(run(&s, 9).unwrap_err().kind, UpstreamErrorKind::Server);
        let e = run(
            "data: {\"error\":{\"code\":\"1301\",\"message\":\"unsafe\"}}\n\n",
            4,
        )
        .unwrap_err();
        assert_eq!(
            (e.kind, e.vendor_code.as_deref()),
            (UpstreamErrorKind::ContentFilter, Some("1301"))
        );
        // Cut before [DONE]: no Done.
        let cut = &STREAM[..STREAM.len() - 14];
        assert!(!run(cut, 5).unwrap().contains(&StreamEvent::Done));
    }

    #[test]
    fn error_table() {
        let c = ZhipuCodec::new(ZhipuAuth::Jwt);
        let cases: &[(u16, &str, UpstreamErrorKind)] = &[
            (
                401,
                r#"{"error":{"code":"1000","message":"身份验证失败。"}}"#,
                UpstreamErrorKind::Auth,
            ),
            (
                401,
                r#"{"error":{"code":"1003","message":"Token已过期"}}"#,
                UpstreamErrorKind::Auth,
            ),
            (
                401,
                r#"{"error":{"message":"令牌已过期或验证不正确","type":"401"}}"#,
                UpstreamErrorKind::Auth,
            ),
            (
                429,
                r#"{"error":{"code":"1113","message":"您的账户已欠费"}}"#,
                UpstreamErrorKind::QuotaExhausted,
            ),
            (
                400,
                r#"{"error":{"code":"1211","message":"模型不存在"}}"#,
                UpstreamErrorKind::NotFound,
            ),
            (
                400,
                r#"{"error":{"code":"1214","message":"messages 参数非法"}}"#,
                UpstreamErrorKind::BadRequest,
            ),
            (
                400,
                r#"{"error":{"code":"1301","message":"系统检测到输入或生成内容可能包含不安全或敏感内容","contentFilter":[{"level":1,"role":"user"}]}}"#,
                UpstreamErrorKind::ContentFilter,
            ),
            (
                429,
                r#"{"error":{"code":"1302","message":"并发过高"}}"#,
                UpstreamErrorKind::RateLimited,
            ),
            (
                429,
                r#"{"error":{"code":"1305","message":"模型过载"}}"#,
                UpstreamErrorKind::Overloaded,
            ),
            (
                403,
                r#"{"error":{"code":"1220","message":"无权访问"}}"#,
                UpstreamErrorKind::PermissionDenied,
            ),
            (
                500,
                r#"{"error":{"code":"1234","message":"网络错误"}}"#,
                UpstreamErrorKind::Server,
            ),
            (503, "", UpstreamErrorKind::Overloaded),
        ];
        for (status, body, kind) in cases {
            let e = c.decode_error(*status, body.as_bytes(), Some(2));
            assert_eq!(e.kind, *kind, "{body}");
            assert_eq!(e.status, Some(*status));
            assert_eq!(e.retry_after_secs, Some(2));
        }
    }
}
