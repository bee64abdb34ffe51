"""``cdra-ray train``: one CDPA run from a config, locally or on a Ray cluster, resumable.

Order of work, cheapest first so mistakes fail fast: check the config, check every dataset line, prepare the
run directory, resolve the model directories, and only then start Ray and load models.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cdra_ray.config import Config, ConfigError, save_resolved
from cdra_ray.config.schema import DEMO_MODEL
from cdra_ray.data.scenarios import load_scenarios
from cdra_ray.driver.checkpointing import find_resume_point, latest_checkpoint, restore_learner
from cdra_ray.driver.metrics import drop_metrics_after, read_metrics

log = logging.getLogger(__name__)


def prepare_run_dir(config: Config) -> Path:
    run_dir = Path(config.run.output_dir).expanduser() / config.run.name
    if config.run.resume:
        if latest_checkpoint(run_dir) is None:
            raise ConfigError(f"run.resume=true but {run_dir} has no complete checkpoint to resume from")
    elif read_metrics(run_dir) or latest_checkpoint(run_dir) is not None:
        raise ConfigError(f"{run_dir} already holds a run: pass run.resume=true to continue it, "
                          f"or choose another run.name / run.output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


TINY_ALIAS = "tiny-llama"  # a random 2-layer Llama built locally: smoke runs and tests, no download


def resolve_model_setting(name_or_path: str) -> str:
    """A model setting as a local directory: the demo alias, the tiny alias, or an existing HF directory."""
    from cdra_ray.models.embedded import default_cache_dir, resolve_model

    if name_or_path.strip().lower() == TINY_ALIAS:
        from cdra_ray.models.tiny import build_tiny_model

        target = default_cache_dir() / "tiny-llama-seed0"
        if not (target / "config.json").is_file():
            build_tiny_model(target, seed=0)
        return str(target)
    return str(resolve_model(name_or_path))


def resolve_model_dirs(config: Config) -> tuple[str, str, str]:
    """(policy, reference, reward) as local directories; aliases like the demo model are converted once."""
    policy = resolve_model_setting(config.model.policy)
    reference = resolve_model_setting(config.model.reference) if config.model.reference else policy
    reward = resolve_model_setting(config.reward.model or DEMO_MODEL)
    return policy, reference, reward


def init_ray(config: Config) -> None:
    import ray

    from cdra_ray.actors.wiring import total_cpus

    if ray.is_initialized():
        return
    address = config.run.ray_address or os.environ.get("RAY_ADDRESS")
    if address:  # a cluster (also the case inside `ray job submit`)
        ray.init(address=address, log_to_driver=True)
    else:  # a local runtime; logical CPUs may exceed cores: actors mostly take turns on a small machine
        ray.init(num_cpus=max(int(total_cpus(config) + 0.999), os.cpu_count() or 1), log_to_driver=True,
                 include_dashboard=False)


def build_run(config: Config):
    """Everything of a run up to the first update: returns ``(driver, actors)``; ``driver.run()`` trains."""
    scenarios = load_scenarios(config.data.path, config.data.max_scenarios,
                               max_field_chars=config.data.max_field_chars)
    run_dir = prepare_run_dir(config)
    save_resolved(config, run_dir)
    policy_dir, reference_dir, reward_dir = resolve_model_dirs(config)

    state, checkpoint = None, None
    resume_point = find_resume_point(run_dir) if config.run.resume else None
    if resume_point is not None:
        checkpoint, state = resume_point
        policy_dir = str(checkpoint / "policy")  # rollout engines and learner start from the saved policy
        dropped = drop_metrics_after(run_dir, state.policy_version)  # updates after it are redone
        log.info("resuming %s at update %d (%d metric records after it dropped)", checkpoint,
                 state.policy_version, dropped)

    init_ray(config)
    from cdra_ray.actors.wiring import start_actors, stop_actors
    from cdra_ray.driver.driver import CDPADriver

    actors = start_actors(config, policy_dir, reference_dir, reward_dir)
    try:
        if checkpoint is not None:
            restore_learner(actors.learner, checkpoint, state)
        driver = CDPADriver(config, run_dir, scenarios, actors, state=state)
        driver.last_checkpoint = checkpoint
    except BaseException:
        stop_actors(actors)
        raise
    return driver, actors


class Stopped(Exception):
    """The job was asked to stop (SIGTERM, e.g. ``ray job stop``): shut down like Ctrl-C does."""


def _stop_on_sigterm():
    """Turn SIGTERM into an exception in the main thread, so the run shuts down through its ``finally``
    blocks (actors stopped, metrics closed) instead of dying mid-way; returns the previous handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Stopped(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


def run_training(config: Config) -> dict:
    """One run; Ctrl-C or SIGTERM stop it cleanly: the last complete checkpoint stays as it was."""
    import signal

    driver, actors = build_run(config)
    previous = _stop_on_sigterm()  # after ray.init, which installs its own SIGTERM handler (a bare exit)
    try:
        return driver.run(progress=config.run.progress_bar)
    finally:
        from cdra_ray.actors.wiring import stop_actors

        stop_actors(actors)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def format_summary(summary: dict) -> str:
    lines = [f"updates: {summary['updates']}", f"run directory: {summary['run_dir']}"]
    if summary["updates"]:
        lines += [
            f"reward per update (mean step score): {summary['reward_per_update']}",
            f"reward trend: first half {summary['reward_first_half']:+.4f} -> second half "
            f"{summary['reward_second_half']:+.4f}",
            f"score parse rate: {summary['parse_rate']}",
            f"zero-advantage rate: {summary['zero_advantage_rate']:.3f}",
            f"stale groups dropped: {summary['dropped_stale']}",
            "mean seconds per update by phase: "
            + ", ".join(f"{k.removeprefix('timing/')} {v}" for k, v in summary["timing_mean_per_update"].items()),
        ]
        if summary["zero_advantage_rate"] >= NO_SIGNAL_RATE:
            lines.append(NO_SIGNAL_WARNING)
    return "\n".join(lines)


# Every group scored alike: every advantage is zero, the policy gradient is zero, the policy did not move.
NO_SIGNAL_RATE = 0.99
NO_SIGNAL_WARNING = (
    "WARNING: (nearly) every group got zero advantages: the reward model scored all responses of a group alike, so "
    "the policy received no learning signal. Check the critic's score spread (reward/step_std in metrics.jsonl); a "
    "critic trained on a flattering teacher scores every step the same.")


def train_command(config: Config) -> int:
    """``cdra-ray train``: run, print the summary; a stop or an actor failure is a message, not a traceback."""
    import sys

    from cdra_ray.driver.faults import ActorFailure

    run_dir = Path(config.run.output_dir).expanduser() / config.run.name
    try:
        summary = run_training(config)
    except (KeyboardInterrupt, Stopped):
        last = latest_checkpoint(run_dir)
        print(f"\nstopped. Last complete checkpoint: {last or 'none yet'}; continue with the same command plus "
              "run.resume=true", file=sys.stderr)
        return 130
    except ActorFailure as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print("\n== CDPA run finished ==\n" + format_summary(summary))
    return 0
