#!/usr/bin/env python3
"""End-to-end benchmarks of the release binary against its own mock server on loopback.

Scenarios: throughput (every attempt journaled), memory at 10k and 1M lines, rate fidelity
(--rpm at the server's limit, and no limit at all), and resume of a 1M-line job with 1,000 left.
Prints one Markdown table. Standard library only; run from the repository root:

    cargo build --release && python3 scripts/bench.py            # full run, ~3 minutes
    python3 scripts/bench.py --quick                              # smaller inputs

These are benchmarks, not tests: nothing here fails on a slow machine.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = os.path.join("target", "release", "runner")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mock:
    """`runner mock-server` in its own process, so its CPU is not the runner's."""

    def __init__(self, *flags):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [BIN, "mock-server", "--addr", f"127.0.0.1:{self.port}", "--latency", "0ms", *flags],
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


def run(args):
    """Runs the binary; returns (exit code, wall s, cpu s, peak RSS MiB, stderr)."""
    start = time.monotonic()
    proc = subprocess.Popen([BIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stderr


def submit(workdir, name, n, mock, *flags):
    path = os.path.join(workdir, f"{name}.jsonl")
    if not os.path.exists(path):
        write_input(path, n)
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


def heavy(workdir, big, rows):
    """Throughput, memory and resume: the scenarios that need big inputs."""
    mock = Mock()
    code, wall, cpu, rss, err = submit(workdir, "throughput", 100_000, mock, "--concurrency", "128")
    rate = float(err.split(" req/s")[0].rsplit("· ", 1)[1]) if " req/s" in err else 100_000 / wall
    rows.append(("throughput, 100k requests, every attempt journaled", f"{rate:,.0f} requests/s", "≥ 20,000/s"))
    rows.append(("CPU per request (user + sys of the runner)", f"{cpu / 100_000 * 1e6:.0f} µs", "≤ 50 µs"))

    # Ingestion comes before the first send (see README "Benchmarks"): how long it takes.
    path = os.path.join(workdir, "mem-big.jsonl")
    write_input(path, big)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller inputs (100k instead of 1M lines)")
    parser.add_argument("--rate-only", action="store_true", help="only the rate-fidelity scenarios")
    opts = parser.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: run `cargo build --release` first")
    big = 100_000 if opts.quick else 1_000_000
    workdir = tempfile.mkdtemp(prefix="runner-bench-")
    rows = []
    try:
        if not opts.rate_only:
            heavy(workdir, big, rows)
        r = rate_fidelity(workdir, 1000, 20, "--rpm", "60000")
        rows.append(("rate fidelity: --rpm 60000 vs server limit 1,000/s (steady rate)",
                     f"{r['share']:.1%} of R, {r['429']:.2%} 429s", "≥ 97%, ≤ 0.5%"))
        r = rate_fidelity(workdir, 1000, 20)
        rows.append(("rate fidelity: no limit vs server limit 1,000/s (steady rate)",
                     f"{r['share']:.1%} of R, {r['429_after_10s']:.2%} 429s after 10 s ({r['429']:.2%} in all)",
                     "converges, ≤ 5% after 10 s"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"Machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}; "
          f"runner and mock server on the same cores.\n")
    print("| scenario | result | target |")
    print("|---|---|---|")
    for name, result, target in rows:
        print(f"| {name} | {result} | {target} |")


if __name__ == "__main__":
    main()
