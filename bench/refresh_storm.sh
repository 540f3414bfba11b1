#!/usr/bin/env bash
# Refresh storm (issue 5): N OAuth connections whose access tokens have all expired are seeded
# through the real store and vault code; `scopegate serve` starts with start-up spreading off,
# so all N are due at once, against a stub token endpoint on loopback (examples/bench_upstream).
# Meanwhile examples/open_loop sends tool calls through the proxy (an API-key service) at a fixed
# rate and we compare their p99 with an idle run (proactive refresh off). Prints the storm's duration, refreshes/s, store
# commits (group-committed markers and results) per second, CPU per refresh and RSS.
#   usage: [RATE=2000] [CONC=8] [QUICK=1] bash bench/refresh_storm.sh [N]     (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
REL=${CARGO_TARGET_DIR:-target}/release   # a profiling build may live elsewhere
N=${1:-100000}
cargo build --release --locked --bin scopegate --example bench_upstream --example seed_connections --example open_loop 2>&1 | tail -1
source bench/common.sh
UP=19721; GW=19723; TOK=19722
$REL/examples/bench_upstream $UP $KEY >/dev/null & pids+=($!)
# The stub token endpoint stands for a provider on another machine: its own process, at the
# lowest CPU priority, so its work on this 2-core box does not slow the MCP upstream or the load.
nice -n 19 $REL/examples/bench_upstream $TOK $KEY >/dev/null & pids+=($!)
export SCOPEGATE_DATA_DIR=$T/data SCOPEGATE_PASSPHRASE=bench-passphrase-not-secret STUB_SECRET=stub-client-secret
SG=$REL/scopegate
$SG init --kdf-memory-kib 19456 --kdf-iterations 2 --kdf-parallelism 1 >/dev/null
config() { # proactive?
  cat > "$SCOPEGATE_DATA_DIR/scopegate.toml" <<CONF
listen = "127.0.0.1:$GW"
[limits]
max_connections = 4096
max_streams_per_agent = 4096
refresh_startup_spread_secs = 0
refresh_concurrency_per_provider = ${CONC:-8}
proactive_refresh = $1
[providers.stub]
authorization_endpoint = "http://127.0.0.1:$TOK/authorize"
token_endpoint = "http://127.0.0.1:$TOK/token"
client_id = "bench"
client_secret_env = "STUB_SECRET"
[services.stubsvc]
provider = "stub"
mcp_url = "http://127.0.0.1:$UP/mcp"
scopes = ["read"]
[services.bench]
kind = "api_key"
mcp_url = "http://127.0.0.1:$UP/mcp"
header = "X-API-Key"
CONF
}
config false
s0=$(date +%s.%N)
$REL/examples/seed_connections "$SCOPEGATE_DATA_DIR" stubsvc "$N" seeded-token oauth 2>/dev/null
echo "seeded $N expired OAuth connections in $(echo "$(date +%s.%N) - $s0" | bc) s"
start() {
  RUST_LOG=warn $SG serve > "$T/sg.out" 2>&1 & SGP=$!; pids+=($SGP)
  for _ in $(seq 6000); do grep -q "scopegate: ready" "$T/sg.out" 2>/dev/null && break; sleep 0.05; done
}
to_us() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} else print v }'; }
# Open loop at a fixed rate below saturation (RATE, default 2000/s): each request is timed from
# when it was due, so p99 is the latency an agent sees, not queueing in a saturated 2-core box.
load() { $REL/examples/open_loop "http://127.0.0.1:$GW/mcp/bench" "Bearer $TOKEN" "${RATE:-2000}" "$1"; }
p99() { echo "$1" | awk '{for (i=1;i<NF;i++) if ($i=="p99_us") print $(i+1)}'; }
rps() { echo "$1" | awk '{for (i=1;i<NF;i++) if ($i=="rps") print $(i+1)}'; }
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
metric() { curl -fsS "http://127.0.0.1:$GW/metrics" | awk -v m="$1" '$1==m {print $2}'; }

# 1. Idle: no proactive refresh, the same proxy load.
start
echo -n $KEY | $SG apikey set bench --user u0 >/dev/null
TOKEN=$($SG agent add wrk --user u0 2>/dev/null)
idle=$(load 10)
echo "idle:  $(rps "$idle") req/s, p99 $(p99 "$idle") us, RSS $(rss $SGP) MiB"
kill $SGP; wait $SGP 2>/dev/null || true

# 2. Storm: every connection due at start.
config true
issued0=$(curl -fsS "http://127.0.0.1:$TOK/token-stats")
t0=$(date +%s.%N)
start
tk0=$(ticks $SGP)
if [ -n "${PERF:-}" ]; then # PERF=1: profile the gateway during the storm's first 15 s, then stop
  perf record -F 999 -g -p "$SGP" -o "${PERF_OUT:-perf.data}" -- sleep 15 >/dev/null 2>&1
  exit 0
fi
storm=$(load 10)
echo "storm: $(rps "$storm") req/s, p99 $(p99 "$storm") us (during the first 10 s of the storm)"
if [ -n "${QUICK:-}" ]; then # QUICK=1: only the p99 comparison
  echo "p99 storm/idle: $(echo "scale=2; $(p99 "$storm") / $(p99 "$idle")" | bc)"; exit 0
fi
while :; do
  issued=$(( $(curl -fsS "http://127.0.0.1:$TOK/token-stats") - issued0 ))
  ok=$(metric 'scopegate_token_refreshes_total{outcome="ok"}')
  [ "${ok:-0}" -ge "$N" ] && break
  sleep 1
done
t1=$(date +%s.%N); tk1=$(ticks $SGP); hz=$(getconf CLK_TCK)
commits=$(metric scopegate_refresh_commits_total)
secs=$(echo "$t1 - $t0" | bc)
echo "storm: $N refreshes ($issued token requests) in $secs s = $(echo "$N / $secs" | bc) refreshes/s; $commits store commits ($(echo "$commits / $secs" | bc)/s, $(echo "scale=1; 2 * $N / $commits" | bc) markers+results per commit)"
echo "storm: CPU $(echo "scale=1; ($tk1 - $tk0) * 1000000 / $hz / $N" | bc) us per refresh (whole process, proxy load included); RSS $(rss $SGP) MiB"
after=$(load 10)
echo "after: $(rps "$after") req/s, p99 $(p99 "$after") us"
echo "p99 storm/idle: $(echo "scale=2; $(p99 "$storm") / $(p99 "$idle")" | bc)"
