"""Placement by Ray resources, never by host name: the custom resources each role's actors ask for.

A role's ``resources`` key (``rollout.resources``, ``reward.resources``, ``learner.resources`` for the learner and
the reference) names custom resources, e.g. ``{node_b: 1}``: Ray places the role's actors only on nodes started
with that resource (``ray start --resources '{"node_b": 8}'``), so node types, not hosts, decide where roles run.
"""

from __future__ import annotations

from cdra_ray.config import ConfigError
from cdra_ray.config.loading import RESERVED_RESOURCES, RESOURCE_KEYS
from cdra_ray.config.schema import Config


def custom_resources(resources: dict) -> dict:
    """``.options()`` keywords for a role's custom resources (none: Ray's default placement)."""
    return {"resources": {name: float(amount) for name, amount in resources.items()}} if resources else {}


def custom_resource_demand(config: Config) -> dict[str, float]:
    """Total amount of each custom resource the run's actors ask for."""
    counts = {"rollout.resources": config.rollout.num_workers, "reward.resources": config.reward.num_replicas,
              "learner.resources": config.learner.num_ranks + config.learner.reference_num_ranks}  # learner + reference ranks
    demand: dict[str, float] = {}
    for key in RESOURCE_KEYS:
        section = getattr(config, key.split(".")[0])
        for name, amount in section.resources.items():
            demand[name] = demand.get(name, 0.0) + amount * counts[key]
    return demand


def check_custom_resources(config: Config, available: dict[str, float]) -> None:
    """Refuse, naming the key, a custom resource the cluster lacks or has too little of in total (the actors
    would wait for it forever). Per-node packing is left to Ray."""
    demand = custom_resource_demand(config)
    for key in RESOURCE_KEYS:
        for name in getattr(config, key.split(".")[0]).resources:
            if available.get(name, 0.0) < demand[name]:
                offered = sorted(k for k in available if k not in RESERVED_RESOURCES
                                 and not k.startswith("node:"))
                raise ConfigError(f"{key}.{name}: the run's actors ask for {demand[name]:g} in total but the Ray "
                                  f"cluster offers {available.get(name, 0.0):g} (custom resources it has: "
                                  f"{offered}); start nodes with `ray start --resources '{{\"{name}\": N}}'`")
