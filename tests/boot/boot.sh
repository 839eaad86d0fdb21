#!/bin/bash
# boot.sh IMAGE_DIR CONFIG.ign RESULTS_FILE [HOSTPORT...]
#
# Boots IMAGE_DIR/{vmlinuz,initrd.img,base.img} under qemu TCG (no KVM) on a qcow2
# overlay, always under `timeout`.
#   CONFIG.ign  an Ignition config passed via fw_cfg (opt/com.coreos/config) with
#               ignition.firstboot on the kernel command line; or "-" / "none" for a
#               subsequent boot of an already provisioned overlay (no fw_cfg, no
#               ignition.firstboot, no initrd networking).
#   RESULTS_FILE   second serial port (guest /dev/ttyS1) goes here (truncated).
#   HOSTPORT...    each host loopback port N is reachable from the guest ONLY via
#               guestfwd: the i-th (0-based) one as 10.0.2.(100+i):80. Use the form
#               GUESTIP:GUESTPORT=HOSTPORT to choose the guest side explicitly.
# Network: -netdev user,restrict=on => the guest reaches nothing but the slirp
# DHCP server and the guestfwd targets (no host, no internet, no 169.254.169.254).
#
# Environment (all optional):
#   OVERLAY=path.qcow2   overlay to use (default: RESULTS_FILE with .qcow2 suffix)
#   REUSE_OVERLAY=1      keep an existing overlay (second boot); default: recreate it
#                        for a firstboot, reuse it for CONFIG "-"
#   CONSOLE_LOG=path     guest ttyS0 (default: RESULTS_FILE.console)
#   BOOT_TIMEOUT=secs    hard limit for qemu (default 480)
#   GUESTFWD_MODE=cmd|chardev
#                        cmd (default): guestfwd=...-cmd:python3 guestfwd-relay.py PORT,
#                        qemu spawns one relay per guest connection, which connects
#                        to 127.0.0.1:PORT only. Any number of connections work.
#                        chardev: guestfwd=...-tcp:127.0.0.1:PORT. qemu opens ONE
#                        connection at startup (server must already listen) and it
#                        serves exactly one guest connection: fine for a single
#                        Ignition GET, useless for anything that connects twice.
#   GUEST_NET=a.b.c.0/24 the guest's network instead of slirp's 10.0.2.0/24 (e.g. 169.254.169.0/24,
#                        so that a guestfwd can put a metadata double at 169.254.169.254, the
#                        real address, and the guest's own routes decide what reaches it)
#   SMBIOS="type=0,vendor=Amazon EC2"  one -smbios option: how hwdb tells a cloud (IMDS_VENDOR)
#   QEMU_MEM (2048) QEMU_SMP (2) EXTRA_APPEND ("")
# Exit: 0 qemu exited by itself (guest powered off); 3 emergency/panic seen on the
# console (qemu killed early); 124 timeout; other: qemu's own failure.
set -euo pipefail
export LC_ALL=C

IMAGE_DIR=${1:?usage: boot.sh IMAGE_DIR CONFIG.ign|- RESULTS_FILE [HOSTPORT...]}
CONFIG=${2:?missing CONFIG.ign (or -)}
RESULTS=${3:?missing RESULTS_FILE}
shift 3
IMAGE_DIR=$(cd "$IMAGE_DIR" && pwd)
for f in vmlinuz initrd.img base.img; do
  [ -f "$IMAGE_DIR/$f" ] || { echo "boot.sh: missing $IMAGE_DIR/$f" >&2; exit 2; }
done

FIRSTBOOT=1
case "$CONFIG" in -|none|"") FIRSTBOOT=0 ;; esac
if [ "$FIRSTBOOT" = 1 ]; then
  [ -s "$CONFIG" ] || { echo "boot.sh: no such config $CONFIG" >&2; exit 2; }
  CONFIG=$(readlink -f "$CONFIG")
  if command -v ignition-validate >/dev/null; then
    ignition-validate "$CONFIG" || { echo "boot.sh: ignition-validate rejected $CONFIG" >&2; exit 2; }
  fi
fi

OVERLAY=${OVERLAY:-${RESULTS%.*}.qcow2}
CONSOLE_LOG=${CONSOLE_LOG:-$RESULTS.console}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-480}
GUESTFWD_MODE=${GUESTFWD_MODE:-cmd}
REUSE_OVERLAY=${REUSE_OVERLAY:-$([ "$FIRSTBOOT" = 1 ] && echo 0 || echo 1)}

if [ "$REUSE_OVERLAY" = 1 ] && [ -f "$OVERLAY" ]; then
  echo "boot.sh: reusing overlay $OVERLAY"
else
  rm -f "$OVERLAY"
  qemu-img create -q -f qcow2 -b "$IMAGE_DIR/base.img" -F raw "$OVERLAY"
fi

# --- restricted user network with one guestfwd per host service ---------------
RELAY=$(cd "$(dirname "$0")" && pwd)/guestfwd-relay.py
NETDEV="user,id=n0,restrict=on,ipv6=off"
[ -n "${GUEST_NET:-}" ] && NETDEV+=",net=$GUEST_NET"
SMBIOS_ARGS=()
[ -n "${SMBIOS:-}" ] && SMBIOS_ARGS=(-smbios "$SMBIOS")
i=0
for hp in "$@"; do
  if [[ "$hp" == *=* ]]; then gside=${hp%%=*}; hport=${hp##*=}; else gside="10.0.2.$((100+i)):80"; hport=$hp; fi
  [[ "$hport" =~ ^[0-9]+$ ]] || { echo "boot.sh: bad host port '$hp'" >&2; exit 2; }
  if [ "$GUESTFWD_MODE" = cmd ]; then
    # a comma would end the qemu option value; spaces split the argv (glib parsing)
    [ -f "$RELAY" ] && [[ "$RELAY" != *[,\ ]* ]] || { echo "boot.sh: missing relay or bad path: $RELAY" >&2; exit 2; }
    NETDEV+=",guestfwd=tcp:$gside-cmd:python3 $RELAY $hport"
  else
    NETDEV+=",guestfwd=tcp:$gside-tcp:127.0.0.1:$hport"
  fi
  echo "boot.sh: guest $gside -> host 127.0.0.1:$hport ($GUESTFWD_MODE)"
  i=$((i+1))
done

APPEND="root=LABEL=root rw console=ttyS0 ignition.platform.id=qemu systemd.journald.forward_to_console=1"
FWCFG=()
if [ "$FIRSTBOOT" = 1 ]; then
  APPEND+=" ignition.firstboot rd.neednet=1 ip=dhcp"
  FWCFG=(-fw_cfg "name=opt/com.coreos/config,file=$CONFIG")
fi
APPEND+=" ${EXTRA_APPEND:-}"

: > "$RESULTS"; : > "$CONSOLE_LOG"
QEMU=(qemu-system-x86_64 -accel tcg -cpu max -smp "${QEMU_SMP:-2}" -m "${QEMU_MEM:-2048}"
  -no-reboot -nographic -display none -monitor none -nodefaults
  -kernel "$IMAGE_DIR/vmlinuz" -initrd "$IMAGE_DIR/initrd.img" -append "$APPEND"
  "${FWCFG[@]}" "${SMBIOS_ARGS[@]}"
  -drive "file=$OVERLAY,if=virtio,format=qcow2"
  -netdev "$NETDEV" -device virtio-net-pci,netdev=n0
  -object rng-random,filename=/dev/urandom,id=rng0 -device virtio-rng-pci,rng=rng0
  -serial "file:$CONSOLE_LOG" -serial "file:$RESULTS")
echo "boot.sh: append: $APPEND"
echo "boot.sh: timeout $BOOT_TIMEOUT (firstboot=$FIRSTBOOT overlay=$OVERLAY)"

start=$(date +%s)
timeout --kill-after=15 "$BOOT_TIMEOUT" "${QEMU[@]}" </dev/null &
qpid=$!
rc=""
# Fail fast: an emergency shell or panic never powers off by itself.
while kill -0 "$qpid" 2>/dev/null; do
  if grep -qE 'You are in emergency mode|Entering emergency mode|Kernel panic - not syncing|Cannot open access to console, the root account is locked' "$CONSOLE_LOG" 2>/dev/null; then
    sleep 3   # let the console flush the reason
    echo "boot.sh: guest entered emergency mode / panicked; killing qemu" >&2
    kill "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
    rc=3
    break
  fi
  sleep 2
done
if [ -z "$rc" ]; then
  set +e; wait "$qpid"; rc=$?; set -e
fi
echo "boot.sh: qemu finished rc=$rc after $(( $(date +%s) - start ))s"
[ "$rc" = 124 ] && echo "boot.sh: TIMEOUT after ${BOOT_TIMEOUT}s" >&2
exit "$rc"
