"""The official `anthropic` SDK, unchanged, against the gateway's `/v1/messages`,
answered by an OpenAI-family model and by Chinese models through their native codecs:
plain and streamed messages, tool use, both auth styles, Anthropic-shaped errors.
Raw bodies and streams are validated with the schemas built from the SDK's types."""
import json
import urllib.request

import anthropic
import pytest

import validate_anthropic as va

MODELS = ["deepseek/deepseek-chat", "zhipu/glm-4-flash", "qwen/qwen-turbo", "openai/gpt-4o-mini"]
TOOL = {"name": "get_weather", "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def client(demo, key=None, **kw):
    return anthropic.Anthropic(base_url=demo["url"], api_key=key or demo["key"], max_retries=0,
                               _strict_response_validation=True, **kw)


@pytest.mark.parametrize("model", MODELS)
def test_messages_plain_stream_and_tools(demo, model):
    c = client(demo)
    m = c.messages.create(model=model, max_tokens=200, system="Be brief.",
                          messages=[{"role": "user", "content": "Hello there"}])
    assert m.type == "message" and m.role == "assistant"
    assert "Hello there" in m.content[0].text
    assert m.stop_reason == "end_turn"
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0

    with c.messages.stream(model=model, max_tokens=200, messages=[{"role": "user", "content": "Hello there"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert "Hello there" in text and final.usage.output_tokens > 0

    # Tool use, then the tool result goes back and the model answers.
    m = c.messages.create(model=model, max_tokens=200, tools=[TOOL],
                          messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert m.stop_reason == "tool_use"
    use = next(b for b in m.content if b.type == "tool_use")
    assert use.name == "get_weather" and isinstance(use.input, dict)
    with c.messages.stream(model=model, max_tokens=200, tools=[TOOL],
                           messages=[{"role": "user", "content": "Weather in Paris?"}]) as s:
        streamed = s.get_final_message()
    suse = next(b for b in streamed.content if b.type == "tool_use")
    assert suse.name == "get_weather" and suse.input == use.input
    follow = c.messages.create(model=model, max_tokens=200, tools=[TOOL], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21C"}]}])
    assert follow.stop_reason == "end_turn" and follow.content[0].text


def raw(demo, body, headers):
    req = urllib.request.Request(demo["url"] + "/v1/messages", data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_raw_bodies_and_streams_validate(demo):
    h = {"x-api-key": demo["key"], "anthropic-version": "2023-06-01"}
    status, body = raw(demo, {"model": "zhipu/glm-4-flash", "max_tokens": 100,
                              "messages": [{"role": "user", "content": "hi"}]}, h)
    assert status == 200
    assert not va.errors(va.validator("Message"), json.loads(body))
    status, body = raw(demo, {"model": "deepseek/deepseek-chat", "max_tokens": 100, "stream": True, "tools": [TOOL],
                              "messages": [{"role": "user", "content": "weather?"}]}, h)
    assert status == 200
    assert va.check_stream(body.decode()) == []
    # Errors are Anthropic-shaped.
    status, body = raw(demo, {"model": "nobody/none", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}, h)
    assert status == 404
    assert not va.errors(va.validator("ErrorResponse"), json.loads(body))
    status, body = raw(demo, {"model": "deepseek/deepseek-chat", "messages": []},
                       {"x-api-key": demo["key"]})
    assert status == 400 and json.loads(body)["type"] == "error"


def test_both_auth_styles_and_errors(demo):
    # anthropic >= 2.0: bearer + a new anthropic-version (the default client).
    assert client(demo).messages.create(model=MODELS[0], max_tokens=50,
                                        messages=[{"role": "user", "content": "x"}]).content
    # anthropic <= 1.17: x-api-key + 2023-06-01, no Authorization header.
    old = anthropic.Anthropic(base_url=demo["url"], api_key="unused", max_retries=0,
                              default_headers={"X-Api-Key": demo["key"], "anthropic-version": "2023-06-01",
                                               "Authorization": anthropic.Omit()})
    assert old.messages.create(model=MODELS[1], max_tokens=50, messages=[{"role": "user", "content": "x"}]).content
    with pytest.raises(anthropic.AuthenticationError):
        client(demo, key="tg-wrong").messages.create(model=MODELS[0], max_tokens=50,
                                                     messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.NotFoundError):
        client(demo).messages.create(model="openai/no-such", max_tokens=50, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError):
        client(demo).messages.create(model=MODELS[0], max_tokens=50, extra_body={"temperature": 7},
                                     messages=[{"role": "user", "content": "x"}])
