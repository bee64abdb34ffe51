"""Entry point for `ray job submit` (the working directory is this repository):

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env launch/runtime_env.yaml -- \
        python launch/ray_job.py --config tiny_test run.output_dir=$PWD/runs
        python launch/ray_job.py recipe --config recipe_cpu_demo run.output_dir=/shared/runs   (any command)

Inside a job Ray sets RAY_ADDRESS, so the driver joins the cluster instead of starting its own runtime.
Give run.output_dir as an absolute path on storage every node sees: the job's own working directory is a
temporary copy that Ray deletes.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir holds the package

from cdra_ray.cli import main  # noqa: E402

COMMANDS = ("train", "evaluate", "recipe", "ablate", "construct", "sft", "prm-eval")

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args if args and args[0] in COMMANDS else ["train", *args]))  # no command given: train
