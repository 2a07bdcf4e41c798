#!/usr/bin/env python3
"""Time to first token of streamed chat completions, with stdlib asyncio sockets only.

    python3 bench/ttft.py --port P --model M [--key K] [--concurrency 32] [--duration 10]

Each of C workers keeps one HTTP/1.1 keep-alive connection and, in a closed loop, sends a
streamed `POST /v1/chat/completions` and reads the whole answer. For every request it
records the time from the last byte of the request written to the arrival of the first
SSE `data:` event of the body (time to first token, TTFT) and to the end of the stream
(total). A stream counts as ok when it ended with `data: [DONE]`.

Prints one line `BENCHJSON {...}` with counts and percentiles in microseconds.
"""

import argparse
import asyncio
import json
import sys
import time


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


class Stats:
    def __init__(self):
        self.ttft = []
        self.total = []
        self.ok = 0
        self.errors = 0
        self.error_kinds = {}

    def error(self, kind):
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def body_chunks(reader, headers):
    """Yields the body's bytes as they arrive (chunked, sized or until close)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            data = await reader.read(min(left, 65536))
            if not data:
                raise ConnectionError("closed mid-body")
            left -= len(data)
            yield data
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data


async def one_request(reader, writer, request, stats):
    """Sends one request on the connection and reads its answer; False: drop the connection."""
    writer.write(request)
    await writer.drain()
    t0 = time.perf_counter()
    status, headers = await read_head(reader)
    first = None
    tail = b""
    async for data in body_chunks(reader, headers):
        if first is None and b"data:" in (tail + data):
            first = time.perf_counter()
        tail = (tail + data)[-64:]
    end = time.perf_counter()
    if status != 200 or first is None:
        stats.error(f"status_{status}" if status != 200 else "no_event")
    elif b"[DONE]" not in tail:
        stats.error("no_done")
    else:
        stats.ok += 1
        stats.ttft.append((first - t0) * 1e6)
        stats.total.append((end - t0) * 1e6)
    return headers.get("connection", "").lower() != "close"


async def worker(args, request, deadline, stats):
    reader = writer = None
    while time.monotonic() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(args.host, args.port)
            keep = await asyncio.wait_for(one_request(reader, writer, request, stats),
                                          args.timeout)
            if not keep:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError,
                asyncio.LimitOverrunError, IndexError) as e:
            stats.error(type(e).__name__)
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def main_async(args):
    body = json.dumps({
        "model": args.model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello to the benchmark in one short sentence."},
        ],
        "max_tokens": 1024,
        "stream": True,
    }).encode()
    head = (
        f"POST {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n"
    )
    if args.key and args.key != "-":
        head += f"Authorization: Bearer {args.key}\r\n"
    request = head.encode() + b"\r\n" + body
    stats = Stats()
    start = time.monotonic()
    deadline = start + args.duration
    await asyncio.gather(*(worker(args, request, deadline, stats)
                           for _ in range(args.concurrency)))
    elapsed = time.monotonic() - start
    ttft = sorted(stats.ttft)
    total = sorted(stats.total)

    def summary(vals):
        if not vals:
            return None
        return {"p50": percentile(vals, 50), "p90": percentile(vals, 90),
                "p99": percentile(vals, 99), "max": vals[-1], "min": vals[0],
                "mean": sum(vals) / len(vals)}

    out = {"ok": stats.ok, "errors": stats.errors, "error_kinds": stats.error_kinds,
           "elapsed_s": elapsed, "rps": stats.ok / elapsed if elapsed else 0,
           "ttft_us": summary(ttft), "total_us": summary(total)}
    print("BENCHJSON " + json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/v1/chat/completions")
    p.add_argument("--model", required=True)
    p.add_argument("--key", default="-")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    if not args.host.startswith("127.") and args.host != "localhost":
        sys.exit("ttft.py only talks to loopback addresses")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
