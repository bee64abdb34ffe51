"""Reward models: one contract (``base.py``), a registry selected by ``reward.kind``, and the variants.

Importing this package registers every variant; see ``base.py`` for how to add one.
"""

from cdra_ray.rewards.base import (
    REWARD_MODELS,
    RewardMetrics,
    RewardModel,
    RewardOutput,
    RewardParseError,
    create_reward_model,
    outcome_step_score,
    register_reward_model,
)
from cdra_ray.rewards import genrm, prm, rubric_rm, rule, scalar_rm, tts  # noqa: F401  (register the variants)
from cdra_ray.rewards.pers_genprm import PersGenPRM

__all__ = [
    "REWARD_MODELS",
    "PersGenPRM",
    "RewardMetrics",
    "RewardModel",
    "RewardOutput",
    "RewardParseError",
    "create_reward_model",
    "outcome_step_score",
    "register_reward_model",
]
