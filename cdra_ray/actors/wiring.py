"""Start and stop the actors of one run: placement, resources and each actor's process environment.

The shells are in ``shells.py``, their constructor arguments in ``constructors.py``, the process environment in
``environment.py``, the weight publishers in ``publishers.py``, the learner's ranks in ``learner_group.py`` and a
sharded reference's (``learner.reference_num_ranks`` > 1) in ``reference_group.py``.
Resources come from the config (``rollout.num_cpus``, ``learner.num_gpus``, ``learner.num_ranks``...). Placement is
by Ray resources only, never by host name: a role's ``resources`` (``rollout.resources``, ``reward.resources``,
``learner.resources`` for every learner rank and the reference) are custom resources its actors ask for, so nodes
started with ``ray start --resources '{"node_b": 8}'`` take exactly the roles that name ``node_b``.
``reward.num_replicas`` > 1 starts that many reward actors behind a :class:`~cdra_ray.actors.reward_pool.RewardPool`.
"""

from __future__ import annotations

import ray

from cdra_ray.actors.constructors import (
    learner_settings,
    reference_options,
    reward_engine_spec,
    reward_model,
    rollout_engine_spec,
    rollout_worker_options,
)
from cdra_ray.actors.environment import actor_env, threads_for  # noqa: F401  (threads_for: re-exported)
from cdra_ray.actors.learner_group import LearnerGroup, start_learner_group
from cdra_ray.actors.placement import check_custom_resources, custom_resources
from cdra_ray.actors.reference_group import ReferenceGroup, start_reference_group
from cdra_ray.actors.publishers import create_publisher
from cdra_ray.actors.reward_pool import RewardPool
from cdra_ray.actors.shells import ReferenceActor, RewardActor, RolloutActor
from cdra_ray.config.schema import Config
from cdra_ray.driver.driver import Actors
from cdra_ray.logs import configure_run_logs

MAX_CONCURRENT_CALLS = 64  # threaded actors: how many streamed calls may wait to join a batch


def restart_options(config: Config) -> dict:
    """Ray restarts a dead rollout, reward or reference actor up to ``run.max_actor_restarts`` times; calls in
    flight fail instead of being replayed, so the driver can catch a restarted engine up on the weights before
    resubmitting them (:mod:`cdra_ray.driver.faults`). The learner is never restarted: its optimizer state
    lives only in its process, so the run stops and resumes from the last checkpoint instead."""
    return {"max_restarts": config.run.max_actor_restarts, "max_task_retries": 0}


def start_actors(config: Config, policy_dir: str, reference_dir: str, reward_dir: str) -> Actors:
    """Create every actor of a run; returns once all of them have finished loading their models."""
    configure_run_logs(config)  # before the actors: their environment carries where their logs go
    check_custom_resources(config, ray.cluster_resources())  # a missing resource would wait forever, silently
    r, w, lc = config.rollout, config.reward, config.learner
    device = lc.device
    workers = [
        RolloutActor.options(num_cpus=r.num_cpus, num_gpus=r.num_gpus * r.tensor_parallel_size,
                             max_concurrency=MAX_CONCURRENT_CALLS, **restart_options(config),
                             **custom_resources(r.resources),
                             runtime_env={"env_vars": actor_env(r.num_cpus, r.engine, r.kv_cache_gb, device)},
                             name=None).remote(rollout_engine_spec(config, policy_dir), rollout_worker_options(config))
        for _ in range(r.num_workers)
    ]
    replicas = [
        RewardActor.options(num_cpus=w.num_cpus, num_gpus=w.num_gpus, max_concurrency=MAX_CONCURRENT_CALLS,
                            **restart_options(config), **custom_resources(w.resources),
                            runtime_env={"env_vars": actor_env(w.num_cpus, w.engine, w.kv_cache_gb, device)}
                            ).remote(reward_engine_spec(config, reward_dir), *reward_model(config))
        for _ in range(w.num_replicas)
    ]
    reference_gpus = lc.num_gpus if lc.reference_num_gpus is None else lc.reference_num_gpus
    reference = learner = None
    if lc.reference_num_ranks == 1:
        reference = ReferenceActor.options(num_cpus=lc.num_cpus, num_gpus=reference_gpus,
                                           max_concurrency=MAX_CONCURRENT_CALLS, **restart_options(config),
                                           **custom_resources(lc.resources),
                                           runtime_env={"env_vars": actor_env(lc.num_cpus)}
                                           ).remote(reference_dir, reference_options(config))
    try:  # the learner's (and a sharded reference's) ranks start DeepSpeed together: errors surface here
        if reference is None:
            reference = start_reference_group(reference_dir, reference_options(config),
                                              num_ranks=lc.reference_num_ranks, num_cpus=lc.num_cpus,
                                              num_gpus=reference_gpus, env_vars=actor_env(lc.num_cpus),
                                              strategy=lc.placement_strategy, resources=lc.resources,
                                              max_concurrency=MAX_CONCURRENT_CALLS)
        learner = start_learner_group(learner_settings(config, policy_dir), num_ranks=lc.num_ranks,
                                      num_cpus=lc.num_cpus, num_gpus=lc.num_gpus, env_vars=actor_env(lc.num_cpus),
                                      strategy=lc.placement_strategy, resources=lc.resources)
        # Surface construction errors (bad model dir, engine failure) now, with the actor that failed.
        single = [] if isinstance(reference, ReferenceGroup) else [reference]
        ray.get([a.__ray_ready__.remote() for a in [*workers, *replicas, *single]])
    except BaseException:
        for actor in [*workers, *replicas]:
            ray.kill(actor)
        for group in (reference, learner):
            if isinstance(group, (LearnerGroup, ReferenceGroup)):
                group.kill()
            elif group is not None:
                ray.kill(group)
        raise
    publisher = create_publisher(r.weight_sync, learner, workers, r.tensor_parallel_size)
    reward = replicas[0] if len(replicas) == 1 else RewardPool(replicas)
    return Actors(rollout_workers=workers, reward=reward, reference=reference, learner=learner,
                  weight_publisher=publisher)


def reward_replicas(actors: Actors) -> list:
    """Every reward actor of the run (one, or the replicas of a pool)."""
    return actors.reward.replicas if isinstance(actors.reward, RewardPool) else [actors.reward]


def stop_actors(actors: Actors) -> None:
    for actor in [*actors.rollout_workers, *reward_replicas(actors)]:
        ray.kill(actor)
    for group in (actors.reference, actors.learner):
        if isinstance(group, (LearnerGroup, ReferenceGroup)):
            group.kill()
        else:
            ray.kill(group)


def total_cpus(config: Config) -> float:
    """Logical CPUs of a run: rollout engines, the reward actor, every reference rank and every learner rank."""
    c = config
    return (c.rollout.num_cpus * c.rollout.num_workers + c.reward.num_cpus * c.reward.num_replicas
            + (c.learner.reference_num_ranks + c.learner.num_ranks) * c.learner.num_cpus)
