"""Turn finished :class:`~cdra_ray.messages.Group` messages into the padded tensors the learner trains on.

Layout (one row per response, groups one after another)::

    column:      0 ........ P-1 | P ............ P+C-1
    input_ids:   pad  pad prompt | response  pad  pad
                 (left-padded)   | (right-padded)

Prompts are left-padded and responses right-padded so every response starts at the same column P. The
model's logits at columns P-1 .. P+C-2 then predict response tokens 0 .. C-1 for every row at once, and the
forward pass only needs the last C+1 positions of logits (``logits_to_keep``) instead of (N, P+C, V).
``position_ids`` count real tokens only, so a left-padded prompt sees the same positions as an unpadded one.

Per-response tensors are (N, C) over response tokens; step tensors are (N, S) over steps, S = the most steps
of any response. ``token_steps`` holds each token's 0-based step index (the index into
``Group.step_scores[i]``); pads hold step 0 and are masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from cdra_ray.messages import Group


@dataclass
class TrainBatch:
    """Padded tensors for N responses (see the module docstring for the layout)."""

    input_ids: torch.Tensor  # (N, P+C) long: left-padded prompt | right-padded response
    attention_mask: torch.Tensor  # (N, P+C) long: 1 = real token
    position_ids: torch.Tensor  # (N, P+C) long: 0-based index among the row's real tokens (0 at pads)
    response_ids: torch.Tensor  # (N, C) long: response tokens, pad id at pads
    response_mask: torch.Tensor  # (N, C) bool: real response token
    token_steps: torch.Tensor  # (N, C) long: step index of each response token (0 at pads)
    step_rewards: torch.Tensor  # (N, S) float32: r_i^j, 0 at pads
    step_mask: torch.Tensor  # (N, S) bool: step j exists in response i
    ref_logprobs: torch.Tensor | None  # (N, C) float32 log pi_ref, 0 at pads; None when no group has them
    sampling_logprobs: torch.Tensor | None  # (N, C) float32 log pi_behaviour, 0 at pads; None when missing
    policy_versions: torch.Tensor  # (N,) long: learner version that sampled each response
    group_ids: torch.Tensor  # (N,) long: the group (index into the built-from list) each row belongs to
    group_slices: list[slice] = field(default_factory=list)  # rows of each group (empty in a sub-batch)

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def prompt_width(self) -> int:
        """P: the column where every response starts."""
        return int(self.input_ids.shape[1] - self.response_ids.shape[1])

    @property
    def response_width(self) -> int:
        """C: the longest response in the batch."""
        return int(self.response_ids.shape[1])

    def select(self, rows: list[int] | torch.Tensor) -> "TrainBatch":
        """The given rows, with all-pad prompt columns (left) and response columns (right) trimmed away.

        Used for micro-batches: a micro-batch of short responses does not pay for the batch's longest one. Rows
        keep their ``group_ids``, so a sub-batch still knows which rows share a prompt.
        """
        rows = torch.as_tensor(rows, dtype=torch.long)
        if rows.numel() == 0:
            raise ValueError("TrainBatch.select needs at least one row")
        width_p = self.prompt_width
        prompt_mask = self.attention_mask[rows, :width_p]
        prompt_keep = int(prompt_mask.sum(dim=1).max().item())
        response_keep = max(1, int(self.response_mask[rows].sum(dim=1).max().item()))
        seq = slice(width_p - prompt_keep, width_p + response_keep)
        resp = slice(0, response_keep)
        step_keep = max(1, int(self.step_mask[rows].sum(dim=1).max().item()))

        def rc(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[rows, resp]

        return replace(
            self,
            input_ids=self.input_ids[rows, seq],
            attention_mask=self.attention_mask[rows, seq],
            position_ids=self.position_ids[rows, seq],
            response_ids=self.response_ids[rows, resp],
            response_mask=self.response_mask[rows, resp],
            token_steps=self.token_steps[rows, resp],
            step_rewards=self.step_rewards[rows, :step_keep],
            step_mask=self.step_mask[rows, :step_keep],
            ref_logprobs=rc(self.ref_logprobs),
            sampling_logprobs=rc(self.sampling_logprobs),
            policy_versions=self.policy_versions[rows],
            group_ids=self.group_ids[rows],
            group_slices=[],
        )


def _check_group(group: Group, g: int, require_rewards: bool) -> None:
    """Fail early, naming the group and field, when a stage left a group inconsistent."""
    where = f"group {g} (scenario {group.scenario.uid!r})"
    if not group.samples:
        raise ValueError(f"{where} has no samples")
    if not group.prompt_token_ids:
        raise ValueError(f"{where} has an empty prompt_token_ids")
    for i, sample in enumerate(group.samples):
        if not sample.response_token_ids:
            raise ValueError(f"{where} sample {i} has an empty response_token_ids")
    if require_rewards:
        if len(group.token_steps) != group.size:
            raise ValueError(f"{where}: token_steps has {len(group.token_steps)} rows for {group.size} samples "
                             "(was the group segmented?)")
        if len(group.step_scores) != group.size:
            raise ValueError(f"{where}: step_scores has {len(group.step_scores)} rows for {group.size} samples "
                             "(was the group scored?)")
        for i, sample in enumerate(group.samples):
            steps, scores = group.token_steps[i], group.step_scores[i]
            if len(steps) != len(sample.response_token_ids):
                raise ValueError(f"{where} sample {i}: token_steps has {len(steps)} entries for "
                                 f"{len(sample.response_token_ids)} response tokens")
            if not scores:
                raise ValueError(f"{where} sample {i}: step_scores is empty")
            if min(steps) < 0 or max(steps) >= len(scores):
                raise ValueError(f"{where} sample {i}: token_steps range [{min(steps)}, {max(steps)}] does not "
                                 f"index its {len(scores)} step_scores")
    if group.ref_logprobs is not None:
        shape = (group.size, max(len(s.response_token_ids) for s in group.samples))
        if tuple(group.ref_logprobs.shape) != shape:
            raise ValueError(f"{where}: ref_logprobs has shape {tuple(group.ref_logprobs.shape)}, expected {shape} "
                             "(samples x longest response)")
    for i, sample in enumerate(group.samples):
        if sample.sampling_logprobs and len(sample.sampling_logprobs) != len(sample.response_token_ids):
            raise ValueError(f"{where} sample {i}: sampling_logprobs has {len(sample.sampling_logprobs)} entries "
                             f"for {len(sample.response_token_ids)} response tokens")


def build_batch(groups: list[Group], *, pad_token_id: int = 0, require_rewards: bool = True) -> TrainBatch:
    """Pad ``groups`` into one :class:`TrainBatch`.

    ``require_rewards=False`` (the reference policy) skips the step fields: they come out as zeros.
    ``ref_logprobs`` is None unless every group carries them (all or none: a half-filled batch is an error);
    ``sampling_logprobs`` is None unless every sample carries them.
    """
    if not groups:
        raise ValueError("build_batch needs at least one group")
    for g, group in enumerate(groups):
        _check_group(group, g, require_rewards)
    with_ref = [group.ref_logprobs is not None for group in groups]
    if any(with_ref) and not all(with_ref):
        missing = [g for g, has in enumerate(with_ref) if not has]
        raise ValueError(f"ref_logprobs are set on some groups but missing on groups {missing}")
    with_sampling = all(bool(s.sampling_logprobs) for group in groups for s in group.samples)

    rows = [(g, i) for g, group in enumerate(groups) for i in range(group.size)]
    n = len(rows)
    width_p = max(len(group.prompt_token_ids) for group in groups)
    width_c = max(len(s.response_token_ids) for group in groups for s in group.samples)
    width_s = max((len(scores) for group in groups for scores in group.step_scores), default=1) if require_rewards else 1

    input_ids = torch.full((n, width_p + width_c), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width_p + width_c), dtype=torch.long)
    response_ids = torch.full((n, width_c), pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((n, width_c), dtype=torch.bool)
    token_steps = torch.zeros((n, width_c), dtype=torch.long)
    step_rewards = torch.zeros((n, width_s), dtype=torch.float32)
    step_mask = torch.zeros((n, width_s), dtype=torch.bool)
    ref_logprobs = torch.zeros((n, width_c), dtype=torch.float32) if all(with_ref) else None
    sampling_logprobs = torch.zeros((n, width_c), dtype=torch.float32) if with_sampling else None
    policy_versions = torch.zeros(n, dtype=torch.long)
    group_ids = torch.zeros(n, dtype=torch.long)
    group_slices: list[slice] = []

    row = 0
    for g, group in enumerate(groups):
        group_slices.append(slice(row, row + group.size))
        group_ids[row:row + group.size] = g
        if ref_logprobs is not None:
            ref_logprobs[row:row + group.size, :group.ref_logprobs.shape[1]] = group.ref_logprobs
        prompt = torch.tensor(group.prompt_token_ids, dtype=torch.long)
        for i, sample in enumerate(group.samples):
            resp = torch.tensor(sample.response_token_ids, dtype=torch.long)
            lp, lc = prompt.numel(), resp.numel()
            input_ids[row, width_p - lp:width_p] = prompt
            input_ids[row, width_p:width_p + lc] = resp
            attention_mask[row, width_p - lp:width_p + lc] = 1
            response_ids[row, :lc] = resp
            response_mask[row, :lc] = True
            if require_rewards:
                token_steps[row, :lc] = torch.tensor(group.token_steps[i], dtype=torch.long)
                scores = group.step_scores[i]
                step_rewards[row, :len(scores)] = torch.tensor([s.score for s in scores], dtype=torch.float32)
                step_mask[row, :len(scores)] = True
            if sampling_logprobs is not None:
                sampling_logprobs[row, :lc] = torch.tensor(sample.sampling_logprobs, dtype=torch.float32)
            policy_versions[row] = group.policy_version
            row += 1

    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0) * attention_mask
    if ref_logprobs is not None:
        ref_logprobs *= response_mask  # 0 at pads whatever the producer left there
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        response_ids=response_ids,
        response_mask=response_mask,
        token_steps=token_steps,
        step_rewards=step_rewards,
        step_mask=step_mask,
        ref_logprobs=ref_logprobs,
        sampling_logprobs=sampling_logprobs,
        policy_versions=policy_versions,
        group_ids=group_ids,
        group_slices=group_slices,
    )


def micro_batches(num_rows: int, micro_batch_size: int, order: torch.Tensor | None = None) -> list[list[int]]:
    """Split rows ``0..num_rows-1`` (in ``order`` when given) into consecutive chunks of ``micro_batch_size``."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    idx = list(range(num_rows)) if order is None else [int(i) for i in order]
    return [idx[k:k + micro_batch_size] for k in range(0, len(idx), micro_batch_size)]
