"""Shared fixtures: run the real `tollgate` binary (emulators, demo, serve) on loopback
ports chosen by the OS, and validate bodies against OpenAI's published schema.

The binary is `$TOLLGATE_BIN`, else `target/debug/tollgate` (the test script builds it).
Every process is started on port 0 and reports its address on stdout, so tests run in
parallel with no fixed ports.
"""
import json
import os
import pathlib
import queue
import re
import subprocess
import sys
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("TOLLGATE_BIN", str(ROOT / "target" / "debug" / "tollgate"))
CONFORMANCE = ROOT / "tests" / "conformance"
sys.path.insert(0, str(CONFORMANCE))

# Credentials the emulators accept by default (see `tollgate emulate --help`).
EMULATOR_KEY = "emulator-key"
EMULATOR_SECRET = "emulator-secret"
EMULATOR_APP = "emulator-app"


class Proc:
    """A running tollgate process whose stdout lines are collected in the background."""

    def __init__(self, args, env=None):
        self.args = args
        self.lines = queue.Queue()
        self.seen = []
        self.p = subprocess.Popen(
            [BIN, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.err = []
        threading.Thread(target=self._pump, args=(self.p.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()

    @staticmethod
    def _pump(stream, q):
        for line in stream:
            q.put(line.rstrip("\n"))
        q.put(None)

    def _drain(self):
        for line in self.p.stderr:
            self.err.append(line)
            if len(self.err) > 2000:
                del self.err[:1000]

    def wait_for(self, pattern, timeout=30):
        """The first stdout line matching `pattern` (a regex), as a match object."""
        rx = re.compile(pattern)
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"{self.args}: no line matching {pattern!r} in {timeout}s; "
                                     f"stdout so far {self.seen!r}; stderr {''.join(self.err)[-2000:]}")
            if line is None:
                raise AssertionError(f"{self.args} exited ({self.p.wait()}) before printing {pattern!r}; "
                                     f"stdout {self.seen!r}; stderr {''.join(self.err)[-2000:]}")
            self.seen.append(line)
            m = rx.search(line)
            if m:
                return m

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


@pytest.fixture
def emulator():
    """Factory: `emulator("openai", "--fault", "status=503")` -> base URL of a running
    emulator (`http://127.0.0.1:PORT`). Stopped at teardown."""
    procs = []

    def start(name, *extra):
        p = Proc(["emulate", name, "--port", "0", *extra])
        procs.append(p)
        m = p.wait_for(r"listening on (http://[0-9.]+:\d+)")
        return m.group(1)

    yield start
    for p in procs:
        p.stop()


@pytest.fixture
def gateway(tmp_path):
    """Factory: `gateway(toml_text)` -> info dict of a running `tollgate serve`, with an
    admin key and a fresh all-models key: {url, base_url, key, admin_key, proc}."""
    procs = []

    def start(config_text, env=None):
        n = len(procs)
        data = tmp_path / f"gw{n}"
        cfg = tmp_path / f"gw{n}.toml"
        cfg.write_text(f'listen = "127.0.0.1:0"\ndata_dir = "{data}"\nadmin_key = "admin-test-key"\n' + config_text)
        key = create_key(["--config", str(cfg)], "test")
        p = Proc(["serve", "--config", str(cfg)], env=env)
        procs.append(p)
        url = p.wait_for(r"listening on (http://[0-9.]+:\d+)").group(1)
        return {"url": url, "base_url": url + "/v1", "key": key, "admin_key": "admin-test-key",
                "proc": p, "config": cfg}

    yield start
    for p in procs:
        p.stop()


def create_key(store_args, name, models=None):
    args = [BIN, "keys", *store_args, "create", "--name", name, "--json"]
    if models:
        args += ["--models", ",".join(models)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["key"]


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """One `tollgate demo --port 0` for the session: {url, base_url, key, admin_key, proc}."""
    data = tmp_path_factory.mktemp("demo")
    p = Proc(["demo", "--port", "0", "--data-dir", str(data)])
    exports = {}
    while "TOLLGATE_ADMIN_KEY" not in exports:
        m = p.wait_for(r"^export (\w+)=(.*)$")
        exports[m.group(1)] = m.group(2)
    base = exports["OPENAI_BASE_URL"]
    yield {"url": base[: -len("/v1")], "base_url": base, "key": exports["OPENAI_API_KEY"],
           "admin_key": exports["TOLLGATE_ADMIN_KEY"], "proc": p, "data_dir": data}
    p.stop()
    assert p.p.returncode == 0, f"demo did not exit cleanly: {p.p.returncode}; {''.join(p.err)[-2000:]}"


_VALIDATORS = {}


def openai_validator(schema):
    """A jsonschema validator for a component of OpenAI's published spec."""
    if schema not in _VALIDATORS:
        import validate_openai as vo
        if "spec" not in _VALIDATORS:
            _VALIDATORS["spec"] = vo.load_spec(str(CONFORMANCE / "openai-openapi.yaml"))
        _VALIDATORS[schema] = vo.build_validator(_VALIDATORS["spec"], schema)
    return _VALIDATORS[schema]


def assert_valid(schema, doc):
    errors = list(openai_validator(schema).iter_errors(doc))
    assert not errors, f"{schema}: " + "; ".join(f"{list(e.absolute_path)}: {e.message[:200]}" for e in errors[:5])


def assert_valid_sse(text, schema="CreateChatCompletionStreamResponse", done=True):
    """Validates every data event of a raw SSE body; returns the parsed events."""
    import validate_openai as vo
    events = []
    saw_done = False
    for _event, data in vo.parse_sse(text):
        assert not saw_done, f"data after [DONE]: {data[:100]}"
        if data.strip() == "[DONE]":
            saw_done = True
            continue
        doc = json.loads(data)
        assert_valid(schema, doc)
        events.append(doc)
    assert saw_done or not done, "stream did not end with data: [DONE]"
    return events
