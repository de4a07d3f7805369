#!/usr/bin/env python3
"""End-to-end benchmarks of the release binary against its own mock server on loopback.

Scenarios: throughput (every attempt journaled), memory at 10k and 1M lines, rate fidelity
(--rpm at the server's limit, and no limit at all), and resume of a 1M-line job with 1,000 left.
Apart, with --latency-only: pacing against a mock whose answers take a lognormal latency (median
0.2, 1, 1.5 or 15 s; once a slow-down ×10 after 30 s) under a request or a token limit, with the
runner's defaults and with --concurrency 256 and the limits given: wall time against the floor
(lines / allowed rate), the share of the allowed rate reached, 429s, and bodies answered twice.
The nginx scenario puts the runner next to wrk against Debian's nginx answering every POST with
a fixed, full chat.completion (Batch lines of ~200-character prompts, --concurrency 64 and
wrk -t2 -c64 in the same run), and next to the HTTP client alone (examples/http_ceiling: the same
POSTs through reqwest, and through hyper under it, with nothing journaled: the ceiling of any
runner built on them), and times the first request of a 1M-line file of those lines.
Prints one Markdown table. Standard library only; run from the repository root:

    cargo build --release && python3 scripts/bench.py            # full run, ~4 minutes
    python3 scripts/bench.py --quick                              # smaller inputs
    python3 scripts/bench.py --nginx-only                         # only the nginx scenario
    python3 scripts/bench.py --bin /tmp/runner --nginx-only --nginx-lines 2000 --wrk-seconds 3 --first-lines 20000
                                                                  # the harness itself, tiny sizes
    python3 scripts/bench.py --compare /tmp/before/runner target/release/runner --nginx-only --rounds 2
                                                                  # two binaries, alternating, one table
    python3 scripts/bench.py --compare /tmp/before/runner target/release/runner --latency-only
                                                                  # pacing, ~15 minutes a binary; the
                                                                  # mock is AFTER's (or --mock-bin)

The nginx scenario needs `nginx` and `wrk` (Debian: `apt-get install -y --no-install-recommends
nginx wrk`); run as root, the script installs them, otherwise it prints that command and skips.

These are benchmarks, not tests: nothing here fails on a slow machine.
"""

import argparse
import json
import os
import platform
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BIN = os.environ.get("RUNNER_BIN") or os.path.join("target", "release", "runner")
# The mock server's binary: the measured one, or with --compare the last one, so that both
# binaries are measured against the same server.
MOCK_BIN = BIN
# Input files, written once and shared by every binary and round (see `input_path`).
INPUTS = None


def input_path(name, n, writer):
    """The input file `name` of `n` lines, written by `writer(path, n)` on first use."""
    path = os.path.join(INPUTS, f"{name}-{n}.jsonl")
    if not os.path.exists(path):
        writer(path, n)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mock:
    """`runner mock-server` in its own process, so its CPU is not the runner's."""

    def __init__(self, *flags, latency="0ms"):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [MOCK_BIN, "mock-server", "--addr", f"127.0.0.1:{self.port}", "--latency", latency, *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("the mock server did not start")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/mock/stats", timeout=5) as r:
            return json.load(r)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def write_input(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(f'{{"custom_id":"r-{i}","prompt":"Summarise item number {i} in one sentence."}}\n')


def run_usage(args, env=None, timeout=None):
    """Runs the binary, killed after `timeout` s when given; returns (exit code, wall s, rusage
    from wait4, stderr)."""
    start = time.monotonic()
    proc = subprocess.Popen([BIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    killer = threading.Timer(timeout, proc.kill) if timeout else None
    if killer:
        killer.start()
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if killer:
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    return proc.returncode, wall, usage, stderr


def run(args):
    """Runs the binary; returns (exit code, wall s, cpu s, peak RSS MiB, stderr)."""
    code, wall, usage, stderr = run_usage(args)
    return code, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stderr


def reported_rate(stderr):
    """The runner's own requests/s from its summary line (`… · 13,200.5 req/s · …`), or None."""
    for line in reversed(stderr.splitlines()):
        if " req/s" in line:
            try:
                return float(line.split(" req/s")[0].rsplit("· ", 1)[1].replace(",", ""))
            except (IndexError, ValueError):
                return None
    return None


def submit(workdir, name, n, mock, *flags):
    path = input_path("prompts", n, write_input)
    db = os.path.join(workdir, f"{name}.db")
    return run(["submit", path, "--db", db, "--base-url", mock.url, "--model", "m", "--no-progress", *flags])


def by_second(stats, status):
    return {int(s): c.get(str(status), 0) for s, c in stats["by_second"].items()}


def rate_fidelity(workdir, rps, seconds, *flags):
    mock = Mock("--requests-per-second", str(rps))
    n = int(rps * seconds)
    code, _, _, _, _ = submit(workdir, f"rate-{'rpm' if flags else 'free'}", n, mock, "--concurrency", "64", *flags)
    stats = mock.stats()
    mock.stop()
    ok, refused = by_second(stats, 200), by_second(stats, 429)
    total_429 = sum(refused.values())
    late_answers = sum(v for s, v in ok.items() if s >= 10) + sum(v for s, v in refused.items() if s >= 10)
    late_429 = sum(v for s, v in refused.items() if s >= 10)
    # The steady rate: served requests per whole second, leaving out the first and last
    # (partial) seconds and the start-up before the first answer.
    seconds = sorted(s for s, v in ok.items() if v > 0)
    steady = seconds[1:-1]
    achieved = sum(ok[s] for s in steady) / max(1, len(steady))
    return {
        "achieved": achieved,
        "share": achieved / rps,
        "429": total_429 / max(1, stats["answers"]),
        "429_after_10s": late_429 / max(1, late_answers),
        "code": code,
    }


def rate_fidelity_rows(workdir, rows):
    r = rate_fidelity(workdir, 1000, 20, "--rpm", "60000")
    rows.append(("rate fidelity: --rpm 60000 vs server limit 1,000/s (steady rate)",
                 f"{r['share']:.1%} of R, {r['429']:.2%} 429s", "≥ 97%, ≤ 0.5%"))
    r = rate_fidelity(workdir, 1000, 20)
    rows.append(("rate fidelity: no limit vs server limit 1,000/s (steady rate)",
                 f"{r['share']:.1%} of R, {r['429_after_10s']:.2%} 429s after 10 s ({r['429']:.2%} in all)",
                 "converges, ≤ 5% after 10 s"))


def heavy(workdir, big, rows):
    """Throughput, memory and resume: the scenarios that need big inputs."""
    mock = Mock()
    code, wall, cpu, rss, err = submit(workdir, "throughput", 100_000, mock, "--concurrency", "128")
    rate = reported_rate(err) or 100_000 / wall
    rows.append(("throughput, 100k requests, every attempt journaled", f"{rate:,.0f} requests/s", "≥ 20,000/s"))
    rows.append(("CPU per request (user + sys of the runner)", f"{cpu / 100_000 * 1e6:.0f} µs", "≤ 50 µs"))

    # Ingestion comes before the first send (see docs/benchmarks.md): how long it takes.
    path = input_path("prompts", big, write_input)
    first_mock = Mock()
    start = time.monotonic()
    proc = subprocess.Popen(
        [BIN, "submit", path, "--db", os.path.join(workdir, "first.db"), "--base-url", first_mock.url,
         "--model", "m", "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = None
    while first is None and time.monotonic() - start < 120:
        if first_mock.stats()["answers"] > 0:
            first = time.monotonic() - start
        else:
            time.sleep(0.005)
    proc.kill()
    proc.wait()
    first_mock.stop()
    first_text = f"{first:.1f} s ({big / first:,.0f} lines/s)" if first is not None else "none within 120 s"
    rows.append((f"submit {big:,} lines: first request (after the ingest)", first_text, ""))

    _, _, _, rss_small, _ = submit(workdir, "mem-10k", 10_000, mock, "--concurrency", "128")
    code, wall_big, cpu_big, rss_big, _ = submit(workdir, "mem-big", big, mock, "--concurrency", "128")
    rows.append(("peak RSS, 10k lines", f"{rss_small:.1f} MiB", ""))
    rows.append((f"peak RSS, {big:,} lines", f"{rss_big:.1f} MiB", "≤ 40 MB"))
    rows.append((f"RSS growth 10k → {big:,}", f"{rss_big / rss_small:.2f}×", "≤ 1.3×"))
    rows.append((f"{big:,}-line job end to end (ingest + send)", f"{wall_big:.1f} s ({big / wall_big:,.0f}/s)", ""))
    mock.stop()

    # Resume with 1,000 left: mark the last 1,000 requests pending again, as a crash would
    # have left them, then time the first request to reach a fresh server.
    db = os.path.join(workdir, "mem-big.db")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE requests SET state = 'pending', finished_at = NULL WHERE id > (SELECT max(id) - 1000 FROM requests)"
        )
    mock = Mock()
    start = time.monotonic()
    proc = subprocess.Popen(
        [BIN, "resume", "--db", db, "--base-url", mock.url, "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = None
    while first is None and time.monotonic() - start < 60:
        if mock.stats()["answers"] > 0:
            first = time.monotonic() - start
        else:
            time.sleep(0.002)
    proc.wait()
    sent = mock.stats()["answers"]
    mock.stop()
    first_text = f"{first:.2f} s" if first is not None else "none within 60 s"
    rows.append((f"resume {big:,}-line job with 1,000 left: first request", first_text, "≤ 1 s"))
    rows.append((f"resume {big:,}-line job with 1,000 left: requests sent", f"{sent:,}", "exactly 1,000"))


# --- nginx + wrk: the runner next to a load generator, against a server that costs nothing ---

WORDS = (
    "the a of and to in for on with as by at from about into over after before between under "
    "customer invoice order shipment account payment refund review product service support "
    "report summary request response message ticket contract policy schedule meeting project "
    "team manager engineer analyst budget quarter revenue forecast market region city country "
    "weather river mountain forest garden kitchen recipe dinner breakfast coffee train station "
    "airport flight hotel museum library school student teacher lesson chapter book article "
    "describe summarise explain compare list translate rewrite classify extract suggest outline "
    "short clear formal friendly detailed brief polite careful simple useful important recent "
    "three five several main key likely possible next previous current annual monthly weekly"
).split()

CONTENT = (
    "Thank you for the detailed question. The short answer is that the quarterly report shows "
    "steady growth in every region, with the strongest gains in the northern market. Revenue "
    "rose by eight percent, costs stayed flat, and the team expects a similar result next "
    "quarter if the new product launch stays on schedule and customer demand holds at the "
    "current level."
)  # ~60 words; no single quote, dollar sign or backslash (nginx string rules)

COMPLETION = json.dumps({
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": CONTENT, "refusal": None, "annotations": []},
        "logprobs": None,
        "finish_reason": "stop",
    }],
    "usage": {
        "prompt_tokens": 52, "completion_tokens": 71, "total_tokens": 123,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_06737a9306",
}, separators=(",", ":"))

# Headers OpenAI sends with every answer. The runner paces itself to 98% of an announced
# x-ratelimit-limit-requests (per minute): real values (30,000/min) would cap it at 490/s, so the
# limits announced here are the largest it accepts (10,000,000/min, ~163,000/s), never binding.
OPENAI_HEADERS = [
    ("x-request-id", "req_$request_id"),  # nginx's own 32 hex digits, one per request
    ("openai-organization", "user-bench"),
    ("openai-processing-ms", "412"),
    ("openai-version", "2020-10-01"),
    ("x-ratelimit-limit-requests", "10000000"),
    ("x-ratelimit-limit-tokens", "10000000000"),
    ("x-ratelimit-remaining-requests", "9999999"),
    ("x-ratelimit-remaining-tokens", "9999999877"),
    ("x-ratelimit-reset-requests", "2ms"),
    ("x-ratelimit-reset-tokens", "0s"),
]


def batch_line(i, rng, max_tokens=None):
    """One Batch API line: a distinct prompt of ~190 characters (whole words, at most 200),
    ~330 bytes in all; with `max_tokens`, its body asks for at most that many output tokens."""
    words = [rng.choice(("Describe", "Summarise", "Explain", "Compare", "Rewrite")), f"item {i}:"]
    size = sum(len(w) + 1 for w in words) - 1
    target = rng.randint(180, 199)
    while True:
        w = rng.choice(WORDS)
        if size + 1 + len(w) > target:
            break
        words.append(w)
        size += len(w) + 1
    prompt = " ".join(words) + "."
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body},
                      separators=(",", ":"))


def write_batch_input(path, n, max_tokens=None):
    rng = random.Random(7)
    with open(path, "w") as f:
        chunk = []
        for i in range(n):
            chunk.append(batch_line(i, rng, max_tokens))
            if len(chunk) == 10_000:
                f.write("\n".join(chunk) + "\n")
                chunk = []
        if chunk:
            f.write("\n".join(chunk) + "\n")


def nginx_and_wrk_available():
    """True when nginx and wrk are on PATH, installing them first when running as root."""
    missing = [t for t in ("nginx", "wrk") if shutil.which(t) is None]
    if not missing:
        return True
    command = "apt-get install -y --no-install-recommends nginx wrk"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"nginx scenario skipped: {', '.join(missing)} missing; install with `sudo {command}`",
              file=sys.stderr)
        return False
    print(f"installing {', '.join(missing)}: {command}", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL, env=env)
    subprocess.run(command.split(), stdout=subprocess.DEVNULL, env=env)
    if any(shutil.which(t) is None for t in ("nginx", "wrk")):
        print("nginx scenario skipped: the install failed", file=sys.stderr)
        return False
    return True


class Nginx:
    """Debian's nginx in the foreground, its own prefix directory, one worker, answering every
    POST to /v1/chat/completions with COMPLETION. `log=True` writes an access log (for the
    first-request scenario only: a log line per request costs the server CPU)."""

    def __init__(self, workdir, name, log=False):
        self.dir = os.path.join(workdir, name)
        os.makedirs(os.path.join(self.dir, "logs"), exist_ok=True)
        os.chmod(self.dir, 0o755)  # a root master hands requests to `nobody` workers
        self.port = free_port()
        self.access_log = os.path.join(self.dir, "logs", "access.log")
        headers = "\n".join(f"            add_header {k} {v} always;" for k, v in OPENAI_HEADERS)
        conf = f"""
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    map $http_x_bench_check $loggable {{ "" 1; default 0; }}
    access_log {f"{self.access_log} combined if=$loggable" if log else "off"};
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    keepalive_requests 10000000;  # the clients are measured, not reconnects
    keepalive_timeout 75s;
    server_tokens off;
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        location = /v1/chat/completions {{
            default_type application/json;
{headers}
            return 200 '{COMPLETION}';
        }}
        location / {{ return 404; }}
    }}
}}
"""
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen(
            ["nginx", "-p", self.dir, "-c", self.conf, "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx did not start: {self.proc.stderr.read().strip()}")
            try:
                self.check()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not answer within 10 s")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def check(self):
        req = urllib.request.Request(f"{self.url}/chat/completions", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json", "X-Bench-Check": "1"})  # not logged
        with urllib.request.urlopen(req, timeout=5) as r:
            body = json.load(r)
            assert body["object"] == "chat.completion" and r.headers["x-ratelimit-limit-requests"]

    def cpu_seconds(self):
        """User + system CPU of the master and its workers so far (from /proc)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # After the command: state, ppid, …; utime and stime are fields 14 and 15.
            if int(pid) == self.proc.pid or int(fields[1]) == self.proc.pid:
                total += int(fields[11]) + int(fields[12])
        return total / tick

    def requests_seen(self):
        try:
            return os.path.getsize(self.access_log) > 0
        except OSError:
            return False

    def stop(self):
        self.proc.terminate()  # SIGTERM: fast shutdown of master and worker
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wrk_rate(nginx, workdir, seconds, sample_line):
    """wrk -t2 -c64 posting a Batch line's body, as the runner would: its requests/s."""
    script = os.path.join(workdir, "post.lua")
    body = json.dumps(json.loads(sample_line)["body"], separators=(",", ":"))
    with open(script, "w") as f:
        f.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body)}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            'wrk.headers["Authorization"] = "Bearer sk-bench-0000000000000000"\n'
        )
    out = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{seconds}s", "-s", script, f"{nginx.url}/chat/completions"],
        capture_output=True, text=True,
    )
    for line in out.stdout.splitlines():
        if line.startswith("Requests/sec:"):
            errors = next((l.strip() for l in out.stdout.splitlines() if "Non-2xx" in l or "Socket errors" in l), "")
            if errors:
                print(f"wrk: {errors}", file=sys.stderr)
            return float(line.split(":", 1)[1])
    raise RuntimeError(f"wrk printed no rate: {out.stdout}{out.stderr}")


CEILING = os.path.join("target", "release", "examples", "http_ceiling")


def ceiling_available():
    """True when examples/http_ceiling is built, building it first when cargo is at hand."""
    if not os.path.exists(CEILING) and shutil.which("cargo") and os.path.exists("Cargo.toml"):
        subprocess.run(["cargo", "build", "--release", "--example", "http_ceiling"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not os.path.exists(CEILING):
        print(f"{CEILING} is missing (cargo build --release --example http_ceiling): "
              "the HTTP client's ceiling is left out", file=sys.stderr)
        return False
    return True


def ceiling_rate(client, nginx, workdir, lines, sample_line):
    """examples/http_ceiling: `lines` POSTs of a Batch line's body with the HTTP client alone
    (`reqwest` as the runner builds it, or `hyper` under it), 64 at a time on one thread,
    nothing journaled: its requests/s and CPU µs per request."""
    body = os.path.join(workdir, "body.json")
    with open(body, "w") as f:
        f.write(json.dumps(json.loads(sample_line)["body"], separators=(",", ":")))
    proc = subprocess.Popen([CEILING, client, f"{nginx.url}/chat/completions", body, str(lines), "64"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not out.strip():
        raise RuntimeError(f"http_ceiling {client} failed: {out}")
    return float(out.split()[0]), (usage.ru_utime + usage.ru_stime) / lines * 1e6


def runner_env(server):
    return dict(os.environ, OPENAI_BASE_URL=server.url, OPENAI_API_KEY="sk-bench-0000000000000000")


def nginx_scenario(workdir, lines, wrk_seconds, first_lines, rows):
    """The runner and wrk against the same nginx, then the first request of a big file."""
    path = input_path("batch", lines, write_batch_input)
    with open(path) as f:
        sample = f.readline()
    line_bytes = os.path.getsize(path) / lines

    nginx = Nginx(workdir, "nginx")
    try:
        wrk = wrk_rate(nginx, workdir, wrk_seconds, sample)
        served = nginx.cpu_seconds()
        code, wall, usage, err = run_usage(
            ["submit", path, "--db", os.path.join(workdir, "nginx.db"), "--concurrency", "64", "--no-progress"],
            env=runner_env(nginx),
        )
        server_cpu = nginx.cpu_seconds() - served
        ceilings = []
        if ceiling_available():
            for client in ("reqwest", "hyper"):
                ceilings.append((client, *ceiling_rate(client, nginx, workdir, lines, sample)))
    finally:
        nginx.stop()
    summary = next((l for l in reversed(err.splitlines()) if " req/s" in l), err.strip())
    print(f"runner against nginx, exit {code}: {summary}", file=sys.stderr)
    rate = reported_rate(err)
    end_to_end = lines / wall
    cpu = usage.ru_utime + usage.ru_stime
    switches = usage.ru_nvcsw + usage.ru_nivcsw
    label = f"nginx, {lines:,} Batch lines (~{line_bytes:.0f} B), --concurrency 64"
    rows.append((f"{label}: wrk -t2 -c64 -d{wrk_seconds}s, same server, same run", f"{wrk:,.0f} requests/s", ""))
    shown = f"{rate:,.0f} requests/s ({end_to_end:,.0f}/s with the ingest)" if rate else f"{end_to_end:,.0f} requests/s"
    rows.append((f"{label}: runner", shown + ("" if code == 0 else f", exit {code}"), ""))
    rows.append((f"{label}: runner / wrk", f"{(rate or end_to_end) / wrk:.2f}", "≥ 0.33"))
    rows.append((f"{label}: CPU per request (user + sys of the runner, ingest included)",
                 f"{cpu / lines * 1e6:.0f} µs", "≤ 40 µs"))
    rows.append((f"{label}: nginx's CPU per request while serving the runner",
                 f"{server_cpu / lines * 1e6:.0f} µs", ""))
    rows.append((f"{label}: context switches per request (voluntary + involuntary)",
                 f"{switches / lines:.2f} ({usage.ru_nvcsw:,} + {usage.ru_nivcsw:,})", ""))
    what = {
        "reqwest": "the HTTP client alone (reqwest, built as the runner builds it; one thread, nothing journaled)",
        "hyper": "hyper alone (the HTTP/1.1 client under reqwest, without its layers; one thread)",
    }
    for client, ceiling, ceiling_cpu in ceilings:
        rows.append((f"{label}: {what[client]}",
                     f"{ceiling:,.0f} requests/s, {ceiling / wrk:.2f} of wrk, {ceiling_cpu:.0f} µs", ""))

    # First request of a big file of the same lines: nginx logs each request, only here.
    big = input_path("batch", first_lines, write_batch_input)
    nginx = Nginx(workdir, "nginx-log", log=True)
    try:
        start = time.monotonic()
        proc = subprocess.Popen(
            [BIN, "submit", big, "--db", os.path.join(workdir, "nginx-big.db"), "--concurrency", "64",
             "--no-progress"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=runner_env(nginx),
        )
        first = None
        while first is None and time.monotonic() - start < 300 and proc.poll() is None:
            if nginx.requests_seen():
                first = time.monotonic() - start
            else:
                time.sleep(0.005)
        if first is None and nginx.requests_seen():
            first = time.monotonic() - start
        # The peak RSS so far (the ingest and the start of the run), read before the kill: the
        # kernel's rusage of a forked child also counts this script's own pages.
        hwm = None
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
        except (OSError, StopIteration, ValueError):
            pass
        proc.kill()
        proc.wait()
    finally:
        nginx.stop()
    for suffix in ("", "-wal", "-shm"):  # ~1 GB at 1M lines
        leftover = os.path.join(workdir, "nginx-big.db" + suffix)
        if os.path.exists(leftover):
            os.remove(leftover)
    first_text = f"{first:.1f} s ({first_lines / first:,.0f} lines/s)" if first is not None else "none within 300 s"
    rows.append((f"nginx, {first_lines:,}-line file of those lines: first request", first_text, "≤ 3 s"))
    rows.append((f"nginx, {first_lines:,}-line file of those lines: peak RSS until the first request",
                 f"{hwm / 1024:.1f} MiB" if hwm else "unknown", "≤ 40 MB"))


# --- latency-shaped pacing: the runner's default pool against a rate limit and a slow server ---

# Each case: name, lines, the mock's median latency and limits, the limit that binds ("requests"
# or "tokens") and its rate per minute, and the flags of a user who knows both numbers. Every
# latency is spread lognormally (sigma 0.5: the middle half between 0.71 and 1.4 times the median).
PACING_CASES = [
    ("request-bound, median 1.5 s", 3000, "1500ms", ["--requests-per-minute", "3000"],
     "requests", 3000, ["--rpm", "3000"]),
    ("request-bound, median 0.2 s", 3000, "200ms", ["--requests-per-minute", "3000"],
     "requests", 3000, ["--rpm", "3000"]),
    ("request-bound, median 15 s", 1500, "15s", ["--requests-per-minute", "3000"],
     "requests", 3000, ["--rpm", "3000"]),
    ("token-bound (10,000 requests/min), median 1.5 s", 1500, "1500ms",
     ["--requests-per-minute", "10000", "--tokens-per-minute", "300000"],
     "tokens", 300_000, ["--rpm", "10000", "--tpm", "300000"]),
    ("slow-down ×10 at 30 s, median 1 s", 3000, "1s",
     ["--requests-per-minute", "3000", "--slow-down-at", "30s", "--slow-down-factor", "10"],
     "requests", 3000, ["--rpm", "3000"]),
]
PACING_SPREAD = "0.5"
PACING_MAX_TOKENS = 256  # the lines' max_tokens: with a token limit, most of a request's cost
PACING_TIMEOUT = 1800  # s per run: 32 in flight at 15 s an answer need ~12 minutes for 1,500 lines


def pacing_case(workdir, slug, lines, latency, mock_flags, unit, per_minute, flags):
    """One run of `submit` against a mock with this latency and these limits; returns the floor
    (s) and the cell: wall, share of the allowed rate reached, 429s, bodies answered twice."""
    path = input_path(f"batch-max{PACING_MAX_TOKENS}", lines,
                      lambda p, n: write_batch_input(p, n, max_tokens=PACING_MAX_TOKENS))
    mock = Mock("--latency-spread", PACING_SPREAD, *mock_flags, latency=latency)
    try:
        code, wall, _, _ = run_usage(
            ["submit", path, "--db", os.path.join(workdir, f"{slug}.db"), "--base-url", mock.url,
             "--no-progress", *flags],
            env=runner_env(mock), timeout=PACING_TIMEOUT,
        )
        stats = mock.stats()
    finally:
        mock.stop()
    per_second = per_minute / 60
    admitted = {int(s): a[unit] for s, a in stats["admitted_by_second"].items() if a["requests"]}
    total = stats["admitted"]
    # A line's token cost is the mock's count (prompt + max_tokens); they barely differ.
    need = lines if unit == "requests" else lines * total["tokens"] / max(1, total["requests"])
    floor = need / per_second
    # The sending phase: the first to the last second with a request admitted, both included.
    span = max(admitted) - min(admitted) + 1 if admitted else 1
    reached = sum(admitted.values()) / (per_second * span)
    limited = stats["limited"]
    refused = limited["requests"] + limited["tokens"]
    attempts = total["requests"] + refused + limited["too_large"]
    bodies = stats["per_body"].values()
    twice = sum(1 for c in bodies if c["successes"] > 1)
    done = sum(1 for c in bodies if c["successes"] > 0)
    cell = (f"{wall:.0f} s; {reached:.0%} of the allowed rate while sending ({floor / wall:.0%} by wall); "
            f"{refused / max(1, attempts):.1%} 429s; {'none' if twice == 0 else f'{twice:,}'} sent twice")
    if done < lines:
        cell += f"; {lines - done:,} lines unanswered"
    if code != 0:
        cell += f"; exit {code}"
    return floor, cell


def pacing_rows(workdir, scale, rows, only=None):
    """Each case (those whose name holds `only`, when given) with the runner's defaults, with
    the limits given (the tier's numbers, as the README says), and with them and 256 in flight."""
    for k, (name, lines, latency, mock_flags, unit, per_minute, known) in enumerate(PACING_CASES):
        if only and only not in name:
            continue
        lines = max(1, round(lines * scale))
        limit = f"{per_minute:,} {unit}/min"
        knowing = ["--concurrency", "256", *known]
        for v, flags in enumerate(([], known, knowing)):
            variant = " ".join(flags) or "defaults"
            floor, cell = pacing_case(workdir, f"pacing-{k}-{v}", lines, latency, mock_flags, unit, per_minute,
                                      flags)
            print(f"{name}, {variant}: {cell}", file=sys.stderr)
            rows.append((f"pacing, {name}, {lines:,} lines, {limit} (floor {floor:.0f} s): {variant}", cell, ""))


def measure(opts, workdir, big, first_lines):
    """Every scenario the flags select, for the binary in BIN; returns its rows."""
    rows = []
    if opts.latency_only:
        pacing_rows(workdir, opts.latency_scale, rows, opts.latency_case)
        return rows
    if not opts.rate_only and not opts.nginx_only and not opts.no_heavy:
        heavy(workdir, big, rows)
    if not opts.rate_only and not opts.no_nginx and nginx_and_wrk_available():
        nginx_scenario(workdir, opts.nginx_lines, opts.wrk_seconds, first_lines, rows)
    if not opts.nginx_only:
        rate_fidelity_rows(workdir, rows)
    return rows


def main():
    global BIN, MOCK_BIN, INPUTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller inputs (100k instead of 1M lines)")
    parser.add_argument("--rate-only", action="store_true", help="only the rate-fidelity scenarios")
    parser.add_argument("--nginx-only", action="store_true", help="only the nginx + wrk scenario")
    parser.add_argument("--latency-only", action="store_true",
                        help="only the latency-shaped pacing scenario (~15 minutes per binary; not in the full run)")
    parser.add_argument("--latency-scale", type=float, default=1.0,
                        help="with --latency-only: share of each case's lines, e.g. 0.1 for a quick look [default: 1]")
    parser.add_argument("--latency-case", metavar="TEXT",
                        help="with --latency-only: only the cases whose name holds TEXT, e.g. '15 s'")
    parser.add_argument("--mock-bin",
                        help="binary whose `mock-server` serves the mock scenarios [default: the one measured; "
                             "with --compare, AFTER]")
    parser.add_argument("--no-nginx", action="store_true", help="leave out the nginx + wrk scenario")
    parser.add_argument("--no-heavy", action="store_true",
                        help="leave out throughput, memory and resume against the mock (the big inputs)")
    parser.add_argument("--bin", default=BIN,
                        help="runner binary to measure [default: $RUNNER_BIN, else target/release/runner]")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                        help="measure two binaries in one run, alternating (BEFORE, AFTER; then AFTER, BEFORE; ...), "
                             "against the same servers and inputs; prints one table with a column each")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --compare: rounds of both binaries, each round in the other order [default: 1]")
    parser.add_argument("--nginx-lines", type=int, default=100_000, help="lines the runner sends to nginx")
    parser.add_argument("--wrk-seconds", type=int, default=10, help="duration of the wrk run")
    parser.add_argument("--first-lines", type=int,
                        help="lines of the nginx first-request file [default: 1,000,000; 100,000 with --quick]")
    opts = parser.parse_args()
    bins = [os.path.abspath(b) for b in (opts.compare or [opts.bin])]
    for b in bins:
        if not os.path.exists(b):
            sys.exit(f"{b} is missing: run `cargo build --release` first, or pass --bin")
    MOCK_BIN = os.path.abspath(opts.mock_bin) if opts.mock_bin else bins[-1]
    if not os.path.exists(MOCK_BIN):
        sys.exit(f"{MOCK_BIN} is missing: pass a built binary to --mock-bin")
    big = 100_000 if opts.quick else 1_000_000
    first_lines = opts.first_lines or big
    top = tempfile.mkdtemp(prefix="runner-bench-")
    INPUTS = os.path.join(top, "inputs")
    os.makedirs(INPUTS)
    results = [[] for _ in bins]  # per binary, the rows of each round
    try:
        for r in range(opts.rounds if opts.compare else 1):
            order = list(range(len(bins))) if r % 2 == 0 else list(reversed(range(len(bins))))
            for i in order:
                BIN = bins[i]
                print(f"round {r + 1}: {BIN}", file=sys.stderr)
                workdir = os.path.join(top, f"run-{r}-{i}")
                os.makedirs(workdir)
                try:
                    results[i].append(measure(opts, workdir, big, first_lines))
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
    finally:
        shutil.rmtree(top, ignore_errors=True)

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"Machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}; "
          f"runner and mock server (or nginx, or wrk) on the same cores.\n")
    if not opts.compare:
        print("| scenario | result | target |")
        print("|---|---|---|")
        for name, result, target in results[0][0]:
            print(f"| {name} | {result} | {target} |")
        return
    # One column per binary; with several rounds, each round's result in run order.
    print("Before: " + bins[0] + "  \nAfter: " + bins[1] + "\n")
    print("| scenario | before | after | target |")
    print("|---|---|---|---|")
    for k, (name, _, target) in enumerate(results[0][0]):
        cells = [" / ".join(rounds[k][1] for rounds in results[i]) for i in range(len(bins))]
        print(f"| {name} | {cells[0]} | {cells[1]} | {target} |")


if __name__ == "__main__":
    main()
