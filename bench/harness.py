#!/usr/bin/env python3
"""The benchmark matrix: tollgate against direct, nginx and LiteLLM, side by side.

Called by `bench/run` (which builds and installs first); stdlib only. See bench/README.md
for what each figure means and how it is measured.

Layout of one run:
  1. start the OpenAI emulator (one process; its faults are switched per phase through
     `POST /_emulator/faults`), two identical nginx instances (`nginx` and `nginx_b`, the
     self-check), LiteLLM (2 workers) and tollgate (bench/tollgate.toml), all on loopback;
  2. smoke-check every target (non-stream and stream answers are well formed), warm up;
  3. for each repetition, for each measurement, for each target (order rotated per
     repetition): wait for an idle machine, measure; so the targets are interleaved;
  4. medians over repetitions, ratios, one table, bench/results/latest.json.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

ZERO_FAULTS = ""  # zero-latency upstream: answer at once
REALISTIC_FAULTS = "latency_ms=20,chunk_interval_ms=10,chunks=100"
EMULATOR_KEY = "emulator-key"
LITELLM_MASTER_KEY = "sk-bench-master"
MODEL = "gpt-4o-mini"
PROMPT_BYTES = 8000  # the large-prompt measurement (rps_c32_prompt8k)


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- /proc


def proc_children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            ppid = int(s[s.rindex(")") + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    return kids


def proc_tree(pid):
    """pid and all its descendants that are alive now."""
    kids = proc_children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_split(pids):
    """(user, system) CPU seconds of the processes, summed."""
    user = system = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
            fields = s[s.rindex(")") + 2:].split()
            user += int(fields[11])  # utime
            system += int(fields[12])  # stime
        except (OSError, ValueError, IndexError):
            pass
    return user / HZ, system / HZ


def cpu_seconds(pids):
    return sum(cpu_split(pids))


def status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def reset_hwm(pids):
    """Resets the peak-RSS mark (VmHWM) of each process (Linux >= 4.0, needs ownership)."""
    ok = True
    for p in pids:
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def machine_jiffies():
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts[:8]]
    idle = vals[3] + vals[4]  # idle + iowait
    return sum(vals), idle


def busy_cores(window):
    t0, i0 = machine_jiffies()
    time.sleep(window)
    t1, i1 = machine_jiffies()
    total = t1 - t0
    return 0.0 if total <= 0 else NCPU * (1 - (i1 - i0) / total)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def wait_idle(max_busy, max_wait):
    """Waits until the machine uses at most `max_busy` cores over a 0.5 s window, at most
    `max_wait` seconds. Returns (waited_s, busy_cores_last, gave_up)."""
    start = time.monotonic()
    busy = busy_cores(0.5)
    while busy > max_busy:
        if time.monotonic() - start >= max_wait:
            return time.monotonic() - start, busy, True
        busy = busy_cores(0.5)
    return time.monotonic() - start, busy, False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- processes


class Proc:
    """A server process started by the harness in its own session (so it and its workers
    can be stopped as a group by its id)."""

    def __init__(self, name, cmd, env=None, cwd=None, log_path=None, ready=None,
                 timeout=60.0):
        self.name = name
        self.log_path = log_path
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.popen = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=subprocess.PIPE if ready else out, stderr=out,
            stdin=subprocess.DEVNULL, start_new_session=True)
        self.first_line = None
        if ready is not None:
            self.first_line = self._wait_line(ready, timeout)
            # Keep reading stdout so a chatty process never blocks on a full pipe.
            import threading
            threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        try:
            while os.read(self.popen.stdout.fileno(), 65536):
                pass
        except OSError:
            pass

    def _wait_line(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.popen.stdout, selectors.EVENT_READ)
        buf = b""
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}"
                                   f"{self._log_tail()}")
            if sel.select(0.2):
                chunk = os.read(self.popen.stdout.fileno(), 4096)
                if not chunk:
                    continue
                buf += chunk
                m = re.search(pattern, buf.decode("utf-8", "replace"))
                if m:
                    return m
        raise RuntimeError(f"{self.name} did not print /{pattern}/ within {timeout}s"
                           f"{self._log_tail()}")

    def _log_tail(self):
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            return "\n--- log tail ---\n" + f.read()[-2000:].decode("utf-8", "replace")

    @property
    def pid(self):
        return self.popen.pid

    def pids(self):
        return proc_tree(self.pid)

    def stop(self):
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except OSError:
                    pass
                self.popen.wait(5)


def http(method, url, body=None, headers=None, timeout=10.0):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def wait_http(url, timeout, ok=lambda s: s < 500, headers=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            s, _, _ = http("GET", url, headers=headers, timeout=2)
            if ok(s):
                return s
            last = s
        except OSError as e:
            last = e
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready within {timeout}s (last: {last})")


# ---------------------------------------------------------------------------- targets


class Target:
    """Something we send load to: a port, the model name and key it expects, and the
    processes whose CPU and memory count as its own (none for `direct`)."""

    def __init__(self, name, port, model, key, procs=(), note=""):
        self.name, self.port, self.model, self.key = name, port, model, key
        self.procs = list(procs)
        self.note = note

    def pids(self):
        out = []
        for p in self.procs:
            out.extend(p.pids())
        return out

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


def start_emulator(tollgate, tmp):
    # The emulator sends with TCP_NODELAY, as vendors' front ends do (emulators::serve).
    p = Proc("emulator", [tollgate, "emulate", "openai", "--port", "0"],
             log_path=os.path.join(tmp, "emulator.log"),
             ready=r"listening on http://127\.0\.0\.1:(\d+)")
    port = int(p.first_line.group(1))
    return p, port


def set_faults(emu_port, spec):
    s, body, _ = http("POST", f"http://127.0.0.1:{emu_port}/_emulator/faults",
                      body=spec.encode())
    if s not in (200, 204):
        raise RuntimeError(f"emulator refused faults {spec!r}: {s} {body[:200]!r}")


def start_nginx(name, emu_port, tmp):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = os.path.join(tmp, name)
    for d in ("conf", "logs", "tmp"):
        os.makedirs(os.path.join(prefix, d), exist_ok=True)
    port = free_port()
    with open(os.path.join(BENCH, "nginx.conf")) as f:
        conf = f.read()
    conf = conf.replace("@LISTEN@", f"127.0.0.1:{port}").replace(
        "@UPSTREAM@", f"127.0.0.1:{emu_port}")
    conf_path = os.path.join(prefix, "conf", "nginx.conf")
    with open(conf_path, "w") as f:
        f.write(conf)
    p = Proc(name, [nginx, "-p", prefix + "/", "-c", conf_path,
                    "-e", os.path.join(prefix, "logs", "error.log")],
             log_path=os.path.join(prefix, "logs", "stderr.log"))
    wait_http(f"http://127.0.0.1:{port}/v1/models", 20,
              headers={"Authorization": f"Bearer {EMULATOR_KEY}"})
    return Target(name, port, MODEL, EMULATOR_KEY, [p],
                  note="nginx reverse proxy, bench/nginx.conf")


def start_litellm(venv, emu_port, tmp, workers):
    port = free_port()
    cfg = os.path.join(tmp, "litellm.yaml")
    with open(cfg, "w") as f:
        f.write(
            "# written by bench/harness.py\n"
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{MODEL}\n"
            f"      api_base: http://127.0.0.1:{emu_port}/v1\n"
            f"      api_key: {EMULATOR_KEY}\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "general_settings:\n"
            f"  master_key: {LITELLM_MASTER_KEY}\n")
    env = dict(os.environ)
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                "LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "True"})
    env.pop("DATABASE_URL", None)
    p = Proc("litellm", [os.path.join(venv, "bin", "litellm"), "--config", cfg,
                         "--host", "127.0.0.1", "--port", str(port),
                         "--num_workers", str(workers)],
             env=env, cwd=tmp, log_path=os.path.join(tmp, "litellm.log"))
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", 240, ok=lambda s: s == 200)
    return Target("litellm", port, MODEL, LITELLM_MASTER_KEY, [p],
                  note=f"LiteLLM proxy, {workers} workers")


def keys_create_flags(tollgate):
    """Budget / rate-limit flags of `tollgate keys create`, where this build has them."""
    out = subprocess.run([tollgate, "keys", "create", "--help"], capture_output=True,
                         text=True).stdout
    flags, on = [], []
    if "--budget" in out:
        flags += ["--budget", "1000000", "--currency", "USD"]
        if "--period" in out:
            flags += ["--period", "month"]
        on.append("key budget, reserve-then-settle (1,000,000 USD/month: never binding)")
    if "--rpm" in out:
        flags += ["--rpm", "1000000000"]
        on.append("key RPM limit (1e9/min: never binding)")
    if "--tpm" in out:
        flags += ["--tpm", "4000000000"]
        on.append("key TPM limit (4e9/min: never binding)")
    if "--group" in out:
        with open(os.path.join(BENCH, "tollgate.toml")) as f:
            if "[groups.bench]" in f.read():
                flags += ["--group", "bench"]
                on.append("group (team) budget [groups.bench], reserve-then-settle")
    return flags, on


def start_tollgate(tollgate, emu_port, tmp, keep_logs, extra_env=()):
    port = free_port()
    data = os.path.join(tmp, "tollgate-data")
    os.makedirs(data, exist_ok=True)
    env = dict(os.environ)
    env.update({"TOLLGATE_BENCH_LISTEN": f"127.0.0.1:{port}",
                "TOLLGATE_BENCH_UPSTREAM": f"http://127.0.0.1:{emu_port}/v1",
                "TOLLGATE_BENCH_DATA": data,
                "TOLLGATE_BENCH_UPSTREAM_KEY": EMULATOR_KEY})
    env.pop("RUST_LOG", None)  # the production default log level ("info")
    for kv in extra_env:
        k, _, v = kv.partition("=")
        env[k] = v
    cfg = os.path.join(BENCH, "tollgate.toml")
    flags, on = keys_create_flags(tollgate)
    r = subprocess.run([tollgate, "keys", "create", "--name", "bench", "--config", cfg,
                        "--json"] + flags, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"tollgate keys create failed: {r.stderr.strip()}")
    key = json.loads(r.stdout)["key"]
    log_path = os.path.join(tmp, "tollgate.log") if keep_logs else None
    p = Proc("tollgate", [tollgate, "serve", "--config", cfg], env=env,
             log_path=log_path, ready=r"tollgate listening on http://[\d.]+:(\d+)")
    port = int(p.first_line.group(1))
    features = ["key auth (SHA-256 hashed keys, cached)", "relay with usage parsing"] + on
    with open(cfg) as f:
        text = f.read()
    if "[limits." in text:
        features.append("per-model RPM/TPM limits [limits]")
    usage = subprocess.run([tollgate, "--help"], capture_output=True, text=True).stdout
    if re.search(r"^\s+usage\b", usage, re.M):
        features.append("durable ledger: journal append before the answer ends, imported into SQLite")
    features.append("request log at info level")
    return Target("tollgate", port, f"openai/{MODEL}", key, [p],
                  note="tollgate serve, bench/tollgate.toml"), features


# ---------------------------------------------------------------------------- load


def run_wrk(target, conns, duration, stream, delay_ms=0, threads=None, timeout_s=10,
            prompt_bytes=0):
    threads = threads or max(1, min(2, conns))
    env = dict(os.environ)
    env["BENCH_DELAY_MS"] = str(delay_ms)
    env["BENCH_PROMPT_BYTES"] = str(prompt_bytes)
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{max(1, round(duration))}s",
           "--timeout", f"{timeout_s}s", "-s", os.path.join(BENCH, "wrk", "chat.lua"),
           target.url, "--", target.model, target.key, "1" if stream else "0"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       timeout=duration + 60)
    m = re.search(r"^BENCHJSON (.*)$", p.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk gave no result: {p.stdout[-500:]} {p.stderr[-500:]}")
    res = json.loads(m.group(1))
    secs = res["duration_us"] / 1e6
    res["rps"] = res["requests"] / secs if secs else 0.0
    res["errors_total"] = sum(res["errors"].values())
    return res


def run_ttft(target, conns, duration):
    cmd = [sys.executable, os.path.join(BENCH, "ttft.py"), "--port", str(target.port),
           "--model", target.model, "--key", target.key, "--concurrency", str(conns),
           "--duration", str(duration)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 90)
    m = re.search(r"^BENCHJSON (.*)$", p.stdout, re.M)
    if not m:
        raise RuntimeError(f"ttft.py gave no result: {p.stdout[-500:]} {p.stderr[-500:]}")
    res = json.loads(m.group(1))
    res["errors_total"] = res["errors"]
    return res


class Sampler:
    """Samples the summed RSS of some processes from a thread (max over the run)."""

    def __init__(self, pids_fn, interval=0.1):
        import threading
        self.pids_fn, self.interval = pids_fn, interval
        self.max_kb = 0
        self.max_threads = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            pids = self.pids_fn()
            kb = sum(status_kb(p, "VmRSS") for p in pids)
            self.max_kb = max(self.max_kb, kb)
            self.max_threads = max(self.max_threads, sum(status_kb(p, "Threads") for p in pids))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()


def measure(kind, target, emu, opts, **kw):
    """One measurement: idle wait, then load, with CPU and memory accounting around it."""
    # Each wait is bounded, and so is their sum over the run (--idle-budget).
    max_wait = max(0.0, min(opts.idle_wait, opts.idle_budget_left))
    waited, busy, gave_up = wait_idle(opts.idle_busy, max_wait)
    opts.idle_budget_left -= waited
    pids = target.pids()
    emu_pids = emu.pids()
    hwm_reset = reset_hwm(pids) if pids else False
    us0 = cpu_split(pids)
    cpu0 = sum(us0)
    emu0 = cpu_seconds(emu_pids)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    mach0 = machine_jiffies()
    with Sampler(target.pids) as sampler:
        if kind == "ttft":
            res = run_ttft(target, kw["conns"], kw["duration"])
        else:
            res = run_wrk(target, kw["conns"], kw["duration"], kw["stream"],
                          delay_ms=kw.get("delay_ms", 0), timeout_s=kw.get("timeout_s", 10),
                          prompt_bytes=kw.get("prompt_bytes", 0))
    mach1 = machine_jiffies()
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    pids_after = target.pids()
    us1 = cpu_split(pids_after)
    cpu1 = sum(us1)
    emu1 = cpu_seconds(emu.pids())
    load_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    gw_cpu = max(0.0, cpu1 - cpu0)
    emu_cpu = max(0.0, emu1 - emu0)
    busy_all = ((mach1[0] - mach0[0]) - (mach1[1] - mach0[1])) / HZ
    requests = res.get("requests", res.get("ok", 0))
    res.update({
        "idle_wait_s": round(waited, 2), "busy_cores_before": round(busy, 2),
        "idle_gave_up": gave_up,
        "gateway_cpu_s": round(gw_cpu, 3),
        "gateway_user_s": round(us1[0] - us0[0], 3),
        "gateway_sys_s": round(us1[1] - us0[1], 3),
        "emulator_cpu_s": round(emu_cpu, 3),
        "loadgen_cpu_s": round(load_cpu, 3),
        # CPU the machine spent on anything but this measurement's processes: noise.
        "foreign_cpu_s": round(max(0.0, busy_all - gw_cpu - emu_cpu - load_cpu), 3),
        "cpu_s_per_1k": round(gw_cpu / requests * 1000, 4) if requests and pids else None,
        "emulator_cpu_s_per_1k": round(emu_cpu / requests * 1000, 4) if requests else None,
        # Every busy jiffy of the machine (softirq included, where loopback TCP is mostly
        # done and which no process is charged for) per request: what the whole set-up
        # (load generator, emulator, target) spends on one answer.
        "machine_us_per_req": round(busy_all / requests * 1e6, 2) if requests else None,
        "gateway_user_us_per_req": round((us1[0] - us0[0]) / requests * 1e6, 2)
        if requests and pids else None,
        "gateway_sys_us_per_req": round((us1[1] - us0[1]) / requests * 1e6, 2)
        if requests and pids else None,
        "rss_max_mb": round(sampler.max_kb / 1024, 1) if pids else None,
        "threads_max": sampler.max_threads if pids else None,
        "hwm_mb": (round(sum(status_kb(p, "VmHWM") for p in pids_after) / 1024, 1)
                   if pids and hwm_reset else None),
    })
    return res


# ---------------------------------------------------------------------------- analysis


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def rnd(v, n=2):
    return None if v is None else round(v, n)


def smoke(target, log_fn):
    """One non-stream and one stream request: well-formed answers, or the run stops."""
    hdr = {"Content-Type": "application/json", "Authorization": f"Bearer {target.key}"}
    body = {"model": target.model, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1024}
    s, b, h = http("POST", target.url, json.dumps(body).encode(), hdr, timeout=60)
    if s != 200 or "choices" not in json.loads(b):
        raise RuntimeError(f"{target.name}: non-stream smoke request got {s}: {b[:300]!r}")
    cost = {k.lower(): v for k, v in h.items()}.get("x-tollgate-cost")
    body["stream"] = True
    s, b, _ = http("POST", target.url, json.dumps(body).encode(), hdr, timeout=60)
    if s != 200 or b"data: [DONE]" not in b:
        raise RuntimeError(f"{target.name}: stream smoke request got {s}: {b[:300]!r}")
    log_fn(f"{target.name}: smoke ok" + (f" (x-tollgate-cost: {cost})" if cost else ""))
    return cost


def versions(tollgate, venv):
    def out(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr).strip() else None
        except (OSError, subprocess.TimeoutExpired):
            return None
    v = {
        "tollgate_commit": out(["git", "-C", REPO, "rev-parse", "HEAD"]),
        "tollgate_dirty": bool(out(["git", "-C", REPO, "status", "--porcelain",
                                    "--", "crates", "Cargo.lock"])),
        "rustc": out(["rustc", "--version"]),
        "nginx": out(["nginx", "-v"]),
        "wrk": out(["wrk", "-v"]),
        "python": platform.python_version(),
    }
    lite = os.path.join(venv, "bin", "python")
    if os.path.exists(lite):
        v["litellm"] = out([lite, "-c", "import importlib.metadata as m; print(m.version('litellm'))"])
    return v


def machine():
    model = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {"cpu_model": model, "cores": NCPU, "mem_gb": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "hostname_hash": hex(hash(socket.gethostname()) & 0xffff)}


# ---------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description="tollgate benchmark matrix (see bench/README.md)")
    ap.add_argument("--tollgate", required=True, help="path of the release binary")
    ap.add_argument("--venv", default=os.path.join(BENCH, ".venv"))
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 repetition, 2 s per measurement, concurrency 32 only")
    ap.add_argument("--duration", type=float, help="seconds per measurement (default 10)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3)")
    ap.add_argument("--concurrency", default=None, help="comma list (default 1,32,256)")
    ap.add_argument("--targets", default="direct,nginx,nginx_b,litellm,tollgate")
    ap.add_argument("--paced-rps", type=int, default=2000,
                    help="total offered rate for the added-latency runs")
    ap.add_argument("--litellm-paced-rps", type=int, default=50,
                    help="paced rate for LiteLLM, which cannot sustain --paced-rps")
    ap.add_argument("--ttft-concurrency", type=int, default=32)
    ap.add_argument("--streams", type=int, default=1000,
                    help="concurrent streams for the RSS measurement")
    ap.add_argument("--idle-busy", type=float, default=0.3,
                    help="idle = at most this many cores busy (over 0.5 s)")
    ap.add_argument("--idle-wait", type=float, default=None,
                    help="longest wait for idle before a measurement (default 20 s, quick 3 s)")
    ap.add_argument("--idle-budget", type=float, default=None,
                    help="most seconds spent waiting for idle over the whole run "
                         "(default 300, quick 30); then measurements start at once")
    ap.add_argument("--litellm-workers", type=int, default=2)
    ap.add_argument("--only", default=None,
                    help="comma list of measurements to run (rps_c32, stream_rps_c32, paced, "
                         "paced_low, ttft, streams_1k, ...); default all")
    ap.add_argument("--tollgate-env", action="append", default=[], metavar="K=V",
                    help="extra environment for tollgate serve (experiments, e.g. "
                         "MALLOC_ARENA_MAX=2); recorded in the JSON")
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep tollgate's request log (default: to /dev/null)")
    ap.add_argument("--out", default=os.path.join(BENCH, "results", "latest.json"))
    opts = ap.parse_args()

    quick = opts.quick
    opts.duration = opts.duration or (2.0 if quick else 10.0)
    opts.reps = opts.reps or (1 if quick else 3)
    opts.idle_wait = opts.idle_wait if opts.idle_wait is not None else (3.0 if quick else 20.0)
    opts.idle_budget = opts.idle_budget if opts.idle_budget is not None else (30.0 if quick else 300.0)
    opts.idle_budget_left = opts.idle_budget
    concs = [int(c) for c in (opts.concurrency or ("32" if quick else "1,32,256")).split(",")]
    if 32 not in concs:
        concs.append(32)  # the ratios are taken at 32
    wanted = [t.strip() for t in opts.targets.split(",") if t.strip()]
    dur = opts.duration
    started = time.time()
    tmp = tempfile.mkdtemp(prefix="tollgate-bench-")
    procs = []
    log(f"temp dir {tmp}; {opts.reps} repetitions x {dur:g} s; concurrency {concs}")
    load_start = loadavg()

    try:
        emu, emu_port = start_emulator(opts.tollgate, tmp)
        procs.append(emu)
        set_faults(emu_port, ZERO_FAULTS)
        targets = {}
        targets["direct"] = Target("direct", emu_port, MODEL, EMULATOR_KEY, [],
                                   note="the emulator itself (the floor)")
        features = []
        for name in wanted:
            if name in ("nginx", "nginx_b"):
                targets[name] = start_nginx(name, emu_port, tmp)
            elif name == "litellm":
                log("starting LiteLLM (slow to boot)")
                targets[name] = start_litellm(opts.venv, emu_port, tmp, opts.litellm_workers)
            elif name == "tollgate":
                targets[name], features = start_tollgate(opts.tollgate, emu_port, tmp,
                                                         opts.keep_logs, opts.tollgate_env)
                features += [f"experiment env {kv}" for kv in opts.tollgate_env]
            elif name != "direct":
                raise SystemExit(f"unknown target {name}")
        for t in targets.values():
            procs.extend(t.procs)
        targets = {k: v for k, v in targets.items() if k in wanted or k == "direct"}
        names = list(targets)

        for phase, faults in (("zero", ZERO_FAULTS), ("realistic", REALISTIC_FAULTS)):
            set_faults(emu_port, faults)
            for t in targets.values():
                cost = smoke(t, lambda m: log(f"[{phase}] {m}"))
                if cost and t.name == "tollgate" and phase == "zero":
                    features.append(f"cost computation from the catalog (x-tollgate-cost: {cost})")
        set_faults(emu_port, ZERO_FAULTS)
        log("warm-up")
        for t in targets.values():
            run_wrk(t, 8, 1 if quick else 2, False)
            run_wrk(t, 8, 1, True)

        # The matrix: (phase, measurement id, kind, targets, params).
        per_target_pace = {}
        conns_paced = 20
        matrix = []
        for c in concs:
            core = [n for n in names if n != "nginx_b"]
            # nginx_b (the self-check) only where the ratios are taken.
            matrix.append(("zero", f"rps_c{c}", "wrk", core + (["nginx_b"] if c == 32 and "nginx_b" in names else []),
                           {"conns": c, "duration": dur, "stream": False}))
        for c in concs:
            matrix.append(("zero", f"stream_rps_c{c}", "wrk", [n for n in names if n != "nginx_b"],
                           {"conns": c, "duration": dur, "stream": True}))
        # Large prompts (RAG, long chats): what a gateway does per byte of request shows
        # here and hardly at all with the short benchmark body.
        if 32 in concs:
            matrix.append(("zero", "rps_c32_prompt8k", "wrk",
                           [n for n in names if n != "nginx_b"],
                           {"conns": 32, "duration": dur, "stream": False,
                            "prompt_bytes": PROMPT_BYTES}))
        # Paced load: C connections with think time D: about C*1000/D requests/s.
        delay = max(1, round(conns_paced * 1000 / opts.paced_rps))
        matrix.append(("zero", "paced", "wrk", [n for n in names if n != "litellm"],
                       {"conns": conns_paced, "duration": dur, "stream": False,
                        "delay_ms": delay}))
        if "litellm" in names:
            lconns = 5
            ldelay = max(1, round(lconns * 1000 / opts.litellm_paced_rps))
            matrix.append(("zero", "paced_low", "wrk", ["direct", "litellm", "tollgate"]
                           if "tollgate" in names else ["direct", "litellm"],
                           {"conns": lconns, "duration": dur, "stream": False,
                            "delay_ms": ldelay}))
        matrix.append(("realistic", "ttft", "ttft", [n for n in names if n != "nginx_b"],
                       {"conns": opts.ttft_concurrency, "duration": dur}))
        matrix.append(("realistic", "streams_1k", "wrk",
                       [n for n in names if n not in ("direct", "nginx_b")],
                       {"conns": opts.streams, "duration": max(dur, 3.0), "stream": True,
                        "timeout_s": 30}))

        if opts.only:
            keep = set(opts.only.split(","))
            matrix = [m for m in matrix if m[1] in keep]
        results = {}  # mid -> target -> [rep results]
        n_meas = sum(len(m[3]) for m in matrix) * opts.reps
        est = n_meas * (dur + 1.5)
        log(f"{n_meas} measurements, about {est / 60:.0f} min plus idle waits")
        done = 0
        for rep in range(opts.reps):
            current = None
            for phase, mid, kind, tnames, params in matrix:
                if phase != current:
                    set_faults(emu_port, REALISTIC_FAULTS if phase == "realistic" else ZERO_FAULTS)
                    current = phase
                order = tnames[rep % len(tnames):] + tnames[:rep % len(tnames)]
                for tn in order:
                    t = targets[tn]
                    res = measure(kind, t, emu, opts, **params)
                    done += 1
                    results.setdefault(mid, {}).setdefault(tn, []).append(res)
                    lat = res.get("latency_us") or res.get("ttft_us") or {}
                    log(f"rep {rep + 1} {mid:16s} {tn:9s} "
                        f"rps={res.get('rps', 0):9.1f} p99={(lat.get('p99') or 0) / 1000:8.2f}ms "
                        f"err={res['errors_total']} busy_before={res['busy_cores_before']}"
                        f"{' (idle wait gave up)' if res['idle_gave_up'] else ''}"
                        f" [{done}/{n_meas}]")
        peak = {}
        for tn, t in targets.items():
            if t.procs:
                peak[tn] = round(sum(status_kb(p, "VmHWM") for p in t.pids()) / 1024, 1)
        out = analyse(results, targets, peak, opts, concs, features, tmp)
        out["raw"] = results
        out["machine"] = machine()
        out["machine"]["loadavg_start"] = load_start
        out["machine"]["loadavg_end"] = loadavg()
        out["versions"] = versions(opts.tollgate, opts.venv)
        out["elapsed_s"] = round(time.time() - started, 1)
        out["started_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
        os.makedirs(os.path.dirname(opts.out), exist_ok=True)
        with open(opts.out, "w") as f:
            json.dump(out, f, indent=2, sort_keys=False)
        print_table(out)
        print(f"\nwrote {os.path.relpath(opts.out)} ({out['elapsed_s']:.0f} s)")
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def analyse(results, targets, peak, opts, concs, features, tmp):
    def series(mid, tn, f):
        return [f(r) for r in results.get(mid, {}).get(tn, [])]

    def lat(r, k):
        return (r.get("latency_us") or {}).get(k)

    per = {}
    for tn in targets:
        d = {"note": targets[tn].note, "peak_rss_mb": peak.get(tn)}
        for c in concs:
            pairs = [("", f"rps_c{c}"), ("stream_", f"stream_rps_c{c}")]
            if c == 32:
                pairs.append(("prompt8k_", "rps_c32_prompt8k"))
            for prefix, mid in pairs:
                runs = results.get(mid, {}).get(tn)
                if not runs:
                    continue
                d[f"{prefix}c{c}"] = {
                    "rps": rnd(med(series(mid, tn, lambda r: r["rps"])), 1),
                    "p50_ms": rnd(med(series(mid, tn, lambda r: lat(r, "p50") / 1000)), 3),
                    "p99_ms": rnd(med(series(mid, tn, lambda r: lat(r, "p99") / 1000)), 3),
                    "max_ms": rnd(med(series(mid, tn, lambda r: lat(r, "max") / 1000)), 3),
                    "errors": sum(series(mid, tn, lambda r: r["errors_total"])),
                    "requests": sum(series(mid, tn, lambda r: r["requests"])),
                    "cpu_s_per_1k": rnd(med(series(mid, tn, lambda r: r["cpu_s_per_1k"])), 4),
                    "machine_us_per_req": rnd(med(series(mid, tn, lambda r: r.get("machine_us_per_req"))), 2),
                    "gateway_user_us_per_req": rnd(med(series(mid, tn, lambda r: r.get("gateway_user_us_per_req"))), 2),
                    "gateway_sys_us_per_req": rnd(med(series(mid, tn, lambda r: r.get("gateway_sys_us_per_req"))), 2),
                    "rss_max_mb": rnd(med(series(mid, tn, lambda r: r["rss_max_mb"])), 1),
                    "reps_rps": [rnd(x, 1) for x in series(mid, tn, lambda r: r["rps"])],
                }
        for mid, base, key in (("paced", "direct", "paced"), ("paced_low", "direct", "paced_low")):
            runs = results.get(mid, {}).get(tn)
            b = results.get(mid, {}).get(base)
            if not runs or not b:
                continue
            add50 = [lat(r, "p50") - lat(x, "p50") for r, x in zip(runs, b)]
            add99 = [lat(r, "p99") - lat(x, "p99") for r, x in zip(runs, b)]
            d[key] = {
                "offered_rps": opts.paced_rps if mid == "paced" else opts.litellm_paced_rps,
                "rps": rnd(med([r["rps"] for r in runs]), 1),
                "p50_ms": rnd(med([lat(r, "p50") / 1000 for r in runs]), 3),
                "p99_ms": rnd(med([lat(r, "p99") / 1000 for r in runs]), 3),
                "max_ms": rnd(med([lat(r, "max") / 1000 for r in runs]), 3),
                "added_p50_ms": rnd(med([x / 1000 for x in add50]), 3),
                "added_p99_ms": rnd(med([x / 1000 for x in add99]), 3),
                "errors": sum(r["errors_total"] for r in runs),
                "cpu_s_per_1k": rnd(med([r["cpu_s_per_1k"] for r in runs]), 4),
            }
        runs = results.get("ttft", {}).get(tn)
        b = results.get("ttft", {}).get("direct")
        if runs:
            def tt(r, k):
                return (r.get("ttft_us") or {}).get(k)
            ok_pairs = [(r, x) for r, x in zip(runs, b or []) if tt(r, "p50") and tt(x, "p50")]
            d["ttft"] = {
                "concurrency": opts.ttft_concurrency,
                "streams_per_s": rnd(med([r["rps"] for r in runs]), 1),
                "ttft_p50_ms": rnd(med([tt(r, "p50") / 1000 for r in runs if tt(r, "p50")]), 3),
                "ttft_p99_ms": rnd(med([tt(r, "p99") / 1000 for r in runs if tt(r, "p99")]), 3),
                "added_ttft_p50_ms": rnd(med([(tt(r, "p50") - tt(x, "p50")) / 1000 for r, x in ok_pairs]), 3),
                "added_ttft_p99_ms": rnd(med([(tt(r, "p99") - tt(x, "p99")) / 1000 for r, x in ok_pairs]), 3),
                "errors": sum(r["errors_total"] for r in runs),
            }
        runs = results.get("streams_1k", {}).get(tn)
        if runs:
            d["streams_1k"] = {
                "concurrent_streams": opts.streams,
                "rss_mb": rnd(med([r["hwm_mb"] if r["hwm_mb"] is not None else r["rss_max_mb"]
                                   for r in runs]), 1),
                "rss_sampled_max_mb": rnd(med([r["rss_max_mb"] for r in runs]), 1),
                "streams_per_s": rnd(med([r["rps"] for r in runs]), 1),
                "p50_ms": rnd(med([lat(r, "p50") / 1000 for r in runs]), 1),
                "p99_ms": rnd(med([lat(r, "p99") / 1000 for r in runs]), 1),
                "errors": sum(r["errors_total"] for r in runs),
                "cpu_s_per_1k": rnd(med([r["cpu_s_per_1k"] for r in runs]), 3),
            }
        per[tn] = d

    def g(tn, *path):
        v = per.get(tn)
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        return v

    # Ratios per repetition first (the targets ran side by side), then the median.
    def rep_ratio(mid, a, b, f):
        ra = results.get(mid, {}).get(a, [])
        rb = results.get(mid, {}).get(b, [])
        return med([ratio(f(x), f(y)) for x, y in zip(ra, rb)])

    def added_p99(mid, tn):
        return [lat(r, "p99") - lat(x, "p99") for r, x in
                zip(results.get(mid, {}).get(tn, []), results.get(mid, {}).get("direct", []))]

    def added_ratio(a, b):
        xa, xb = added_p99("paced", a), added_p99("paced", b)
        return med([ratio(x, y) for x, y in zip(xa, xb)])

    rps = lambda r: r["rps"]
    ratios = {
        "tollgate_vs_nginx_rps": rnd(rep_ratio("rps_c32", "tollgate", "nginx", rps), 3),
        "tollgate_vs_litellm_rps": rnd(rep_ratio("rps_c32", "tollgate", "litellm", rps), 1),
        "tollgate_vs_nginx_added_p99": rnd(added_ratio("tollgate", "nginx"), 3),
        "nginx_b_vs_nginx_rps": rnd(rep_ratio("rps_c32", "nginx_b", "nginx", rps), 3),
        "nginx_b_vs_nginx_added_p99": rnd(added_ratio("nginx_b", "nginx"), 3),
        "tollgate_vs_nginx_stream_rps": rnd(rep_ratio("stream_rps_c32", "tollgate", "nginx", rps), 3),
        "tollgate_vs_nginx_rps_prompt8k": rnd(rep_ratio("rps_c32_prompt8k", "tollgate", "nginx", rps), 3),
        "tollgate_vs_litellm_rps_prompt8k": rnd(rep_ratio("rps_c32_prompt8k", "tollgate", "litellm", rps), 1),
    }
    targets_met = {
        "rps_ge_0.8x_nginx": None if ratios["tollgate_vs_nginx_rps"] is None
        else ratios["tollgate_vs_nginx_rps"] >= 0.8,
        "rps_ge_300x_litellm": None if ratios["tollgate_vs_litellm_rps"] is None
        else ratios["tollgate_vs_litellm_rps"] >= 300,
        "added_p99_le_2x_nginx": None if ratios["tollgate_vs_nginx_added_p99"] is None
        else ratios["tollgate_vs_nginx_added_p99"] <= 2.0,
        "rss_1k_streams_le_64mb": None if g("tollgate", "streams_1k", "rss_mb") is None
        else g("tollgate", "streams_1k", "rss_mb") <= 64,
        "no_errors": None if "tollgate" not in per else all(
            (v.get("errors") or 0) == 0 for v in per["tollgate"].values() if isinstance(v, dict)),
    }
    all_runs = [r for m in results.values() for rs in m.values() for r in rs]
    noise = {
        "measurements": len(all_runs),
        "idle_wait_gave_up": sum(1 for r in all_runs if r["idle_gave_up"]),
        "busy_cores_before_median": rnd(med([r["busy_cores_before"] for r in all_runs]), 2),
        "foreign_cpu_s_total": rnd(sum(r["foreign_cpu_s"] for r in all_runs), 1),
        "foreign_cpu_cores_median": rnd(med([r["foreign_cpu_s"] / opts.duration for r in all_runs]), 2),
        "idle_wait_total_s": rnd(sum(r["idle_wait_s"] for r in all_runs), 1),
        "idle_budget_exhausted": opts.idle_budget_left <= 0,
    }
    # What 0.8x nginx would take: both saturate the same machine, so throughput goes as
    # the inverse of the whole machine's CPU per request.
    m_ng, m_tg = g("nginx", "c32", "machine_us_per_req"), g("tollgate", "c32", "machine_us_per_req")
    allowed = None if m_ng is None else m_ng / 0.8
    cpu_budget = {
        "machine_us_per_req": {tn: g(tn, "c32", "machine_us_per_req") for tn in per},
        "tollgate_machine_us_per_req_for_0.8x_nginx": rnd(allowed, 2),
        "tollgate_machine_us_per_req_over_that": rnd(None if allowed is None or m_tg is None
                                                     else m_tg - allowed, 2),
        "tollgate_user_us_per_req": g("tollgate", "c32", "gateway_user_us_per_req"),
        "tollgate_sys_us_per_req": g("tollgate", "c32", "gateway_sys_us_per_req"),
        "nginx_user_us_per_req": g("nginx", "c32", "gateway_user_us_per_req"),
        "nginx_sys_us_per_req": g("nginx", "c32", "gateway_sys_us_per_req"),
    }
    tg = per.get("tollgate", {})
    out = {
        "ratios": ratios,
        "targets_met": targets_met,
        "cpu_budget_c32": cpu_budget,
        "tollgate": {
            "peak_rss_mb_1k_streams": g("tollgate", "streams_1k", "rss_mb"),
            "peak_rss_mb": tg.get("peak_rss_mb"),
            "rps_c32": g("tollgate", "c32", "rps"),
            "added_p50_ms": g("tollgate", "paced", "added_p50_ms"),
            "added_p99_ms": g("tollgate", "paced", "added_p99_ms"),
            "added_ttft_p50_ms": g("tollgate", "ttft", "added_ttft_p50_ms"),
            "added_ttft_p99_ms": g("tollgate", "ttft", "added_ttft_p99_ms"),
            "cpu_s_per_1k_requests": g("tollgate", "c32", "cpu_s_per_1k"),
            "production_features_on": features,
        },
        "targets": per,
        "noise": noise,
        "method": {
            "quick": opts.quick,
            "reps": opts.reps,
            "duration_s": opts.duration,
            "concurrency": concs,
            "load_generator": "wrk 4.1 with bench/wrk/chat.lua (POST, 2 threads); "
                              "TTFT with bench/ttft.py (asyncio sockets)",
            "upstream": "tollgate emulate openai; phase 'zero': no faults; phase 'realistic': "
                        + REALISTIC_FAULTS,
            "interleaving": "for each repetition, for each measurement, every target in "
                            "turn; target order rotated per repetition",
            "idle_wait": f"before each measurement wait until <= {opts.idle_busy} cores "
                         f"busy over 0.5 s, at most {opts.idle_wait} s and at most "
                         f"{opts.idle_budget} s over the run (then measure anyway and count "
                         "it in noise.idle_wait_gave_up)",
            "paced": f"{opts.paced_rps} requests/s offered (20 connections with think time); "
                     f"LiteLLM at {opts.litellm_paced_rps} requests/s (with direct and tollgate "
                     "at the same rate for its baseline); added = target - direct, per "
                     "repetition, then the median",
            "ratios": "per repetition (targets measured side by side), then the median; "
                      "throughput ratios at concurrency 32, non-streaming, zero-latency upstream",
            "rss": "VmHWM from /proc after resetting it (clear_refs 5) before the measurement; "
                   "summed over all processes of a target (LiteLLM: master and workers; "
                   "nginx: master and workers); peak_rss_mb = VmHWM over the whole run",
            "cpu": "utime+stime from /proc/PID/stat of the target's processes before and after",
            "streams_1k": f"{opts.streams} concurrent streams with wrk -c {opts.streams}, realistic upstream",
            "prompt8k": f"rps_c32_prompt8k: as rps_c32 with the user message padded to "
                        f"{PROMPT_BYTES} bytes (bench/wrk/chat.lua, BENCH_PROMPT_BYTES)",
            "tollgate_log": "tollgate logs at its default level (info) to /dev/null"
                            if not opts.keep_logs else "tollgate logs to a file",
        },
    }
    return out


def print_table(out):
    per = out["targets"]
    cols = [("target", 9), ("rps c1", 8), ("rps c32", 8), ("rps c256", 8),
            ("srps c1", 8), ("srps c32", 8), ("srps c256", 9),
            ("p50/p99/max c32 ms", 20), ("+p50/+p99 paced ms", 19),
            ("+TTFT p50/p99 ms", 17), ("err", 5), ("RSS MB", 7), ("RSS 1k str", 10),
            ("CPU s/1k", 8)]

    def f(v, n=0):
        if v is None:
            return "-"
        return f"{v:.{n}f}"

    lines = []
    head = " ".join(name.rjust(w) if i else name.ljust(w) for i, (name, w) in enumerate(cols))
    lines.append(head)
    lines.append("-" * len(head))
    for tn, d in per.items():
        c32 = d.get("c32", {})
        paced = d.get("paced") or d.get("paced_low") or {}
        paced_tag = "" if d.get("paced") or not d.get("paced_low") else "*"
        tt = d.get("ttft", {})
        errs = sum((v.get("errors") or 0) for v in d.values() if isinstance(v, dict))
        row = [tn,
               f(d.get("c1", {}).get("rps")), f(c32.get("rps")), f(d.get("c256", {}).get("rps")),
               f(d.get("stream_c1", {}).get("rps")), f(d.get("stream_c32", {}).get("rps")),
               f(d.get("stream_c256", {}).get("rps")),
               f"{f(c32.get('p50_ms'), 2)}/{f(c32.get('p99_ms'), 2)}/{f(c32.get('max_ms'), 1)}",
               f"{f(paced.get('added_p50_ms'), 3)}/{f(paced.get('added_p99_ms'), 3)}{paced_tag}",
               f"{f(tt.get('added_ttft_p50_ms'), 2)}/{f(tt.get('added_ttft_p99_ms'), 2)}",
               str(errs), f(d.get("peak_rss_mb"), 1),
               f(d.get("streams_1k", {}).get("rss_mb"), 1), f(c32.get("cpu_s_per_1k"), 3)]
        lines.append(" ".join(v.rjust(w) if i else v.ljust(w)
                              for i, (v, (_, w)) in enumerate(zip(row, cols))))
    r = out["ratios"]
    t = out["targets_met"]
    n = out["noise"]
    m = out["method"]
    mark = lambda ok: "-" if ok is None else ("met" if ok else "MISSED")
    lines.append("-" * len(head))
    lines.append(f"tollgate/nginx rps (c32) {f(r['tollgate_vs_nginx_rps'], 3)} (target >= 0.8: "
                 f"{mark(t['rps_ge_0.8x_nginx'])}) | tollgate/LiteLLM rps {f(r['tollgate_vs_litellm_rps'], 1)} "
                 f"(>= 300: {mark(t['rps_ge_300x_litellm'])}) | tollgate/nginx added p99 "
                 f"{f(r['tollgate_vs_nginx_added_p99'], 2)} (<= 2: {mark(t['added_p99_le_2x_nginx'])}) | "
                 f"RSS at 1k streams {f(out['tollgate']['peak_rss_mb_1k_streams'], 1)} MB "
                 f"(<= 64: {mark(t['rss_1k_streams_le_64mb'])}) | errors: {mark(t['no_errors'])}")
    lines.append(f"self-check nginx_b/nginx: rps {f(r['nginx_b_vs_nginx_rps'], 3)}, added p99 "
                 f"{f(r['nginx_b_vs_nginx_added_p99'], 2)} (both should be near 1.0) | "
                 f"{m['reps']} reps x {m['duration_s']:g} s, medians | idle wait gave up "
                 f"{n['idle_wait_gave_up']}/{n['measurements']}, foreign CPU median "
                 f"{f(n['foreign_cpu_cores_median'], 2)} cores")
    big = {tn: d.get("prompt8k_c32", {}).get("rps") for tn, d in per.items()}
    if any(v is not None for v in big.values()):
        lines.append("8 KB prompts, rps c32: " + ", ".join(
            f"{tn} {f(v)}" for tn, v in big.items() if v is not None)
            + f" | tollgate/nginx {f(r.get('tollgate_vs_nginx_rps_prompt8k'), 3)}")
    cb = out["cpu_budget_c32"]
    if cb["tollgate_machine_us_per_req_for_0.8x_nginx"] is not None:
        lines.append(
            "CPU per request at c32, whole machine (load generator + emulator + target, softirq "
            "included): " + ", ".join(f"{tn} {f(v, 1)} us" for tn, v in
                                      cb["machine_us_per_req"].items() if v is not None)
            + f" | 0.8x nginx allows tollgate {f(cb['tollgate_machine_us_per_req_for_0.8x_nginx'], 1)} us"
            f" ({f(cb['tollgate_machine_us_per_req_over_that'], 1)} us over) | own user/sys us: "
            f"tollgate {f(cb['tollgate_user_us_per_req'], 1)}/{f(cb['tollgate_sys_us_per_req'], 1)}, "
            f"nginx {f(cb['nginx_user_us_per_req'], 1)}/{f(cb['nginx_sys_us_per_req'], 1)}")
    lines.append("rps = requests/s at saturation (srps: streaming); paced = "
                 f"{m['paced'].split(' (')[0]} (* LiteLLM at its lower paced rate); + = added over direct")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
