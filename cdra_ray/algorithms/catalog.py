"""Names and options of the advantage estimators and loss aggregations (torch-free; implementations load lazily).

``algorithm.advantage`` selects an estimator of :data:`ADVANTAGES` and ``algorithm.aggregation`` an aggregation
of :data:`AGGREGATIONS`. An estimator's options are the fields of its options class; the config takes them from
the ``algorithm`` section by name (``algorithm.normalize``) or from ``algorithm.advantage_options``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdra_ray.registry import NoOptions, Registry, check_choice

ADVANTAGES = Registry("algorithm.advantage", "advantage estimator")
AGGREGATIONS = Registry("algorithm.aggregation", "loss aggregation")

NORMALIZATIONS = ("position", "pooled")


@dataclass(frozen=True)
class GrpoOptions:
    scale: bool = True  # divide by the group std (False: Dr. GRPO)


@dataclass(frozen=True)
class CdpaOptions:
    normalize: str = "position"  # position (the paper's Eq. 3) | pooled
    pads_count: bool = False  # position only: count zero-padded positions in the statistics (the paper's code)

    def __post_init__(self):
        check_choice("normalize", self.normalize, NORMALIZATIONS)
        if not isinstance(self.pads_count, bool):
            raise ValueError(f"pads_count={self.pads_count!r}: must be true or false")
        if self.pads_count and self.normalize != "position":
            raise ValueError("pads_count=true is only defined for normalize=position (the paper code's mode)")


_ADV = "cdra_ray.algorithms.advantages:"
ADVANTAGES.register("grpo", GrpoOptions, _ADV + "grpo_advantages")
ADVANTAGES.register("process_future", NoOptions, _ADV + "process_future_advantages")
ADVANTAGES.register("cdpa", CdpaOptions, _ADV + "cdpa_advantages")

# seq-mean-token-sum: the paper's Eq. (1/G sum_i sum_t); seq-mean-token-mean: GRPO (the paper's code);
# token-mean: DAPO. The reductions themselves are in policy_loss.aggregate.
for _name in ("seq-mean-token-sum", "seq-mean-token-mean", "token-mean"):
    AGGREGATIONS.register(_name, NoOptions, "cdra_ray.algorithms.policy_loss:aggregate")
