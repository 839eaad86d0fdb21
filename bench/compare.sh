#!/usr/bin/env bash
# bootsecrets against the curl floor and an awscli unit (AWS), and against the curl floor (Vault):
# wall, CPU and peak RSS, N = 1, 10, 100, 1000 secrets, round trips 0, 20 and 80 ms.
#   bench/compare.sh [--backend aws|vault|both] [--n LIST] [--rtt LIST] [--pairs P] [--binary PATH] ...
# (bench/compare.py --help for every option). Builds the static release binary (what nodes run)
# unless --binary is given. Waits for an idle machine before each block. Results: a Markdown table
# on stdout, every run in target/bench/compare.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bench/setup.sh
args=("$@")
if [[ " $* " != *" --binary "* ]]; then
  RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --locked --release --target x86_64-unknown-linux-gnu
  args+=(--binary target/x86_64-unknown-linux-gnu/release/bootsecrets)
fi
exec .venv-test/bin/python bench/compare.py "${args[@]}"
