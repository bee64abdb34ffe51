"""The reasoning tree of one scenario and the pure search logic over it: pruning, beam, paths, best path.

No model is called here; :mod:`cdra_ray.construction.search` decides what to ask and writes the answers in.

Shape (paper App. E, Fig. 16): the first-step thoughts (one per council persona) have no parent; every kept node
may get follow-up thoughts one level deeper. A thought whose value score is under the threshold is pruned
(``prune_reason="threshold"``); of the kept thoughts of one depth only the ``beam_width`` best are expanded, the
others are pruned with ``prune_reason="beam"``. Pruned and unusable nodes stay in the tree, so the exported tree
shows the terminated branches. A surviving path runs from a first-step thought to a kept node none of whose
children were kept (so paths may end before the maximum depth, as in Fig. 16).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

STATUSES = ("ok", "unusable")


@dataclass
class ThoughtNode:
    node_id: int  # 1, 2, ... in creation order (0 is the virtual root in the DeepPref export)
    parent: int | None  # None for a first-step thought
    depth: int  # 1 for a first-step thought
    persona: str
    text: str
    value_score: float | None = None  # [-1, 1]; None until judged, or when the judge's reply was unusable
    critique: str = ""
    pruned: bool = False
    prune_reason: str | None = None  # "threshold" | "beam"
    status: str = "ok"  # "ok" | "unusable" (the reply could not be used, even after one retry)
    children: list[int] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.status == "ok" and not self.pruned

    def to_record(self) -> dict:
        record = asdict(self)
        record.pop("children")
        return record


class ThoughtTree:
    """Nodes by id; add with :meth:`add`, then prune with :func:`apply_threshold` / :func:`select_beam`."""

    def __init__(self) -> None:
        self.nodes: dict[int, ThoughtNode] = {}

    def add(self, parent: int | None, persona: str, text: str, status: str = "ok") -> ThoughtNode:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if parent is not None and not self.nodes[parent].alive:
            raise ValueError(f"node {parent} is pruned or unusable: it cannot be expanded")
        depth = 1 if parent is None else self.nodes[parent].depth + 1
        node = ThoughtNode(node_id=len(self.nodes) + 1, parent=parent, depth=depth, persona=persona, text=text,
                           status=status)
        self.nodes[node.node_id] = node
        if parent is not None:
            self.nodes[parent].children.append(node.node_id)
        return node

    def at_depth(self, depth: int, *, alive_only: bool = True) -> list[ThoughtNode]:
        return [n for n in self.nodes.values() if n.depth == depth and (n.alive or not alive_only)]

    def chain(self, node_id: int) -> list[ThoughtNode]:
        """The nodes from the first-step thought down to ``node_id``."""
        out = []
        current: int | None = node_id
        while current is not None:
            out.append(self.nodes[current])
            current = self.nodes[current].parent
        return out[::-1]

    def leaf_paths(self) -> list[list[int]]:
        """Node ids of every surviving root-to-leaf path, in depth-first order of node ids."""
        paths: list[list[int]] = []

        def walk(node: ThoughtNode, prefix: list[int]) -> None:
            kept = [self.nodes[c] for c in node.children if self.nodes[c].alive]
            if not kept:
                paths.append(prefix + [node.node_id])
            for child in kept:
                walk(child, prefix + [node.node_id])

        for root in self.at_depth(1):
            walk(root, [])
        return paths

    def records(self) -> list[dict]:
        return [self.nodes[i].to_record() for i in sorted(self.nodes)]


def apply_threshold(nodes: Sequence[ThoughtNode], threshold: float) -> list[ThoughtNode]:
    """Prune every usable node whose value score is below ``threshold`` (a score equal to it is kept); a node
    without a score is unusable already. Returns the kept nodes."""
    kept = []
    for node in nodes:
        if node.status != "ok" or node.value_score is None:
            continue
        if node.value_score < threshold:
            node.pruned, node.prune_reason = True, "threshold"
        else:
            kept.append(node)
    return kept


def select_beam(nodes: Sequence[ThoughtNode], width: int) -> list[ThoughtNode]:
    """Keep the ``width`` highest-valued of ``nodes`` (ties: the older node wins), prune the rest as "beam"."""
    if width < 1:
        raise ValueError(f"beam width must be >= 1, got {width}")
    ranked = sorted(nodes, key=lambda n: (-(n.value_score if n.value_score is not None else -math.inf), n.node_id))
    for node in ranked[width:]:
        node.pruned, node.prune_reason = True, "beam"
    return sorted(ranked[:width], key=lambda n: n.node_id)


def path_score(step_scores: Sequence[float | None], final_score: float | None, by: str) -> float | None:
    """The quantity paths are ranked by; None when a needed score is missing (such a path is never chosen).

    ``step_sum`` is the paper's R(tau) = sum_j r^j (App. E); ``step_mean`` removes its bias towards long paths;
    ``final_score`` is the holistic 0-100 judgement of the path and its answer.
    """
    if by == "final_score":
        return final_score
    if not step_scores or any(s is None for s in step_scores):
        return None
    if by == "step_sum":
        return float(sum(step_scores))
    if by == "step_mean":
        return float(sum(step_scores)) / len(step_scores)
    raise ValueError(f"unknown path ranking {by!r}; valid: step_sum, step_mean, final_score")


def best_and_worst(scores: Sequence[float | None],
                   tie_break: Sequence[float | None] | None = None) -> tuple[int | None, int | None]:
    """Indices of the best and the worst scored path; ties go to the higher ``tie_break`` (the holistic
    score), then to the lower index. The worst is None when fewer than two paths have a score."""
    scored = [i for i, s in enumerate(scores) if s is not None]
    if not scored:
        return None, None
    tb = [(t if t is not None else -math.inf) for t in (tie_break or [None] * len(scores))]
    best = min(scored, key=lambda i: (-scores[i], -tb[i], i))
    if len(scored) < 2:
        return best, None
    worst = min((i for i in scored if i != best), key=lambda i: (scores[i], tb[i], -i))
    return best, worst
