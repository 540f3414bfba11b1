#!/usr/bin/env bash
# Refresh storm (issue 5): N OAuth connections whose access tokens have all expired are seeded
# through the real store and vault code; `scopegate serve` starts with start-up spreading off,
# so all N are due at once, against a stub token endpoint on loopback (examples/bench_upstream).
# Meanwhile wrk drives tool calls through the proxy (an API-key service) and we compare its p99
# with an idle run (proactive refresh off). Prints the storm's duration, refreshes/s, store
# commits (group-committed markers and results) per second, CPU per refresh and RSS.
#   usage: bash bench/refresh_storm.sh [N]     (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
REL=${CARGO_TARGET_DIR:-target}/release   # a profiling build may live elsewhere
N=${1:-100000}
cargo build --release --locked --bin scopegate --example bench_upstream --example seed_connections 2>&1 | tail -1
T=$(mktemp -d); chmod 700 "$T"
KEY=bench-upstream-key-0d2c9e
UP=19721; GW=19723; TOK=19722
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$T"; }
trap cleanup EXIT
$REL/examples/bench_upstream $UP $KEY >/dev/null & pids+=($!)
# The stub token endpoint stands for a provider on another machine: its own process, at the
# lowest CPU priority, so its work on this 2-core box does not slow the MCP upstream or wrk.
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
cat > "$T/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Authorization"] = os.getenv("AUTH")
LUA
to_us() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} else print v }'; }
load() { AUTH="Bearer $TOKEN" wrk -t1 -c8 -d${1}s --latency -s "$T/post.lua" "http://127.0.0.1:$GW/mcp/bench"; }
p99() { to_us "$(echo "$1" | awk '$1=="99%" {print $2}')"; }
rps() { echo "$1" | awk '/Requests\/sec/ {print $2}'; }
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
storm=$(load 10)
echo "storm: $(rps "$storm") req/s, p99 $(p99 "$storm") us (during the first 10 s of the storm)"
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
