#!/usr/bin/env bash
# A profile-guided release build of `scopegate` (rustc's PGO, LLVM's instrumentation):
#   1. builds an instrumented binary (target/pgo-gen),
#   2. runs the proxy's hot path on loopback with it: the bench upstream (examples/bench_upstream)
#      behind it, wrk sending the benchmark's tools/call at 1, 16 and 64 clients, plus a few
#      session-era requests (a tools/list, a GET stream, a DELETE) and an unknown agent's
#      refusal, so those branches are seen too,
#   3. merges the profile and builds the release binary with it: target/pgo/release/scopegate.
# The result behaves exactly as `cargo build --release` does (same code, same checks); only the
# layout and inlining of the code follow the measured hot path (about 15% less CPU per
# proxied call on the 2-core bench machine, bench/ab.sh). usage: bash scripts/pgo.sh [seconds per concurrency, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
rustup component add llvm-tools >/dev/null 2>&1 || true
SYSROOT=$(rustc --print sysroot)
PROFDATA=$(find "$SYSROOT" -name llvm-profdata -type f | head -1)
[ -x "$PROFDATA" ] || { echo "llvm-profdata not found: rustup component add llvm-tools" >&2; exit 1; }
source bench/common.sh
need_tools wrk curl
DATA=$PWD/target/pgo-data

echo "1/3 instrumented build (target/pgo-gen)"
CARGO_TARGET_DIR=target/pgo-gen RUSTFLAGS="-Cprofile-generate=$DATA" \
  cargo build --release --locked --bin scopegate 2>&1 | tail -1
REL=${CARGO_TARGET_DIR:-target}/release
cargo build --release --locked --example bench_upstream 2>&1 | tail -1
# Build scripts ran instrumented too: only the server's own run counts.
rm -rf "$DATA"; mkdir -p "$DATA"

echo "2/3 training run (${SECS}s at each of 1, 16 and 64 clients)"
UP=19741; GW=19742
$REL/examples/bench_upstream $UP $KEY >/dev/null & pids+=($!)
start_gateway target/pgo-gen/release/scopegate "$T/data" $GW $UP
URL=http://127.0.0.1:$GW/mcp/bench
for c in 1 16 64; do
  HDR_NAME=Authorization HDR_VALUE="Bearer $GW_TOKEN" \
    wrk -t$(( c < 2 ? 1 : 2 )) -c$c -d${SECS}s -s bench/post.lua "$URL" | grep Requests/sec
done
# The session era's other requests, and refusals, a few times each.
for _ in $(seq 50); do
  curl -s -m 2 -o /dev/null -H "Authorization: Bearer $GW_TOKEN" -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2025-06-18' \
    -d '{"jsonrpc":"2.0","id":1,"method":"tools/list"}' "$URL"
  curl -s -m 2 -o /dev/null -H "Authorization: Bearer $GW_TOKEN" -H 'Accept: text/event-stream' "$URL"
  curl -s -m 2 -o /dev/null -X DELETE -H "Authorization: Bearer $GW_TOKEN" -H 'Mcp-Session-Id: none' "$URL"
  curl -s -m 2 -o /dev/null -H 'Authorization: Bearer sga_unknown' -d '{}' "$URL"
done
# A clean stop writes the profile (at exit).
kill -TERM "$GW_PID"; wait "$GW_PID" || true
ls "$DATA"/*.profraw >/dev/null 2>&1 || { echo "no profile was written" >&2; exit 1; }
"$PROFDATA" merge -o "$DATA/merged.profdata" "$DATA"/*.profraw

echo "3/3 optimised build (target/pgo)"
CARGO_TARGET_DIR=target/pgo RUSTFLAGS="-Cprofile-use=$DATA/merged.profdata" \
  cargo build --release --locked --bin scopegate 2>&1 | tail -1
echo "built target/pgo/release/scopegate"
