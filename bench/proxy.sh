#!/usr/bin/env bash
# Proxy benchmark on loopback (issue 4): the same MCP tools/call POST sent
#   1. to the upstream directly,
#   2. through nginx as a plain header-injecting reverse proxy (keepalive pool),
#   3. through Scopegate (agent token in, the user's API key out, policy, audit),
#   4. through a bare hyper relay (examples/bench_hyper_relay.rs: Scopegate's two hyper hops
#      and nothing else), the floor under Scopegate's proxy as built on hyper,
# at concurrency 1, 16 and 64, with wrk. Prints requests/s, p50/p99 latency, the proxy's CPU
# per request (from /proc utime+stime) and its RSS. Everything shares this machine's cores
# with wrk, so compare rows, not absolutes.   usage: [ROUNDS=N] bash bench/proxy.sh [seconds per run]
# CONCS="1 16": only those concurrencies. PERF=1: a perf profile of Scopegate (PERF_SIDE=nginx or
# hyper: of that proxy) at c=PERF_CONC (16) instead; SYSCALLS=1: system calls and context
# switches per request of each proxy at c=SYS_CONC (16) (perf's software counters: no hardware needed).
set -euo pipefail
cd "$(dirname "$0")/.."
REL=${CARGO_TARGET_DIR:-target}/release   # a profiling build may live elsewhere
DUR=${1:-10}
source bench/common.sh
need_tools wrk nginx:nginx-light
# SCOPEGATE_BIN=path benches that build of Scopegate (e.g. scripts/pgo.sh's) instead of this one.
sg_build=(--bin scopegate); [ -n "${SCOPEGATE_BIN:-}" ] && sg_build=()
cargo build --release --locked "${sg_build[@]}" --example bench_upstream --example bench_hyper_relay 2>&1 | tail -1
UP=19701; NG=19702; GW=19703; HR=19704

$REL/examples/bench_upstream $UP $KEY >/dev/null & pids+=($!)
$REL/examples/bench_hyper_relay $HR "http://127.0.0.1:$UP/mcp" $KEY >/dev/null & HR_PID=$!; pids+=($HR_PID)

# nginx's workers: 1 by default (one event loop); NGINX_WORKERS=auto gives one per core, as
# Scopegate's listener threads are by default (listener_threads = 0).
NGINX_WORKERS=${NGINX_WORKERS:-1}
cat > "$T/nginx.conf" <<CONF
worker_processes $NGINX_WORKERS; daemon off; pid $T/nginx.pid; error_log $T/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$NG;
    location / {
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Authorization ""; proxy_set_header X-API-Key $KEY; proxy_buffering off;
    }
  }
}
CONF
nginx -c "$T/nginx.conf" -p "$T" & pids+=($!)

SG=$(realpath "${SCOPEGATE_BIN:-$REL/scopegate}")
start_gateway "$SG" "$T/data" $GW $UP
sleep 0.5
# Every worker, as a comma list: CPU and RSS are summed over them.
NGINX_WORKER=$(pgrep -d, -P "$(cat "$T/nginx.pid")")


ticks() { local IFS=,; for p in $1; do cat "/proc/$p/stat"; done | awk '{a += $14+$15; k += $15} END {print a, k}'; } # all, kernel
rss() { local IFS=,; for p in $1; do cat "/proc/$p/status"; done | awk '/VmRSS/ {m += $2} END {print m/1024}'; }
hz=$(getconf CLK_TCK)
to_us() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} else print v }'; }

echo "scopegate: $SG; nginx: $NGINX_WORKERS worker(s)"
printf "%-10s %4s %10s %9s %9s %12s %8s %8s\n" target conc req/s p50_us p99_us cpu_us/req "(kernel)" rss_MiB
run() { # name conc url pid header value; prints a row and keeps "name conc rps p50 cpu" in $T/rows
  local name=$1 c=$2 url=$3 pid=$4
  local t=$(( c < 2 ? 1 : 2 ))
  local before="0 0"; [ "$pid" != "-" ] && before=$(ticks "$pid")
  out=$(HDR_NAME=$5 HDR_VALUE=$6 wrk -t$t -c$c -d${DUR}s --latency -s bench/post.lua "$url")
  local after="0 0"; [ "$pid" != "-" ] && after=$(ticks "$pid")
  local rps reqs p50 p99 non2xx
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  p50=$(to_us "$(echo "$out" | awk '$1=="50%" {print $2}')")
  p99=$(to_us "$(echo "$out" | awk '$1=="99%" {print $2}')")
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  [ -n "$non2xx" ] && { echo "$name: $non2xx non-2xx responses; aborting" >&2; [ "$name" = scopegate ] && tail -5 "$T/data.out" >&2; exit 1; }
  local cpu="-" sys="-" mem="-"
  if [ "$pid" != "-" ]; then
    cpu=$(awk -v a="${after% *}" -v b="${before% *}" -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.1f", (a-b)*1000000/hz/n }')
    sys=$(awk -v a="${after#* }" -v b="${before#* }" -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.1f", (a-b)*1000000/hz/n }')
    mem=$(rss "$pid")
  fi
  printf "%-10s %4s %10s %9s %9s %12s %8s %8s\n" "$name" "$c" "$rps" "$p50" "$p99" "$cpu" "$sys" "$mem"
  echo "$name $c $rps $p50 $cpu" >> "$T/rows"
}
if [ -n "${PERF:-}" ]; then # PERF=1: profile Scopegate at concurrency PERF_CONC (16) instead of the table
  case ${PERF_SIDE:-scopegate} in # PERF_SIDE=nginx or hyper profiles that proxy instead
    nginx) pp=$NGINX_WORKER url=http://127.0.0.1:$NG/mcp ;;
    hyper) pp=$HR_PID url=http://127.0.0.1:$HR/mcp ;;
    *) pp=$GW_PID url=http://127.0.0.1:$GW/mcp/bench ;;
  esac
  perf record -F 999 ${PERF_ARGS:--g} -p "$pp" -o "${PERF_OUT:-perf.data}" -- sleep "$DUR" >/dev/null 2>&1 &
  perf_pid=$!
  HDR_NAME=Authorization HDR_VALUE="Bearer $GW_TOKEN" wrk -t$(( ${PERF_CONC:-16} < 2 ? 1 : 2 )) -c${PERF_CONC:-16} -d${DUR}s -s bench/post.lua "$url" | grep Requests/sec
  wait "$perf_pid"; exit 0 # (a bare wait would wait for the servers too)
fi
if [ -n "${SYSCALLS:-}" ]; then # SYSCALLS=1: system calls and context switches per request, each proxy at c=SYS_CONC (16)
  sc=${SYS_CONC:-16}
  for side in "nginx http://127.0.0.1:$NG/mcp $NGINX_WORKER Bearer-unused" \
              "scopegate http://127.0.0.1:$GW/mcp/bench $GW_PID Bearer-$GW_TOKEN" \
              "hyper http://127.0.0.1:$HR/mcp $HR_PID Bearer-unused"; do
    set -- $side
    perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$3" -o "$T/stat" -- sleep "$DUR" &
    sp=$!
    n=$(HDR_NAME=Authorization HDR_VALUE="${4/-/ }" wrk -t$(( sc < 2 ? 1 : 2 )) -c$sc -d${DUR}s -s bench/post.lua "$2" | awk '/requests in/ {print $1}')
    wait "$sp"
    awk -F, -v n="$n" -v name="$1" '/raw_syscalls/ {s=$1} /context-switches/ {c=$1}
      END {printf "%-10s %8d requests  %5.2f syscalls/req  %5.3f context switches/req\n", name, n, s/n, c/n}' "$T/stat"
  done
  exit 0
fi
# Interleaved per concurrency, so drift on a shared machine hits all four alike; ROUNDS=N
# repeats the whole table and the summary takes each cell's median over the rounds.
for round in $(seq "${ROUNDS:-1}"); do
  [ "${ROUNDS:-1}" -gt 1 ] && echo "round $round"
  for c in ${CONCS:-1 16 64}; do
    run direct    $c "http://127.0.0.1:$UP/mcp"       -               X-API-Key     "$KEY"
    run nginx     $c "http://127.0.0.1:$NG/mcp"       "$NGINX_WORKER" Authorization "Bearer unused"
    run scopegate $c "http://127.0.0.1:$GW/mcp/bench" "$GW_PID"       Authorization "Bearer $GW_TOKEN"
    run hyper     $c "http://127.0.0.1:$HR/mcp"       "$HR_PID"       Authorization "Bearer unused"
  done
done
echo
echo "against nginx (targets: throughput >= 0.9x, CPU/req <= 1.5x, added p50 at c=1 <= nginx's + 10 us)"
[ "${ROUNDS:-1}" -gt 1 ] && echo "(medians of ${ROUNDS} rounds)"
awk 'function med(k, field,   i, j, n, t, v) { n = cnt[k]; for (i = 1; i <= n; i++) v[i] = val[k, field, i]
       for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
       return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }
  { k = $1 SUBSEP $2; n = ++cnt[k]; val[k, 3, n] = $3; val[k, 4, n] = $4; val[k, 5, n] = $5 }
  END {
    for (k in cnt) { rps[k] = med(k, 3); p50[k] = med(k, 4); cpu[k] = med(k, 5) }
    for (i = 1; i <= 3; i++) { c = (i == 1 ? 1 : (i == 2 ? 16 : 64)); if (!rps["nginx",c]) continue
      printf "c=%-3s throughput %.2fx   cpu/req %.2fx   (bare hyper relay: %.2fx, %.2fx)\n", c, rps["scopegate",c]/rps["nginx",c], cpu["scopegate",c]/cpu["nginx",c], rps["hyper",c]/rps["nginx",c], cpu["hyper",c]/cpu["nginx",c] }
    if (p50["direct",1]) printf "added p50 at c=1: nginx %d us, scopegate %d us, bare hyper relay %d us\n", p50["nginx",1]-p50["direct",1], p50["scopegate",1]-p50["direct",1], p50["hyper",1]-p50["direct",1]
  }' "$T/rows"
echo "audit entries written: $($SG audit verify | awk '{print $4}')"
