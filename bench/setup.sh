#!/usr/bin/env bash
# What the benchmarks need, beyond what tests/setup.sh installs (moto, OpenBao, the IMDSv2 double's
# Python): GNU time, and the venv .venv-bench with the AWS CLI and matplotlib (bench/requirements.txt).
# Idempotent and quick when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
[ -x /usr/bin/time ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
command -v curl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
venv=.venv-bench
stamp=$venv/.requirements.sha256
want=$(sha256sum bench/requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bench setup: creating $venv from bench/requirements.txt" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
  echo "$want" > "$stamp"
fi
