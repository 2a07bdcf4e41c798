"""Metering end to end: the cost header equals usage x the catalog price (computed here
independently from the TOML), budgets hold under concurrency, rate limits hold, the
ledger survives SIGKILL, cut streams are settled once with an estimate, reports add up."""
import concurrent.futures as cf
import datetime as dt
import decimal
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import time
import tomllib
import urllib.request

import openai
import pytest
from conftest import BIN, EMULATOR_KEY, ROOT, create_key

D = decimal.Decimal


def catalog_price(provider, model, on=None):
    """The period in force today for the model's default region, read from catalog/*.toml."""
    data = tomllib.loads((ROOT / "catalog" / f"{provider}.toml").read_text())
    region = data.get("default_region")
    on = on or dt.datetime.now(dt.timezone.utc).date()
    for m in data["models"]:
        if m["id"] == model:
            periods = [p for p in m["periods"] if p.get("region", region) == region and p["effective_from"] <= on]
            return max(periods, key=lambda p: p["effective_from"])
    raise KeyError(model)


def expected_cost(period, usage):
    assert "tiers" not in period and "off_peak" not in period, "pick a simple model for this test"
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    inp, out = D(str(period["input"])), D(str(period["output"]))
    cin = D(str(period.get("cached_input", period["input"])))
    total = ((prompt - cached) * inp + cached * cin + completion * out) / D(1_000_000)
    # Rounded once, up, to a nano-unit.
    return total.quantize(D("0.000000001"), rounding=decimal.ROUND_CEILING)


def header_amount(h):
    amount, cur = h.split()
    return D(amount), cur


def post(url, key, body, timeout=30):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def deepseek_config(emu, extra=""):
    return f"""
reporting_currency = "USD"
[providers.deepseek]
base_url = "{emu}/v1"
api_key = "{EMULATOR_KEY}"
models = ["deepseek-chat"]
{extra}
"""


def test_cost_header_is_usage_times_catalog_price(demo):
    c = openai.OpenAI(base_url=demo["base_url"], api_key=demo["key"], max_retries=0)
    # A conversation with history, so the emulator reports cache hits (cached price).
    history = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok " * 50},
               {"role": "user", "content": "and now?"}]
    for model, msgs in [("deepseek/deepseek-chat", history), ("moonshot/moonshot-v1-8k", history[-1:]),
                        ("openai/gpt-4o-mini", history)]:
        r = c.chat.completions.with_raw_response.create(model=model, messages=msgs)
        usage = r.parse().usage.model_dump()
        provider, name = model.split("/")
        want = expected_cost(catalog_price(provider, name), usage)
        got, cur = header_amount(r.headers["x-tollgate-cost"])
        assert got == want, (model, usage, got, want)
        assert cur == {"deepseek": "CNY", "moonshot": "CNY", "openai": "USD"}[provider]
        assert usage["cost"] == r.headers["x-tollgate-cost"]
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0

    # Streams carry the cost on the usage chunk.
    stream = c.chat.completions.create(model="deepseek/deepseek-chat", messages=history, stream=True,
                                       stream_options={"include_usage": True})
    last = [ch for ch in stream][-1]
    u = last.usage.model_dump()
    got, _ = header_amount(u["cost"])
    assert got == expected_cost(catalog_price("deepseek", "deepseek-chat"), u)


def test_budget_holds_under_concurrency_and_reports_add_up(emulator, gateway, tmp_path):
    gw = gateway(deepseek_config(emulator("deepseek")))
    cfg = ["--config", str(gw["config"])]
    body = {"model": "deepseek/deepseek-chat", "max_tokens": 30,
            "messages": [{"role": "user", "content": "Say something about prices."}]}
    # Measure one request's actual cost and its reservation, then size the budget to ~50.
    probe_key = create_key(cfg, "probe")
    status, h, _ = post(gw["url"], probe_key, body)
    assert status == 200
    one, cur = header_amount(h["x-tollgate-cost"])
    assert cur == "CNY"
    budget = one * 50
    out = subprocess.run([BIN, "keys", *cfg, "create", "--name", "capped", "--budget", str(budget),
                          "--currency", "CNY", "--period", "day", "--json"], check=True, capture_output=True, text=True)
    key = json.loads(out.stdout)["key"]

    with cf.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda _: post(gw["url"], key, body), range(200)))
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    assert len(ok) + len(refused) == 200, {r[0] for r in results}
    for _, _, b in refused:
        err = json.loads(b)["error"]
        assert err["code"] == "insufficient_quota" and "key 'capped' day budget" in err["message"]
    spent = sum(header_amount(r[1]["x-tollgate-cost"])[0] for r in ok)
    assert spent <= budget
    # Reservations are worst-case, so fewer than 50 fit at once, but a good share do.
    assert 20 <= len(ok) <= 50, len(ok)

    # The ledger agrees with what the clients were told, to the nano.
    rep = json.loads(subprocess.run([BIN, "usage", *cfg, "--by", "key", "--currency", "CNY", "--json"],
                                    check=True, capture_output=True, text=True).stdout)
    line = next(l for l in rep["lines"] if l["group"] == "capped")
    assert D(line["cost"]) == spent and line["requests"] == len(ok)
    # The same over HTTP, and the key list shows budget, spend and remaining.
    req = urllib.request.Request(gw["url"] + "/admin/usage?by=request&currency=CNY",
                                 headers={"Authorization": f"Bearer {gw['admin_key']}"})
    rows = json.loads(urllib.request.urlopen(req).read())["lines"]
    ids = {r["group"] for r in rows}
    assert all(r[1]["x-tollgate-request-id"] in ids for r in ok)
    keys = json.loads(subprocess.run([BIN, "keys", *cfg, "list", "--json"], check=True, capture_output=True,
                                     text=True).stdout)
    capped = next(k for k in keys if k["name"] == "capped")
    standing = capped["budgets"][0]["standing"]
    assert D(standing["spent"]) == spent
    assert D(standing["remaining"]) == budget - spent


def test_request_listing_is_paged_over_http_and_cli(emulator, gateway):
    gw = gateway(deepseek_config(emulator("deepseek")))
    cfg = ["--config", str(gw["config"])]
    key = create_key(cfg, "pager")
    body = {"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}
    sent = []
    for _ in range(7):
        status, h, _ = post(gw["url"], key, body)
        assert status == 200
        sent.append(h["x-tollgate-request-id"])
    admin = {"Authorization": f"Bearer {gw['admin_key']}"}

    def get(query):
        req = urllib.request.Request(gw["url"] + "/admin/usage?" + query, headers=admin)
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    # Pages of 3 over HTTP: 3 + 3 + 1, in the order the requests came, each once.
    seen, pages, after = [], [], None
    while True:
        status, h, raw = get("by=request&limit=3" + (f"&after={after}" if after else ""))
        assert status == 200, raw
        page = json.loads(raw)
        ids = [l["group"] for l in page["lines"]]
        pages.append(len(ids))
        seen += ids
        assert page["total"]["requests"] == len(ids)
        after = page["next_after"]
        assert h.get("x-tollgate-next-after") == after
        if after is None:
            break
        assert after == ids[-1]
    assert pages == [3, 3, 1] and seen == sent
    # Without a limit, one page of up to 1,000: all seven, no cursor.
    status, _, raw = get("by=request")
    assert json.loads(raw)["next_after"] is None and len(json.loads(raw)["lines"]) == 7
    # CSV carries the cursor in the header.
    status, h, raw = get("by=request&limit=5&format=csv")
    assert status == 200 and h["x-tollgate-next-after"] == sent[4]
    assert raw.decode().splitlines()[1].startswith(sent[0] + ",")
    # Wrong paging: an OpenAI-shaped 400 naming the parameter.
    for query, param in [("by=request&limit=0", "limit"), ("by=request&limit=100001", "limit"),
                         ("by=key&limit=5", "limit"), ("by=model&after=" + sent[0], "after"),
                         ("by=request&after=req_nosuch", "after")]:
        status, _, raw = get(query)
        err = json.loads(raw)["error"]
        assert status == 400 and err["param"] == param and err["type"] == "invalid_request_error", (query, raw)

    # The CLI lists the whole window unless --limit caps it; it pages the same way, and
    # says where the next page starts.
    out = subprocess.run([BIN, "usage", *cfg, "--by", "request", "--json"], check=True, capture_output=True, text=True)
    assert [l["group"] for l in json.loads(out.stdout)["lines"]] == sent
    out = subprocess.run([BIN, "usage", *cfg, "--by", "request", "--limit", "4", "--json"],
                         check=True, capture_output=True, text=True)
    first = json.loads(out.stdout)
    assert [l["group"] for l in first["lines"]] == sent[:4] and first["next_after"] == sent[3]
    out = subprocess.run([BIN, "usage", *cfg, "--by", "request", "--limit", "4", "--after", sent[3]],
                         check=True, capture_output=True, text=True)
    assert [l.split()[0] for l in out.stdout.splitlines()[1:-1]] == sent[4:]
    assert "more requests" not in out.stderr
    out = subprocess.run([BIN, "usage", *cfg, "--by", "request", "--limit", "2"],
                         check=True, capture_output=True, text=True)
    assert f"--after {sent[1]}" in out.stderr
    bad = subprocess.run([BIN, "usage", *cfg, "--by", "key", "--limit", "2"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--limit" in bad.stderr and "by=request" in bad.stderr


def test_a_busy_key_revoked_by_another_process_stops_within_a_second(emulator, gateway):
    """The gateway renews a busy key's cached record in the background, answering from the
    cache meanwhile: a revocation written by another process (the CLI) must still end the
    key within the cache's life, not be outlived by renewals."""
    gw = gateway(deepseek_config(emulator("deepseek")))
    cfg = ["--config", str(gw["config"])]
    key = create_key(cfg, "busy")
    body = {"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}
    stop = time.time() + 4.0
    revoked_at = []

    def worker(_):
        seen = []  # (time, status) of each answer
        while time.time() < stop:
            status, _, _ = post(gw["url"], key, body, timeout=5)
            seen.append((time.time(), status))
        return seen

    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(worker, i) for i in range(6)]
        time.sleep(1.5)  # long past the first renewal
        subprocess.run([BIN, "keys", *cfg, "revoke", "busy"], check=True, capture_output=True)
        revoked_at.append(time.time())
        answers = sorted(a for f in futures for a in f.result())
    before = [s for t, s in answers if t < revoked_at[0]]
    assert before.count(200) > 20 and set(before) == {200}, set(before)
    late = [(round(t - revoked_at[0], 3), s) for t, s in answers if t > revoked_at[0] + 1.0]
    assert late and all(s == 401 for _, s in late), late[:5]


def test_rpm_limit_holds_under_concurrency(emulator, gateway):
    gw = gateway(deepseek_config(emulator("deepseek")))
    out = subprocess.run([BIN, "keys", "--config", str(gw["config"]), "create", "--name", "slow", "--rpm", "5",
                          "--json"], check=True, capture_output=True, text=True)
    key = json.loads(out.stdout)["key"]
    body = {"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}
    with cf.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: post(gw["url"], key, body), range(12)))
    assert sorted(r[0] for r in results) == [200] * 5 + [429] * 7
    limited = next(r for r in results if r[0] == 429)
    assert int(limited[1]["retry-after"]) >= 1
    assert json.loads(limited[2])["error"]["code"] == "rate_limit_exceeded"
    done = next(r for r in results if r[0] == 200)
    assert done[1]["x-ratelimit-limit-requests"] == "5"
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=gw["base_url"], api_key=key, max_retries=0).chat.completions.create(**body)


def ledger_rows(data_dir):
    con = sqlite3.connect(f"file:{data_dir}/tollgate.db?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    rows = {r["id"]: dict(r) for r in con.execute("SELECT * FROM ledger")}
    con.close()
    return rows


def test_answered_requests_survive_sigkill(emulator, gateway, tmp_path):
    gw = gateway(deepseek_config(emulator("deepseek")))
    data_dir = gw["config"].parent / "gw0"
    body = {"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}
    received, stop = [], time.time() + 1.5

    def worker(i):
        got = []
        while time.time() < stop:
            try:
                if i % 2:
                    status, h, b = post(gw["url"], gw["key"], body, timeout=5)
                    if status == 200 and json.loads(b)["choices"]:
                        got.append(h["x-tollgate-request-id"])
                else:
                    status, h, b = post(gw["url"], gw["key"], {**body, "stream": True}, timeout=5)
                    if status == 200 and b.rstrip().endswith(b"data: [DONE]"):
                        got.append(h["x-tollgate-request-id"])
            except (OSError, http.client.HTTPException, ValueError):
                pass  # the gateway is gone: only answers received in full count
        return got

    def killer():
        time.sleep(1.0)
        os.kill(gw["proc"].p.pid, signal.SIGKILL)

    with cf.ThreadPoolExecutor(9) as pool:
        k = pool.submit(killer)
        futures = [pool.submit(worker, i) for i in range(8)]
        for f in futures:
            received += f.result()
        k.result()
    assert gw["proc"].p.wait(timeout=10) == -signal.SIGKILL
    assert len(received) > 20
    # Rows become durable in the ledger journal on the request path; the next reader
    # (here `tollgate usage`; a restarted gateway does the same) moves them into SQLite.
    rep = json.loads(subprocess.run([BIN, "usage", "--config", str(gw["config"]), "--by", "request", "--json"],
                                    check=True, capture_output=True, text=True).stdout)
    reported = {l["group"] for l in rep["lines"]}
    assert not [r for r in received if r not in reported]
    rows = ledger_rows(data_dir)
    missing = [r for r in received if r not in rows]
    assert not missing, f"{len(missing)} answered requests missing from the ledger"
    assert all(rows[r]["cost_nanos"] > 0 and rows[r]["status"] == "ok" for r in received)


def test_cut_streams_are_settled_once_with_an_estimate(emulator, gateway):
    emu = emulator("deepseek", "--fault", "chunk_interval_ms=50,chunks=200")
    gw = gateway(deepseek_config(emu))
    host, port = gw["url"].split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(
        {"model": "deepseek/deepseek-chat", "stream": True, "messages": [{"role": "user", "content": "long story"}]}),
        headers={"Authorization": f"Bearer {gw['key']}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    rid = resp.getheader("x-tollgate-request-id")
    got = b""
    while got.count(b"data: ") < 6:
        got += resp.read1(4096)
    conn.sock.close()
    conn.close()
    data_dir = gw["config"].parent / "gw0"
    for _ in range(50):
        rows = ledger_rows(data_dir)
        if rid in rows:
            break
        time.sleep(0.1)
    row = rows[rid]
    assert row["status"] == "client_disconnected"
    assert row["usage_source"] == "estimated"
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and row["cost_nanos"] > 0
    time.sleep(0.5)
    assert sum(1 for r in ledger_rows(data_dir) if r == rid) == 1


def test_prices_cli_and_api(demo, tmp_path):
    out = subprocess.run([BIN, "prices", "--history", "glm-3-turbo", "--json"], check=True, capture_output=True,
                         text=True).stdout
    hist = json.loads(out)
    cut = next(h for h in hist if h["effective_from"] == "2024-05-11")
    assert json.dumps(cut).count("-80%") >= 1
    before = json.loads(subprocess.run([BIN, "prices", "--at", "2024-05-01", "--currency", "native", "--json"],
                                       check=True, capture_output=True, text=True).stdout)
    after = json.loads(subprocess.run([BIN, "prices", "--at", "2024-06-01", "--currency", "native", "--json"],
                                      check=True, capture_output=True, text=True).stdout)
    price = lambda rows, m: next(r for r in rows if r["model"] == m)
    assert D(price(before, "glm-3-turbo")["input_per_m"]) == 5 and D(price(after, "glm-3-turbo")["input_per_m"]) == 1
    usd = json.loads(subprocess.run([BIN, "prices", "--at", "2024-06-01", "--currency", "USD", "--model",
                                     "glm-3-turbo", "--json"], check=True, capture_output=True, text=True).stdout)
    row = price(usd, "glm-3-turbo")
    assert row["currency"] == "USD" and D(row["input_per_m"]) < D("0.2") and row["fx_rate_month"] == "2024-06"
    req = urllib.request.Request(demo["url"] + "/v1/prices?at=2024-06-01&provider=zhipu&currency=CNY",
                                 headers={"Authorization": f"Bearer {demo['key']}"})
    api = json.loads(urllib.request.urlopen(req).read())["data"]
    assert D(price(api, "glm-3-turbo")["input_per_m"]) == 1


def test_broken_catalog_is_refused_with_a_clear_message(tmp_path):
    extra = tmp_path / "cat"
    extra.mkdir()
    (extra / "mine.toml").write_text("""
provider = "zhipu"
[[models]]
id = "glm-3-turbo"
[[models.periods]]
effective_from = 2024-01-16
currency = "CNY"
input = "-1"
output = "1"
source = "test"
""")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'catalog_dirs = ["{extra}"]\n')
    r = subprocess.run([BIN, "prices", "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "mine.toml" in r.stderr and "glm-3-turbo" in r.stderr and "input" in r.stderr, r.stderr


def test_group_budget_is_shared_by_its_keys(emulator, gateway):
    gw = gateway(deepseek_config(emulator("deepseek"), extra='[groups.team-a]\namount = "0.0005"\ncurrency = "CNY"\nperiod = "month"\n'))
    cfg = ["--config", str(gw["config"])]
    keys = [json.loads(subprocess.run([BIN, "keys", *cfg, "create", "--name", f"member{i}", "--group", "team-a",
                                       "--json"], check=True, capture_output=True, text=True).stdout)["key"]
            for i in range(2)]
    body = {"model": "deepseek/deepseek-chat", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    spent, refused = D(0), 0
    for i in range(40):
        status, h, b = post(gw["url"], keys[i % 2], body)
        if status == 200:
            spent += header_amount(h["x-tollgate-cost"])[0]
        else:
            assert status == 429
            err = json.loads(b)["error"]
            assert err["code"] == "insufficient_quota" and "group 'team-a' month budget" in err["message"]
            refused += 1
    assert refused > 0 and 0 < spent <= D("0.0005")
