#!/usr/bin/env bash
# The release command: builds everything a release publishes into dist/VERSION/, from the
# committed source only, reproducibly.
#
#   release/build.sh [--target TRIPLE] [--out DIR] [--verify-reproducible] [--allow-dirty]
#
#   --target TRIPLE          x86_64-unknown-linux-gnu (default) or aarch64-unknown-linux-gnu
#                            (the sysext's ARCHITECTURE= and file name: x86-64 or arm64)
#   --out DIR                where the artifacts go (default dist/VERSION)
#   --verify-reproducible    then build again from a fresh clone of HEAD in another directory,
#                            with its own empty target directory, and fail unless every artifact
#                            is byte for byte the same
#   --allow-dirty            build a checkout with uncommitted changes (never a release: the
#                            commit in --version says -dirty; refused with --verify-reproducible)
#
# Produces (VERSION from Cargo.toml, ARCH x86_64/aarch64, SYSARCH x86-64/arm64):
#   bootsecrets-VERSION-ARCH-linux            the static binary
#   bootsecrets-VERSION-SYSARCH.raw           the systemd-sysext image (squashfs)
#   bootsecrets-VERSION-ARCH-linux.cdx.json   CycloneDX SBOM of the exact dependency graph
#   THIRD-PARTY-LICENSES.txt                  every dependency's licence, checked, and its texts
#   LICENSE                                   bootsecrets' own licence (Apache-2.0)
#   SHA256SUMS, SHA512SUMS                    over all of the above (Ignition verifies sha512)
# and prints the `bootsecrets render` command lines that install this release.
#
# Reproducible: paths are remapped (the checkout, the target directory, CARGO_HOME), every time
# is SOURCE_DATE_EPOCH (the commit's time), the image is built with fixed owners, modes and times,
# and the commit comes from git (BOOTSECRETS_GIT_COMMIT, read by build.rs).
set -euo pipefail
export LC_ALL=C TZ=UTC
umask 022
cd "$(dirname "$0")/.."
SRC=$PWD

target=x86_64-unknown-linux-gnu
out=
verify=0
allow_dirty=0
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=${2:?--target needs a triple}; shift 2 ;;
    --target=*) target=${1#*=}; shift ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --verify-reproducible) verify=1; shift ;;
    --allow-dirty) allow_dirty=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "release: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "release: error: $*" >&2; exit 1; }
note() { echo "release: $*" >&2; }
t0=$SECONDS

case "$target" in
  x86_64-unknown-linux-gnu) arch=x86_64; sysarch=x86-64 ;;
  aarch64-unknown-linux-gnu) arch=aarch64; sysarch=arm64 ;;
  *) die "--target $target: only x86_64-unknown-linux-gnu and aarch64-unknown-linux-gnu are released" ;;
esac

# --- the toolchain has the target --------------------------------------------------------------
libdir=$(rustc --print target-libdir --target "$target" 2>/dev/null || true)
if ! compgen -G "$libdir/libstd-*.rlib" >/dev/null; then
  die "this Rust toolchain has no standard library for $target. Install it with
  rustup target add $target
and, to cross-link from another architecture, a C toolchain for it, e.g. on Debian
  apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
(see README.md, \"Releases\")"
fi

# --- the source: a commit ----------------------------------------------------------------------
command -v git >/dev/null || die "git is needed (the commit names the release)"
git rev-parse --verify -q HEAD >/dev/null || die "$SRC is not a git checkout with a commit"
commit=$(git rev-parse HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  [ $allow_dirty = 1 ] || die "the checkout has uncommitted changes: commit them (or --allow-dirty for a build that is not a release)"
  [ $verify = 0 ] || die "--verify-reproducible builds HEAD again: commit the changes first"
  commit="$commit-dirty"
fi
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct HEAD)
export SOURCE_DATE_EPOCH
export BOOTSECRETS_GIT_COMMIT=$commit

meta=$(cargo metadata --locked --no-deps --format-version 1)
version=$(python3 -c 'import json,sys; m=json.load(sys.stdin); print([p for p in m["packages"] if p["name"]=="bootsecrets"][0]["version"])' <<<"$meta")
target_dir=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' <<<"$meta")
out=${out:-dist/$version}
mkdir -p "$out"
out=$(cd "$out" && pwd)
note "bootsecrets $version, commit $commit, $target, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, into $out"

# --- tools: squashfs-tools (installed here when missing, as tests/setup.sh does) ---------------
if ! command -v mksquashfs >/dev/null || ! command -v unsquashfs >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    note "apt-get install squashfs-tools"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends squashfs-tools >/dev/null
  else
    die "mksquashfs is missing: install squashfs-tools"
  fi
fi

# --- 1. the static binary ----------------------------------------------------------------------
# Paths that would otherwise end up in the binary (panic locations of dependencies, generated
# code under OUT_DIR) are remapped to fixed ones; cargo keeps RUSTFLAGS out of its -C metadata
# hash, so the remapping itself does not differ between two checkouts either. The last matching
# prefix wins: the target directory (often inside the checkout) comes last.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
flags=(-C target-feature=+crt-static
       "--remap-path-prefix=$(cd "$cargo_home" && pwd -P)=/cargo"
       "--remap-path-prefix=$cargo_home=/cargo"
       "--remap-path-prefix=$SRC=/build/bootsecrets"
       "--remap-path-prefix=$(pwd -P)=/build/bootsecrets"
       "--remap-path-prefix=$target_dir=/build/target")
CARGO_ENCODED_RUSTFLAGS=$(IFS=$'\x1f'; printf '%s' "${flags[*]}")
export CARGO_ENCODED_RUSTFLAGS
unset RUSTFLAGS
t=$SECONDS
note "cargo build --release --locked --target $target"
cargo build --release --locked --target "$target"
note "built in $((SECONDS - t)) s"
built=$target_dir/$target/release/bootsecrets
bin=bootsecrets-$version-$arch-linux
install -m 0755 "$built" "$out/$bin"
touch -d "@$SOURCE_DATE_EPOCH" "$out/$bin"

# The units for this install come from the binary (the only copy of their text: units/, compiled
# in). A binary for another architecture cannot run here: the host build of the same commit
# writes them.
if [ "$target" = "$(rustc -vV | sed -n 's/^host: //p')" ]; then
  units_bin=$out/$bin
  "$units_bin" --version | grep -qx "commit: $commit" || die "$bin --version does not name commit $commit"
else
  note "cargo build --locked (host, for the unit files)"
  env -u CARGO_ENCODED_RUSTFLAGS cargo build --locked -q
  units_bin=$target_dir/debug/bootsecrets
fi

# --- 2. dependencies: SBOM, licences checked, their texts --------------------------------------
python3 release/deps.py --target "$target" --out "$out" --name "$bin" --commit "$commit"
install -m 0644 LICENSE "$out/LICENSE"

# --- 3. the systemd-sysext image ---------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/bootsecrets
mkdir -p "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/usr/lib/extension-release.d" \
         "$root/usr/share/licenses/bootsecrets" "$root/usr/share/man/man1" \
         "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/site-functions" \
         "$root/usr/share/fish/vendor_completions.d"
install -m 0755 "$out/$bin" "$root/usr/bin/bootsecrets"
"$units_bin" units --install sysext --output-dir "$root/usr/lib/systemd/system"
# The manual page and the shell completions, from the binary itself (also next to the binary in
# dist/, for the plain-binary install).
"$units_bin" man > "$root/usr/share/man/man1/bootsecrets.1"
"$units_bin" completions bash > "$root/usr/share/bash-completion/completions/bootsecrets"
"$units_bin" completions zsh > "$root/usr/share/zsh/site-functions/_bootsecrets"
"$units_bin" completions fish > "$root/usr/share/fish/vendor_completions.d/bootsecrets.fish"
chmod 0644 "$root"/usr/share/man/man1/* "$root"/usr/share/*/completions/* \
  "$root"/usr/share/zsh/site-functions/* "$root"/usr/share/fish/vendor_completions.d/*
install -m 0644 "$root/usr/share/man/man1/bootsecrets.1" "$out/bootsecrets.1"
# (gzip -n: no name and no time in the header, for a reproducible archive.)
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
  -C "$root/usr/share" -cf - bash-completion zsh fish | gzip -n -9 \
  > "$out/bootsecrets-$version-completions.tar.gz"
touch -d "@$SOURCE_DATE_EPOCH" "$out/bootsecrets-$version-completions.tar.gz"
touch -d "@$SOURCE_DATE_EPOCH" "$out/bootsecrets.1"
install -m 0644 LICENSE "$out/THIRD-PARTY-LICENSES.txt" "$root/usr/share/licenses/bootsecrets/"
# ID=_any: any OS (the binary is static); ARCHITECTURE= as systemd names it (ConditionArchitecture=);
# EXTENSION_RELOAD_MANAGER=1: systemd >= 256 reloads its units after merging (older ones need
# what `bootsecrets render --install sysext` sets up; see docs/cli.md).
printf '%s\n' "ID=_any" "ARCHITECTURE=$sysarch" "EXTENSION_RELOAD_MANAGER=1" \
  > "$root/usr/lib/extension-release.d/extension-release.bootsecrets"
chmod 0644 "$root/usr/lib/extension-release.d/extension-release.bootsecrets"
find "$root" -type d -exec chmod 0755 {} +
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
raw=bootsecrets-$version-$sysarch.raw
rm -f "$out/$raw"
# Owners root, every time SOURCE_DATE_EPOCH, no extended attributes (they would carry the build
# host's labels), entries sorted (mksquashfs does), one compressor thread order (the output does
# not depend on the thread count).
env -u SOURCE_DATE_EPOCH mksquashfs "$root" "$out/$raw" -quiet -noappend -all-root -no-xattrs \
  -mkfs-time "$SOURCE_DATE_EPOCH" -all-time "$SOURCE_DATE_EPOCH" >/dev/null
touch -d "@$SOURCE_DATE_EPOCH" "$out/$raw"
chmod 0644 "$out/$raw"

# --- 4. checksums ------------------------------------------------------------------------------
(
  cd "$out"
  files=("$bin" "$raw" "$bin.cdx.json" THIRD-PARTY-LICENSES.txt LICENSE bootsecrets.1
         "bootsecrets-$version-completions.tar.gz")
  sha256sum "${files[@]}" > SHA256SUMS
  sha512sum "${files[@]}" > SHA512SUMS
)
sha512_of() { awk -v f="$1" '$2 == f { print $1 }' "$out/SHA512SUMS"; }
note "done in $((SECONDS - t0)) s:"
(cd "$out" && sed 's/^/  /' SHA256SUMS) >&2

cat <<EOF

Install it (replace BASE with where you publish $out):
  bootsecrets render butane --variant flatcar --install sysext \\
    --image-url BASE/$raw \\
    --image-sha512 $(sha512_of "$raw")
  bootsecrets render butane --variant fcos \\
    --binary-url BASE/$bin \\
    --binary-sha512 $(sha512_of "$bin")
EOF

# --- 5. reproducible? --------------------------------------------------------------------------
if [ $verify = 1 ]; then
  again=$(mktemp -d "${TMPDIR:-/tmp}/bootsecrets-reproduce.XXXXXX")
  note "verify: a fresh clone of $commit in $again/src, its own target directory"
  git clone -q --no-hardlinks "$SRC" "$again/src"
  git -C "$again/src" checkout -q --detach "$commit"
  t=$SECONDS
  (cd "$again/src" && env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR \
     release/build.sh --target "$target" --out "$again/dist" >/dev/null)
  note "verify: second build in $((SECONDS - t)) s"
  if diff -u "$out/SHA256SUMS" "$again/dist/SHA256SUMS" >&2; then
    note "verify: reproducible: both builds give"
    sed 's/^/  /' "$out/SHA256SUMS" >&2
    rm -rf "$again"
  else
    die "NOT reproducible: $out and $again/dist differ (kept for inspection)"
  fi
fi
