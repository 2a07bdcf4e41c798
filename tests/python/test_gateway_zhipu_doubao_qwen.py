"""The `openai` SDK through the gateway to Zhipu, Doubao (Ark) and Qwen (DashScope, native
and compatible mode), each behind its emulator: answers, streams with usage, tool calls,
Doubao's endpoint-id mapping, and vendor errors mapped to OpenAI statuses without
leaking the upstream secret."""
import openai
import pytest
from conftest import EMULATOR_KEY, EMULATOR_SECRET

ZHIPU_KEY = f"{EMULATOR_KEY}.{EMULATOR_SECRET}"
MODELS = ["zhipu/glm-4-flash", "doubao/doubao-1.5-pro-32k", "doubao/doubao-seed-1.6", "qwen/qwen-plus"]
TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                          "required": ["city"]}}}


def client(info, key=None):
    return openai.OpenAI(base_url=info["base_url"], api_key=key or info["key"], max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_chat_stream_and_tools_through_the_demo(demo, model):
    c = client(demo)
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello gateway"}])
    assert "hello gateway" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0

    chunks = list(c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "stream it"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert "stream it" in text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0

    for stream in (False, True):
        kw = {"model": model, "messages": [{"role": "user", "content": "weather?"}], "tools": [TOOL]}
        if stream:
            calls = {}
            for ch in c.chat.completions.create(stream=True, **kw):
                for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
                    cur = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                    cur["name"] += (tc.function.name or "") if tc.function else ""
                    cur["arguments"] += (tc.function.arguments or "") if tc.function else ""
            assert calls[0] == {"name": "get_weather", "arguments": '{"city":"example"}'}
        else:
            r = c.chat.completions.create(**kw)
            assert r.choices[0].finish_reason == "tool_calls"
            assert r.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_doubao_catalog_model_goes_to_the_endpoint_id(demo):
    r = client(demo).chat.completions.create(
        model="doubao/doubao-1.5-pro-32k", messages=[{"role": "user", "content": "which endpoint?"}])
    # The emulator names the model it was sent: the configured endpoint id.
    assert "ep-20250118155555-demo0" in r.choices[0].message.content


def provider(name, url, extra=""):
    toml = {
        "zhipu": f'[providers.zhipu]\nbase_url = "{url}/api/paas/v4"\napi_key = "{ZHIPU_KEY}"\nmodels = ["glm-4-flash"]\n',
        "doubao": f'[providers.doubao]\nbase_url = "{url}/api/v3"\napi_key = "{EMULATOR_KEY}"\nmodels = ["doubao-seed-1.6"]\n',
        "qwen": f'[providers.qwen]\nbase_url = "{url}"\napi_key = "{EMULATOR_KEY}"\nmodels = ["qwen-plus"]\n',
    }[name]
    return "[timeouts]\nfirst_byte_ms = 3000\nidle_ms = 3000\n" + toml + extra


EMU = {"zhipu": "zhipu", "doubao": "doubao", "qwen": "dashscope"}
MODEL = {"zhipu": "zhipu/glm-4-flash", "doubao": "doubao/doubao-seed-1.6", "qwen": "qwen/qwen-plus"}
# Each vendor's own moderation error, as its emulator sends it for the `body=` fault.
FILTERED = {
    "zhipu": '{"error":{"code":"1301"%2C"message":"unsafe content"}}',
    "doubao": '{"error":{"code":"InputTextSensitiveContentDetected"%2C"message":"sensitive"%2C"param":""%2C"type":"BadRequest"}}',
    "qwen": '{"code":"DataInspectionFailed"%2C"message":"Input data may contain inappropriate content."%2C"request_id":"r"}',
}


@pytest.mark.parametrize("vendor", ["zhipu", "doubao", "qwen"])
def test_vendor_errors_map_to_openai_statuses(emulator, gateway, vendor):
    msgs = [{"role": "user", "content": "x"}]
    gw = gateway(provider(vendor, emulator(EMU[vendor], "--fault", "rate_limit=7")))
    with pytest.raises(openai.RateLimitError) as e:
        client(gw).chat.completions.create(model=MODEL[vendor], messages=msgs)
    assert e.value.response.headers["retry-after"] == "7"

    gw = gateway(provider(vendor, emulator(EMU[vendor], "--fault", f"status=400,body={FILTERED[vendor]}")))
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).chat.completions.create(model=MODEL[vendor], messages=msgs)
    assert e.value.code == "content_filter"

    gw = gateway(provider(vendor, emulator(EMU[vendor], "--fault", "stream_error_after=2")))
    with pytest.raises(openai.APIError):
        for _ in client(gw).chat.completions.create(model=MODEL[vendor], messages=msgs, stream=True):
            pass


@pytest.mark.parametrize("vendor", ["zhipu", "doubao", "qwen"])
def test_wrong_upstream_secret_is_502_without_the_secret(emulator, gateway, vendor):
    secret = "wrong-upstream-secret-1234"
    config = provider(vendor, emulator(EMU[vendor]))
    # Zhipu: the JWT is signed with the wrong secret part of the key.
    config = config.replace(ZHIPU_KEY, f"{EMULATOR_KEY}.{secret}").replace(f'"{EMULATOR_KEY}"', f'"{secret}"')
    gw = gateway(config)
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).chat.completions.create(model=MODEL[vendor], messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502
    assert secret not in e.value.response.text
    assert secret not in "".join(gw["proc"].err)


def test_qwen_compatible_mode(emulator, gateway):
    gw = gateway(provider("qwen", emulator("dashscope")).replace("[providers.qwen]\n", '[providers.qwen]\nmode = "openai"\n'))
    c = client(gw)
    r = c.chat.completions.create(model="qwen/qwen-plus", messages=[{"role": "user", "content": "compat mode"}])
    assert "compat mode" in r.choices[0].message.content and r.usage.completion_tokens > 0
    chunks = list(c.chat.completions.create(model="qwen/qwen-plus", messages=[{"role": "user", "content": "s"}],
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens > 0
