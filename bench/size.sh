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

# rustflags (beyond +crt-static): - none; nouwt: -C force-unwind-tables=no; nopie: a static
# executable that is not position-independent (-C relocation-model=static: no ASLR for the image);
# icf: the linker folds identical functions (lld's --icf=all).
# name           opt  lto   cgu  panic   rustflags  features
variants='
o3-unwind        3    fat   1    unwind  -          default
o3-abort         3    fat   1    abort   -          default
s-abort          s    fat   1    abort   -          default
z-unwind         z    fat   1    unwind  -          default
z-abort          z    fat   1    abort   -          default
z-abort-thin     z    thin  1    abort   -          default
z-abort-nolto    z    off   1    abort   -          default
z-abort-cgu16    z    fat   16   abort   -          default
z-abort-nouwt    z    fat   1    abort   nouwt      default
z-abort-nopie    z    fat   1    abort   nopie      default
z-abort-icf      z    fat   1    abort   icf        default
cur-aws          -    -     -    -       -          aws
cur-vault        -    -     -    -       -          vault
cur-azure        -    -     -    -       -          azure
cur-gcp          -    -     -    -       -          gcp
cur-all          -    -     -    -       -          default
'
want=("$@")
mkdir -p target/size/bin
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo -dirty)
while read -r name opt lto cgu panic extra features; do
  [ -n "$name" ] || continue
  if [ ${#want[@]} -gt 0 ] && [[ " ${want[*]} " != *" $name "* ]]; then continue; fi
  dir=target/size/$name
  [ "$opt" = - ] && dir=target/size/shared
  rustflags='-C target-feature=+crt-static'
  case $extra in
    -) ;;
    nouwt) rustflags+=' -C force-unwind-tables=no' ;;
    nopie) rustflags+=' -C relocation-model=static' ;;
    icf) rustflags+=' -C link-arg=-Wl,--icf=all' ;;
    *) echo "bench/size.sh: unknown rustflags token $extra" >&2; exit 2 ;;
  esac
  env=(CARGO_TARGET_DIR="$PWD/$dir" RUSTFLAGS="$rustflags")
  # `-` keeps what Cargo.toml's [profile.release] says (the cur-* variants: the shipped profile).
  [ "$opt" = - ] || env+=(CARGO_PROFILE_RELEASE_OPT_LEVEL="$opt" CARGO_PROFILE_RELEASE_LTO="$lto"
                          CARGO_PROFILE_RELEASE_CODEGEN_UNITS="$cgu" CARGO_PROFILE_RELEASE_PANIC="$panic"
                          CARGO_PROFILE_RELEASE_STRIP=true)
  feat=()
  [ "$features" = default ] || feat=(--no-default-features --features "$features")
  start=$SECONDS
  env "${env[@]}" cargo build --quiet --locked --release --target x86_64-unknown-linux-gnu "${feat[@]}"
  took=$((SECONDS - start))
  bin=$dir/x86_64-unknown-linux-gnu/release/bootsecrets
  cp "$bin" "target/size/bin/$name"
  bytes=$(stat -c %s "$bin")
  printf '%s\t%s\t%s\topt=%s lto=%s cgu=%s panic=%s rustflags=%s features=%s\t%s s\n' \
    "$commit" "$name" "$bytes" "$opt" "$lto" "$cgu" "$panic" "$extra" "$features" "$took" | tee -a target/size/sizes.tsv
  [ "$opt" = - ] || rm -rf "$dir"
done <<< "$variants"
rm -rf target/size/shared
