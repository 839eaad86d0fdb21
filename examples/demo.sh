#!/usr/bin/env bash
# The demo: starts a real moto server and the IMDSv2 double, seeds two secrets, runs bootsecrets
# into a tmpfs directory under /dev/shm and lists what it wrote, with modes and owners.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
cargo build --quiet
exec .venv-test/bin/python examples/demo.py target/debug/bootsecrets "$@"
