#!/usr/bin/env bash
# Verify the GPU paths on a CUDA machine, in under 10 minutes on one GPU (more checks with 2+ and 4+ GPUs):
#   bash launch/gpu_check.sh                  installs the GPU extra into ./.venv (CDRA_VENV to choose), then checks
#   CDRA_SKIP_INSTALL=1 bash launch/gpu_check.sh --only vllm_engine nccl_sync
# Prints pass/fail per path. Exit code: 0 all that ran passed, 1 a check failed or hung (each check runs in its own
# process under a timeout), 3 no CUDA device (nothing ran; the message lists what was skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CDRA_VENV:-.venv}"
if [ "${CDRA_SKIP_INSTALL:-0}" != "1" ]; then
  CDRA_EXTRA=gpu CDRA_VENV="$VENV" bash launch/install.sh
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$VENV/bin/python" -m cdra_ray.gpu_check "$@"
