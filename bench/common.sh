# Sourced by the loopback benchmarks and scripts/pgo.sh: a private temporary folder `T`, removed
# on exit together with every process listed in `pids`; the bench upstream's key; and
# `start_gateway`.
T=$(mktemp -d); chmod 700 "$T"
KEY=bench-upstream-key-0d2c9e
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$T"; }
trap cleanup EXIT
export SCOPEGATE_PASSPHRASE=${SCOPEGATE_PASSPHRASE:-bench-passphrase-not-secret}

# need_tools COMMAND[:DEBIAN_PACKAGE]...: installs what is missing (as root, with apt-get), or
# stops saying what is needed.
need_tools() {
  local spec
  for spec; do
    command -v "${spec%%:*}" >/dev/null && continue
    [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${spec#*:}" >/dev/null
    command -v "${spec%%:*}" >/dev/null || { echo "${spec%%:*} is needed (Debian: ${spec#*:})" >&2; exit 1; }
  done
}

# start_gateway BIN DIR PORT UPSTREAM_PORT [LISTENER_THREADS] ["VAR=value ..."]
# A data folder at DIR (SCOPEGATE_DATA_DIR is left pointing there) whose service `bench` is the
# upstream on UPSTREAM_PORT behind an API key held by user `bench`; `scopegate serve` on PORT
# (pid in GW_PID, output in DIR.out); an agent `wrk` of that user (its token in GW_TOKEN).
start_gateway() {
  local bin=$1 dir=$2 port=$3 up=$4 lt=${5:-0}
  local -a extra; read -ra extra <<< "${6:-}"
  export SCOPEGATE_DATA_DIR=$dir
  "$bin" init --kdf-memory-kib 19456 --kdf-iterations 2 --kdf-parallelism 1 >/dev/null
  cat > "$dir/scopegate.toml" <<CONF
listen = "127.0.0.1:$port"
[limits]
max_connections = 4096
max_streams_per_agent = 4096
listener_threads = $lt
[services.bench]
kind = "api_key"
mcp_url = "http://127.0.0.1:$up/mcp"
header = "X-API-Key"
CONF
  env "${extra[@]}" RUST_LOG=warn "$bin" serve > "$dir.out" 2>&1 & GW_PID=$!; pids+=($GW_PID)
  for _ in $(seq 1200); do grep -q "scopegate: ready" "$dir.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "scopegate: ready" "$dir.out" || { echo "$bin never became ready:" >&2; cat "$dir.out" >&2; exit 1; }
  "$bin" user add bench >/dev/null
  echo -n "$KEY" | "$bin" apikey set bench --user bench >/dev/null
  GW_TOKEN=$("$bin" agent add wrk --user bench 2>/dev/null)
}
