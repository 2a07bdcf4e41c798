"""The official Volcengine Ark runtime (`volcenginesdkarkruntime.Ark`) against
`tollgate emulate doubao`: plain, streaming (with `include_usage`) and tool-calling
chats, an unknown endpoint, and a refused key."""

import pytest

ark = pytest.importorskip("volcenginesdkarkruntime")
from volcenginesdkarkruntime import _exceptions as ark_errors  # noqa: E402

KEY = "emulator-key"
ENDPOINT = "ep-20250118155555-tollg"
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
    return emulator("doubao")


def client(base, key=KEY):
    return ark.Ark(base_url=base + "/api/v3", api_key=key, max_retries=0)


def test_plain_chat(base):
    r = client(base).chat.completions.create(
        model=ENDPOINT, messages=[{"role": "user", "content": "hello ark"}]
    )
    assert "doubao emulator" in r.choices[0].message.content
    assert "hello ark" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0


def test_stream_with_usage(base):
    stream = client(base).chat.completions.create(
        model="doubao-seed-1-6-251015",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "stream please" in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0


def test_tool_call(base):
    r = client(base).chat.completions.create(
        model=ENDPOINT,
        messages=[{"role": "user", "content": "weather in Beijing?"}],
        tools=TOOLS,
    )
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert '"city"' in call.function.arguments


def test_unknown_endpoint_is_not_found(base):
    with pytest.raises(ark_errors.ArkNotFoundError) as e:
        client(base).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    assert "InvalidEndpointOrModel.NotFound" in str(e.value)


def test_wrong_key_is_refused(base):
    with pytest.raises(ark_errors.ArkAuthenticationError) as e:
        client(base, key="wrong").chat.completions.create(
            model=ENDPOINT, messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 401
    assert "AuthenticationError" in str(e.value)
