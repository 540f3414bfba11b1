#!/usr/bin/env bash
# Memory with many stored connections (issue 4): for each N, a fresh data folder is seeded with
# N users and API-key connections through the real store and vault code
# (examples/seed_connections.rs), then `scopegate serve` starts on it and proxies tool calls
# for one of those users with wrk. Prints start-up time, RSS when idle, RSS after the load and
# after a /metrics scrape, and the files' sizes. redb's page cache is capped (durable.rs), and
# nothing on the request path loads all connections, so RSS should not grow with N.
#   usage: bash bench/rss.sh [N ...]     (default: 1000 1000000; 1M takes about a minute and ~0.9 GB of disk)
set -euo pipefail
cd "$(dirname "$0")/.."
REL=${CARGO_TARGET_DIR:-target}/release   # a profiling build may live elsewhere
NS=("$@"); [ ${#NS[@]} -eq 0 ] && NS=(1000 1000000)
cargo build --release --locked --bin scopegate --example bench_upstream --example seed_connections 2>&1 | tail -1
source bench/common.sh
need_tools wrk curl bc
UP=19711; GW=19713
$REL/examples/bench_upstream $UP $KEY >/dev/null & pids+=($!)
SG=$REL/scopegate
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
printf "%-9s %9s %9s %10s %10s %12s %9s %9s\n" N seed_s start_s idle_MiB load_MiB metrics_MiB store_MB vault_MB
for N in "${NS[@]}"; do
  export SCOPEGATE_DATA_DIR=$T/data-$N
  $SG init --kdf-memory-kib 19456 --kdf-iterations 2 --kdf-parallelism 1 >/dev/null
  printf 'listen = "127.0.0.1:%s"\n[services.bench]\nkind = "api_key"\nmcp_url = "http://127.0.0.1:%s/mcp"\nheader = "X-API-Key"\n' $GW $UP > "$SCOPEGATE_DATA_DIR/scopegate.toml"
  s0=$(date +%s.%N)
  $REL/examples/seed_connections "$SCOPEGATE_DATA_DIR" bench "$N" "$KEY" 2>/dev/null
  s1=$(date +%s.%N)
  RUST_LOG=warn $SG serve > "$T/sg-$N.out" 2>&1 & sg=$!; pids+=($sg)
  for _ in $(seq 6000); do grep -q "scopegate: ready" "$T/sg-$N.out" 2>/dev/null && break; sleep 0.05; done
  s2=$(date +%s.%N)
  sleep 1; idle=$(rss $sg)
  TOKEN=$($SG agent add wrk --user u0 2>/dev/null)
  AUTH="Bearer $TOKEN" wrk -t2 -c16 -d5s -s bench/post.lua "http://127.0.0.1:$GW/mcp/bench" > "$T/wrk-$N" 
  grep -q "Non-2xx" "$T/wrk-$N" && { echo "non-2xx answers at N=$N" >&2; cat "$T/wrk-$N" >&2; exit 1; }
  load=$(rss $sg)
  curl -fsS "http://127.0.0.1:$GW/metrics" | grep -q 'scopegate_connections{status="active"} '"$N"
  met=$(rss $sg)
  printf "%-9s %9.1f %9.1f %10s %10s %12s %9.0f %9.0f\n" "$N" "$(echo "$s1 - $s0" | bc)" "$(echo "$s2 - $s1" | bc)" \
    "$idle" "$load" "$met" "$(du -m "$SCOPEGATE_DATA_DIR/scopegate.redb" | cut -f1)" "$(du -m "$SCOPEGATE_DATA_DIR/secrets.redb" | cut -f1)"
  kill $sg; wait $sg 2>/dev/null || true
  rm -rf "$SCOPEGATE_DATA_DIR"
done
