"""Advantage estimators for ONE group of G responses to the same (P, q), behind a registry.

Inputs (all for one group; C = padded token width, S = padded step count)::

    step_rewards  (G, S) float  r_i^j, the reward of step j of response i (an outcome reward is one step)
    step_mask     (G, S) bool   which steps exist (response i has T_i of them)
    token_steps   (G, C) long   step index of each generated token (from token_steps.py)
    token_mask    (G, C) bool   which tokens exist (response i has C_i of them)

Output: ``(G, C)`` advantages, exactly 0.0 at masked tokens. Values at masked positions of any input are never
read (they may be NaN), so appending padding never changes a result.

Conventions shared by every estimator
-------------------------------------
- std is the unbiased (Bessel-corrected, ``torch.std`` default) standard deviation; a single value has std 0.
- A normalization set whose values are all equal gives advantage exactly 0 (not ``tiny / eps``), so
  :func:`zero_advantage_rate` counts such groups reliably. Otherwise ``A = (x - mean) / (std + eps)``.
- Computation is in float64; the result has ``step_rewards``' dtype.
- A group needs at least 2 responses (G = 1 has no baseline and is rejected as a configuration error).

Estimators (paper Eq. 3 and App. D)::

    grpo            A_i,t = (R_i - mean_i R) / (std_i R + eps),  R_i = sum_j r_i^j  (one step: the outcome)
    process_future  A_i,t = sum_{j >= step(i,t)} (r_i^j - mu_R) / (sigma_R + eps), mu/sigma over all steps
    cdpa            A_i,t = (r_i^{step(i,t)} - mu_t) / (sigma_t + eps)
                    normalize="position": mu_t, sigma_t over the responses that have a token at position t
                    normalize="pooled":   mu, sigma over all tokens of the group

Adding an estimator: decorate ``fn(step_rewards, step_mask, token_steps, token_mask, *, eps, <options>)`` with
``@register_advantage_estimator("name", OptionsClass)`` (the options class defaults to one made from the
keyword-only parameters). It receives validated float64 rewards with masked entries set to 0 and token_steps with
masked entries set to 0. The names and option classes of the built-in estimators are in :mod:`.catalog`
(torch-free, so a config is checked without importing torch).
"""

from __future__ import annotations

from typing import Sequence

import torch

from cdra_ray.algorithms.catalog import ADVANTAGES, CdpaOptions, GrpoOptions
from cdra_ray.registry import options_dict, options_from_signature

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "register_advantage_estimator",
    "compute_advantages",
    "zero_advantage_rate",
    "masked_normalize",
]

ADVANTAGE_ESTIMATORS = ADVANTAGES  # name -> (options class, estimator)


def register_advantage_estimator(name: str, options: type | None = None):
    """Decorator adding an estimator under ``name`` (a duplicate name is an error)."""

    def decorator(fn):
        if name in ADVANTAGES:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGES.register(name, options or options_from_signature(fn), fn)
        return fn

    return decorator


# ----------------------------------------------------------------------------------------------- statistics
def masked_normalize(values: torch.Tensor, mask: torch.Tensor, eps: float, dim=None) -> torch.Tensor:
    """``(values - mean) / (std + eps)`` over the masked-in entries along ``dim`` (all dims if None).

    Unbiased std; one value -> std 0; a set of equal values -> exactly 0. Masked-out entries come back as 0.
    The paper's text says "zero mean and unit variance" without naming the estimator; its code uses
    ``torch.std`` (unbiased) + 1e-8 and no exact-zero rule (equal values give round-off / 1e-8).
    """
    mask = mask.to(torch.bool)
    x = torch.where(mask, values, torch.zeros_like(values))
    reduce_dims = tuple(range(values.dim())) if dim is None else dim
    count = mask.sum(dim=reduce_dims, keepdim=True).to(values.dtype)
    mean = x.sum(dim=reduce_dims, keepdim=True) / count.clamp(min=1)
    centered = torch.where(mask, x - mean, torch.zeros_like(x))
    var = (centered**2).sum(dim=reduce_dims, keepdim=True) / (count - 1).clamp(min=1)
    std = torch.where(count > 1, var.sqrt(), torch.zeros_like(var))
    vmax = torch.where(mask, x, torch.full_like(x, -torch.inf)).amax(dim=reduce_dims, keepdim=True)
    vmin = torch.where(mask, x, torch.full_like(x, torch.inf)).amin(dim=reduce_dims, keepdim=True)
    constant = (vmax == vmin) | (count <= 1)
    if (~constant & ~(torch.isfinite(mean) & torch.isfinite(std))).any():  # an inf std would give all-zero output
        raise ValueError(f"values too large to normalize: their mean or standard deviation overflowed "
                         f"{values.dtype} (largest |value| {x.abs().max().item():.3g})")
    out = torch.where(constant, torch.zeros_like(x), centered / (std + eps))
    return torch.where(mask, out, torch.zeros_like(out))


def _token_rewards(step_rewards: torch.Tensor, token_steps: torch.Tensor) -> torch.Tensor:
    """r_{i,t} = r_i^{step(i,t)} (masked tokens read step 0; callers mask them)."""
    return step_rewards.gather(1, token_steps)


# ----------------------------------------------------------------------------------------------- estimators
def grpo_advantages(step_rewards, step_mask, token_steps, token_mask, *, eps: float,
                    scale: bool = GrpoOptions.scale):
    """Outcome supervision: the group-normalized response reward, broadcast over the response's tokens.

    Paper's text (App. D, OS): ``(r_i - mu_r) / (sigma_r + delta)`` with one reward per response. Departure:
    when a response has several steps, its reward is their sum ``R_dense = sum_j r_i^j`` (§2.3), so ``grpo`` on
    Pers-GenPRM step scores is GRPO on the dense reward; pass one step per response for a plain outcome reward.
    ``scale=False`` skips the division (Dr. GRPO; TRL ``scale_rewards="none"``). The paper's code
    (Deep-pref ``CDPA_trainer.py``) has no outcome estimator; its GRPO baselines use TRL, which divides by
    ``std + 1e-4`` (``eps`` here, default 1e-6) and can also normalize by the batch std (not offered).
    """
    rewards = (step_rewards * step_mask).sum(dim=1)  # (G,) masked steps are already 0
    valid = torch.ones_like(rewards, dtype=torch.bool)
    if scale:
        adv = masked_normalize(rewards, valid, eps)
    else:
        adv = rewards - rewards.mean()
        adv = torch.where(rewards.amax() == rewards.amin(), torch.zeros_like(adv), adv)
    return adv[:, None].expand_as(token_steps).to(step_rewards.dtype)


def process_future_advantages(step_rewards, step_mask, token_steps, token_mask, *, eps: float):
    """Process supervision (paper App. D, PS; DeepSeekMath): sum of the normalized rewards of this and later steps.

    ``r~_i^j = (r_i^j - mu_R) / (sigma_R + eps)`` with mu_R, sigma_R over every step of every response of the
    group; ``A_{i,t} = sum_{j >= step(i,t)} r~_i^j``. The paper writes the sum as ``j: step >= t``; we read it as
    the steps at or after the token's own step. Not in the paper's code.
    """
    normalized = masked_normalize(step_rewards, step_mask, eps)  # (G, S), 0 at masked steps
    future = normalized.flip(1).cumsum(1).flip(1)  # future[i, j] = sum_{j' >= j} r~_i^j'
    return future.gather(1, token_steps)


def cdpa_advantages(
    step_rewards,
    step_mask,
    token_steps,
    token_mask,
    *,
    eps: float,
    normalize: str = CdpaOptions.normalize,
    pads_count: bool = CdpaOptions.pads_count,
):
    """CDPA (paper Eq. 3): each token carries its step's reward, normalized across the group.

    ``normalize="position"`` (default; the paper's text "across all G responses in the group at the
    corresponding token position"): mu_t, sigma_t over the responses that HAVE a token at position t; padding
    never counts, and a position only one response reaches gets A = 0 (sigma = 0). ``pads_count=True`` reproduces
    the paper's code (Deep-pref ``CDPA_trainer.py``): every response counts at every position, with reward 0
    where it has no token; so a long response's tail is compared against zeros, and its advantage there is
    driven by the sign of its own reward. (The code also uses eps = 1e-8: pass ``eps=1e-8`` for that.)
    ``normalize="pooled"``: one mu, sigma over all tokens of the group (longer responses weigh more); not in the
    paper. ``pads_count`` applies to ``position`` only.
    """
    CdpaOptions(normalize, pads_count)  # checks them
    zero = torch.zeros((), dtype=step_rewards.dtype, device=step_rewards.device)
    rewards = torch.where(token_mask, _token_rewards(step_rewards, token_steps), zero)
    if normalize == "pooled":
        return masked_normalize(rewards, token_mask, eps)
    stats_mask = torch.ones_like(token_mask) if pads_count else token_mask
    adv = masked_normalize(rewards, stats_mask, eps, dim=0)  # per position t, over responses
    return torch.where(token_mask, adv, torch.zeros_like(adv))


# ----------------------------------------------------------------------------------------------- entry point
def _as_bool(name: str, x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.bool:
        return x
    if x.is_complex() or not ((x == 0) | (x == 1)).all():
        raise ValueError(f"{name} must be a bool (or 0/1) mask, got values outside {{0, 1}} (dtype {x.dtype})")
    return x.to(torch.bool)


def compute_advantages(
    name: str,
    step_rewards: torch.Tensor,
    step_mask: torch.Tensor,
    token_steps: torch.Tensor,
    token_mask: torch.Tensor,
    *,
    eps: float = 1e-6,
    **options,
) -> torch.Tensor:
    """Advantages ``(G, C)`` of one group with the estimator ``name`` (see the module docstring).

    Raises ValueError naming the argument for: an unknown estimator or option, non-tensors, wrong ranks or
    mismatched shapes, an empty group or a group of one, a response without a valid step, NaN/inf rewards at
    valid steps, or a valid token pointing at a missing step.

    Departures common to all estimators: eps defaults to 1e-6 (paper's code 1e-8, TRL 1e-4; pass ``eps`` for
    either); an unparsed step score is never turned into 0 here (the paper's code does that silently; the reward
    service applies its counted default before this point); each estimator's docstring lists the rest.
    """
    if name not in ADVANTAGES:
        raise ValueError(f"unknown advantage estimator {name!r}; valid: {ADVANTAGES.names()}")
    entry = ADVANTAGES.entry(name)
    checked = ADVANTAGES.options(name, options, key="algorithm")
    for arg, value in (("step_rewards", step_rewards), ("step_mask", step_mask), ("token_steps", token_steps),
                       ("token_mask", token_mask)):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{arg} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() != 2:
            raise ValueError(f"{arg} must be 2-D, got shape {tuple(value.shape)}")
    if not step_rewards.is_floating_point():
        raise ValueError(f"step_rewards must be a floating tensor, got dtype {step_rewards.dtype}")
    if step_mask.shape != step_rewards.shape:
        raise ValueError(f"step_mask shape {tuple(step_mask.shape)} != step_rewards shape {tuple(step_rewards.shape)}")
    if token_mask.shape != token_steps.shape:
        raise ValueError(f"token_mask shape {tuple(token_mask.shape)} != token_steps shape {tuple(token_steps.shape)}")
    if token_steps.shape[0] != step_rewards.shape[0]:
        raise ValueError(
            f"token_steps has {token_steps.shape[0]} responses but step_rewards has {step_rewards.shape[0]}"
        )
    if token_steps.is_floating_point() or token_steps.dtype == torch.bool:
        raise ValueError(f"token_steps must be an integer tensor, got dtype {token_steps.dtype}")
    if not isinstance(eps, (int, float)) or not (eps >= 0 and eps < float("inf")):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    group_size, num_steps = step_rewards.shape
    if group_size == 0:
        raise ValueError("step_rewards: empty group (G = 0)")
    if group_size == 1:
        raise ValueError("step_rewards: a group of one response has no baseline (G = 1); sample G >= 2 per prompt")
    if num_steps == 0:
        raise ValueError("step_rewards has no step column (S = 0)")
    step_mask = _as_bool("step_mask", step_mask)
    token_mask = _as_bool("token_mask", token_mask)
    no_step = (~step_mask.any(dim=1)).nonzero().flatten().tolist()
    if no_step:
        raise ValueError(f"step_mask: response(s) {no_step} have no valid step")
    bad = (step_mask & ~torch.isfinite(step_rewards)).nonzero().tolist()
    if bad:
        raise ValueError(f"step_rewards has NaN/inf at valid (response, step) {bad[:5]}")
    steps = token_steps.to(torch.long)
    out_of_range = token_mask & ((steps < 0) | (steps >= num_steps))
    if out_of_range.any():
        i, t = out_of_range.nonzero()[0].tolist()
        raise ValueError(f"token_steps[{i}, {t}] = {steps[i, t].item()} is outside [0, {num_steps})")
    steps = torch.where(token_mask, steps, torch.zeros_like(steps))
    points_to_missing = token_mask & ~step_mask.gather(1, steps)
    if points_to_missing.any():
        i, t = points_to_missing.nonzero()[0].tolist()
        raise ValueError(f"token_steps[{i}, {t}] = {steps[i, t].item()} points to a step masked out in step_mask")

    rewards64 = torch.where(step_mask, step_rewards.to(torch.float64), torch.zeros((), dtype=torch.float64,
                                                                                   device=step_rewards.device))
    adv = entry.load()(rewards64, step_mask, steps, token_mask, eps=float(eps), **options_dict(checked))
    adv = torch.where(token_mask, adv.to(torch.float64), torch.zeros_like(adv, dtype=torch.float64))
    if not torch.isfinite(adv).all():
        raise ValueError("step_rewards are too large: the advantages overflowed")
    return adv.to(step_rewards.dtype)


def zero_advantage_rate(
    advantages: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], *, atol: float = 0.0
) -> float:
    """Share of groups whose advantages are all zero at their valid tokens (the paper's "zero-advantage" rate).

    ``advantages[g]`` and ``masks[g]`` are group g's ``(G, C)`` tensors (widths may differ between groups). A
    group with no valid token counts as all-zero. ``atol`` > 0 treats ``|A| <= atol`` as zero. The paper names
    the problem without a formula; its code logs ``frac_zero_std``, the share of (group, token position) pairs
    with zero std, which counts positions, not groups.
    """
    if len(advantages) != len(masks):
        raise ValueError(f"advantages has {len(advantages)} groups but masks has {len(masks)}")
    if len(advantages) == 0:
        raise ValueError("advantages: no groups given")
    zero = 0
    for g, (adv, mask) in enumerate(zip(advantages, masks)):
        if adv.shape != mask.shape:
            raise ValueError(f"advantages[{g}] shape {tuple(adv.shape)} != masks[{g}] shape {tuple(mask.shape)}")
        mask = _as_bool(f"masks[{g}]", mask)
        values = adv[mask]
        if not torch.isfinite(values).all():
            raise ValueError(f"advantages[{g}] has NaN/inf at valid tokens")
        zero += bool((values.abs() <= atol).all())
    return zero / len(advantages)
