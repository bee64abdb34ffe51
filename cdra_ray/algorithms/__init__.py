"""The math of CDRA as pure functions (torch/numpy/stdlib only; no Ray, vLLM or DeepSpeed).

- :mod:`.steps`        response text -> step character spans ("Step k:" markers)
- :mod:`.token_steps`  generated token ids -> step index per token (decoded character offsets)
- :mod:`.scores`       reward-model / judge output -> score (SCORE, FINAL SCORE, <answer>)
- :mod:`.advantages`   per-group advantage estimators behind a registry (grpo, process_future, cdpa)
- :mod:`.policy_loss`  PPO-clipped loss + k3 KL with seq-mean-token-sum / seq-mean-token-mean / token-mean

Each function's docstring says how it departs from the paper's text and from the paper's code
(github Zephyrian-Hugh/Deep-pref, ``scripts/CDPA_trainer.py``) and which switch restores the literal behaviour.
"""

from cdra_ray.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    register_advantage_estimator,
    zero_advantage_rate,
)
from cdra_ray.algorithms.policy_loss import AGGREGATIONS, cdpa_policy_loss
from cdra_ray.algorithms.scores import parse_final_score, parse_judge_answer, parse_step_score
from cdra_ray.algorithms.steps import segment_steps
from cdra_ray.algorithms.token_steps import map_tokens_to_steps, token_start_offsets, token_steps_for_response

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "cdpa_policy_loss",
    "compute_advantages",
    "map_tokens_to_steps",
    "parse_final_score",
    "parse_judge_answer",
    "parse_step_score",
    "register_advantage_estimator",
    "segment_steps",
    "token_start_offsets",
    "token_steps_for_response",
    "zero_advantage_rate",
]
