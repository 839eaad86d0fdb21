#!/bin/bash
# build-image.sh OUTDIR
# Builds a Debian bookworm rootfs (mmdebstrap, minbase) with dracut + Ignition,
# extracts vmlinuz/initrd.img and makes OUTDIR/base.img (raw ext4, label root, 2G)
# with mkfs.ext4 -d (no loop mounts). Needs root, mmdebstrap, e2fsprogs >= 1.43.
# Non-interactive; prints the wall time of each step.
set -euo pipefail
export LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive

OUTDIR=${1:?usage: build-image.sh OUTDIR}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
IMG_SIZE=${IMG_SIZE:-2G}
# systemd-resolved is NOT needed: networkd does DHCP without it (it only logs that
# it cannot hand DNS to resolved). The guest has no DNS anyway (restrict=on).
# ca-certificates: node images ship the CA roots (HTTPS backends verify servers with them).
PACKAGES=${PACKAGES:-systemd-sysv,udev,dbus,linux-image-amd64,dracut,dracut-network,ignition,curl,procps,policycoreutils,iproute2,ca-certificates}
APTOPTS=()
case "$SUITE" in
  sid|unstable)
    # systemd 261+ ships the metadata daemon (systemd-imdsd, its lock and systemd-imds-import)
    # as its own package.
    PACKAGES+=",systemd-imds"
    # The registry's sid snapshot is older than its Release file's Valid-Until.
    APTOPTS=(--aptopt='Acquire::Check-Valid-Until "false"') ;;
esac
# Enabled in the image (noisy units are disabled, never masked: presets may enable later).
NOISY_UNITS="systemd-network-generator.service systemd-pstore.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer getty@tty1.service"

[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }
for t in mmdebstrap mkfs.ext4 truncate; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
ROOTFS=$OUTDIR/rootfs
T0=$(date +%s)
step() { local s=$(( $(date +%s) - $1 )); printf '[build-image] %-28s %4ds\n' "$2" "$s"; }

# ---- 1. rootfs --------------------------------------------------------------
t=$(date +%s)
rm -rf "$ROOTFS"
# setup hook: dracut config must exist before linux-image-amd64 triggers dracut.
# customize hook: selinux workaround, machine-id, networkd, disabled noisy units.
mmdebstrap --variant=minbase --mode=root --format=directory "${APTOPTS[@]}" \
  --include="$PACKAGES" \
  --setup-hook='mkdir -p "$1/etc/dracut.conf.d" && cat > "$1/etc/dracut.conf.d/90-ignition.conf" <<EOF
hostonly="no"
add_dracutmodules+=" ignition "
add_drivers+=" qemu_fw_cfg virtio_net virtio_blk virtio_pci ext4 "
EOF' \
  --customize-hook='mkdir -p "$1/etc/selinux/none/contexts/files" && printf "SELINUX=disabled\nSELINUXTYPE=none\n" > "$1/etc/selinux/config" && : > "$1/etc/selinux/none/contexts/files/file_contexts"' \
  --customize-hook='rm -f "$1/var/lib/dbus/machine-id"; echo bootsecrets-test > "$1/etc/hostname"; printf "127.0.0.1 localhost\n127.0.1.1 bootsecrets-test\n" > "$1/etc/hosts"; printf "LABEL=root / ext4 defaults 0 1\n" > "$1/etc/fstab"' \
  --customize-hook='mkdir -p "$1/etc/systemd/network" && printf "[Match]\nDriver=virtio_net\n\n[Network]\nDHCP=ipv4\nIPv6AcceptRA=no\nLinkLocalAddressing=no\n" > "$1/etc/systemd/network/20-virtio.network"' \
  --customize-hook='chroot "$1" systemctl enable systemd-networkd.service systemd-networkd-wait-online.service' \
  --customize-hook="chroot \"\$1\" systemctl disable $NOISY_UNITS || true" \
  --customize-hook='mkdir -p "$1/etc/systemd/system-preset" && printf "%s\n" "# First boot (machine-id \"uninitialized\") runs preset-all in enable-only mode." "# Debian ships no catch-all preset, so every unit with an [Install] section" "# would be enabled; like Fedora CoreOS/Flatcar, default to disable." "disable *" > "$1/etc/systemd/system-preset/99-default-disable.preset"' \
  --customize-hook='printf "%s\n" "# 90-systemd.preset would enable this; in this image it only adds noise:" "disable getty@.service" > "$1/etc/systemd/system-preset/10-bootsecrets-test.preset"' \
  --customize-hook='d="$1/etc/systemd/system/systemd-network-generator.service.d"; mkdir -p "$d" && printf "%s\n" "# The dracut initrd already rendered ip= into /run/systemd/network (kept across" "# switch-root); running the generator again fails (\"91-default.network already" "# exists\") and marks the system degraded. Preset-all re-enables it through" "# systemd-networkd.service Also=, so disabling is not enough: skip it instead." "[Unit]" "ConditionPathExistsGlob=!/run/systemd/network/*" > "$d/10-after-dracut.conf"' \
  --customize-hook="chroot \"\$1\" sh -c 'lsinitrd /boot/initrd.img-*' > '$OUTDIR/initrd.list'" \
  "$SUITE" "$ROOTFS" "$MIRROR"
step "$t" "mmdebstrap (rootfs+dracut)"

# mmdebstrap empties /etc/machine-id during its own cleanup, AFTER the customize
# hooks; an empty file is not "first boot" for systemd (no preset-all, so Ignition's
# enabled units never get enabled). Write "uninitialized" here, after mmdebstrap.
echo uninitialized > "$ROOTFS/etc/machine-id"
: > "$ROOTFS/etc/resolv.conf"    # do not ship the build host's resolver config
grep -qx uninitialized "$ROOTFS/etc/machine-id"

# ---- 2. kernel + initramfs ---------------------------------------------------
t=$(date +%s)
KVER=$(ls "$ROOTFS/lib/modules" | sort -V | tail -n1)
cp "$ROOTFS/boot/vmlinuz-$KVER" "$OUTDIR/vmlinuz"
cp "$ROOTFS/boot/initrd.img-$KVER" "$OUTDIR/initrd.img"
# sanity: the initramfs must contain the ignition binary and the networkd handler
for f in usr/bin/ignition ignition-fetch.service systemd-networkd qemu_fw_cfg virtio_net; do
  grep -q "$f" "$OUTDIR/initrd.list" || { echo "initramfs lacks $f" >&2; exit 1; }
done
echo "$KVER" > "$OUTDIR/kernel-version"
step "$t" "extract kernel/initrd"

# ---- 3. raw ext4 image from the directory (no mounts) -----------------------
t=$(date +%s)
rm -f "$OUTDIR/base.img"
truncate -s "$IMG_SIZE" "$OUTDIR/base.img"
mkfs.ext4 -q -F -L root -d "$ROOTFS" "$OUTDIR/base.img"
step "$t" "mkfs.ext4 -d base.img"

step "$T0" "TOTAL"
du -sh "$ROOTFS" "$OUTDIR/base.img" "$OUTDIR/vmlinuz" "$OUTDIR/initrd.img" | sed 's/^/[build-image] /'
du -sh --apparent-size "$OUTDIR/base.img" | sed 's/^/[build-image] apparent /'
