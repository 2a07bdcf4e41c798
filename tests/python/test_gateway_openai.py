"""The official `openai` SDK, unchanged, against the gateway (demo and `serve`):
chat, streams, tools, include_usage, JSON mode, and each error as the SDK's exception.
Raw bodies and streams are validated against OpenAI's published schema."""
import json
import urllib.request

import openai
import pytest
from conftest import EMULATOR_KEY, assert_valid, assert_valid_sse

MODELS = ["openai/gpt-4o-mini", "deepseek/deepseek-chat", "moonshot/moonshot-v1-8k",
          "mistral/mistral-small-latest"]

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}


def client(info, key=None, **kw):
    return openai.OpenAI(base_url=info["base_url"], api_key=key or info["key"], max_retries=0,
                         _strict_response_validation=True, **kw)


def raw(info, body, key=None, path="/v1/chat/completions", headers=None):
    """POST raw bytes; returns (status, headers, body bytes)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(info["url"] + path, data=data, method="POST", headers={
        "Authorization": f"Bearer {key or info['key']}", "Content-Type": "application/json",
        **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.parametrize("model", MODELS)
def test_chat_and_stream_with_usage(demo, model):
    c = client(demo)
    r = c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Say hello"}])
    assert r.headers["x-tollgate-provider"] == model.split("/")[0]
    assert r.headers["x-tollgate-model"] == model.split("/")[1]
    assert r.headers["x-tollgate-request-id"].startswith("req_")
    resp = r.parse()
    assert "Say hello" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0

    stream = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello"}],
                                       stream=True, stream_options={"include_usage": True})
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
    assert "Say hello" in text
    assert finish == "stop"
    assert usage is not None and usage.prompt_tokens == resp.usage.prompt_tokens
    assert usage.completion_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_raw_bodies_and_streams_match_openai_schema(demo, model):
    status, headers, body = raw(demo, {"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200, body
    assert_valid("CreateChatCompletionResponse", json.loads(body))
    status, headers, body = raw(demo, {"model": model, "stream": True, "stream_options": {"include_usage": True},
                                       "tools": [WEATHER_TOOL],
                                       "messages": [{"role": "user", "content": "weather in Paris?"}]})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = assert_valid_sse(body.decode())
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] > 0


def test_no_usage_chunk_unless_asked(demo):
    status, _, body = raw(demo, {"model": "deepseek/deepseek-chat", "stream": True,
                                 "messages": [{"role": "user", "content": "hi"}]})
    events = assert_valid_sse(body.decode())
    assert all(e.get("usage") is None for e in events)
    assert all(e["choices"] for e in events)


@pytest.mark.parametrize("model", MODELS)
def test_tool_calls_plain_and_streamed(demo, model):
    c = client(demo)
    msgs = [{"role": "user", "content": "Weather and time in Paris?"}]
    r = c.chat.completions.create(model=model, messages=msgs, tools=[WEATHER_TOOL, TIME_TOOL])
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    assert [t.function.name for t in calls] == ["get_weather", "get_time"]  # parallel calls
    assert json.loads(calls[0].function.arguments)["city"]

    # Streamed: fragments reassemble into the same calls.
    acc = {}
    for chunk in c.chat.completions.create(model=model, messages=msgs, tools=[WEATHER_TOOL, TIME_TOOL],
                                           stream=True):
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or []:
                a = acc.setdefault(tc.index, {"id": None, "name": "", "args": ""})
                a["id"] = tc.id or a["id"]
                a["name"] += (tc.function.name or "") if tc.function else ""
                a["args"] += (tc.function.arguments or "") if tc.function else ""
    assert [acc[i]["name"] for i in sorted(acc)] == ["get_weather", "get_time"]
    assert json.loads(acc[0]["args"]) == json.loads(calls[0].function.arguments)

    # tool_choice names one function; the tool result round-trips.
    r = c.chat.completions.create(model=model, messages=msgs, tools=[WEATHER_TOOL, TIME_TOOL],
                                  tool_choice={"type": "function", "function": {"name": "get_time"}})
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_time"
    follow = msgs + [r.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "12:00"}]
    r = c.chat.completions.create(model=model, messages=follow, tools=[WEATHER_TOOL, TIME_TOOL])
    assert r.choices[0].message.content and r.choices[0].finish_reason == "stop"


def test_json_mode_and_schema(demo):
    c = client(demo)
    r = c.chat.completions.create(model="openai/gpt-4o-mini", response_format={"type": "json_object"},
                                  messages=[{"role": "user", "content": "answer in JSON"}])
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = c.chat.completions.create(model="deepseek/deepseek-chat", messages=[{"role": "user", "content": "who?"}],
                                  response_format={"type": "json_schema",
                                                   "json_schema": {"name": "person", "schema": schema, "strict": True}})
    doc = json.loads(r.choices[0].message.content)
    assert set(doc) == {"name", "age"} and isinstance(doc["age"], int)


def test_multimodal_parts_and_unknown_fields_pass_through(demo):
    c = client(demo)
    r = c.chat.completions.create(
        model="openai/gpt-4o", messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}],
        extra_body={"some_vendor_flag": True}, logit_bias={"50256": -100}, seed=7)
    assert "What is in this image?" in r.choices[0].message.content


def test_bare_model_ids_resolve(demo):
    r = client(demo).chat.completions.create(model="moonshot-v1-8k", messages=[{"role": "user", "content": "hi"}])
    assert "moonshot emulator" in r.choices[0].message.content


def test_models_lists_what_the_key_may_use(demo):
    ids = [m.id for m in client(demo).models.list()]
    assert set(MODELS) <= set(ids)


def test_errors_raise_the_right_sdk_exceptions(demo):
    with pytest.raises(openai.AuthenticationError):
        client(demo, key="tg-wrong").chat.completions.create(model=MODELS[0], messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as e:
        client(demo).chat.completions.create(model=MODELS[0], messages=[{"role": "user", "content": "x"}], temperature=5)
    assert e.value.param == "temperature"
    with pytest.raises(openai.NotFoundError):
        client(demo).chat.completions.create(model="openai/no-such-model", messages=[{"role": "user", "content": "x"}])
    # A key limited to deepseek models.
    status, _, body = raw(demo, {"name": "limited", "models": ["deepseek/*"]}, key=demo["admin_key"], path="/admin/keys")
    assert status == 201, body
    limited = json.loads(body)["key"]
    with pytest.raises(openai.PermissionDeniedError):
        client(demo, key=limited).chat.completions.create(model=MODELS[0], messages=[{"role": "user", "content": "x"}])
    assert client(demo, key=limited).chat.completions.create(
        model="deepseek/deepseek-chat", messages=[{"role": "user", "content": "x"}]).choices


def upstream_config(emu_url, extra=""):
    return f"""
[timeouts]
first_byte_ms = 1500
idle_ms = 1500
[providers.openai]
base_url = "{emu_url}/v1"
api_key = "{EMULATOR_KEY}"
models = ["gpt-4o-mini"]
{extra}
"""


def test_upstream_errors_map_to_statuses(emulator, gateway):
    msgs = [{"role": "user", "content": "x"}]
    gw = gateway(upstream_config(emulator("openai", "--fault", "rate_limit=7")))
    with pytest.raises(openai.RateLimitError) as e:
        client(gw).chat.completions.create(model="openai/gpt-4o-mini", messages=msgs)
    assert e.value.response.headers["retry-after"] == "7"

    gw = gateway(upstream_config(emulator("openai", "--fault", "status=500")))
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).chat.completions.create(model="openai/gpt-4o-mini", messages=msgs)
    assert e.value.status_code == 502

    gw = gateway(upstream_config(emulator("openai", "--fault", "latency_ms=4000")))
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).chat.completions.create(model="openai/gpt-4o-mini", messages=msgs)
    assert e.value.status_code == 504

    # Wrong upstream credentials: a 502 that names no secret.
    emu = emulator("openai", "--api-key", "the-real-key")
    gw = gateway(upstream_config(emu).replace(EMULATOR_KEY, "sk-wrong-upstream-secret"))
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).chat.completions.create(model="openai/gpt-4o-mini", messages=msgs)
    assert e.value.status_code == 502
    assert "sk-wrong-upstream-secret" not in e.value.response.text
    assert "sk-wrong-upstream-secret" not in "".join(gw["proc"].err)


def test_body_limit_is_413(emulator, gateway):
    gw = gateway("max_body_bytes = 4096\n" + upstream_config(emulator("openai")))
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).chat.completions.create(model="openai/gpt-4o-mini",
                                           messages=[{"role": "user", "content": "x" * 10000}])
    assert e.value.status_code == 413


def test_mid_stream_failures_raise(emulator, gateway):
    for fault in ["stream_error_after=3", "disconnect_after=3"]:
        gw = gateway(upstream_config(emulator("openai", "--fault", fault)))
        stream = client(gw).chat.completions.create(model="openai/gpt-4o-mini", stream=True,
                                                    messages=[{"role": "user", "content": "tell me a story"}])
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass


def test_revocation_takes_effect_within_a_second(demo):
    import time
    status, _, body = raw(demo, {"name": "short-lived"}, key=demo["admin_key"], path="/admin/keys")
    rec = json.loads(body)
    c = client(demo, key=rec["key"])
    c.chat.completions.create(model=MODELS[1], messages=[{"role": "user", "content": "x"}])
    req = urllib.request.Request(demo["url"] + "/admin/keys/" + rec["id"], method="DELETE",
                                 headers={"Authorization": f"Bearer {demo['admin_key']}"})
    assert urllib.request.urlopen(req).status == 200
    time.sleep(1.0)
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model=MODELS[1], messages=[{"role": "user", "content": "x"}])


class _StubUpstream:
    """A one-route OpenAI stand-in on a free loopback port that answers every chat
    request with `body` (bytes), as a vendor adding fields tollgate has no type for would."""

    def __init__(self, body, stream=None):
        import http.server
        import threading

        stub = self
        self.body = body
        self.stream = stream  # the SSE bytes for `"stream": true` requests
        self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("content-length", "0"))
                req = json.loads(self.rfile.read(n))
                stub.requests.append(req)
                body = stub.stream if req.get("stream") and stub.stream else stub.body
                self.send_response(200)
                self.send_header("content-type",
                                 "text/event-stream" if body is stub.stream else "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_openai_answers_pass_through_verbatim_with_cost(gateway):
    """An OpenAI answer reaches an OpenAI client as OpenAI wrote it: fields tollgate does not
    model (service_tier, annotations, audio token details, a new top-level field) survive,
    only `usage.cost` is added, and the ledger has the usage."""
    answer = {
        "id": "chatcmpl-verbatim-1", "object": "chat.completion", "created": 1_790_000_000,
        "model": "gpt-4o-mini-2024-07-18", "service_tier": "default",
        "system_fingerprint": "fp_44709d6fcb", "brand_new_field": {"nested": [1, 2, 3]},
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "caf\u00e9 \"quoted\"",
                                 "refusal": None, "annotations": []}}],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                  "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0,
                                                "rejected_prediction_tokens": 0}},
    }
    stub = _StubUpstream(json.dumps(answer, ensure_ascii=False).encode())
    try:
        gw = gateway(upstream_config(stub.url))
        status, headers, body = raw(gw, {"model": "openai/gpt-4o-mini",
                                         "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200, body
        got = json.loads(body)
        cost = got["usage"].pop("cost")
        assert got == answer
        assert cost == headers["x-tollgate-cost"] and cost.endswith(" USD")
        assert stub.requests[-1]["model"] == "gpt-4o-mini"

        # The client's body goes upstream as written, only the model id replaced.
        body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi \u00e9"}],
                "metadata": {"trace": [1, None]}, "max_tokens": None, "store": False,
                "prediction": {"type": "content", "content": "x"}}
        status, _, _ = raw(gw, body)
        assert status == 200
        assert stub.requests[-1] == {**body, "model": "gpt-4o-mini"}

        # The official SDK reads it, unknown fields included.
        r = client(gw).chat.completions.create(model="openai/gpt-4o-mini",
                                               messages=[{"role": "user", "content": "hi"}])
        assert r.service_tier == "default" and r.choices[0].message.content == "caf\u00e9 \"quoted\""
        assert r.usage.prompt_tokens_details.cached_tokens == 1000
        assert r.model_extra["brand_new_field"] == {"nested": [1, 2, 3]}

        req = urllib.request.Request(gw["url"] + "/admin/usage?by=request",
                                     headers={"Authorization": f"Bearer {gw['admin_key']}"})
        rows = json.loads(urllib.request.urlopen(req).read())["lines"]
        assert rows and all(r["prompt_tokens"] == 1200 and r["completion_tokens"] == 300 for r in rows), rows
    finally:
        stub.close()


@pytest.mark.parametrize("mangle", ["no_usage", "cost_already", "error_in_200"])
def test_answers_that_cannot_pass_verbatim_are_decoded(gateway, mangle):
    """What the verbatim relay declines goes through the decoder, as before: an answer
    without usage is still answered (and metered by estimate), a vendor's own `cost` is
    not duplicated, and an error object inside a 200 is an error."""
    answer = {"id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
              "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "hello"}}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
    if mangle == "no_usage":
        del answer["usage"]
    elif mangle == "cost_already":
        answer["usage"]["cost"] = 0.25
    else:
        answer = {"error": {"message": "overloaded", "type": "server_error", "code": "engine_overloaded"}}
    stub = _StubUpstream(json.dumps(answer).encode())
    try:
        gw = gateway(upstream_config(stub.url))
        status, headers, body = raw(gw, {"model": "openai/gpt-4o-mini",
                                         "messages": [{"role": "user", "content": "hi"}]})
        got = json.loads(body)
        if mangle == "error_in_200":
            assert status >= 500 and got["error"]["message"], got
            return
        assert status == 200, got
        assert got["choices"][0]["message"]["content"] == "hello"
        assert "x-tollgate-cost" in headers
        if mangle == "cost_already":
            # The decoder reads OpenAI's usage shape; a numeric vendor cost is not ours.
            assert body.count(b'"cost"') <= 1
    finally:
        stub.close()


def test_openai_streams_pass_through_verbatim(gateway):
    """OpenAI's stream chunks reach an OpenAI client as OpenAI wrote them (fields tollgate
    does not model kept); the usage chunk comes with the cost only to a client that asked
    for it, and the stream is metered from it."""
    base = {"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1_790_000_000,
            "model": "gpt-4o-mini-2024-07-18", "service_tier": "default", "system_fingerprint": "fp_1"}
    chunks = [
        {**base, "obfuscation": "a1", "usage": None, "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
             "logprobs": None, "finish_reason": None}]},
        {**base, "obfuscation": "b2", "usage": None, "choices": [
            {"index": 0, "delta": {"content": "Bonjour, caf\u00e9"}, "logprobs": None, "finish_reason": None}]},
        {**base, "usage": None, "choices": [
            {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]},
    ]
    usage = {**base, "choices": [], "usage": {
        "prompt_tokens": 900, "completion_tokens": 120, "total_tokens": 1020,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}}
    sse = "".join(f"data: {json.dumps(c, ensure_ascii=False)}\n\n" for c in chunks + [usage])
    stub = _StubUpstream(b"{}", stream=(sse + "data: [DONE]\n\n").encode())
    try:
        gw = gateway(upstream_config(stub.url))
        msgs = [{"role": "user", "content": "hi"}]
        for include_usage in (True, False):
            body = {"model": "openai/gpt-4o-mini", "messages": msgs, "stream": True}
            if include_usage:
                body["stream_options"] = {"include_usage": True}
            status, headers, raw_body = raw(gw, body)
            assert status == 200, raw_body
            events = [l[len("data: "):] for l in raw_body.decode().split("\n\n") if l.startswith("data: ")]
            assert events[-1] == "[DONE]"
            got = [json.loads(e) for e in events[:-1]]
            assert got[:3] == chunks, "content chunks are the vendor's"
            if include_usage:
                assert len(got) == 4
                cost = got[3]["usage"].pop("cost")
                assert got[3] == usage and cost.endswith(" USD")
            else:
                assert len(got) == 3
            # The vendor was asked for usage either way: it is how the stream is metered.
            assert stub.requests[-1]["stream_options"] == {"include_usage": True}

        # The SDK reads the stream; the ledger has the vendor's usage for every stream.
        stream = client(gw).chat.completions.create(model="openai/gpt-4o-mini", messages=msgs, stream=True,
                                                    stream_options={"include_usage": True})
        parts = list(stream)
        assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == "Bonjour, caf\u00e9"
        assert parts[-1].usage.prompt_tokens == 900
        req = urllib.request.Request(gw["url"] + "/admin/usage?by=request",
                                     headers={"Authorization": f"Bearer {gw['admin_key']}"})
        rows = json.loads(urllib.request.urlopen(req).read())["lines"]
        assert len(rows) == 3 and all(r["prompt_tokens"] == 900 and r["completion_tokens"] == 120
                                      for r in rows), rows
    finally:
        stub.close()
