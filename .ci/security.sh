#!/usr/bin/env bash
# Supply chain and fuzzing, as CI runs them (one line in .ci/run):
#   1. cargo-deny: licences, banned crates and sources of the whole workspace (deny.toml). The
#      advisory check needs the RustSec database from GitHub, which CI cannot reach: run
#      `cargo deny --workspace check advisories` where it can (README, "Supply chain").
#   2. cargo-fuzz: writes the seed corpus (fuzz/seeds.py), builds every target once, then fuzzes
#      each for FUZZ_SECONDS (default 25) on stable without a sanitizer (`-s none`). A crash fails
#      the run and leaves its input in fuzz/artifacts/<target>/.
# Tools are installed once (cargo install --locked) and reused.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$(date +%s)
FUZZ_SECONDS=${FUZZ_SECONDS:-25}
FUZZ_TARGETS=(bandwidth twilio messagebird inteliquent)
# Same flags for build and run, so the run does not rebuild.
FUZZ_FLAGS=(-s none)

for tool in deny fuzz; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        cargo install --locked "cargo-$tool"
    fi
done

cargo deny --workspace check --hide-inclusion-graph licenses bans sources
deny_done=$(date +%s)

python3 fuzz/seeds.py
(
    cd fuzz
    # fuzz/Cargo.lock is committed: fail if it is stale instead of resolving anew.
    cargo fetch --locked --quiet
    cargo fuzz build "${FUZZ_FLAGS[@]}"
    for target in "${FUZZ_TARGETS[@]}"; do
        log=$(mktemp)
        # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: a leak or blow-up.
        if ! cargo fuzz run "${FUZZ_FLAGS[@]}" "$target" -- \
            -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
            >"$log" 2>&1; then
            tail -60 "$log"
            echo ".ci/security.sh: fuzz target $target FAILED; the input is in fuzz/artifacts/$target/" >&2
            exit 1
        fi
        runs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log")
        cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
        echo "fuzz: $target ${FUZZ_SECONDS}s, $runs inputs, $cov, no crash"
        rm -f "$log"
    done
)
echo ".ci/security.sh: cargo-deny in $((deny_done - started))s, fuzzing in $(( $(date +%s) - deny_done ))s"
