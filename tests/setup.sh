#!/usr/bin/env bash
# Installs what the tests and the demo need into the repository (nothing system-wide beyond what
# apt installs): the Python venv with moto and pytest. Idempotent and quick when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: ignition-validate (Ignition 2.14) for the snippet tests; systemd for
# systemd-analyze. Installed only when missing.
need=()
command -v ignition-validate >/dev/null || need+=(ignition)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v setpriv >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

venv=.venv-test
req=tests/requirements.txt
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating $venv from $req" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi
