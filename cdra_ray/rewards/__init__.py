"""Reward models: one contract (``base.py``), the registry of kinds selected by ``reward.kind`` (``catalog.py``,
torch-free), and the variants, each imported when first built or named here.

See ``base.py`` for how to add one.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "REWARD_MODELS": "cdra_ray.rewards.base",
    "RewardMetrics": "cdra_ray.rewards.base",
    "RewardModel": "cdra_ray.rewards.base",
    "RewardOutput": "cdra_ray.rewards.base",
    "RewardParseError": "cdra_ray.rewards.base",
    "outcome_step_score": "cdra_ray.rewards.base",
    "create_reward_model": "cdra_ray.rewards.catalog",
    "register_reward_model": "cdra_ray.rewards.catalog",
    "REWARDS": "cdra_ray.rewards.catalog",
    "PersGenPRM": "cdra_ray.rewards.pers_genprm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cdra_ray.rewards' has no attribute {name!r}")
