"""The Ray side of construction: engine actors (thin shells over :class:`EngineServer`), one task per scenario,
and the driver loop that keeps ``concurrency`` tasks in flight and appends each result as it arrives."""

from __future__ import annotations

import time

import ray

from cdra_ray.actors.environment import actor_env, apply_granted_threads, threads_for
from cdra_ray.construction.backend import BackendSettings, ModelBackend
from cdra_ray.construction.engines import EngineServer, ModelSpec, RemoteEngine
from cdra_ray.construction.search import CouncilSearch, SearchSettings

MAX_CALLS_IN_FLIGHT = 256  # threaded engine actor: concurrent generate calls that may wait to join a batch


@ray.remote
class EngineActor(EngineServer):
    def __init__(self, spec: ModelSpec, num_threads: int, max_wait_s: float, max_batch: int):
        import torch

        from cdra_ray.engines.factory import create_engine
        from cdra_ray.logs import configure_actor_logs

        configure_actor_logs("construct-engine")
        torch.set_num_threads(apply_granted_threads(num_threads, "construct-engine"))
        super().__init__(create_engine(spec.kind, spec.model_dir, **spec.options), max_wait_s=max_wait_s,
                         max_batch=max_batch)


def start_engine_pools(specs: tuple[ModelSpec, ...], c) -> dict[tuple, list]:
    """``num_engines`` actors per distinct model (generator and evaluator share when they are the same)."""
    pools: dict[tuple, list] = {}
    for spec in specs:
        if spec.key in pools:
            continue
        env = actor_env(c.engine_num_cpus, spec.kind, c.kv_cache_gb)
        pools[spec.key] = [
            EngineActor.options(num_cpus=c.engine_num_cpus, max_concurrency=MAX_CALLS_IN_FLIGHT,
                                runtime_env={"env_vars": env}).remote(
                spec, threads_for(c.engine_num_cpus), c.batch_wait_s if c.batch_across_scenarios else 0.0,
                MAX_CALLS_IN_FLIGHT if c.batch_across_scenarios else 1)
            for _ in range(c.num_engines)
        ]
    ray.get([a.__ray_ready__.remote() for pool in pools.values() for a in pool])
    return pools


def stop_engine_pools(pools: dict[tuple, list]) -> None:
    for pool in pools.values():
        for actor in pool:
            ray.kill(actor)


@ray.remote(num_cpus=0)
def build_scenario(scenario, search: SearchSettings, settings: BackendSettings, generator, generator_dir: str,
                   evaluator, evaluator_dir: str) -> dict:
    backend = ModelBackend(RemoteEngine(generator, generator_dir), RemoteEngine(evaluator, evaluator_dir), settings)
    return CouncilSearch(backend, search).build(scenario)


def run_scenario_tasks(scenarios: list, pools: dict, specs: tuple[ModelSpec, ModelSpec], search: SearchSettings,
                       settings: BackendSettings, concurrency: int, writer, *, progress: bool = True) -> dict:
    """Every scenario as a task, ``concurrency`` at a time; results appended in the order they finish."""
    from tqdm import tqdm

    generator_spec, evaluator_spec = specs
    pending = list(reversed(scenarios))
    in_flight: dict = {}
    nodes = 0
    start = time.perf_counter()
    bar = tqdm(total=len(scenarios), desc="construct", unit="scenario", disable=not progress)
    try:
        while pending or in_flight:
            while pending and len(in_flight) < concurrency:
                scenario = pending.pop()
                k = scenario.index
                generator = pools[generator_spec.key][k % len(pools[generator_spec.key])]
                evaluator = pools[evaluator_spec.key][k % len(pools[evaluator_spec.key])]
                ref = build_scenario.remote(scenario, search, settings, generator, generator_spec.model_dir,
                                            evaluator, evaluator_spec.model_dir)
                in_flight[ref] = scenario
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                in_flight.pop(ref)
                tree = ray.get(ref)
                writer.add(tree)
                nodes += len(tree["nodes"])
                elapsed = time.perf_counter() - start
                bar.set_postfix(nodes=nodes, nodes_per_s=f"{nodes / elapsed:.2f}")
                bar.update(1)
    finally:
        bar.close()
        for ref in in_flight:
            ray.cancel(ref)
    elapsed = time.perf_counter() - start
    return {"build_seconds": round(elapsed, 2), "nodes_built": nodes,
            "nodes_per_second": round(nodes / elapsed, 4) if elapsed > 0 else None}
