#!/usr/bin/env bash
# Instructions per call on the calling thread (callgrind), for the four cases BENCHMARKS.md tracks.
# Usage: bench/callgrind.sh BUILD_DIR [iterations] [repeats]. Prints "case instructions/call" with
# the spread over the repeats (a background thread or the metrics ring can move a run by ~10%).
set -euo pipefail
bin="$1/bin/laneguard_callgrind_calls"
n="${2:-20000}"
repeats="${3:-3}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for c in try_acquire_release reject spans_off sampled_in_batch; do
  vals=()
  for ((r = 0; r < repeats; ++r)); do
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*RunLoop*' \
      --callgrind-out-file="$out/cg.$c.$r" "$bin" "$c" "$n" >/dev/null 2>&1
    ir=$(grep -m1 '^totals:' "$out/cg.$c.$r" | awk '{print $2}')
    vals+=("$(awk -v ir="$ir" -v n="$n" 'BEGIN { printf "%.1f", ir / n }')")
  done
  printf '%-20s %s\n' "$c" "$(printf '%s\n' "${vals[@]}" | sort -n | tr '\n' ' ')"
done
