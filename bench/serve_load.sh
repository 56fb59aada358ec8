#!/usr/bin/env bash
# Issue 19's serve benchmarks in one run: acquire + release pairs per second over HTTP/1.1
# keep-alive on `laneguard serve` (C++ client: laneguard_serve_load; Node client:
# serve_peer/laneguard_node_load.mjs) and on npm redis-semaphore over a local redis-server (Node),
# same lane limit (4) and clients (1, 8, 64), then the hand-off latency with 64 parked waiters on a
# lane of limit 1. Prints a markdown table; the raw JSON lines go to BUILD/serve_bench.jsonl.
#
# Usage: bench/serve_load.sh [BUILD_DIR]  (needs BUILD/bin/laneguard and laneguard_serve_load)
# Env: SECONDS_PER_CASE (10), WARMUP_SECONDS (1), CLIENTS ("1 8 64"), HANDOFF_CLIENTS (64).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-build}" && pwd)
seconds=${SECONDS_PER_CASE:-10}
warmup=${WARMUP_SECONDS:-1}
clients_list=${CLIENTS:-1 8 64}
handoff_clients=${HANDOFF_CLIENTS:-64}
limit=4
laneguard="$build/bin/laneguard"
load="$build/bin/laneguard_serve_load"
for f in "$laneguard" "$load"; do
  [[ -x $f ]] || { echo "serve_load.sh: $f is missing (make bench-serve builds it)" >&2; exit 2; }
done

sudo_=""
[[ $(id -u) == 0 ]] || sudo_=sudo
if ! command -v redis-server >/dev/null; then
  echo "serve_load.sh: installing redis-server" >&2
  $sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq redis-server
fi
if [[ ! -d $here/serve_peer/node_modules ]]; then
  (cd "$here/serve_peer" && npm ci --no-audit --no-fund --silent)
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# redis-server: loopback, a free port, no persistence. A port taken between the probe and the bind
# makes it exit: try a few.
for _ in 1 2 3 4 5; do
  redis_port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
    --logfile "$tmp/redis.log" &
  redis_pid=$!
  for _ in $(seq 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.1
  done
  if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then pids+=("$redis_pid"); break; fi
  kill "$redis_pid" 2>/dev/null || true
  redis_pid=""
done
[[ -n ${redis_pid:-} ]] || { echo "serve_load.sh: redis-server did not start" >&2; exit 1; }

# The daemon: lane "bench" of limit 4 (global high, so the lane is what binds) and "handoff" of 1.
cat >"$tmp/config.json" <<EOF
{"globalConcurrencyLimit": 1000, "laneConcurrencyLimits": {"bench": $limit, "handoff": 1}}
EOF
"$laneguard" serve --config "$tmp/config.json" --listen 127.0.0.1:0 2>"$tmp/serve.err" &
serve_pid=$!
pids+=("$serve_pid")
for _ in $(seq 100); do
  grep -q 'laneguard serve: ready' "$tmp/serve.err" && break
  kill -0 "$serve_pid" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q 'laneguard serve: ready' "$tmp/serve.err"; then
  echo "serve_load.sh: laneguard serve is not ready:" >&2
  cat "$tmp/serve.err" >&2
  exit 1
fi
url=$(grep -o -m1 'http://127\.0\.0\.1:[0-9]*' "$tmp/serve.err")

out="$build/serve_bench.jsonl"
: >"$out"
common=(--seconds "$seconds" --warmup-seconds "$warmup" --wait-ms 10000)
for c in $clients_list; do
  echo "serve_load.sh: $c client(s)" >&2
  "$load" --url "$url" --lane bench --clients "$c" "${common[@]}" |
    sed 's/^{/{"peer":"laneguard","client":"c++",/' >>"$out"
  node "$here/serve_peer/laneguard_node_load.mjs" --url "$url" --lane bench --clients "$c" \
    "${common[@]}" >>"$out"
  node "$here/serve_peer/redis_semaphore_load.mjs" --redis "127.0.0.1:$redis_port" --limit "$limit" \
    --lane bench --clients "$c" "${common[@]}" >>"$out"
done
echo "serve_load.sh: hand-off, $handoff_clients parked" >&2
"$load" --url "$url" --lane handoff --mode handoff --clients "$handoff_clients" \
  --seconds "$seconds" --warmup-seconds "$warmup" --wait-ms 600000 |
  sed 's/^{/{"peer":"laneguard","client":"c++",/' >>"$out"
# The daemon's footprint after the run (threads, peak RSS).
grep -E '^(Threads|VmHWM)' "/proc/$serve_pid/status" | tr -s ' \t' ' ' | sed 's/^/daemon /' >&2

node - "$out" <<'EOF'
const fs = require('node:fs');
const rows = fs.readFileSync(process.argv[2], 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const f = (x, d = 0) => x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
const pick = (peer, client, n) => rows.find((r) => r.peer === peer && (!client || r.client === client) && r.clients === n && r.mode !== 'handoff');
const cell = (r) => (r ? `${f(r.pairs_per_s)} (${f(r.p50_ms, 2)} / ${f(r.p99_ms, 2)})` : 'n/a');
const ratio = (a, b) => (a && b && b.pairs_per_s ? `${f(a.pairs_per_s / b.pairs_per_s, 2)}x` : 'n/a');
console.log('| clients | laneguard, C++ client | laneguard, Node client | redis-semaphore, Node | C++ / redis | Node / redis |');
console.log('|---:|---:|---:|---:|---:|---:|');
for (const n of [...new Set(rows.filter((r) => r.mode !== 'handoff').map((r) => r.clients))]) {
  const cpp = pick('laneguard', 'c++', n), node = pick('laneguard', 'node', n), redis = pick('redis-semaphore', null, n);
  console.log(`| ${n} | ${cell(cpp)} | ${cell(node)} | ${cell(redis)} | ${ratio(cpp, redis)} | ${ratio(node, redis)} |`);
}
console.log('\npairs/s (p50 / p99 ms per acquire + release pair); refusals and errors:',
  rows.filter((r) => r.mode !== 'handoff').map((r) => `${r.peer}/${r.client || 'node'}/${r.clients}: ${r.refusals}/${r.errors}`).join(', '));
for (const h of rows.filter((r) => r.mode === 'handoff')) {
  console.log(`\nhand-off, ${h.clients} parked on a lane of limit 1: ${f(h.handoffs_per_s)}/s; release response -> next 201 ` +
    `p50 ${f(h.p50_ms, 3)} ms, p99 ${f(h.p99_ms, 3)} ms; DELETE sent -> next 201 p50 ${f(h.from_send_p50_ms, 3)} ms, ` +
    `p99 ${f(h.from_send_p99_ms, 3)} ms (parked at start ${h.parked_at_start}, errors ${h.errors})`);
}
EOF
