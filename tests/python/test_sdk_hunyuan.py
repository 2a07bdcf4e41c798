"""Tencent's official `tencentcloud-sdk-python-hunyuan`, unchanged, against
`tollgate emulate hunyuan`: TC3-signed ChatCompletions, plain and streamed, tools, and a
wrong SecretKey rejected with the vendor's own error."""
import json

import pytest
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.hunyuan.v20230901 import hunyuan_client, models

from conftest import EMULATOR_KEY, EMULATOR_SECRET


def client(base, secret_key=EMULATOR_SECRET):
    endpoint = base.split("://", 1)[1]
    hp = HttpProfile(endpoint=endpoint, protocol="http", reqTimeout=30)
    cred = credential.Credential(EMULATOR_KEY, secret_key)
    return hunyuan_client.HunyuanClient(cred, "", ClientProfile(httpProfile=hp))


def request(**fields):
    req = models.ChatCompletionsRequest()
    body = {"Model": "hunyuan-lite",
            "Messages": [{"Role": "system", "Content": "be brief"}, {"Role": "user", "Content": "你好, Hunyuan"}]}
    body.update(fields)
    req.from_json_string(json.dumps(body))
    return req


def stream_events(resp):
    return [json.loads(ev["data"]) for ev in resp if ev.get("data")]


def test_plain_chat(emulator):
    r = client(emulator("hunyuan")).ChatCompletions(request())
    content = r.Choices[0].Message.Content
    assert "hunyuan emulator (hunyuan-lite)" in content and "你好, Hunyuan" in content
    assert r.Choices[0].FinishReason == "stop"
    assert r.Usage.PromptTokens > 0 and r.Usage.CompletionTokens > 0
    assert r.Usage.TotalTokens == r.Usage.PromptTokens + r.Usage.CompletionTokens


def test_stream_chat(emulator):
    base = emulator("hunyuan")
    plain = client(base).ChatCompletions(request()).Choices[0].Message.Content
    events = stream_events(client(base).ChatCompletions(request(Stream=True)))
    text = "".join(e["Choices"][0]["Delta"]["Content"] for e in events)
    assert text == plain
    assert events[-1]["Choices"][0]["FinishReason"] == "stop"
    usage = [e["Usage"]["CompletionTokens"] for e in events]
    assert usage == sorted(usage) and usage[-1] > 0  # cumulative in every event


def test_tools(emulator):
    tools = [{"Type": "function", "Function": {"Name": "get_weather", "Description": "weather",
              "Parameters": json.dumps({"type": "object", "properties": {"city": {"type": "string"}}})}}]
    r = client(emulator("hunyuan")).ChatCompletions(request(Tools=tools, ToolChoice="auto"))
    call = r.Choices[0].Message.ToolCalls[0]
    assert r.Choices[0].FinishReason == "tool_calls"
    assert call.Function.Name == "get_weather"
    assert json.loads(call.Function.Arguments) == {"city": "example"}


def test_wrong_secret_key_is_signature_failure(emulator):
    base = emulator("hunyuan")
    for stream in (False, True):
        with pytest.raises(TencentCloudSDKException) as e:
            r = client(base, secret_key="not-the-secret").ChatCompletions(request(Stream=stream))
            list(r) if stream else None
        assert e.value.get_code() == "AuthFailure.SignatureFailure"
        assert "not-the-secret" not in str(e.value)


def test_alternation_and_rate_limit_errors(emulator):
    base = emulator("hunyuan", "--fault", "rate_limit=1,fail_first=1")
    with pytest.raises(TencentCloudSDKException) as e:
        client(base).ChatCompletions(request())
    assert e.value.get_code() == "RequestLimitExceeded"
    bad = request(Messages=[{"Role": "user", "Content": "a"}, {"Role": "user", "Content": "b"}])
    with pytest.raises(TencentCloudSDKException) as e:
        client(base).ChatCompletions(bad)
    assert e.value.get_code() == "InvalidParameter"
