"""The `openai` SDK through the gateway to ERNIE (OAuth token fetched by the gateway),
Spark (signed WebSocket) and Hunyuan (TC3-signed), each behind its emulator: answers,
streams with usage, tool calls, the OpenAI-compatible modes, vendor errors mapped to
OpenAI statuses, and a wrong secret reported as 502 without leaking it."""
import openai
import pytest
from conftest import EMULATOR_APP, EMULATOR_KEY, EMULATOR_SECRET

MODELS = ["ernie/ernie-4.0-8k", "ernie/ERNIE-Speed-8K", "spark/generalv3.5", "spark/lite",
          "hunyuan/hunyuan-turbo", "hunyuan/hunyuan-lite"]
TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                          "required": ["city"]}}}


def client(info, key=None):
    return openai.OpenAI(base_url=info["base_url"], api_key=key or info["key"], max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_chat_and_stream_through_the_demo(demo, model):
    c = client(demo)
    r = c.chat.completions.create(model=model, messages=[{"role": "system", "content": "be brief"},
                                                         {"role": "user", "content": "hello gateway"}])
    assert "hello gateway" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    chunks = list(c.chat.completions.create(model=model, messages=[{"role": "user", "content": "stream it"}],
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert "stream it" in text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("model", ["ernie/ernie-4.0-8k", "spark/generalv3.5", "hunyuan/hunyuan-turbo"])
def test_tool_calls(demo, model):
    r = client(demo).chat.completions.create(model=model, tools=[TOOL],
                                             messages=[{"role": "user", "content": "weather in Paris?"}])
    assert r.choices[0].finish_reason == "tool_calls"
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"


def provider(vendor, url, extra=""):
    body = {
        "ernie": f'[providers.ernie]\nbase_url = "{url}"\napi_key = "{EMULATOR_KEY}"\nsecret_key = "{EMULATOR_SECRET}"\nmodels = ["ernie-4.0-8k"]\n',
        "spark": f'[providers.spark]\nbase_url = "{url}"\napi_key = "{EMULATOR_KEY}"\nsecret_key = "{EMULATOR_SECRET}"\napp_id = "{EMULATOR_APP}"\nmodels = ["generalv3.5"]\n',
        "hunyuan": f'[providers.hunyuan]\nbase_url = "{url}"\napi_key = "{EMULATOR_KEY}"\nsecret_key = "{EMULATOR_SECRET}"\nmodels = ["hunyuan-turbo"]\n',
    }[vendor]
    return "[timeouts]\nfirst_byte_ms = 3000\nidle_ms = 3000\n" + body + extra


EMU = {"ernie": "qianfan", "spark": "spark", "hunyuan": "hunyuan"}
MODEL = {"ernie": "ernie/ernie-4.0-8k", "spark": "spark/generalv3.5", "hunyuan": "hunyuan/hunyuan-turbo"}


@pytest.mark.parametrize("vendor", ["ernie", "spark", "hunyuan"])
def test_vendor_errors_map_to_openai_statuses(emulator, gateway, vendor):
    msgs = [{"role": "user", "content": "x"}]
    # Each vendor's own rate-limit error (ERNIE: error_code 18 in an HTTP 200; Spark: a
    # frame with code 11202; Hunyuan: RequestLimitExceeded in an HTTP 200) is a 429.
    gw = gateway(provider(vendor, emulator(EMU[vendor], "--fault", "rate_limit=5")))
    with pytest.raises(openai.RateLimitError):
        client(gw).chat.completions.create(model=MODEL[vendor], messages=msgs)
    with pytest.raises(openai.RateLimitError):
        for _ in client(gw).chat.completions.create(model=MODEL[vendor], messages=msgs, stream=True):
            pass
    # A failure in the middle of a stream raises in the SDK.
    gw = gateway(provider(vendor, emulator(EMU[vendor], "--fault", "stream_error_after=2")))
    with pytest.raises(openai.APIError):
        for _ in client(gw).chat.completions.create(model=MODEL[vendor], messages=msgs, stream=True):
            pass


@pytest.mark.parametrize("vendor", ["ernie", "spark", "hunyuan"])
def test_wrong_upstream_secret_is_502_without_the_secret(emulator, gateway, vendor):
    secret = "wrong-upstream-secret-5678"
    gw = gateway(provider(vendor, emulator(EMU[vendor])).replace(f'"{EMULATOR_SECRET}"', f'"{secret}"'))
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as e:
            r = client(gw).chat.completions.create(model=MODEL[vendor], stream=stream,
                                                   messages=[{"role": "user", "content": "x"}])
            if stream:
                list(r)
        assert e.value.status_code == 502
        assert e.value.code == "upstream_auth_failed"
        assert secret not in e.value.response.text
    assert secret not in "".join(gw["proc"].err)


@pytest.mark.parametrize("vendor,path", [("ernie", "/v2"), ("spark", "/v1"), ("hunyuan", "/v1")])
def test_openai_compatible_modes(emulator, gateway, vendor, path):
    url = emulator(EMU[vendor])
    config = provider(vendor, url + path).replace(f"[providers.{vendor}]\n", f'[providers.{vendor}]\nmode = "openai"\n')
    gw = gateway(config)
    c = client(gw)
    r = c.chat.completions.create(model=MODEL[vendor], messages=[{"role": "user", "content": "compat mode"}])
    assert "compat mode" in r.choices[0].message.content and r.usage.completion_tokens > 0
    chunks = list(c.chat.completions.create(model=MODEL[vendor], messages=[{"role": "user", "content": "s"}],
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens > 0
