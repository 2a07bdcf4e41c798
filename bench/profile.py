#!/usr/bin/env python3
"""Instructions per request on tollgate's hot path, with valgrind's callgrind.

    python3 bench/profile.py --tollgate target/release/tollgate [--requests 2000]
        [--stream] [--log-level info] [--top 25] [--keep DIR]

Starts the OpenAI emulator (natively) and `tollgate serve` (bench/tollgate.toml) under
`valgrind --tool=callgrind`, warms up with 200 requests, zeroes the counters
(`callgrind_control -z`), sends exactly N requests one after another on one keep-alive
connection, dumps (`callgrind_control -d`) and prints instructions per request (Ir/N)
and the functions with the largest inclusive and exclusive cost, per request.

Instruction counts do not depend on how busy the machine is, so this works on a shared
machine where timings do not. It needs a binary with debug info (the workspace's release
profile has it) to name functions.
"""

import argparse
import glob
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


PROMPT_CHARS = 0


def send(port, path, key, model, n, stream):
    user = "Say hello to the benchmark in one short sentence."
    words = "the quick brown fox jumps over the lazy dog while prices fall".split()
    i = 0
    while len(user) < PROMPT_CHARS:
        user += " " + words[i % len(words)]
        i += 1
    body = json.dumps({"model": model, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": user}],
        "max_tokens": 1024, "stream": stream}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    hdr = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    bad = 0
    for _ in range(n):
        conn.request("POST", path, body, hdr)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200 or (stream and b"[DONE]" not in data):
            bad += 1
    conn.close()
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tollgate", required=True)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--concurrency", type=int, default=1,
                    help="clients sending at once (lets the ledger's group commit batch)")
    ap.add_argument("--config", default=os.path.join(harness.BENCH, "tollgate.toml"))
    ap.add_argument("--prompt-chars", type=int, default=0,
                    help="pad the user message to this many characters")
    ap.add_argument("--log-level", default=None,
                    help="RUST_LOG for tollgate (default: its production default, info)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--keep", help="copy the callgrind output file here")
    a = ap.parse_args()
    global PROMPT_CHARS
    PROMPT_CHARS = a.prompt_chars

    tmp = tempfile.mkdtemp(prefix="tollgate-profile-")
    procs = []
    try:
        emu, emu_port = harness.start_emulator(a.tollgate, tmp)
        procs.append(emu)
        port = harness.free_port()
        data = os.path.join(tmp, "data")
        os.makedirs(data)
        env = dict(os.environ)
        env.update({"TOLLGATE_BENCH_LISTEN": f"127.0.0.1:{port}",
                    "TOLLGATE_BENCH_UPSTREAM": f"http://127.0.0.1:{emu_port}/v1",
                    "TOLLGATE_BENCH_DATA": data, "TOLLGATE_BENCH_UPSTREAM_KEY": "emulator-key"})
        env.pop("RUST_LOG", None)
        if a.log_level:
            env["RUST_LOG"] = a.log_level
        cfg = a.config
        flags, _ = harness.keys_create_flags(a.tollgate)
        r = subprocess.run([a.tollgate, "keys", "create", "--name", "prof", "--config", cfg,
                            "--json"] + flags, capture_output=True, text=True, env=env, check=True)
        key = json.loads(r.stdout)["key"]
        out = os.path.join(tmp, "callgrind.out")
        p = harness.Proc("tollgate-callgrind",
                         ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                          "--dump-instr=no", "--separate-threads=no",
                          a.tollgate, "serve", "--config", cfg],
                         env=env, log_path=os.path.join(tmp, "valgrind.log"),
                         ready=r"tollgate listening on", timeout=180)
        procs.append(p)
        model = "openai/gpt-4o-mini"
        path = "/v1/chat/completions"
        send(port, path, key, model, a.warmup, a.stream)
        pid = str(p.pid)
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        t0 = time.time()
        if a.concurrency <= 1:
            bad = send(port, path, key, model, a.requests, a.stream)
        else:
            import concurrent.futures
            per = a.requests // a.concurrency
            with concurrent.futures.ThreadPoolExecutor(a.concurrency) as ex:
                bad = sum(ex.map(lambda _: send(port, path, key, model, per, a.stream),
                                 range(a.concurrency)))
            a.requests = per * a.concurrency
        wall = time.time() - t0
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        time.sleep(1)
        dumps = sorted(glob.glob(out + "*"), key=os.path.getmtime)
        dump = dumps[-1]
        ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", dump],
                             capture_output=True, text=True).stdout
        excl = subprocess.run(["callgrind_annotate", dump], capture_output=True,
                              text=True).stdout
        m = re.search(r"^([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", ann, re.M)
        total = int(m.group(1).replace(",", "")) if m else None
        n = a.requests
        print(f"# tollgate {'stream' if a.stream else 'non-stream'}, {n} requests "
              f"from {a.concurrency} client(s) "
              f"({bad} bad), RUST_LOG={a.log_level or 'default(info)'}, "
              f"{wall:.1f} s under callgrind")
        if total:
            print(f"instructions per request: {total / n:,.0f}")

        def top(text, label):
            rows = []
            for line in text.splitlines():
                mm = re.match(r"^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(\S.*)$", line)
                if not mm or "PROGRAM TOTALS" in line:
                    continue
                ir = int(mm.group(1).replace(",", ""))
                name = mm.group(3)
                name = re.sub(r"^\S*?:", "", name, count=1) if ":" in name.split(" ")[0] else name
                rows.append(f"{ir / n:12,.0f} {float(mm.group(2)):5.1f}%  {name[:150]}")
                if len(rows) >= a.top:
                    break
            print(f"\n## top {a.top} by {label} cost (instructions per request, % of total)")
            if len(rows) < 2:
                # Counters zeroed mid-run: callgrind then books all the self cost of the
                # serving thread to one frame, and this list says nothing.
                print("   (callgrind booked it all to one frame: read the tree instead, "
                      "with --keep DIR and\n    callgrind_annotate --inclusive=yes "
                      "--tree=calling DIR/callgrind.out.*)")
            print("\n".join(rows))
        top(ann, "inclusive")
        top(excl, "exclusive")
        if a.keep:
            os.makedirs(a.keep, exist_ok=True)
            shutil.copy(dump, a.keep)
    finally:
        for pr in reversed(procs):
            pr.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
