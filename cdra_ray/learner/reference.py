"""The frozen reference policy pi_ref: per-token log-probs of sampled responses, for the KL term.

Plain transformers in inference mode, the whole model in one process; a ZeRO-3 partition of it on each of
several ranks is :class:`~cdra_ray.learner.reference_sharded.ShardedReferencePolicy`.
By default the rows of a group stay together in a micro-batch and their shared prompt runs once
(:func:`~cdra_ray.learner.logprobs.shared_prompt_logprobs`); with ``share_prompt_forward=False`` rows are sorted by
length instead, so short responses are not padded to the longest one. Results come back in the groups' own order.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cdra_ray.engines.catalog import resolve_dtype
from cdra_ray.learner.batch import build_batch, micro_batches
from cdra_ray.learner.logprobs import response_logprobs, shared_prompt_logprobs
from cdra_ray.messages import Group

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ReferencePolicy:
    """log pi_ref(token) for every response token of a list of groups."""

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "float32",
        num_threads: int | None = None,
        *,
        micro_batch_size: int = 8,
        chunk_size: int = 1024,
        temperature: float = 1.0,
        device: str = "cpu",
        attn_implementation: str = "sdpa",
        share_prompt_forward: bool = True,
    ) -> None:
        from transformers import AutoModelForCausalLM

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"ReferencePolicy model_dir {str(model_dir)!r} is not an HF model directory "
                                    "(no config.json)")
        dtype = resolve_dtype(dtype)
        if dtype not in _DTYPES:
            raise ValueError(f"ReferencePolicy dtype must be one of {tuple(_DTYPES)}, got {dtype!r}")
        if micro_batch_size < 1:
            raise ValueError(f"ReferencePolicy micro_batch_size must be >= 1, got {micro_batch_size}")
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.micro_batch_size = micro_batch_size
        self.share_prompt_forward = share_prompt_forward
        self.chunk_size = chunk_size
        self.temperature = temperature
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=_DTYPES[dtype], attn_implementation=attn_implementation
        ).to(self.device)
        self.model.eval()
        self.model.requires_grad_(False)
        pad = self.model.config.pad_token_id
        self.pad_token_id = pad if isinstance(pad, int) else 0

    @torch.inference_mode()
    def logprobs(self, groups: list[Group]) -> list[torch.Tensor]:
        """Per group a (G, C) float32 tensor of log pi_ref per response token, C = the group's longest response,
        0 beyond each response's end (the layout of ``Group.ref_logprobs``)."""
        return self.compute(groups)

    def forwards(self, num_rows: int) -> int:
        """Forward passes :meth:`compute` runs for ``num_rows`` rows (without shared prompts: one per micro-batch)."""
        return -(-num_rows // self.micro_batch_size)

    def padding_forward(self) -> None:
        """A one-token forward pass whose result is dropped (a ZeRO-3 rank with less work keeps pace with the
        others: every forward gathers the parameters collectively)."""
        ids = torch.full((1, 1), self.pad_token_id, dtype=torch.long, device=self.device)
        self.model(input_ids=ids, use_cache=False, logits_to_keep=1)

    def compute(self, groups: list[Group]) -> list[torch.Tensor]:
        """:meth:`logprobs` without the grad mode (the caller chooses it)."""
        if not groups:
            return []
        batch = build_batch(groups, pad_token_id=self.pad_token_id, require_rewards=False)
        if self.share_prompt_forward:  # rows of a group stay together: their prompt runs once
            order = torch.arange(batch.num_rows)
        else:
            order = torch.argsort(batch.attention_mask.sum(dim=1), descending=True, stable=True)
        values = torch.zeros(batch.response_ids.shape, dtype=torch.float32)
        dev = self.device
        for rows in micro_batches(batch.num_rows, self.micro_batch_size, order):
            sub = batch.select(rows)
            options = {"chunk_size": self.chunk_size, "temperature": self.temperature}
            if self.share_prompt_forward:
                lp = shared_prompt_logprobs(self.model, sub.input_ids.to(dev), sub.attention_mask.to(dev),
                                            sub.response_ids.to(dev), sub.group_ids, **options)
            else:
                lp = response_logprobs(self.model, sub.input_ids.to(dev), sub.attention_mask.to(dev),
                                       sub.position_ids.to(dev), sub.response_ids.to(dev), **options)
            values[rows, : sub.response_width] = lp.float().cpu()
        values *= batch.response_mask
        return [values[rows, : max(len(s.response_token_ids) for s in group.samples)].clone()
                for group, rows in zip(groups, batch.group_slices)]

    def annotate(self, groups: list[Group]) -> list[Group]:
        """The groups with ``ref_logprobs`` set (new values; the inputs are untouched)."""
        return [group.with_ref_logprobs(values) for group, values in zip(groups, self.logprobs(groups))]
