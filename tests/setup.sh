#!/usr/bin/env bash
# Installs what the tests and the demo need into the repository (nothing system-wide beyond what
# apt installs): the Python venv with moto and pytest. Idempotent and quick when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: ignition-validate (Ignition 2.14) for the snippet tests; systemd for
# systemd-analyze; with --boot, what the qemu first-boot test needs. Installed only when missing.
boot=0
[ "${1:-}" = "--boot" ] && boot=1
need=()
command -v ignition-validate >/dev/null || need+=(ignition)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v setpriv >/dev/null || need+=(util-linux)
if [ $boot = 1 ]; then
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
fi
updated=0
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need[*]}" >&2
  apt-get update -qq && updated=1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# qemu: bookworm's qemu-system-x86 conflicts with the machine's backports qemu-utils, so it comes
# from bookworm-backports too.
if [ $boot = 1 ] && ! command -v qemu-system-x86_64 >/dev/null; then
  list=/etc/apt/sources.list.d/bookworm-backports.list
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" > "$list"
    updated=0
  fi
  [ $updated = 1 ] || apt-get update -qq
  echo "setup: apt-get install -t bookworm-backports qemu-system-x86" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -t bookworm-backports qemu-system-x86 >/dev/null
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
