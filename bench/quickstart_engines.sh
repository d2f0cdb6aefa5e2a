#!/usr/bin/env bash
# The quickstart pipeline with each engine of the layers, one after the other on the same
# pipeline file, each into a fresh artifact root (docs/performance.md, "The owned engine"):
# wall-clock seconds per engine and the ratio autograd / owned.
#
#   bash bench/quickstart_engines.sh                          # pipelines/quickstart.toml
#   PIPELINE=pipelines/quickstart-po.toml bash bench/quickstart_engines.sh
#
# Needs a release build (cargo build --release). About 8 minutes on the 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINE=${PIPELINE:-pipelines/quickstart.toml}
W2S=${W2S:-target/release/w2s}
WORK=${WORK:-target/bench-quickstart}
ENGINES=${ENGINES:-autograd owned}

now() { date +%s.%N; }
declare -A secs
for e in $ENGINES; do
    root="$WORK/$e"
    rm -rf "$root"
    t0=$(now)
    "$W2S" --log warn --engine "$e" run "$PIPELINE" --set "artifacts=$root" >/dev/null
    t1=$(now)
    secs[$e]=$(echo "$t1 - $t0" | bc -l)
    printf '%s: %.1f s\n' "$e" "${secs[$e]}" >&2
done
echo "| pipeline | autograd s | owned s | speed owned/autograd |"
echo "|---|---|---|---|"
printf '| %s | %.1f | %.1f | %.2f |\n' "$PIPELINE" "${secs[autograd]}" "${secs[owned]}" \
    "$(echo "${secs[autograd]} / ${secs[owned]}" | bc -l)"
