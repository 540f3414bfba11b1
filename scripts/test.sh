#!/usr/bin/env bash
# The project's test command (README.md "Run the tests"; .ci/run calls exactly this).
# Installs what the tests need on a fresh machine, then: format check, clippy, every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian tools some tests drive: systemd-analyze (unit check), setpriv (other-uid socket
# check). Tests that need them skip with a note when they cannot be had.
need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
if [ "${#need[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test.sh: installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || echo "test.sh: could not install ${need[*]}; dependent tests will skip"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# The fuzz targets must keep compiling (their own workspace; stable can type-check them).
cargo check --locked --manifest-path fuzz/Cargo.toml --bins
cargo test --locked
