"""Reward models: one contract (``base.py``), the registry of kinds selected by ``reward.kind`` (``catalog.py``,
torch-free), and the variants, each imported when first built or named here.

See ``base.py`` for how to add one.
"""

from __future__ import annotations

from cdra_ray.registry import lazy_exports

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
__getattr__ = lazy_exports(__name__, _EXPORTS)
