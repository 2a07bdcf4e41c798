"""Price routing end to end: virtual models over emulators, through the official SDK.

Covers issue 7's "How it is checked": cheapest picks the cheapest qualifying candidate
(and the cheapest tool-capable one for a tool request); a prompt larger than a
candidate's context skips it; DeepSeek's off-peak window changes the order (through the
gateway with the test clock, and with `tollgate route --at`); fallback on 503 and on a
timeout with both attempts in the ledger; the circuit opens after repeated failures and
the failing candidate is then skipped without a call; free-first spills to a paid model
once the free model's limit is reached. Also x-tollgate-max-cost, x-tollgate-strategy,
/admin/health and the demo's virtual models.
"""
import json
import sqlite3
import subprocess
import time
import urllib.request

import openai
import pytest
from conftest import BIN, EMULATOR_KEY

# 2025-06-16 14:00 in Beijing (DeepSeek peak) and 2025-06-16 02:00 (off-peak, 00:30-08:30).
PEAK = "2025-06-16T06:00:00Z"
OFF_PEAK = "2025-06-15T18:00:00Z"

TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def client(gw, now=PEAK, **headers):
    h = {"x-tollgate-now": now} if now else {}
    h.update(headers)
    return openai.OpenAI(base_url=gw["base_url"], api_key=gw["key"], max_retries=0,
                         default_headers=h, _strict_response_validation=True)


def ask(gw, model, now=PEAK, headers=None, **kw):
    """One non-stream chat; returns (response headers, parsed completion)."""
    c = client(gw, now, **(headers or {}))
    kw.setdefault("max_tokens", 200)
    r = c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": kw.pop("content", "Say hello")}], **kw)
    return r.headers, r.parse()


def emu_post(base, spec):
    req = urllib.request.Request(base + "/_emulator/faults", data=spec.encode(), method="POST")
    urllib.request.urlopen(req, timeout=10).read()


def emu_requests(base):
    with urllib.request.urlopen(base + "/_emulator/stats", timeout=10) as r:
        return json.loads(r.read())["requests"]


def provider(name, base, models):
    return (f'[providers.{name}]\nbase_url = "{base}/v1"\napi_key = "{EMULATOR_KEY}"\n'
            f"models = {json.dumps(models)}\n")


def ledger_rows(gw, n, timeout=10):
    """The last `n` ledger rows (oldest first). Rows are durable in the ledger journal when
    the answer goes out; `tollgate usage` moves whatever the importer has not yet moved
    into SQLite before it reads, so after it the table holds every answered request."""
    subprocess.run([BIN, "usage", "--config", str(gw["config"]), "--json"], check=True, capture_output=True)
    db = gw["config"].parent / gw["config"].stem / "tollgate.db"
    deadline = time.time() + timeout
    while True:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT provider, model, status, attempts FROM ledger "
                               "ORDER BY ts_ms DESC, rowid DESC LIMIT ?", (n,)).fetchall()
        finally:
            con.close()
        if len(rows) >= n or time.time() > deadline:
            return [{"provider": p, "model": m, "status": s, "attempts": json.loads(a)}
                    for p, m, s, a in reversed(rows)]
        time.sleep(0.1)


@pytest.fixture
def fleet(emulator, gateway):
    """Four emulators and a gateway with virtual models over them."""
    ds, oa, ms, mi = (emulator(n) for n in ("deepseek", "openai", "moonshot", "mistral"))

    def start(extra="", first_byte_ms=1500, failures=5):
        gw = gateway(
            f"[timeouts]\nfirst_byte_ms = {first_byte_ms}\n"
            + provider("deepseek", ds, ["deepseek-chat"])
            + provider("openai", oa, ["gpt-4o-mini", "gpt-4o"])
            + provider("moonshot", ms, ["moonshot-v1-8k"])
            + provider("mistral", mi, ["mistral-tiny"])
            + """
[virtual_models.cheap]
candidates = ["moonshot/moonshot-v1-8k", "openai/gpt-4o", "deepseek/deepseek-chat",
              "openai/gpt-4o-mini", "mistral/mistral-tiny"]
backoff_ms = 10

[virtual_models.night]
candidates = ["deepseek/deepseek-chat", "openai/gpt-4o-mini"]

[virtual_models.chain]
candidates = ["deepseek/deepseek-chat", "openai/gpt-4o-mini", "moonshot/moonshot-v1-8k"]
strategy = "ordered"
backoff_ms = 10

[testing]
clock_override = true

[routing.breaker]
"""
            + f"failures = {failures}\ncool_down_secs = 120\n" + extra)
        gw.update(ds=ds, oa=oa, ms=ms, mi=mi)
        return gw

    return start


def test_cheapest_picks_cheapest_qualifying_and_tool_capable(fleet):
    gw = fleet()
    h, resp = ask(gw, "cheap")
    assert h["x-tollgate-provider"] == "mistral" and h["x-tollgate-model"] == "mistral-tiny"
    assert h["x-tollgate-route"].startswith("cheapest; 5 candidates; chose mistral/mistral-tiny at ")
    assert h["x-tollgate-route"].endswith(" EUR est.")
    assert resp.choices[0].message.content
    # A tool request: mistral-tiny has no tool support; gpt-4o-mini is the cheapest that does.
    h, _ = ask(gw, "cheap", tools=[TOOL])
    assert (h["x-tollgate-provider"], h["x-tollgate-model"]) == ("openai", "gpt-4o-mini")
    assert "chose openai/gpt-4o-mini" in h["x-tollgate-route"]
    assert "4 candidates" in h["x-tollgate-route"]
    # The ledger row names the model that served and the virtual model asked for.
    rows = ledger_rows(gw, 2)
    assert [(r["provider"], r["model"]) for r in rows] == [("mistral", "mistral-tiny"), ("openai", "gpt-4o-mini")]


def test_prompt_over_a_context_window_skips_that_candidate(fleet):
    gw = fleet()
    # ~40k tokens: over mistral-tiny's 32k and moonshot-v1-8k's 8k windows.
    big = "word " * 40000
    h, _ = ask(gw, "cheap", content=big)
    assert (h["x-tollgate-provider"], h["x-tollgate-model"]) == ("openai", "gpt-4o-mini")
    assert "3 candidates" in h["x-tollgate-route"]
    out = subprocess.run([BIN, "route", "--config", str(gw["config"]), "--model", "cheap",
                          "--prompt-tokens", "40000", "--max-tokens", "200", "--at", PEAK, "--json"],
                         check=True, capture_output=True, text=True).stdout
    plan = json.loads(out)
    why = {c["candidate"]: c for c in plan["candidates"]}
    assert not why["mistral/mistral-tiny"]["kept"]
    assert why["mistral/mistral-tiny"]["reason"].startswith("context window 32000 < 40200 needed")
    assert not why["moonshot/moonshot-v1-8k"]["kept"]
    assert plan["chosen"] == "openai/gpt-4o-mini"


def test_deepseek_off_peak_changes_the_order(fleet):
    gw = fleet()
    h, _ = ask(gw, "night", now=PEAK)
    assert h["x-tollgate-provider"] == "openai"
    h, _ = ask(gw, "night", now=OFF_PEAK)
    assert h["x-tollgate-provider"] == "deepseek"
    assert "chose deepseek/deepseek-chat at 0.0008" in h["x-tollgate-route"]

    def order(at):
        out = subprocess.run([BIN, "route", "--config", str(gw["config"]), "--model", "night",
                              "--prompt-tokens", "1000", "--max-tokens", "200", "--at", at, "--json"],
                             check=True, capture_output=True, text=True).stdout
        plan = json.loads(out)
        return [c["candidate"] for c in plan["candidates"] if c["kept"]], plan

    peak, _ = order(PEAK)
    night, plan = order(OFF_PEAK)
    assert peak == ["openai/gpt-4o-mini", "deepseek/deepseek-chat"]
    assert night == ["deepseek/deepseek-chat", "openai/gpt-4o-mini"]
    ds = plan["candidates"][0]
    # 1000 x 1 + 200 x 4 CNY per 1M tokens at half price off-peak.
    assert ds["estimate"] == "0.001800 CNY" and "off-peak" in ds["reason"]


def test_fallback_on_503_records_both_attempts(fleet):
    gw = fleet()
    emu_post(gw["ds"], "status=503")
    h, resp = ask(gw, "chain")
    assert h["x-tollgate-provider"] == "openai"
    assert h["x-tollgate-route"].startswith("ordered; 3 candidates; chose openai/gpt-4o-mini")
    assert h["x-tollgate-route"].endswith("attempt 2")
    assert emu_requests(gw["ds"]) == 1
    row = ledger_rows(gw, 1)[0]
    assert (row["provider"], row["model"], row["status"]) == ("openai", "gpt-4o-mini", "ok")
    a = row["attempts"]
    assert [(x["provider"], x["outcome"], x["http_status"]) for x in a] == [
        ("deepseek", "upstream_error", 503), ("openai", "ok", 200)]
    # Streams fall back too (before the first byte).
    stream = client(gw).chat.completions.create(
        model="chain", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=50)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_fallback_on_timeout_records_both_attempts(fleet):
    gw = fleet(first_byte_ms=500)
    emu_post(gw["ds"], "latency_ms=3000")
    t0 = time.time()
    h, _ = ask(gw, "chain")
    assert h["x-tollgate-provider"] == "openai"
    assert time.time() - t0 < 2.5
    a = ledger_rows(gw, 1)[0]["attempts"]
    assert [(x["provider"], x["outcome"], x["http_status"]) for x in a] == [
        ("deepseek", "upstream_error", 504), ("openai", "ok", 200)]
    assert a[0]["error"] == "upstream_timeout"


def test_non_retryable_error_returns_at_once(fleet):
    gw = fleet()
    emu_post(gw["ds"], "status=400")
    with pytest.raises(openai.BadRequestError):
        ask(gw, "chain")
    assert emu_requests(gw["oa"]) == 0


def test_circuit_opens_and_the_failing_candidate_is_skipped_without_a_call(fleet):
    gw = fleet(failures=2)
    emu_post(gw["ds"], "status=503")
    for _ in range(2):
        h, _ = ask(gw, "chain")
        assert h["x-tollgate-provider"] == "openai"
    assert emu_requests(gw["ds"]) == 2
    health = json.loads(urllib.request.urlopen(urllib.request.Request(
        gw["url"] + "/admin/health", headers={"Authorization": f"Bearer {gw['admin_key']}"})).read())
    ds = next(m for m in health["models"] if m["model"] == "deepseek/deepseek-chat")
    assert ds["state"] == "open" and ds["opened"] == 1 and "2 consecutive failures" in ds["open_reason"]
    assert health["virtual_models"]["chain"]["strategy"] == "ordered"
    # Open: skipped by routing without a call.
    h, _ = ask(gw, "chain")
    assert h["x-tollgate-provider"] == "openai"
    assert h["x-tollgate-route"].startswith("ordered; 2 candidates; chose openai/gpt-4o-mini")
    assert emu_requests(gw["ds"]) == 2
    # A direct request to the open model gets a 503 at once.
    with pytest.raises(openai.InternalServerError) as e:
        ask(gw, "deepseek/deepseek-chat")
    assert e.value.status_code == 503 and "circuit" in str(e.value)
    assert emu_requests(gw["ds"]) == 2
    # `tollgate route` explains the same rule offline (a fresh process has no circuit state).
    no_admin = urllib.request.Request(gw["url"] + "/admin/health")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(no_admin)
    assert e.value.code == 401


def test_free_first_spill(emulator, gateway, tmp_path):
    """free-first: the free model while its tracked limit lasts, then the cheapest paid."""
    ds, mi, oa = emulator("deepseek"), emulator("mistral"), emulator("openai")
    cat = tmp_path / "catalog"
    cat.mkdir()
    # A free model with a published daily limit (test data: the real free models' vendors
    # have no emulator in this build yet).
    (cat / "free.toml").write_text('''
provider = "mistral"
[[models]]
id = "free-small-test"
context_window = 32000
max_output = 4096
capabilities = { tools = true, vision = false, json_mode = true, streaming = true }
free_tier = { rpd = 2, source = "test fixture" }
[[models.periods]]
effective_from = 2024-01-01
currency = "USD"
input = "0"
output = "0"
confidence = "high"
source = "test fixture"
''')
    gw = gateway(f'catalog_dirs = ["{cat}"]\n'
                 + provider("deepseek", ds, ["deepseek-chat"])
                 + provider("mistral", mi, ["free-small-test"])
                 + provider("openai", oa, ["gpt-4o"])
                 + '''
[virtual_models.free]
candidates = ["openai/gpt-4o", "deepseek/deepseek-chat", "mistral/free-small-test"]
strategy = "free-first"
''')
    served = []
    for _ in range(4):
        h, _ = ask(gw, "free", now=None)
        served.append(f'{h["x-tollgate-provider"]}/{h["x-tollgate-model"]}')
        if len(served) <= 2:
            assert h["x-tollgate-route"].startswith("free-first; 3 candidates; chose mistral/free-small-test at 0.000000 USD est.")
    assert served == ["mistral/free-small-test"] * 2 + ["deepseek/deepseek-chat"] * 2
    assert emu_requests(mi) == 2
    health = json.loads(urllib.request.urlopen(urllib.request.Request(
        gw["url"] + "/admin/health", headers={"Authorization": f"Bearer {gw['admin_key']}"})).read())
    free = next(f for f in health["free_tiers"] if f["model"] == "mistral/free-small-test")
    assert free["requests_today"] == 2


def test_max_cost_and_strategy_headers(fleet):
    gw = fleet()
    # Cheaper than every candidate: refused before any call, as a 400 the SDK raises.
    with pytest.raises(openai.BadRequestError) as e:
        ask(gw, "cheap", headers={"x-tollgate-max-cost": "0.0000001 CNY"})
    assert e.value.code == "max_cost_exceeded"
    assert "over x-tollgate-max-cost" in str(e.value)
    # A cap between candidates keeps only those under it.
    h, _ = ask(gw, "cheap", headers={"x-tollgate-max-cost": "0.001 CNY", "x-tollgate-strategy": "ordered"})
    assert "ordered; 2 candidates" in h["x-tollgate-route"]
    assert h["x-tollgate-model"] == "gpt-4o-mini"
    # Direct requests honour the cap too.
    with pytest.raises(openai.BadRequestError):
        ask(gw, "openai/gpt-4o", headers={"x-tollgate-max-cost": "0.0001 USD"})
    with pytest.raises(openai.BadRequestError) as e:
        ask(gw, "cheap", headers={"x-tollgate-strategy": "fastest"})
    assert e.value.param == "x-tollgate-strategy"
    for bad in ("abc", "1 XYZ"):
        with pytest.raises(openai.BadRequestError):
            ask(gw, "cheap", headers={"x-tollgate-max-cost": bad})


def test_demo_virtual_models(demo):
    c = openai.OpenAI(base_url=demo["base_url"], api_key=demo["key"], max_retries=0)
    for model, tools in (("cheapest", None), ("cheapest-tools", [TOOL]), ("free-first", None)):
        kw = {"tools": tools} if tools else {}
        r = c.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=100, **kw)
        route = r.headers["x-tollgate-route"]
        assert "; chose " in route and route.endswith(" est."), route
        chosen = route.split("; chose ")[1].split(" at ")[0]
        assert chosen == f'{r.headers["x-tollgate-provider"]}/{r.headers["x-tollgate-model"]}'
        if model == "free-first":
            # The demo serves ERNIE Speed/Lite, Spark Lite, Hunyuan-lite and GLM-4-Flash.
            assert " at 0.000000 " in route, route
    out = subprocess.run([BIN, "route", "--demo", "--model", "cheapest-tools",
                          "--prompt-tokens", "2000", "--max-tokens", "500"],
                         check=True, capture_output=True, text=True).stdout
    assert "cheapest-tools: strategy cheapest" in out and "x-tollgate-route: cheapest;" in out
    assert "dropped: no tool support" not in out  # the filter already left those out


def test_budget_reservation_follows_the_fallback_candidate(emulator, gateway):
    """The reservation moves with the candidate: a fallback the budget cannot cover is
    refused (429 insufficient_quota) instead of running unreserved."""
    ds, oa = emulator("deepseek"), emulator("openai")
    gw = gateway(provider("deepseek", ds, ["deepseek-chat"]) + provider("openai", oa, ["gpt-4o"]) + '''
[virtual_models.chain]
candidates = ["deepseek/deepseek-chat", "openai/gpt-4o"]
strategy = "ordered"
backoff_ms = 1
''')
    out = subprocess.run([BIN, "keys", "--config", str(gw["config"]), "create", "--name", "tight",
                          "--budget", "0.005", "--currency", "CNY", "--period", "total", "--json"],
                         check=True, capture_output=True, text=True).stdout
    tight = {**gw, "key": json.loads(out)["key"]}
    # Within budget on the first candidate.
    h, _ = ask(tight, "chain", now=None, max_tokens=100)
    assert h["x-tollgate-provider"] == "deepseek"
    # The first candidate fails; gpt-4o's worst case (100 output tokens at $10/M and the
    # prompt at $2.50/M, ~0.008 CNY) does not fit what is left.
    emu_post(ds, "status=503")
    with pytest.raises(openai.RateLimitError) as e:
        ask(tight, "chain", now=None, max_tokens=100)
    assert e.value.code == "insufficient_quota"
    assert emu_requests(oa) == 0
    a = ledger_rows(gw, 1)[0]["attempts"]
    assert [x["outcome"] for x in a][:2] == ["upstream_error", "skipped_budget"]
