#!/usr/bin/env bash
# Re-creates the vendored Pingora crates: each crate named in vendor/PRISTINE is
# unpacked from its released .crate (checked against the SHA-256 written there,
# the one crates.io publishes), then every vendor/patches/*.patch is applied in
# order. Nobody edits vendor/<crate>/ by hand: the patches are the source.
#
#   vendor/sync.sh           rewrite vendor/<crate>/ as pristine + patches
#   vendor/sync.sh --check   fail if vendor/<crate>/ differs from pristine + patches (CI)
#   vendor/sync.sh --diff    print how vendor/<crate>/ differs from pristine + patches:
#                            edit a crate in place, then
#                            `vendor/sync.sh --diff > vendor/patches/000N-name.patch`,
#                            write the header on top, and run `vendor/sync.sh`.
#
# A .crate missing from cargo's cache is fetched by cargo itself (a throwaway
# manifest naming the exact version), not downloaded by hand.
set -euo pipefail
cd "$(dirname "$0")"
mode=${1:-sync}
case "$mode" in sync | --check | --diff) ;; *) echo "usage: $0 [--check|--diff]" >&2; exit 2 ;; esac

cargo_home=${CARGO_HOME:-$HOME/.cargo}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The released .crate file of $1-$2, fetched through cargo when not cached.
crate_file() { # name version
  local found
  found=$(ls "$cargo_home"/registry/cache/*/"$1-$2.crate" 2>/dev/null | head -1 || true)
  if [ -z "$found" ]; then
    mkdir -p "$tmp/fetch/src"
    printf '[package]\nname = "vendor-fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\n%s = "=%s"\n' \
      "$1" "$2" > "$tmp/fetch/Cargo.toml"
    : > "$tmp/fetch/src/lib.rs"
    cargo fetch --quiet --manifest-path "$tmp/fetch/Cargo.toml" >&2
    found=$(ls "$cargo_home"/registry/cache/*/"$1-$2.crate" | head -1)
  fi
  echo "$found"
}

# pristine + patches into $tmp/a/<crate>/
mkdir -p "$tmp/a"
crates=()
while read -r name version sum; do
  case "$name" in '' | '#'*) continue ;; esac
  file=$(crate_file "$name" "$version")
  echo "$sum  $file" | sha256sum --check --quiet - ||
    { echo "$file does not match the SHA-256 in vendor/PRISTINE" >&2; exit 1; }
  tar -xzf "$file" -C "$tmp/a"
  mv "$tmp/a/$name-$version" "$tmp/a/$name"
  crates+=("$name")
done < PRISTINE
for p in patches/*.patch; do
  [ -e "$p" ] || continue
  patch --quiet --forward --no-backup-if-mismatch --fuzz=0 -p1 -d "$tmp/a" < "$p" ||
    { echo "$p does not apply to the pristine crates + the patches before it" >&2; exit 1; }
done

case "$mode" in
  sync)
    for c in "${crates[@]}"; do
      rm -rf "./$c"
      cp -a "$tmp/a/$c" "./$c"
    done
    ;;
  --check | --diff)
    mkdir -p "$tmp/b"
    for c in "${crates[@]}"; do
      [ -d "$c" ] || { echo "vendor/$c is missing: run vendor/sync.sh" >&2; exit 1; }
      cp -a "$c" "$tmp/b/$c"
    done
    status=0
    (cd "$tmp" && diff -ruN a b) > "$tmp/diff" || status=$?
    [ "$status" -le 1 ] || exit "$status"
    if [ "$mode" = --diff ]; then
      sed -e 's/^\(---\|+++\) \([ab]\/[^\t]*\)\t.*/\1 \2/' "$tmp/diff"
    elif [ "$status" -ne 0 ]; then
      echo "vendor/ differs from pristine + patches (edit the patches, not the crates):" >&2
      cat "$tmp/diff" >&2
      exit 1
    fi
    ;;
esac
