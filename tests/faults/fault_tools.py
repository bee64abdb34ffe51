"""Shared pieces of the fault suite: the tiny run, its data order, and real fault injection.

Faults are real: ``os.kill(pid, SIGKILL)`` of an actor's process (its pid asked from the actor itself) or
``ray.kill(actor, no_restart=False)``. Engines are the transformers ones on the tiny model, so a restart
costs seconds.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

FAST = ["rollout.engine=hf", "reward.engine=hf", "run.progress_bar=false", "train.max_staleness=0"]


def tiny_config(tmp_path: Path, *overrides: str):
    from cdra_ray.config import load_config

    return load_config("tiny_test", [f"run.output_dir={tmp_path}", *FAST, *overrides])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def data_order(config, count: int) -> list[str]:
    """The first ``count`` scenario uids of the run's data order (what an uninterrupted run trains)."""
    from cdra_ray.data.scenarios import ScenarioOrder, load_scenarios

    order = ScenarioOrder(load_scenarios(config.data.path, config.data.max_scenarios), seed=config.data.seed,
                          shuffle=config.data.shuffle)
    return [order.next().uid for _ in range(count)]


def pid_of(actor) -> int:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def _running(ray, chain, stage: int) -> bool:
    """Stage ``stage`` of ``chain`` is in flight: its input is ready and its output is not."""
    refs = list(chain.refs)
    if len(refs) <= stage:
        return False
    if stage > 0 and not ray.wait([refs[stage - 1]], timeout=0)[0]:
        return False
    return not ray.wait([refs[stage]], timeout=0)[0]


class KillMidStage(threading.Thread):
    """Kills, one after another, each ``(after_update, stage, actor, how)`` target while that stage of some chain
    is running (``how``: "SIGKILL" of the actor's process, its pid asked beforehand so the kill is immediate, or
    "ray.kill" with restart allowed); records ``(how, update)`` of each kill."""

    def __init__(self, driver, targets):
        super().__init__(daemon=True)
        self.driver, self.targets, self.killed, self.error = driver, list(targets), [], None

    def run(self) -> None:
        import ray

        try:
            for after_update, stage, actor, how in self.targets:
                while self.driver.state.policy_version < after_update:
                    time.sleep(0.002)
                pid = pid_of(actor) if how == "SIGKILL" else None
                while True:
                    running = [c for c in list(self.driver.in_flight.values()) if _running(ray, c, stage)]
                    if running and stage > 0:
                        # the call leaves the driver only once its input is ready: give it a moment to reach the
                        # actor (a call still on the driver's side would simply wait for the restarted actor)
                        time.sleep(0.02)
                        running = [c for c in running if _running(ray, c, stage)]
                    if running:
                        break
                    time.sleep(0.001)
                if pid is not None:
                    sigkill(pid)
                else:
                    ray.kill(actor, no_restart=False)
                self.killed.append((how, self.driver.state.policy_version))
        except Exception as err:  # noqa: BLE001 - reported by the test
            self.error = err
