"""Baidu's official `qianfan` SDK, unchanged, against `tollgate emulate qianfan`.

qianfan reads its settings once, at import, from environment variables, so each case
runs the SDK in a fresh Python subprocess with `QIANFAN_BASE_URL` (OAuth token URL and
v1 chat) and `QIANFAN_CONSOLE_API_BASE_URL` (v2 chat) pointing at the emulator.
"""
import json
import os
import subprocess
import sys
import tempfile
import textwrap

from conftest import EMULATOR_KEY, EMULATOR_SECRET

PRELUDE = textwrap.dedent(
    """
    import json, os, sys, urllib.request
    import qianfan
    from qianfan import errors

    BASE = os.environ["QIANFAN_BASE_URL"]
    MSGS = [{"role": "user", "content": "你好, ERNIE"}]

    def out(**kw):
        print("RESULT " + json.dumps(kw, ensure_ascii=False))

    def control(path):
        urllib.request.urlopen(urllib.request.Request(BASE + path, method="POST"), timeout=10)
    """
)


def run_sdk(base, body, ak=EMULATOR_KEY, sk=EMULATOR_SECRET):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QIANFAN_")}
    env.update(
        QIANFAN_BASE_URL=base,
        QIANFAN_CONSOLE_API_BASE_URL=base,
        QIANFAN_CACHE_DIR=tempfile.mkdtemp(prefix="qianfan-"),
        QIANFAN_ACCESS_TOKEN_REFRESH_MIN_INTERVAL="0",
        QIANFAN_BEARER_TOKEN=EMULATOR_KEY,
        AK=ak,
        SK=sk,
    )
    p = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    assert p.returncode == 0 and lines, f"rc={p.returncode}\nstdout={p.stdout}\nstderr={p.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_plain_and_stream_chat_v1(emulator):
    base = emulator("qianfan")
    r = run_sdk(
        base,
        """
        chat = qianfan.ChatCompletion(ak=os.environ["AK"], sk=os.environ["SK"])
        r = chat.do(model="ERNIE-Speed-8K", messages=MSGS, system="be brief", retry_count=1)
        parts = [c for c in chat.do(model="ERNIE-Speed-8K", messages=MSGS, system="be brief", stream=True, retry_count=1)]
        out(result=r["result"], usage=r["usage"],
            stream="".join(c["result"] for c in parts), last_end=parts[-1]["is_end"],
            stream_usage=parts[-1]["usage"])
        """,
    )
    assert "qianfan emulator (ernie_speed)" in r["result"]
    assert "你好, ERNIE" in r["result"]
    assert r["usage"]["prompt_tokens"] > 0 and r["usage"]["completion_tokens"] > 0
    assert r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"]
    assert r["stream"] == r["result"]
    assert r["last_end"] is True
    assert r["stream_usage"] == r["usage"]


def test_functions_v1(emulator):
    base = emulator("qianfan")
    r = run_sdk(
        base,
        """
        chat = qianfan.ChatCompletion(ak=os.environ["AK"], sk=os.environ["SK"])
        fns = [{"name": "get_weather", "description": "weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
        r = chat.do(model="ERNIE-3.5-8K", messages=MSGS, functions=fns, retry_count=1)
        out(function_call=r["function_call"], usage=r["usage"])
        """,
    )
    assert r["function_call"]["name"] == "get_weather"
    assert json.loads(r["function_call"]["arguments"]) == {"city": "example"}
    assert r["usage"]["total_tokens"] > 0


def test_expired_token_is_refreshed(emulator):
    base = emulator("qianfan")
    r = run_sdk(
        base,
        """
        chat = qianfan.ChatCompletion(ak=os.environ["AK"], sk=os.environ["SK"])
        first = chat.do(model="ERNIE-Speed-8K", messages=MSGS, retry_count=1)["result"]
        control("/_emulator/expire_tokens")
        again = chat.do(model="ERNIE-Speed-8K", messages=MSGS, retry_count=1)["result"]
        control("/_emulator/expire_tokens")
        streamed = "".join(c["result"] for c in chat.do(model="ERNIE-Speed-8K", messages=MSGS, stream=True, retry_count=1))
        out(first=first, again=again, streamed=streamed)
        """,
    )
    assert r["first"] == r["again"] == r["streamed"]


def test_wrong_secret_key_raises_auth_error(emulator):
    base = emulator("qianfan")
    r = run_sdk(
        base,
        """
        try:
            qianfan.ChatCompletion(ak=os.environ["AK"], sk=os.environ["SK"]).do(
                model="ERNIE-Speed-8K", messages=MSGS, retry_count=1)
            out(raised=None)
        except errors.AuthError as e:
            out(raised="AuthError", message=str(e))
        """,
        sk="not-the-secret",
    )
    assert r["raised"] == "AuthError"
    assert "not-the-secret" not in r["message"]


def test_even_messages_and_rate_limit_raise_api_error(emulator):
    base = emulator("qianfan", "--fault", "rate_limit=1,fail_first=1")
    r = run_sdk(
        base,
        """
        chat = qianfan.ChatCompletion(ak=os.environ["AK"], sk=os.environ["SK"])
        codes = []
        for msgs in (MSGS, MSGS + [{"role": "assistant", "content": "x"}]):
            try:
                chat.do(model="ERNIE-Speed-8K", messages=msgs, retry_count=1)
                codes.append(None)
            except errors.APIError as e:
                codes.append(e.error_code)
        out(codes=codes)
        """,
    )
    assert r["codes"] == [18, 336006]


def test_plain_and_stream_chat_v2(emulator):
    base = emulator("qianfan")
    r = run_sdk(
        base,
        """
        chat = qianfan.ChatCompletion(version="2")
        r = chat.do(model="ernie-speed-8k", messages=MSGS, retry_count=1)
        chunks = [c.body for c in chat.do(model="ernie-speed-8k", messages=MSGS, stream=True, retry_count=1)]
        out(content=r["choices"][0]["message"]["content"], usage=r["usage"],
            stream="".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices")))
        """,
    )
    assert "qianfan emulator (ernie-speed-8k)" in r["content"]
    assert r["usage"]["completion_tokens"] > 0
    assert r["stream"] == r["content"]
