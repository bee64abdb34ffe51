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

import importlib

_EXPORTS = {
    "ADVANTAGE_ESTIMATORS": "advantages",
    "compute_advantages": "advantages",
    "register_advantage_estimator": "advantages",
    "zero_advantage_rate": "advantages",
    "AGGREGATIONS": "policy_loss",
    "cdpa_policy_loss": "policy_loss",
    "parse_final_score": "scores",
    "parse_judge_answer": "scores",
    "parse_step_score": "scores",
    "segment_steps": "steps",
    "map_tokens_to_steps": "token_steps",
    "token_start_offsets": "token_steps",
    "token_steps_for_response": "token_steps",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):  # submodules load on first use: the torch-free ones stay torch-free
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"cdra_ray.algorithms.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'cdra_ray.algorithms' has no attribute {name!r}")
