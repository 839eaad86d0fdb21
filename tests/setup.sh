#!/usr/bin/env bash
# Installs what the tests and the demo need into the repository (nothing system-wide beyond what
# apt installs): the Python venv .venv-test (moto, OpenBao, pytest and the vendors' clients) and
# .venv-localstack (LocalStack). Idempotent and quick when up to date.
#   tests/setup.sh          what the tests need
#   tests/setup.sh --boot   and what the qemu first-boot test needs
#   tests/setup.sh --demo   only .venv-test (moto, OpenBao): no package install, no root, no
#                           LocalStack (the demo's default backends need none of them)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: ignition-validate (Ignition 2.14) for the snippet tests; systemd for
# systemd-analyze; iproute2 for ip netns; with --boot, what the qemu first-boot test needs.
# Installed only when missing.
boot=0
demo=0
case "${1:-}" in
  --boot) boot=1 ;;
  --demo) demo=1 ;;
  "") ;;
  *) echo "usage: tests/setup.sh [--boot|--demo]" >&2; exit 2 ;;
esac
need=()
command -v ignition-validate >/dev/null || need+=(ignition)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v setpriv >/dev/null || need+=(util-linux)
# The shells whose completion scripts the CLI tests parse, and man for the manual page.
command -v zsh >/dev/null || need+=(zsh)
command -v fish >/dev/null || need+=(fish)
command -v man >/dev/null || need+=(man-db)
command -v ip >/dev/null || need+=(iproute2)  # network namespaces for the vendors' clients' tests
if [ $boot = 1 ]; then
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
  # The release's sysext image (release/build.sh installs it too) and the boot test's variant of it.
  command -v mksquashfs >/dev/null || need+=(squashfs-tools)
fi
[ $demo = 1 ] && need=()
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

# .venv-test: the test servers and runner (tests/requirements.txt) and the vendors' clients that
# judge the doubles (tests/requirements-vendors.txt), resolved together.
venv=.venv-test
reqs=(tests/requirements.txt tests/requirements-vendors.txt)
stamp="$venv/.requirements.sha256"
want=$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating $venv from ${reqs[*]}" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${reqs[@]/#/-r}"
  echo "$want" > "$stamp"
fi

[ $demo = 1 ] && exit 0

# .venv-localstack: LocalStack, in a venv of its own (its pins clash with moto's). It needs
# Python 3.12 or newer (see tests/requirements-localstack.txt): the first of python3.13 and
# python3.12 on PATH, then pyenv's, else setup fails here, saying so.
ls_venv=.venv-localstack
ls_req=tests/requirements-localstack.txt
ls_python=
for c in python3.13 python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3 \
         "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3; do
  if p=$(command -v "$c" 2>/dev/null) && "$p" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    ls_python=$p
    break
  fi
done
if [ -z "$ls_python" ]; then
  echo "setup: LocalStack (localstack-core 2026.3.0) needs Python 3.12 or newer: none found" \
       "(python3.13, python3.12, pyenv's versions)" >&2
  exit 1
fi
ls_want=$( { cat "$ls_req"; "$ls_python" --version; } | sha256sum | cut -d' ' -f1)
ls_stamp="$ls_venv/.requirements.sha256"
if [ ! -x "$ls_venv/bin/python" ] || [ "$(cat "$ls_stamp" 2>/dev/null)" != "$ls_want" ]; then
  echo "setup: creating $ls_venv from $ls_req with $("$ls_python" --version)" >&2
  rm -rf "$ls_venv"
  "$ls_python" -m venv "$ls_venv"
  "$ls_venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$ls_req"
  echo "$ls_want" > "$ls_stamp"
fi
