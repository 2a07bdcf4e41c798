"""Process lifecycle: graceful shutdown drains in-flight streams and exits 0; the
server speaks HTTP/1.1 and h2c (HTTP/2 with prior knowledge)."""
import http.client
import json
import signal
import socket
import time

from conftest import EMULATOR_KEY


def test_sigterm_lets_in_flight_streams_finish(emulator, gateway):
    emu = emulator("openai", "--fault", "chunk_interval_ms=100,chunks=20")
    gw = gateway(f"""
shutdown_grace_secs = 20
[providers.openai]
base_url = "{emu}/v1"
api_key = "{EMULATOR_KEY}"
models = ["gpt-4o-mini"]
""")
    host, port = gw["url"].split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(
        {"model": "openai/gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "story"}]}),
        headers={"Authorization": f"Bearer {gw['key']}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    first = resp.read1(4096)
    assert b"data: " in first
    gw["proc"].p.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # New connections are refused while the stream drains...
    refused = False
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        refused = True
    assert refused
    # ...and the stream in flight completes.
    rest = resp.read()
    assert (first + rest).rstrip().endswith(b"data: [DONE]")
    assert gw["proc"].p.wait(timeout=15) == 0


def test_h2c_prior_knowledge(demo):
    """HTTP/2 over cleartext: the client preface, a SETTINGS frame and a GET /healthz."""
    host, port = demo["url"].split("//")[1].split(":")
    s = socket.create_connection((host, int(port)), timeout=5)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    # HEADERS frame (stream 1, END_STREAM|END_HEADERS) with HPACK static-table entries:
    # :method GET (2), :scheme http (6), :path / literal "/healthz", :authority literal.
    path = b"/healthz"
    block = bytes([0x82, 0x86, 0x04, len(path)]) + path + bytes([0x01, 0x01]) + b"x"
    headers = len(block).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + block
    s.sendall(preface + settings + headers)
    data = b""
    deadline = time.time() + 5
    while time.time() < deadline and b'"ok"' not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    # The reply starts with the server's SETTINGS frame (type 0x04) and carries the body.
    assert data[3] == 0x04
    assert b'"status":"ok"' in data


def test_prometheus_metrics(demo):
    import urllib.request
    req = urllib.request.Request(demo["base_url"] + "/chat/completions", method="POST", data=json.dumps(
        {"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "count me"}]}).encode(),
        headers={"Authorization": f"Bearer {demo['key']}", "Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
    with urllib.request.urlopen(demo["url"] + "/metrics") as r:
        assert r.headers["content-type"].startswith("text/plain")
        text = r.read().decode()
    assert 'tollgate_requests_total{provider="deepseek",model="deepseek-chat",status="ok"}' in text
    assert 'tollgate_cost_total{provider="deepseek",model="deepseek-chat",currency="CNY"}' in text
    assert "# TYPE tollgate_request_duration_ms histogram" in text


def test_request_ids_and_routes_on_both_paths(demo):
    """The chat and messages routes are answered past the router; everything else goes
    through it. Both give every answer a request id and the right status and error."""
    host, port = demo["url"].split("//")[1].split(":")
    chat = json.dumps({"model": "openai/gpt-4o-mini",
                       "messages": [{"role": "user", "content": "hi"}]})
    cases = [
        ("POST", "/v1/chat/completions", chat, {}, 401, "authentication_error"),
        ("POST", "/v1/messages", "{}", {"anthropic-version": "2023-06-01"}, 401,
         "authentication_error"),
        ("POST", "/chat/completions", chat, {"Authorization": f"Bearer {demo['key']}"}, 200,
         None),
        ("POST", "/v1/chat/completions?x=1", chat, {"Authorization": f"Bearer {demo['key']}"},
         200, None),
        ("GET", "/v1/chat/completions", None, {}, 405, None),
        ("PUT", "/v1/messages", "{}", {}, 405, None),
        ("GET", "/nowhere", None, {}, 404, None),
        ("GET", "/healthz", None, {}, 200, None),
    ]
    ids = set()
    for method, path, body, headers, status, err_type in cases:
        c = http.client.HTTPConnection(host, int(port), timeout=10)
        c.request(method, path, body=body,
                  headers={"Content-Type": "application/json", **headers})
        r = c.getresponse()
        data = r.read()
        c.close()
        assert r.status == status, (method, path, r.status, data[:300])
        rid = r.getheader("x-tollgate-request-id")
        assert rid and rid.startswith("req_"), (method, path)
        ids.add(rid)
        if err_type:
            assert json.loads(data)["error"]["type"] == err_type, data
    assert len(ids) == len(cases)


def test_a_burst_of_connections_is_spread_and_served(demo):
    """Connections opened at once are handed between the serving threads; every one is
    served, and keeps being served on the same connection after the hand-over."""
    import concurrent.futures
    host, port = demo["url"].split("//")[1].split(":")
    body = json.dumps({"model": "openai/gpt-4o-mini",
                       "messages": [{"role": "user", "content": "hi"}]})
    conns = [http.client.HTTPConnection(host, int(port), timeout=30) for _ in range(24)]
    for c in conns:
        c.connect()

    def ask(c):
        out = []
        for _ in range(3):
            c.request("POST", "/v1/chat/completions", body=body, headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {demo['key']}"})
            r = c.getresponse()
            r.read()
            out.append((r.status, r.getheader("x-tollgate-request-id")))
        return out

    with concurrent.futures.ThreadPoolExecutor(len(conns)) as pool:
        results = [x for xs in pool.map(ask, conns) for x in xs]
    for c in conns:
        c.close()
    assert [s for s, _ in results] == [200] * 72
    assert len({rid for _, rid in results}) == 72
