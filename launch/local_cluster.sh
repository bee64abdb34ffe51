#!/usr/bin/env bash
# Start (or stop) a single-machine Ray cluster and submit the CPU demo to it as a job.
#   bash launch/local_cluster.sh start     # ray start --head on 127.0.0.1
#   bash launch/local_cluster.sh submit [preset] [key=value ...]
#   bash launch/local_cluster.sh stop
# Ray 2.60 may turn on token authentication once a local runtime has run; head and client must agree on
# RAY_AUTH_MODE. This loopback cluster disables it; on a shared cluster keep it on and export the token
# (see README "Running on a Ray cluster").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CDRA_VENV:-.venv}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
case "${1:-}" in
  start) "$VENV/bin/ray" start --head --node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1 \
           --dashboard-port "${RAY_DASHBOARD_PORT:-8265}" --num-cpus "${RAY_NUM_CPUS:-8}" --disable-usage-stats ;;
  submit) shift; preset="${1:-cpu_demo}"; shift || true
    "$VENV/bin/ray" job submit --address "http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}" --working-dir . \
      --runtime-env launch/runtime_env.yaml -- \
      "$(cd "$VENV" && pwd)/bin/python" launch/ray_job.py --config "$preset" "run.output_dir=$PWD/runs" "$@" ;;
  stop) "$VENV/bin/ray" stop ;;
  *) echo "usage: $0 start|submit [preset] [key=value ...]|stop" >&2; exit 2 ;;
esac
