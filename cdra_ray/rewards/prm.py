"""``prm``: a discriminative process reward model (Table 3's "GRPO (with PRM)"): a score per step, no critique.

A token-classification head with one output (``AutoModelForTokenClassification``, ``num_labels=1``) runs once over
the chat-rendered conversation (P, q, response) of :func:`~cdra_ray.rewards.head_models.render_scoring_input`;
step j's score is read at step j's last token (the last response token that starts inside the step's character
span, the same token-to-step rule as :mod:`cdra_ray.algorithms.token_steps`), so one forward pass per response gives
every step score, and a batch of responses is one padded forward per ``batch_size`` rows. The head's logit z
becomes r = 2·sigmoid(z) − 1 = tanh(z / 2) in (-1, 1). Pair it with the process estimator ``process_future``
(paper App. D, PS) or with ``cdpa``.

How a PRM directory is produced
-------------------------------
1. Start from a causal LM directory (the policy's base, or any instruct model):
   :func:`init_prm_from_causal_lm` loads its backbone into ``AutoModelForTokenClassification`` with a zero head
   (every step scores 0 before training) and saves it with its tokenizer.
2. Train it on step-labelled data, e.g. DeepPref's D_Rea: every (P, q, steps 1..T, step scores in [-1, 1]).
   :func:`build_prm_example` renders one example exactly as inference does and gives the positions of the step
   ends; :func:`prm_step_loss` is binary cross-entropy of the head's logits at those positions against the soft
   targets (s + 1) / 2 (all other tokens are ignored). Any trainer (``cdra-ray sft --task prm``, or a plain loop as in
   ``tests/test_rewards_variants.py``) then ``save_pretrained``s the model and tokenizer: that directory is
   ``reward.model`` for ``reward.kind: prm``.
A directory without trained head weights is refused unless ``allow_untrained_head`` (smoke runs).
"""

from __future__ import annotations

from bisect import bisect_left
from pathlib import Path
from typing import Sequence

from cdra_ray.algorithms.steps import segment_steps
from cdra_ray.messages import Group, StepScore
from cdra_ray.rewards.base import RewardMetrics, RewardOutput, register_reward_model
from cdra_ray.rewards.catalog import PRMOptions as _D  # the defaults (one per setting)
from cdra_ray.rewards.head_models import HeadRewardModel, ScoringInput, render_scoring_input


# ----------------------------------------------------------------------------------------------- pure pieces
def step_read_positions(inp: ScoringInput, spans: Sequence[tuple[int, int]]) -> list[int]:
    """Index in ``inp.input_ids`` of each step's last token: the last response token starting before the span's end.

    A step with no token of its own (an empty response) is read at the last token before it (the template's).
    """
    positions = []
    for start, end in spans:
        if end < start:
            raise ValueError(f"step span ({start}, {end}) ends before it starts")
        count = bisect_left(inp.token_starts, end) if end > start else bisect_left(inp.token_starts, start + 1)
        positions.append(max(inp.response_start + count - 1, 0))
    return positions


def logit_to_score(logit: float) -> float:
    """Head logit -> step reward in (-1, 1): 2·sigmoid(z) − 1 (the inverse of the training targets' map)."""
    import math

    return math.tanh(logit / 2.0)


def prm_step_loss(logits, positions, step_mask, targets):
    """Binary cross-entropy of the head logits at the step-end positions against soft targets (s + 1) / 2.

    logits (B, L) float (the head's one output per token); positions (B, S) long (indices into L);
    step_mask (B, S) bool (real steps); targets (B, S) float step scores in [-1, 1]. Mean over real steps.
    """
    import torch

    if not bool(step_mask.any()):
        raise ValueError("prm_step_loss: step_mask selects no step")
    if bool(((targets < -1) | (targets > 1))[step_mask].any()):
        raise ValueError("prm_step_loss: targets must lie in [-1, 1]")
    read = logits.gather(1, positions.clamp(min=0))  # (B, S)
    soft = (targets + 1.0) / 2.0
    return torch.nn.functional.binary_cross_entropy_with_logits(read[step_mask], soft[step_mask].to(read.dtype))


def build_prm_example(tokenizer, preference: str, query: str, steps: Sequence[str],
                      scores: Sequence[float]) -> tuple[list[int], list[int], list[float]]:
    """One training example: (input_ids, step-end positions, step scores), rendered exactly as at inference.

    ``steps`` are the step texts in order (their concatenation is the response, as the policy wrote it).
    """
    if len(steps) != len(scores) or not steps:
        raise ValueError(f"build_prm_example: {len(steps)} steps but {len(scores)} scores (need the same, >= 1)")
    spans, offset = [], 0
    for text in steps:
        spans.append((offset, offset + len(text)))
        offset += len(text)
    inp = render_scoring_input(tokenizer, preference, query, "".join(steps))
    return inp.input_ids, step_read_positions(inp, spans), [float(s) for s in scores]


def init_prm_from_causal_lm(causal_dir: str | Path, out_dir: str | Path, *, dtype: str = "float32") -> Path:
    """A PRM directory to train: the causal LM's backbone + a zeroed one-output token head, and its tokenizer."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from cdra_ray.engines.hf_engine import torch_dtype
    from cdra_ray.models.embedded import resolve_model

    source = resolve_model(causal_dir)
    model, info = AutoModelForTokenClassification.from_pretrained(
        str(source), num_labels=1, dtype=torch_dtype(dtype), output_loading_info=True)
    params = dict(model.named_parameters())
    with torch.no_grad():  # the newly created head starts at zero: every step scores 0 until trained
        for name in info.get("missing_keys", []):
            if name in params:
                params[name].zero_()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(out)
    return out


# ----------------------------------------------------------------------------------------------- the reward model
@register_reward_model("prm")
class PRM(HeadRewardModel):
    """Process rewards from a token head read at each step's last token; one forward per response."""

    kind = "prm"
    head = "token"

    def __init__(self, model_dir: str | Path, *, max_steps: int | None = None, dtype: str = _D.dtype,
                 device: str = _D.device, batch_size: int = _D.batch_size, max_length: int = _D.max_length,
                 allow_untrained_head: bool = _D.allow_untrained_head, num_threads: int | None = None) -> None:
        self.max_steps = max_steps
        super().__init__(model_dir, dtype=dtype, device=device, batch_size=batch_size, max_length=max_length,
                         allow_untrained_head=allow_untrained_head, num_threads=num_threads)

    def _check_options(self) -> None:
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"prm: max_steps must be >= 1 or None, got {self.max_steps}")

    def _spans(self, group: Group) -> list[list[tuple[int, int]]]:
        if not group.step_spans:
            return [segment_steps(s.response_text, self.max_steps) for s in group.samples]
        if len(group.step_spans) != group.size:
            raise ValueError(f"prm: group {group.scenario.uid!r}: step_spans has {len(group.step_spans)} entries "
                             f"for {group.size} samples")
        return [[(int(a), int(b)) for a, b in spans] for spans in group.step_spans]

    def head_logits(self, rows: list[list[int]], positions: list[list[int]]) -> list[list[float]]:
        """The head's logit at the given positions of each row (batched, in input order)."""
        return self.forward(rows, lambda logits, i: logits[positions[i], 0].float().tolist())

    def score_groups(self, groups: list[Group]) -> list[RewardOutput]:
        rows, positions, owners = [], [], []
        all_spans = []
        for gi, group in enumerate(groups):
            spans_of = self._spans(group)
            all_spans.append(spans_of)
            for ri, (sample, spans) in enumerate(zip(group.samples, spans_of)):
                text = sample.response_text
                for start, end in spans:
                    if not 0 <= start <= end <= len(text):
                        raise ValueError(f"prm: group {group.scenario.uid!r} response {ri}: step span ({start}, {end}) "
                                         f"lies outside its text of {len(text)} characters")
                inp = self.render(group, ri)
                rows.append(inp.input_ids)
                positions.append(step_read_positions(inp, spans))
                owners.append((gi, ri))
        logits = self.head_logits(rows, positions) if rows else []
        outputs = [RewardOutput(step_scores=[[] for _ in g.samples], metrics=RewardMetrics()) for g in groups]
        for (gi, ri), values in zip(owners, logits):
            spans = all_spans[gi][ri]
            outputs[gi].step_scores[ri] = [StepScore(start=s, end=e, score=logit_to_score(z))
                                           for (s, e), z in zip(spans, values)]
            outputs[gi].metrics.requests += len(spans)  # no parsing step: parse_rate is not logged
        return self.finish(outputs)
