"""The official `zhipuai` SDK against `tollgate emulate zhipu`: plain key and JWT auth,
plain, streaming and tool-calling chats, and a refused key.

The emulator's console key is `emulator-key.emulator-secret` (its default `api_key`
joined with its default `secret_key`)."""

import pytest

zhipuai = pytest.importorskip("zhipuai")

KEY = "emulator-key.emulator-secret"
MODEL = "glm-4-flash"
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


def client(base, key=KEY, jwt=False):
    # disable_token_cache=False makes the SDK sign a JWT from id.secret.
    return zhipuai.ZhipuAI(
        api_key=key,
        base_url=base + "/api/paas/v4",
        disable_token_cache=not jwt,
        max_retries=0,
    )


@pytest.fixture
def base(emulator):
    return emulator("zhipu")


@pytest.mark.parametrize("jwt", [False, True], ids=["plain-key", "jwt"])
def test_plain_chat(base, jwt):
    r = client(base, jwt=jwt).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello zhipu"}],
        temperature=0,
    )
    assert "zhipu emulator" in r.choices[0].message.content
    assert "hello zhipu" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0


@pytest.mark.parametrize("jwt", [False, True], ids=["plain-key", "jwt"])
def test_stream_chat(base, jwt):
    stream = client(base, jwt=jwt).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "stream please" in text
    assert len(chunks) > 2
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0


def test_tool_call(base):
    r = client(base, jwt=True).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "weather in Beijing?"}],
        tools=TOOLS,
        tool_choice="auto",
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert '"city"' in call.function.arguments
    assert r.usage.total_tokens > 0


@pytest.mark.parametrize("jwt", [False, True], ids=["plain-key", "jwt"])
def test_wrong_key_is_refused(base, jwt):
    with pytest.raises(zhipuai.APIAuthenticationError) as e:
        client(base, key="emulator-key.wrong-secret", jwt=jwt).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 401
    assert "1000" in str(e.value)
