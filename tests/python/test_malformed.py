"""Malformed input of every kind gets a 4xx with OpenAI's error body, never a 5xx, a
hang or a crash; the gateway keeps serving afterwards. Bounded: a fixed, seeded set."""
import json
import random
import socket
import urllib.request

from conftest import assert_valid
from test_gateway_openai import raw

GOOD = {"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}

WRONG_VALUES = [None, True, -1, 0, 1.5, 1e309, "", "x" * 300, [], {}, [1, 2], {"a": 1}, "\u0000", "é漢字"]
FIELDS = ["model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
          "temperature", "top_p", "n", "stop", "tools", "tool_choice", "response_format",
          "presence_penalty", "frequency_penalty", "seed", "parallel_tool_calls", "user"]


def malformed_bodies():
    rnd = random.Random(20261128)
    bodies = [b"", b"{", b"}", b"null", b"[]", b"123", b'"str"', b"{,}", b'{"model":}', b"\xff\xfe\xfd",
              b'{"model":"a","messages":[{"role":"user","content":"hi"}]} trailing',
              b'{"model":"a","messages":[' + b"[" * 5000 + b"]" * 5000 + b"]}",
              json.dumps({"model": "deepseek/deepseek-chat"}).encode(),
              json.dumps({"messages": GOOD["messages"]}).encode(),
              json.dumps({**GOOD, "messages": []}).encode(),
              json.dumps({**GOOD, "messages": [{"content": "no role"}]}).encode(),
              json.dumps({**GOOD, "messages": [{"role": "wizard", "content": "x"}]}).encode(),
              json.dumps({**GOOD, "messages": [{"role": "user"}]}).encode(),
              json.dumps({**GOOD, "messages": [{"role": "tool", "content": "no id"}]}).encode(),
              json.dumps({**GOOD, "messages": [{"role": "user", "content": [{"type": "text"}]}]}).encode(),
              json.dumps({**GOOD, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode(),
              json.dumps({**GOOD, "tools": [{"type": "function", "function": {}}]}).encode(),
              json.dumps({**GOOD, "tools": [{"type": "retrieval", "function": {"name": "f"}}]}).encode(),
              json.dumps({**GOOD, "tool_choice": "sometimes"}).encode(),
              json.dumps({**GOOD, "tool_choice": {"type": "function", "function": {"name": "f"}}}).encode(),
              json.dumps({**GOOD, "response_format": {"type": "yaml"}}).encode(),
              json.dumps({**GOOD, "response_format": {"type": "json_schema"}}).encode(),
              json.dumps({**GOOD, "stop": ["a", "b", "c", "d", "e"]}).encode(),
              json.dumps({**GOOD, "model": "nobody/nothing"}).encode(),
              json.dumps({**GOOD, "model": ""}).encode()]
    for field in FIELDS:
        for v in WRONG_VALUES:
            body = dict(GOOD)
            body[field] = v
            bodies.append(json.dumps(body).encode())
    while len(bodies) < 260:
        # Random corruptions of a valid body: truncation, byte flips, insertions.
        b = bytearray(json.dumps({**GOOD, "temperature": 0.5, "tools": [{"type": "function",
                                 "function": {"name": "f", "parameters": {"type": "object"}}}]}).encode())
        op = rnd.randrange(3)
        if op == 0:
            b = b[: rnd.randrange(1, len(b) - 1)]
        elif op == 1:
            for _ in range(rnd.randrange(1, 4)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
        else:
            i = rnd.randrange(len(b))
            b[i:i] = rnd.choice([b'"', b"{", b"]", b"\\", b",", b":", b"\x00"])
        bodies.append(bytes(b))
    return bodies


def test_malformed_bodies_get_4xx_json_errors(demo):
    accepted = 0
    for body in malformed_bodies():
        status, headers, out = raw(demo, body)
        if status == 200:
            # A random corruption can still be a valid request (e.g. a flipped letter in
            # the content); that must then be a proper answer.
            accepted += 1
            continue
        assert 400 <= status < 500, (status, body[:200], out[:300])
        doc = json.loads(out)
        assert_valid("ErrorResponse", doc)
        assert doc["error"]["message"]
    assert accepted < 60
    # Still serving.
    status, _, _ = raw(demo, GOOD)
    assert status == 200


def test_hostile_connections_do_not_hang_the_server(demo):
    host, port = demo["url"].split("//")[1].split(":")
    # Headers that promise a body that never comes; garbage request lines; half-closed sockets.
    for payload in [b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
                    b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 2000 + b"\r\n",
                    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]:
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        try:
            s.recv(4096)
        except OSError:
            pass
        s.close()
    status, _, _ = raw(demo, GOOD)
    assert status == 200
    # Wrong methods and unknown routes are JSON errors too.
    req = urllib.request.Request(demo["url"] + "/v1/chat/completions", method="GET")
    try:
        urllib.request.urlopen(req)
    except urllib.error.HTTPError as e:
        assert e.code == 405 and "error" in json.loads(e.read())
    status, _, out = raw(demo, GOOD, path="/v1/nothing-here")
    assert status == 404 and json.loads(out)["error"]["message"]
