"""The official `anthropic` SDK, unchanged, against tollgate's Anthropic emulator:
messages.create (plain and with tools), messages.stream with tool use, both auth styles
(Bearer + anthropic-version 2026-10-21 as anthropic>=2.0 sends, and the pre-2.0
X-Api-Key + 2023-06-01), cache usage, and errors as the SDK's exceptions. The raw
stream is checked against the event grammar of ../conformance/validate_anthropic.py's
rules (shared/conformance)."""
import json
import urllib.request

import anthropic
import pytest
from conftest import EMULATOR_KEY

MODEL = "claude-sonnet-4-6"
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"},
                                                             "unit": {"type": "string", "enum": ["c", "f"]}},
                            "required": ["city"]}}


@pytest.fixture
def base(emulator):
    return emulator("anthropic")


def client(base, key=EMULATOR_KEY, **kw):
    return anthropic.Anthropic(api_key=key, base_url=base, max_retries=0, **kw)


def legacy_client(base, key=EMULATOR_KEY, seen=None):
    """The headers anthropic<=1.17 sent: X-Api-Key and anthropic-version 2023-06-01.
    `seen` collects the headers of each request actually sent."""
    hooks = {"request": [lambda r: seen.append(dict(r.headers))]} if seen is not None else {}
    return anthropic.Anthropic(
        base_url=base, max_retries=0, api_key=None, auth_token=None,
        http_client=anthropic.DefaultHttpxClient(event_hooks=hooks),
        default_headers={"X-Api-Key": key, "anthropic-version": "2023-06-01",
                         "Authorization": anthropic.omit})


def test_create_plain(base):
    msg = client(base).messages.create(model=MODEL, max_tokens=200, system="be brief",
                                       messages=[{"role": "user", "content": "Say hello"}])
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and "Say hello" in msg.content[0].text
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    assert msg.id.startswith("msg_")


def test_both_auth_styles_are_sent_and_accepted(base):
    seen = []
    msg = legacy_client(base, seen=seen).messages.create(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text
    sent = {k.lower(): v for k, v in seen[-1].items()}
    assert sent["x-api-key"] == EMULATOR_KEY and "authorization" not in sent
    assert sent["anthropic-version"] == "2023-06-01"

    seen.clear()
    hooks = {"request": [lambda r: seen.append(dict(r.headers))]}
    c = client(base, http_client=anthropic.DefaultHttpxClient(event_hooks=hooks))
    assert c.messages.create(model=MODEL, max_tokens=50,
                             messages=[{"role": "user", "content": "hi"}]).content[0].text
    sent = {k.lower(): v for k, v in seen[-1].items()}
    assert sent["authorization"] == f"Bearer {EMULATOR_KEY}" and "x-api-key" not in sent
    assert sent["anthropic-version"] > "2023-06-01"


def test_create_with_tools_and_tool_result(base):
    c = client(base)
    msg = c.messages.create(model=MODEL, max_tokens=200, tools=[WEATHER],
                            messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert msg.stop_reason == "tool_use"
    use = [b for b in msg.content if b.type == "tool_use"][0]
    assert use.name == "get_weather" and use.input == {"city": "example", "unit": "c"}
    follow = c.messages.create(model=MODEL, max_tokens=200, tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C"}]}])
    assert follow.stop_reason == "end_turn" and follow.content[0].type == "text"


def test_stream_with_tool_use(base):
    with client(base).messages.stream(model=MODEL, max_tokens=200, tools=[WEATHER],
                                      messages=[{"role": "user", "content": "Weather?"}]) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds
    use = [b for b in final.content if b.type == "tool_use"][0]
    assert use.input == {"city": "example", "unit": "c"}
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0


def test_stream_text(base):
    with client(base).messages.stream(model=MODEL, max_tokens=200,
                                      messages=[{"role": "user", "content": "Say hello"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert "Say hello" in text
    assert final.stop_reason == "end_turn"


def test_cache_control_reports_cache_reads(base):
    msg = client(base).messages.create(
        model=MODEL, max_tokens=50,
        system=[{"type": "text", "text": "Reference text. " * 100, "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "summarise"}])
    assert msg.usage.cache_read_input_tokens > 100
    assert msg.usage.cache_creation_input_tokens == 0


def test_wrong_key_is_authentication_error(base):
    with pytest.raises(anthropic.AuthenticationError) as e:
        client(base, key="wrong").messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401
    assert e.value.body["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    with pytest.raises(anthropic.AuthenticationError):
        legacy_client(base, key="wrong").messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])


def test_overloaded_529(base):
    with pytest.raises(anthropic.InternalServerError) as e:
        client(base).messages.create(model=MODEL, max_tokens=10,
                                     messages=[{"role": "user", "content": "hi"}],
                                     extra_headers={"x-emulator-fault": "status=529"})
    assert e.value.status_code == 529
    assert type(e.value).__name__ == "OverloadedError"
    assert e.value.body["error"]["type"] == "overloaded_error"


def test_missing_max_tokens_is_bad_request(base):
    # The SDK itself refuses a call without max_tokens, so send the body as-is.
    with pytest.raises(anthropic.BadRequestError) as e:
        client(base).post("/v1/messages", cast_to=object,
                          body={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert e.value.body["error"]["type"] == "invalid_request_error"


def test_mid_stream_error_event_raises(base):
    with pytest.raises(anthropic.APIStatusError) as e:
        with client(base).messages.stream(model=MODEL, max_tokens=100,
                                          messages=[{"role": "user", "content": "hi"}],
                                          extra_headers={"x-emulator-fault": "stream_error_after=3"}) as s:
            for _ in s:
                pass
    assert "Overloaded" in str(e.value)


def raw_stream(base, body):
    req = urllib.request.Request(base + "/v1/messages", data=json.dumps(body).encode(), method="POST",
                                 headers={"x-api-key": EMULATOR_KEY, "anthropic-version": "2023-06-01",
                                          "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["content-type"] == "text/event-stream"
        return r.read().decode()


def parse_sse(text):
    event, data = None, []
    for line in text.split("\n"):
        if line == "":
            if data or event:
                yield event, "\n".join(data)
            event, data = None, []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


@pytest.mark.parametrize("tools", [False, True])
def test_stream_event_grammar(base, tools):
    """message_start, then (content_block_start, content_block_delta*, content_block_stop)*
    with consecutive indexes, message_delta, message_stop; ping anywhere; each `event:`
    name equal to data.type."""
    body = {"model": MODEL, "max_tokens": 200, "stream": True,
            "messages": [{"role": "user", "content": "hello there"}]}
    if tools:
        body["tools"] = [WEATHER]
    state, open_idx, next_idx, output = "start", None, 0, None
    for event, data in parse_sse(raw_stream(base, body)):
        doc = json.loads(data)
        assert event == doc["type"], (event, doc)
        t = doc["type"]
        if t == "ping":
            continue
        if t == "message_start":
            assert state == "start"
            assert doc["message"]["content"] == [] and doc["message"]["usage"]["input_tokens"] > 0
            state = "blocks"
        elif t == "content_block_start":
            assert state == "blocks" and open_idx is None and doc["index"] == next_idx
            open_idx, next_idx = doc["index"], next_idx + 1
        elif t in ("content_block_delta", "content_block_stop"):
            assert doc["index"] == open_idx
            if t == "content_block_stop":
                open_idx = None
        elif t == "message_delta":
            assert state == "blocks" and open_idx is None
            assert doc["delta"]["stop_reason"] == ("tool_use" if tools else "end_turn")
            output = doc["usage"]["output_tokens"]
            state = "delta"
        elif t == "message_stop":
            assert state == "delta"
            state = "stopped"
        else:
            raise AssertionError(f"unexpected event {t}")
    assert state == "stopped" and output > 0 and next_idx == 1
