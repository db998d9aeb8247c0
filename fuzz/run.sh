#!/usr/bin/env bash
# Fuzzes the pure core for a bounded time: each target (config, router,
# keystore, head) runs SECS seconds (default 60) from the committed seeds in
# fuzz/seeds/TARGET, growing a scratch corpus in fuzz/corpus/TARGET (not
# committed). A crash stops the script with libFuzzer's artefact in
# fuzz/artifacts/TARGET; turn it into a regression test beside the code.
# Not part of .ci/run. Needs cargo-fuzz (`cargo install cargo-fuzz`); the
# stable toolchain is told to accept libFuzzer's -Z flags (RUSTC_BOOTSTRAP).
#
#   bash fuzz/run.sh [SECS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config router keystore head)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
# No sanitizer: the code under test is safe Rust, and ASan would triple the
# build of Pingora's tree on 2 cores for nothing.
cargo fuzz build --sanitizer none 2>&1 | tail -1
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  echo "== $t: ${secs}s"
  if ! cargo fuzz run --sanitizer none "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "== $t: CRASH (see fuzz/artifacts/$t)" >&2
    exit 1
  fi
  runs=$(grep -oP 'stat::number_of_executed_units:\s*\K[0-9]+' "$log" || echo "?")
  cov=$(grep -oP '^#[0-9]+\s+DONE\s+cov: \K[0-9]+' "$log" || grep -oP 'cov: \K[0-9]+' "$log" | tail -1)
  echo "== $t: $runs executions in ${secs}s, coverage $cov, corpus $(ls "corpus/$t" | wc -l) inputs, no crash"
  rm -f "$log"
done
