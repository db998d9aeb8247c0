#!/usr/bin/env bash
# The release build Portcullis ships: profile-guided (PGO). Builds the gateway
# instrumented, runs it through benches/pgo_train.rs (cache hits, proxied
# requests, a limited route with a body, refusals; a backend and clients of its
# own on loopback), merges the profile, and builds again with it. The result is
# copied to $1 (default target/pgo/portcullis).
#
#   bash benches/pgo_build.sh [out]     PGO_REQUESTS=4000 (per connection, 8 connections)
#
# Why: the request path is long and flat (no function above ~2% of a request's
# time), and the compiler's static guesses lay it out poorly; with the profile
# the gateway spends markedly less CPU per request and runs about a fifth fewer
# instructions (benches/README.md "Profile-guided build"). Cost: two release
# builds instead of one. A path the training does not run is laid out as cold:
# the jwt route (not trained) still gained, since most of its path is shared;
# TLS, HTTP/2, fan-out and WebSocket are not measured against a plain build.
#
# Needs rustup's llvm-tools (llvm-profdata of the compiler's own LLVM version):
# installed here with `rustup component add llvm-tools` when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/pgo/portcullis}
data=target/pgo/data
mkdir -p "$data"
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  rustup component add llvm-tools >&2 ||
    { echo "pgo_build: llvm-profdata missing and rustup could not add llvm-tools" >&2; exit 1; }
fi

# Separate target directories: the flags differ, and neither build may reuse
# the other's artifacts (or the plain release build's). `--target`: the flags
# then reach only the target's code, not build scripts and proc macros, which
# would otherwise be instrumented too. CARGO_ENCODED_RUSTFLAGS: a path with
# spaces stays one flag.
CARGO_ENCODED_RUSTFLAGS="-Cprofile-generate=$PWD/$data/raw" \
  cargo build --release --locked --bin portcullis --target "$host" --target-dir target/pgo/generate
instrumented=target/pgo/generate/$host/release/portcullis
# A new profile only when the instrumented binary, the trainer or the request
# count changed (their digest is kept beside it): an unchanged tree trains
# nothing.
stamp=$( (cat "$instrumented" benches/pgo_train.rs; echo "${PGO_REQUESTS:-4000}") | sha256sum | cut -c1-64)
profile=$PWD/$data/merged.profdata
if [ ! -e "$profile" ] || [ "$(cat "$data/stamp" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$data/raw" "$data/stamp" && mkdir -p "$data/raw"
  # The trainer is std-only: built by rustc alone, uninstrumented, so that
  # only the gateway's profile lands in $data/raw.
  rustc --edition 2021 -O benches/pgo_train.rs -o target/pgo/pgo_train
  target/pgo/pgo_train "$instrumented" "${PGO_REQUESTS:-4000}"
  "$profdata" merge -o "$profile" "$data"/raw/*.profraw
  # The crates that change (ours and the vendored Pingora crates) are rebuilt
  # with the new profile; registry dependencies keep the code an earlier
  # profile gave them until their own flags change, so a build on a warm
  # target directory can differ slightly from one on a cold one.
  for crate in portcullis pingora-core pingora-http pingora-proxy; do
    cargo clean --release --target "$host" --target-dir target/pgo/use -p "$crate"
  done
  echo "$stamp" > "$data/stamp"
fi
CARGO_ENCODED_RUSTFLAGS="-Cprofile-use=$profile" \
  cargo build --release --locked --bin portcullis --target "$host" --target-dir target/pgo/use
mkdir -p "$(dirname "$out")"
cp "target/pgo/use/$host/release/portcullis" "$out"
echo "pgo_build: $out"
