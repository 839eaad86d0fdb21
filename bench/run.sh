#!/usr/bin/env bash
# Benchmark whole `bootsecrets run` processes against local moto + the IMDSv2 double.
#   bench/run.sh [--runs N]
# Uses the static release binary (what nodes run); builds it if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
[ -x /usr/bin/time ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release --target x86_64-unknown-linux-gnu
exec .venv-test/bin/python bench/bench.py target/x86_64-unknown-linux-gnu/release/bootsecrets "$@"
