#!/usr/bin/env bash
# A profile-guided release build of `scopegate` (rustc's PGO, LLVM's instrumentation):
#   1. builds an instrumented binary (target/pgo-gen),
#   2. runs the proxy's hot path on loopback with it: the bench upstream (examples/bench_upstream)
#      behind it, wrk sending the benchmark's tools/call at 1, 16 and 64 clients, plus a
#      stateful session (initialize, a tools/list, the GET stream refused, a DELETE) so those
#      branches are seen too,
#   3. merges the profile and builds the release binary with it: target/pgo/release/scopegate.
# The result behaves exactly as `cargo build --release` does (same code, same checks); only the
# layout and inlining of the code follow the measured hot path. Measured gain: see README
# ("Benchmarks"). usage: bash scripts/pgo.sh [seconds per concurrency, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
rustup component add llvm-tools >/dev/null 2>&1 || true
SYSROOT=$(rustc --print sysroot)
PROFDATA=$(find "$SYSROOT" -name llvm-profdata -type f | head -1)
[ -x "$PROFDATA" ] || { echo "llvm-profdata not found: rustup component add llvm-tools" >&2; exit 1; }
for tool in wrk; do
  command -v "$tool" >/dev/null || { [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
done
ROOT=$PWD
DATA=$ROOT/target/pgo-data

echo "1/3 instrumented build (target/pgo-gen)"
CARGO_TARGET_DIR=target/pgo-gen RUSTFLAGS="-Cprofile-generate=$DATA" \
  cargo build --release --locked --bin scopegate 2>&1 | tail -1
REL=${CARGO_TARGET_DIR:-target}/release
cargo build --release --locked --example bench_upstream 2>&1 | tail -1
# Build scripts ran instrumented too: only the server's own run counts.
rm -rf "$DATA"; mkdir -p "$DATA"

echo "2/3 training run (${SECS}s at each of 1, 16 and 64 clients)"
source bench/common.sh
UP=19741; GW=19742
$REL/examples/bench_upstream $UP $KEY >/dev/null & pids+=($!)
SG=target/pgo-gen/release/scopegate
start_gateway "$SG" "$T/data" $GW $UP
TOKEN=$GW_TOKEN SG_PID=$GW_PID
URL=http://127.0.0.1:$GW/mcp/bench
for c in 1 16 64; do
  HDR_NAME=Authorization HDR_VALUE="Bearer $TOKEN" \
    wrk -t$(( c < 2 ? 1 : 2 )) -c$c -d${SECS}s -s bench/post.lua "$URL" | grep Requests/sec
done
# The session era's other requests, and refusals, a few times each.
for _ in $(seq 50); do
  curl -s -m 2 -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2025-06-18' \
    -d '{"jsonrpc":"2.0","id":1,"method":"tools/list"}' "$URL"
  curl -s -m 2 -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Accept: text/event-stream' "$URL"
  curl -s -m 2 -o /dev/null -X DELETE -H "Authorization: Bearer $TOKEN" -H 'Mcp-Session-Id: none' "$URL"
  curl -s -m 2 -o /dev/null -H 'Authorization: Bearer sga_unknown' -d '{}' "$URL"
done
# A clean stop writes the profile (at exit).
kill -TERM "$SG_PID"; wait "$SG_PID" || true
ls "$DATA"/*.profraw >/dev/null 2>&1 || { echo "no profile was written" >&2; exit 1; }
"$PROFDATA" merge -o "$DATA/merged.profdata" "$DATA"/*.profraw

echo "3/3 optimised build (target/pgo)"
CARGO_TARGET_DIR=target/pgo RUSTFLAGS="-Cprofile-use=$DATA/merged.profdata" \
  cargo build --release --locked --bin scopegate 2>&1 | tail -1
echo "built target/pgo/release/scopegate"
