"""How an update's rows are shared among the learner's data-parallel ranks, and how their results combine.

Pure functions (no torch.distributed), so the bookkeeping is unit-tested without a process group. The learner
(:class:`~cdra_ray.learner.learner.Learner`) uses them when it runs on ``learner.num_ranks`` > 1 processes:

- every rank receives the whole batch, computes the advantages of every group (cheap, and each group
  normalises only over itself) and trains on its own contiguous share of each mini-batch's rows
  (:func:`rank_share`), cut into micro-batches as one rank would (:func:`rank_micro_batches`);
- the gradient of the update is a sum over rows: each micro-batch's loss is weighted by its share of the
  *global* mini-batch's denominator (responses, or tokens for ``token-mean``) and by the world size
  (:func:`gradient_scale`), because DeepSpeed averages the ranks' gradients. The all-reduced gradient is then
  the one-rank gradient, whatever the split;
- every rank runs the same number of forward/backward passes: ZeRO-2 reduces gradients inside each backward
  and ZeRO-3 gathers parameters inside each forward, and those collectives pair up across ranks. A rank with
  fewer micro-batches pads with empty ones, which the learner runs as zero-weighted passes;
- the per-rank loss metrics (weighted means, minima, maxima) merge with :func:`merge_metric_sums`.
"""

from __future__ import annotations

from typing import Sequence


def rank_share(rows: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s contiguous share of ``rows``: sizes differ by at most one (``len(rows) * r // W`` cuts)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    n = len(rows)
    return list(rows[n * rank // world_size: n * (rank + 1) // world_size])


def rank_micro_batches(rows: Sequence[int], micro_batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """This rank's micro-batches of ``rows``, padded with empty ones to the count of the busiest rank."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    counts = [-(-len(rank_share(rows, r, world_size)) // micro_batch_size) for r in range(world_size)]
    mine = rank_share(rows, rank, world_size)
    chunks = [mine[k:k + micro_batch_size] for k in range(0, len(mine), micro_batch_size)]
    return chunks + [[] for _ in range(max(counts) - len(chunks))]


def gradient_scale(aggregation: str, rows: int, tokens: int, total_rows: int, total_tokens: int,
                   world_size: int = 1) -> float:
    """The factor on one micro-batch's aggregated loss so that the ranks' averaged gradient is the gradient of
    the whole mini-batch's loss.

    ``seq-mean-*`` averages over responses and ``token-mean`` over tokens, so a micro-batch holds
    ``rows / total_rows`` (or ``tokens / total_tokens``) of the mini-batch loss, totals counted over all ranks;
    DeepSpeed divides the summed gradients by ``world_size``, which the factor undoes.
    """
    share = tokens / total_tokens if aggregation == "token-mean" else rows / total_rows
    return share * world_size


def merge_metric_sums(per_rank: Sequence[dict[str, float]]) -> dict[str, float]:
    """Combine the ranks' accumulated loss metrics: ``*_min`` by min, ``*_max`` by max, the rest (means already
    weighted by each micro-batch's share of the whole batch) by sum. A rank without rows has no entries."""
    out: dict[str, float] = {}
    for sums in per_rank:
        for key, value in sums.items():
            if key not in out:
                out[key] = value
            elif key.endswith("_min"):
                out[key] = min(out[key], value)
            elif key.endswith("_max"):
                out[key] = max(out[key], value)
            else:
                out[key] += value
    return out
