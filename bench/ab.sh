#!/usr/bin/env bash
# A/B of two Scopegate binaries or configurations on a noisy machine: both serve the same
# upstream at once, and short wrk runs alternate between them many times, so drift in what
# else the machine is doing hits both alike. Prints each side's requests/s and CPU per request
# (utime+stime of the whole process, from /proc) per round and in total, and in the end each
# side's CPU per request by thread (listener threads, the main runtime with the audit
# committer, the lifecycle runtime).
#   usage: A=path/to/scopegate B=path/to/scopegate [A_LT=n] [B_LT=n] [CONC=16] [SECS=2] \
#          [ROUNDS=10] bash bench/ab.sh
# (A and B default to target/release/scopegate; A_LT / B_LT set listener_threads; A_ENV / B_ENV
# are VAR=value words for that side's server, e.g. B_ENV=MIMALLOC_PURGE_DELAY=-1.)
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
REL=${CARGO_TARGET_DIR:-target}/release
A=$(realpath "${A:-$REL/scopegate}"); B=$(realpath "${B:-$REL/scopegate}")
CONC=${CONC:-16}; SECS=${SECS:-2}; ROUNDS=${ROUNDS:-10}
source bench/common.sh
need_tools wrk
[ -x "$REL/examples/bench_upstream" ] || cargo build --release --locked --example bench_upstream 2>&1 | tail -1
UP=19721
declare -A PID TOKEN
$REL/examples/bench_upstream $UP $KEY >/dev/null & pids+=($!)

start() { # side binary port threads "env" -> sets PID[side] and TOKEN[side]
  start_gateway "$2" "$T/$1" "$3" $UP "$4" "$5"
  PID[$1]=$GW_PID TOKEN[$1]=$GW_TOKEN
}
start A "$A" 19722 "${A_LT:-0}" "${A_ENV:-}"
start B "$B" 19723 "${B_LT:-0}" "${B_ENV:-}"

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# "name ticks" per thread name (the name may hold spaces; the fields after ")" do not).
by_thread() {
  for t in /proc/"$1"/task/*; do
    printf '%s\t%s\n' "$(cat "$t/comm")" "$(sed 's/.*) //' "$t/stat" | awk '{print $12+$13}')"
  done | awk -F'\t' '{sub(/-[0-9]*$/, "-N", $1); n[$1] += $2} END {for (k in n) print k "\t" n[k]}' | sort
}
hz=$(getconf CLK_TCK)
one() { # side port -> "requests ticks"
  local pid=${PID[$1]} token=${TOKEN[$1]}
  local b; b=$(ticks "$pid")
  local out; out=$(AUTH="Bearer $token" wrk -t$(( CONC < 2 ? 1 : 2 )) -c"$CONC" -d"${SECS}s" -s bench/post.lua "http://127.0.0.1:$2/mcp/bench")
  if echo "$out" | grep -qE "Non-2xx|Socket errors"; then echo "$1: failed requests; aborting" >&2; echo "$out" >&2; exit 1; fi
  echo "$(echo "$out" | awk '/requests in/ {print $1}') $(( $(ticks "$pid") - b ))"
}
by_thread "${PID[A]}" > "$T/A.threads0"; by_thread "${PID[B]}" > "$T/B.threads0"
echo "A=$A (listener_threads ${A_LT:-0})  B=$B (listener_threads ${B_LT:-0})  c=$CONC, ${SECS}s x $ROUNDS rounds each, alternating"
ta=0; tb=0; na=0; nb=0
for r in $(seq "$ROUNDS"); do
  # Alternate which side goes first, so neither always follows the other.
  if [ $((r % 2)) = 1 ]; then ra=$(one A 19722); rb=$(one B 19723); else rb=$(one B 19723); ra=$(one A 19722); fi
  set -- $ra; na=$((na + $1)); ta=$((ta + $2)); a_req=$1 a_t=$2
  set -- $rb; nb=$((nb + $1)); tb=$((tb + $2))
  awk -v r="$r" -v an="$a_req" -v at="$a_t" -v bn="$1" -v bt="$2" -v hz="$hz" -v s="$SECS" 'BEGIN {
    printf "round %2d  A %8.0f req/s %6.1f us/req   B %8.0f req/s %6.1f us/req\n", r, an/s, at*1e6/hz/an, bn/s, bt*1e6/hz/bn }'
done
awk -v na="$na" -v ta="$ta" -v nb="$nb" -v tb="$tb" -v hz="$hz" -v s="$SECS" -v R="$ROUNDS" 'BEGIN {
  a = ta*1e6/hz/na; b = tb*1e6/hz/nb
  printf "total     A %8.0f req/s %6.1f us/req   B %8.0f req/s %6.1f us/req   B/A cpu %.3f\n", na/s/R, a, nb/s/R, b, b/a }'
for side in A B; do
  n=$([ $side = A ] && echo "$na" || echo "$nb")
  by_thread "${PID[$side]}" | join -t$'\t' -a1 - "$T/$side.threads0" | awk -F'\t' -v n="$n" -v hz="$hz" -v s="$side" '
    { d = $2 - ($3 == "" ? 0 : $3); if (d > 0) printf "%s  %-22s %6.1f us/req\n", s, $1, d*1e6/hz/n }'
done
