#!/usr/bin/env bash
# The demo: starts a real server (moto by default; --backend localstack or --backend openbao) and,
# for AWS, the IMDSv2 double, seeds two secrets, runs bootsecrets into a tmpfs directory under
# /dev/shm and lists what it wrote, with modes and owners. --keep leaves that directory.
set -euo pipefail
cd "$(dirname "$0")/.."
# moto and OpenBao need only the Python venv; LocalStack its own venv (Python 3.12+) as well.
case " $* " in
  *" localstack "*|*"--backend=localstack"*) tests/setup.sh ;;
  *) tests/setup.sh --demo ;;
esac
cargo build --quiet
exec .venv-test/bin/python examples/demo.py target/debug/bootsecrets "$@"
