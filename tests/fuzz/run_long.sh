#!/bin/sh
# A long fuzz campaign: restarts the fuzzer after a timeout or crash until TOTAL executions
# have run, recording distinct findings in OUT (findings.txt) and executions per run
# (executions-PID.txt). Usage: tests/fuzz/run_long.sh OUT CORPUS [TOTAL]
set -u
out=$1 corpus=$2 total=${3:-1000000}
here=$(dirname "$0")
mkdir -p "$out/corpus" "$out/artifacts"
export XENRS_FUZZ_FINDINGS="$out"
while :; do
    done_=$(cat "$out"/executions-*.txt 2>/dev/null | awk '{s+=$1} END {print s+0}')
    [ "$done_" -ge "$total" ] && break
    python "$here/fuzz_xenrs.py" "$out/corpus" "$corpus" -timeout=10 -rss_limit_mb=1500 \
        -runs=$((total - done_)) -artifact_prefix="$out/artifacts/" -print_final_stats=1 \
        >> "$out/log" 2>&1
done
echo "executions: $(cat "$out"/executions-*.txt | awk '{s+=$1} END {print s+0}')"
