#!/usr/bin/env bash
# Run every fuzz target (or those named) for SECONDS each (default 60), two at a time, with
# atheris when installed (else the built-in mutation loop). New corpus entries and findings
# go to ${FUZZ_WORK:-/tmp/appliance-fuzz}/<target>/; the repository's corpus is only read.
# Prints executions per target; exits non-zero if any target found something.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -u
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(sign renew revoke acme ocsp ceremony templates app)
work="${FUZZ_WORK:-/tmp/appliance-fuzz}"
py="${PYTHON:-.venv/bin/python}"
jobs="${FUZZ_JOBS:-2}"
mkdir -p "$work"
run_one() {
  local t="$1"
  "$py" -m "tests.fuzz.fuzz_$t" --seconds "$seconds" --work "$work/$t" > "$work/$t.log" 2>&1
  local rc=$?
  local execs
  execs=$("$py" -c "import sys; from tests.fuzz.harness import parse_stats; \
print(parse_stats(open(sys.argv[1], errors='replace').read()))" "$work/$t.log")
  local found
  found=$(find "$work/$t/findings" -type f 2>/dev/null | wc -l)
  echo "$t: $execs executions in ${seconds}s, exit $rc, findings $found (log $work/$t.log)"
  [ "$rc" -eq 0 ] && [ "$found" -eq 0 ]
}
status=0
pids=()
names=()
for t in "${targets[@]}"; do
  run_one "$t" &
  pids+=($!)
  names+=("$t")
  if [ ${#pids[@]} -ge "$jobs" ]; then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do
  wait "$p" || status=1
done
exit $status
