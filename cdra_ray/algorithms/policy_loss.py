"""The CDPA policy loss: PPO-clipped per-token surrogate + beta * k3 KL to the reference, aggregated over tokens.

Per valid token (N responses, C padded tokens; all tensors ``(N, C)``)::

    rho_t  = exp(logp_t - old_t)                                  importance ratio to pi_old
    pg_t   = -min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t) * w_t
    w_t    = min(exp(old_t - behaviour_t), cap)   (detached; 1 when no behaviour log-probs are given)
    kl_t   = exp(r_t) - r_t - 1,  r_t = ref_t - logp_t               (k3 estimator of KL(pi_theta || pi_ref))
    l_t    = pg_t + beta * kl_t

Aggregations of l over valid tokens (mask)::

    seq-mean-token-sum   (1/N) sum_i sum_t l_it               the paper's Eq. (1/G sum_i sum_t), default
    seq-mean-token-mean  (1/N) sum_i (1/C_i) sum_t l_it       GRPO (TRL loss_type="grpo", the paper's code)
    token-mean           sum_i sum_t l_it / sum_i C_i         DAPO (TRL "dapo", and "bnpo" on one batch)

Departures
----------
Paper's text (§2.4): the KL is one sequence-level term ``- beta * D_KL`` outside the token sum, with no
estimator named; here it is the per-token k3 estimate aggregated like the surrogate (as in the paper's code and
TRL). The paper does not discuss staleness; ``behaviour_logprobs``/``importance_cap`` add truncated importance
sampling (TIS) for samples drawn by an older policy version or another engine, multiplying the surrogate only
(not the KL), like TRL's ``vllm_importance_sampling_mode="token_truncate"``. TRL 1.16 by default also multiplies
the KL by rho_t (``use_bias_correction_kl=True``); here that is ``kl_ratio_correction=True``, off by default.
Paper's code (Deep-pref ``CDPA_trainer.py``): the same per-token clipped surrogate and k3 KL, but aggregated
``seq-mean-token-mean`` (pass that aggregation for the literal behaviour), symmetric clipping, no TIS.
"""

from __future__ import annotations

import math

import torch

from cdra_ray.algorithms.catalog import AGGREGATIONS

__all__ = ["AGGREGATIONS", "cdpa_policy_loss", "aggregate"]


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """Reduce ``(N, C)`` per-token values over the valid tokens with one of :data:`AGGREGATIONS`.

    A response without valid tokens still counts in N for the ``seq-mean-*`` rules (it adds 0), like TRL.
    Paper: its text's Eq. is ``seq-mean-token-sum``; its code uses ``seq-mean-token-mean``.
    """
    values = torch.where(mask, per_token, torch.zeros_like(per_token))
    if aggregation == "seq-mean-token-sum":
        return values.sum(dim=1).mean()
    if aggregation == "seq-mean-token-mean":
        lengths = mask.sum(dim=1).clamp(min=1).to(values.dtype)
        return (values.sum(dim=1) / lengths).mean()
    if aggregation == "token-mean":
        return values.sum() / mask.sum().clamp(min=1).to(values.dtype)
    raise ValueError(f"unknown aggregation {aggregation!r}; valid: {AGGREGATIONS.names()}")


def _check_finite(name: str, x: torch.Tensor, mask: torch.Tensor) -> None:
    bad = mask & ~torch.isfinite(x.detach())
    if bad.any():
        i, t = bad.nonzero()[0].tolist()
        raise ValueError(f"{name} has NaN/inf at valid token ({i}, {t}): {x[i, t].item()}")


def _number(name: str, value, *, low: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (strict and value == low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")
    return float(value)


def cdpa_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    beta: float = 0.0,
    aggregation: str = "seq-mean-token-sum",
    behaviour_logprobs: torch.Tensor | None = None,
    importance_cap: float | None = None,
    clip_eps_high: float | None = None,
    kl_ratio_correction: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss (a scalar that carries gradient through ``logprobs``) and float metrics; see the module docstring.

    ``ref_logprobs`` may be None only when ``beta == 0``. ``clip_eps_high`` (default ``clip_eps``) allows DAPO's
    asymmetric clip-higher. ``behaviour_logprobs`` turns on the importance weight ``min(exp(old - behaviour),
    importance_cap)`` (no cap when ``importance_cap`` is None). Values at masked positions are never read.

    Metrics (over valid tokens): ``loss``, ``pg_loss``, ``kl_loss`` (aggregated like the loss), ``kl_mean``
    (token mean of kl_t, when ``ref_logprobs`` is given), ``clip_fraction`` (tokens whose clipped branch is
    active: rho < 1-eps with A < 0, or rho > 1+eps with A > 0; TRL's "region" clip ratio) with its
    ``clip_fraction_low``/``_high`` parts, ``ratio_min/mean/max``, ``advantage_mean/std/min/max`` (unbiased
    std), ``num_tokens``; with TIS also ``importance_weight_mean/max`` and ``importance_capped_fraction``.
    """
    tensors = {"logprobs": logprobs, "old_logprobs": old_logprobs, "advantages": advantages, "mask": mask}
    if ref_logprobs is not None:
        tensors["ref_logprobs"] = ref_logprobs
    if behaviour_logprobs is not None:
        tensors["behaviour_logprobs"] = behaviour_logprobs
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D (N, C), got shape {tuple(x.shape)}")
        if x.shape != logprobs.shape:
            raise ValueError(f"{name} shape {tuple(x.shape)} != logprobs shape {tuple(logprobs.shape)}")
        if name != "mask" and not x.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if logprobs.shape[0] == 0:
        raise ValueError("logprobs: empty batch (N = 0)")
    if mask.dtype != torch.bool:
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"mask must be a bool or 0/1 tensor, got values outside {{0, 1}} (dtype {mask.dtype})")
        mask = mask.to(torch.bool)
    if not mask.any():
        raise ValueError("mask: no valid token in the batch")
    clip_low = _number("clip_eps", clip_eps, strict=True)
    clip_high = clip_low if clip_eps_high is None else _number("clip_eps_high", clip_eps_high, strict=True)
    beta = _number("beta", beta)
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; valid: {AGGREGATIONS.names()}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError("ref_logprobs is required when beta > 0")
    if importance_cap is not None:
        _number("importance_cap", importance_cap, strict=True)
        if behaviour_logprobs is None:
            raise ValueError("importance_cap needs behaviour_logprobs (the sampling engine's log-probs)")
    for name, x in tensors.items():
        if name != "mask":
            _check_finite(name, x, mask)

    def valid(x: torch.Tensor) -> torch.Tensor:  # zero the padding so nothing there can produce inf/NaN
        return torch.where(mask, x, torch.zeros_like(x))

    logp, old, adv = valid(logprobs), valid(old_logprobs).detach(), valid(advantages).detach()
    ratio = torch.exp(logp - old)
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    pg = -torch.min(ratio * adv, clipped * adv)
    weight = None
    if behaviour_logprobs is not None:
        weight = torch.exp(old - valid(behaviour_logprobs).detach())
        if importance_cap is not None:
            weight = torch.clamp(weight, max=importance_cap)
        pg = pg * weight
    per_token = pg
    kl = None
    if ref_logprobs is not None:
        r = valid(ref_logprobs).detach() - logp
        kl = torch.exp(r) - r - 1.0
        kl_term = kl * ratio if kl_ratio_correction else kl
        if beta > 0:
            per_token = pg + beta * kl_term
    loss = aggregate(per_token, mask, aggregation)

    with torch.no_grad():
        n = mask.sum().item()
        ratio_v, adv_v = ratio.detach()[mask], adv[mask]
        low = (ratio.detach() < 1.0 - clip_low) & (adv < 0) & mask
        high = (ratio.detach() > 1.0 + clip_high) & (adv > 0) & mask
        metrics = {
            "loss": loss.item(),
            "pg_loss": aggregate(pg.detach(), mask, aggregation).item(),
            "clip_fraction": ((low | high).sum() / n).item(),
            "clip_fraction_low": (low.sum() / n).item(),
            "clip_fraction_high": (high.sum() / n).item(),
            "ratio_min": ratio_v.min().item(),
            "ratio_mean": ratio_v.mean().item(),
            "ratio_max": ratio_v.max().item(),
            "advantage_mean": adv_v.mean().item(),
            "advantage_std": adv_v.std().item() if n > 1 else 0.0,
            "advantage_min": adv_v.min().item(),
            "advantage_max": adv_v.max().item(),
            "num_tokens": float(n),
        }
        if kl is not None:
            metrics["kl_mean"] = kl.detach()[mask].mean().item()
            metrics["kl_loss"] = (beta * aggregate(kl_term.detach(), mask, aggregation)).item()
        if weight is not None:
            w = weight[mask]
            metrics["importance_weight_mean"] = w.mean().item()
            metrics["importance_weight_max"] = w.max().item()
            capped = (torch.exp(old - valid(behaviour_logprobs).detach())[mask] > importance_cap) if (
                importance_cap is not None) else torch.zeros_like(w, dtype=torch.bool)
            metrics["importance_capped_fraction"] = capped.float().mean().item()
    if not math.isfinite(metrics["loss"]):
        raise ValueError("the loss is not finite: log-prob differences too large (check logprobs/old_logprobs)")
    return loss, metrics
