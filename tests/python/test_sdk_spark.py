"""iFlytek's official `spark-ai-python` SDK (module `sparkai`), unchanged, against
`tollgate emulate spark`: the signed WebSocket URL, plain and streamed chat, function
calls, and a wrong API secret refused at the handshake."""
import pytest
from sparkai.core.callbacks import BaseCallbackHandler
from sparkai.core.messages import ChatMessage
from sparkai.llm.llm import ChatSparkLLM

from conftest import EMULATOR_APP, EMULATOR_KEY, EMULATOR_SECRET


def llm(base, secret=EMULATOR_SECRET, streaming=False, path="/v3.5/chat", domain="generalv3.5"):
    return ChatSparkLLM(
        spark_api_url=base.replace("http://", "ws://") + path,
        spark_app_id=EMULATOR_APP,
        spark_api_key=EMULATOR_KEY,
        spark_api_secret=secret,
        spark_llm_domain=domain,
        streaming=streaming,
        request_timeout=10,
    )


MSGS = [ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="你好, Spark")]


class Tokens(BaseCallbackHandler):
    def __init__(self):
        self.tokens = []

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)


def test_plain_chat(emulator):
    r = llm(emulator("spark")).generate([MSGS])
    text = r.generations[0][0].text
    assert "spark emulator (generalv3.5)" in text and "你好, Spark" in text
    usage = r.llm_output["token_usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stream_chat_with_callback(emulator):
    base = emulator("spark")
    h = Tokens()
    r = llm(base, streaming=True).generate([MSGS], callbacks=[h])
    text = r.generations[0][0].text
    assert len([t for t in h.tokens if t]) > 3
    assert "".join(h.tokens) == text
    assert "spark emulator" in text
    assert r.llm_output["token_usage"]["completion_tokens"] > 0


def test_lite_domain_on_its_own_path(emulator):
    r = llm(emulator("spark"), path="/v1.1/chat", domain="lite").generate([MSGS[1:]])
    assert "spark emulator (lite)" in r.generations[0][0].text


def test_function_call(emulator):
    fns = [{"name": "get_weather", "description": "weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    r = llm(emulator("spark")).generate([MSGS[1:]], function_definition=fns)
    msg = r.generations[0][0].message
    assert msg.additional_kwargs.get("function_call", getattr(msg, "function_call", None))["name"] == "get_weather"


def test_wrong_secret_is_refused_at_handshake(emulator):
    with pytest.raises(Exception) as e:
        llm(emulator("spark"), secret="not-the-secret").generate([MSGS])
    assert "401" in str(e.value)
    assert "HMAC signature does not match" in str(e.value)


def test_rate_limit_frame_raises(emulator):
    with pytest.raises(Exception) as e:
        llm(emulator("spark", "--fault", "rate_limit=1")).generate([MSGS])
    assert "11202" in str(e.value)
