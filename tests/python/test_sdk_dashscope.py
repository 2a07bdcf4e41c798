"""The official `dashscope` SDK (1.x-style API) against `tollgate emulate dashscope`:
the native text-generation API, plain and streaming (incremental and cumulative),
tools, and a refused key; plus the `openai` SDK against the compatible mode."""

import os

import pytest

# The 2.0 client reads ~/.dashscope/config.toml; keep the machine's out of the test.
os.environ["DASHSCOPE_CONFIG"] = "/dev/null"
dashscope = pytest.importorskip("dashscope")

KEY = "emulator-key"
MODEL = "qwen-plus"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.fixture
def base(emulator):
    root = emulator("dashscope")
    # A module global, read at call time by the 1.x API.
    saved = dashscope.base_http_api_url
    dashscope.base_http_api_url = root + "/api/v1"
    yield root
    dashscope.base_http_api_url = saved


def call(**kw):
    kw.setdefault("api_key", KEY)
    kw.setdefault("model", MODEL)
    return dashscope.Generation.call(**kw)


def test_plain_chat(base):
    r = call(messages=[{"role": "user", "content": "hello qwen"}], result_format="message")
    assert r.status_code == 200, (r.code, r.message)
    msg = r.output.choices[0].message
    assert "dashscope emulator" in msg.content and "hello qwen" in msg.content
    assert r.output.choices[0].finish_reason == "stop"
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0


def test_text_result_format(base):
    r = call(prompt="hello text")
    assert r.status_code == 200
    assert "hello text" in r.output.text
    assert r.output.finish_reason == "stop"


def test_stream_incremental(base):
    events = list(
        call(
            messages=[{"role": "user", "content": "stream please"}],
            result_format="message",
            stream=True,
            incremental_output=True,
        )
    )
    assert all(e.status_code == 200 for e in events)
    assert len(events) > 2
    text = "".join(e.output.choices[0].message.content for e in events)
    assert "stream please" in text
    assert events[0].output.choices[0].finish_reason == "null"
    assert events[-1].output.choices[0].finish_reason == "stop"
    assert events[-1].usage.input_tokens > 0 and events[-1].usage.output_tokens > 0
    # Usage is cumulative on every event.
    outs = [e.usage.output_tokens for e in events]
    assert outs == sorted(outs)


def test_stream_cumulative(base):
    events = list(
        call(
            messages=[{"role": "user", "content": "whole text"}],
            result_format="message",
            stream=True,
        )
    )
    last = events[-1].output.choices[0].message.content
    assert "whole text" in last
    assert last.startswith(events[0].output.choices[0].message.content)


def test_tool_call(base):
    r = call(
        messages=[{"role": "user", "content": "weather in Hangzhou?"}],
        result_format="message",
        tools=TOOLS,
    )
    assert r.status_code == 200
    choice = r.output.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0]["function"]["name"] == "get_weather"


def test_stream_error_event(base):
    events = list(
        call(
            messages=[{"role": "user", "content": "hi"}],
            result_format="message",
            stream=True,
            incremental_output=True,
            headers={"x-emulator-fault": "stream_error_after=2"},
        )
    )
    assert events[-1].status_code != 200
    assert events[-1].code == "InternalError"


def test_wrong_key_returns_invalid_api_key(base):
    # The 1.x API returns the error instead of raising it.
    r = call(api_key="wrong", messages=[{"role": "user", "content": "hi"}], result_format="message")
    assert r.status_code == 401
    assert r.code == "InvalidApiKey"
    assert r.message == "Invalid API-key provided."


@pytest.fixture
def compat(base):
    openai = pytest.importorskip("openai")
    return openai, base + "/compatible-mode/v1"


def test_compatible_mode_plain_and_stream(compat):
    openai, url = compat
    c = openai.OpenAI(api_key=KEY, base_url=url, max_retries=0)
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello compat"}])
    assert "hello compat" in r.choices[0].message.content
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    chunks = list(
        c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "stream compat"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert "stream compat" in text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_compatible_mode_wrong_key(compat):
    openai, url = compat
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="wrong", base_url=url, max_retries=0).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
