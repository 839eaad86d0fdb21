#!/usr/bin/env bash
# Size of the static release binary under each release-profile choice, and of each single-backend
# build. A profile variant is a clean build in its own target directory (target/size/NAME, removed
# afterwards: about 1 GB each), 5-7 minutes each on two cores; the cur-* variants (the shipped
# profile, one backend each) share target/size/shared, so the crates they have in common are
# built once.
#   bench/size.sh [VARIANT...]        (default: every variant below)
# Prints one line per variant and appends it to target/size/sizes.tsv; the stripped binaries stay
# in target/size/bin/ for bench/compare.sh --binary.
set -euo pipefail
cd "$(dirname "$0")/.."

# name           opt  lto   cgu  panic   unwind-tables  features
variants='
o3-unwind        3    fat   1    unwind  yes            default
o3-abort         3    fat   1    abort   yes            default
s-abort          s    fat   1    abort   yes            default
z-unwind         z    fat   1    unwind  yes            default
z-abort          z    fat   1    abort   yes            default
z-abort-thin     z    thin  1    abort   yes            default
z-abort-nolto    z    off   1    abort   yes            default
z-abort-cgu16    z    fat   16   abort   yes            default
z-abort-nouwt    z    fat   1    abort   no             default
cur-aws          -    -     -    -       -              aws
cur-vault        -    -     -    -       -              vault
cur-azure        -    -     -    -       -              azure
cur-gcp          -    -     -    -       -              gcp
cur-all          -    -     -    -       -              default
'
want=("$@")
mkdir -p target/size/bin
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo -dirty)
while read -r name opt lto cgu panic uwt features; do
  [ -n "$name" ] || continue
  if [ ${#want[@]} -gt 0 ] && [[ " ${want[*]} " != *" $name "* ]]; then continue; fi
  dir=target/size/$name
  [ "$opt" = - ] && dir=target/size/shared
  env=(CARGO_TARGET_DIR="$PWD/$dir" RUSTFLAGS='-C target-feature=+crt-static')
  # `-` keeps what Cargo.toml's [profile.release] says (the cur-* variants: the shipped profile).
  [ "$opt" = - ] || env+=(CARGO_PROFILE_RELEASE_OPT_LEVEL="$opt" CARGO_PROFILE_RELEASE_LTO="$lto"
                          CARGO_PROFILE_RELEASE_CODEGEN_UNITS="$cgu" CARGO_PROFILE_RELEASE_PANIC="$panic"
                          CARGO_PROFILE_RELEASE_STRIP=true)
  [ "$uwt" = no ] && env[1]="RUSTFLAGS=-C target-feature=+crt-static -C force-unwind-tables=no"
  feat=()
  [ "$features" = default ] || feat=(--no-default-features --features "$features")
  start=$SECONDS
  env "${env[@]}" cargo build --quiet --locked --release --target x86_64-unknown-linux-gnu "${feat[@]}"
  took=$((SECONDS - start))
  bin=$dir/x86_64-unknown-linux-gnu/release/bootsecrets
  cp "$bin" "target/size/bin/$name"
  bytes=$(stat -c %s "$bin")
  printf '%s\t%s\t%s\topt=%s lto=%s cgu=%s panic=%s unwind-tables=%s features=%s\t%s s\n' \
    "$commit" "$name" "$bytes" "$opt" "$lto" "$cgu" "$panic" "$uwt" "$features" "$took" | tee -a target/size/sizes.tsv
  [ "$opt" = - ] || rm -rf "$dir"
done <<< "$variants"
rm -rf target/size/shared
