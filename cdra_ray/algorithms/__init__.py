"""The math of CDRA as pure functions (torch/numpy/stdlib only; no Ray, vLLM or DeepSpeed).

- :mod:`.steps`        response text -> step character spans ("Step k:" markers)
- :mod:`.token_steps`  generated token ids -> step index per token (decoded character offsets)
- :mod:`.scores`       reward-model / judge output -> score (SCORE, FINAL SCORE, <answer>)
- :mod:`.catalog`      names and option classes of the estimators and aggregations (torch-free)
- :mod:`.advantages`   per-group advantage estimators behind a registry (grpo, process_future, cdpa)
- :mod:`.policy_loss`  PPO-clipped loss + k3 KL with seq-mean-token-sum / seq-mean-token-mean / token-mean

Each function's docstring says how it departs from the paper's text and from the paper's code
(github Zephyrian-Hugh/Deep-pref, ``scripts/CDPA_trainer.py``) and which switch restores the literal behaviour.
"""

from __future__ import annotations

from cdra_ray.registry import lazy_exports

_EXPORTS = {
    "ADVANTAGE_ESTIMATORS": "cdra_ray.algorithms.advantages",
    "compute_advantages": "cdra_ray.algorithms.advantages",
    "register_advantage_estimator": "cdra_ray.algorithms.advantages",
    "zero_advantage_rate": "cdra_ray.algorithms.advantages",
    "AGGREGATIONS": "cdra_ray.algorithms.policy_loss",
    "cdpa_policy_loss": "cdra_ray.algorithms.policy_loss",
    "parse_final_score": "cdra_ray.algorithms.scores",
    "parse_judge_answer": "cdra_ray.algorithms.scores",
    "parse_step_score": "cdra_ray.algorithms.scores",
    "segment_steps": "cdra_ray.algorithms.steps",
    "map_tokens_to_steps": "cdra_ray.algorithms.token_steps",
    "token_start_offsets": "cdra_ray.algorithms.token_steps",
    "token_steps_for_response": "cdra_ray.algorithms.token_steps",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)  # submodules load on first use: torch-free ones stay so
