"""What ``scalar_rm`` and ``prm`` share: loading an HF model with a score head, the one rendering of a
(P, q, response) conversation both score (and a PRM is trained on), and batched scoring (:class:`HeadRewardModel`).

The input is the chat-rendered conversation ``user: "User preference: P / Question: q"`` then
``assistant: response`` (the tokenizer's template; a plain "User:/Assistant:" layout without one). It is rendered
around placeholders and encoded piece by piece: the template's own pieces with their special tokens, P, q and the
response with special-token recognition off, so a response that writes ``<|im_end|>`` cannot end its turn early.
The response is encoded on its own with character offsets, which is how a PRM finds each step's last token.
Train a reward model on exactly :func:`render_scoring_input`'s output, or its scores mean little at inference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

from cdra_ray.messages import Group
from cdra_ray.rewards.base import RewardMetrics, RewardOutput
from cdra_ray.rewards.catalog import HeadOptions as _D  # the defaults (one per setting)
from cdra_ray.rewards.prompts import encode_text, encode_untrusted, slot

HEADS = ("sequence", "token")
_SLOT_RE = re.compile("\ue000(\\d+)\ue001")


@dataclass
class ScoringInput:
    """One conversation, tokenized for a score head."""

    input_ids: list[int]  # (L,) template + P + q + response + end of turn
    response_start: int  # index in input_ids of the response's first token
    token_starts: list[int]  # (C,) character offset in the response text where each response token starts

    @property
    def response_end(self) -> int:
        """Index in input_ids just after the response's last token."""
        return self.response_start + len(self.token_starts)


def conversation_messages(preference: str, query: str, response: str) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"User preference: {preference}\nQuestion: {query}"},
        {"role": "assistant", "content": response},
    ]


def _render_text(tokenizer, messages: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def _response_ids_and_starts(tokenizer, response: str) -> tuple[list[int], list[int]]:
    if not response:
        return [], []
    if callable(tokenizer):
        try:
            enc = tokenizer(response, add_special_tokens=False, split_special_tokens=True,
                            return_offsets_mapping=True)
            return list(enc["input_ids"]), [int(s) for s, _ in enc["offset_mapping"]]
        except (TypeError, NotImplementedError):  # slow tokenizers have no offsets
            pass
    from cdra_ray.algorithms.token_steps import align_offsets, token_start_offsets

    ids = encode_untrusted(tokenizer, response)
    starts = token_start_offsets(tokenizer, ids, skip_special_tokens=False)
    return ids, align_offsets(tokenizer.decode(ids, skip_special_tokens=False), response, starts)


def render_scoring_input(tokenizer, preference: str, query: str, response: str) -> ScoringInput:
    """The tokenized conversation (see the module docstring); the response text is used verbatim."""
    text = _render_text(tokenizer, conversation_messages(slot(0), slot(1), slot(2)))
    pieces = _SLOT_RE.split(text)
    found = [int(i) for i in pieces[1::2]]
    if found != [0, 1, 2]:
        raise ValueError(f"the chat template of this tokenizer reorders, drops or repeats message contents "
                         f"(placeholders found: {found}); a score-head reward model needs them verbatim")
    ids: list[int] = []
    response_start, starts = 0, []
    for k, piece in enumerate(pieces):
        if k % 2 == 0:
            ids += encode_text(tokenizer, piece) if piece else []
        elif piece == "2":
            response_start = len(ids)
            response_ids, starts = _response_ids_and_starts(tokenizer, response)
            ids += response_ids
        else:
            ids += encode_untrusted(tokenizer, (preference, query)[int(piece)])
    return ScoringInput(input_ids=ids, response_start=response_start, token_starts=starts)


def pad_right(rows: Sequence[Sequence[int]], pad_id: int):
    """(B, L) input ids padded on the right with ``pad_id``, and the attention mask."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def load_head_model(model_dir: str | Path, head: str, *, dtype: str = "float32", device: str = "cpu",
                    allow_untrained_head: bool = False, who: str = "reward model"):
    """(model, tokenizer) of an HF directory with a one-output score head: ``head="sequence"`` ->
    AutoModelForSequenceClassification, ``"token"`` -> AutoModelForTokenClassification.

    A directory whose head weights are missing (a plain causal LM, say) would get a random head: that is an error
    unless ``allow_untrained_head`` (smoke runs only), because training against a random reward looks like
    training and teaches nothing.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    from cdra_ray.engines.hf_engine import torch_dtype
    from cdra_ray.models.embedded import resolve_model

    if head not in HEADS:
        raise ValueError(f"{who}: head must be one of {HEADS}, got {head!r}")
    path = resolve_model(model_dir)
    auto = AutoModelForSequenceClassification if head == "sequence" else AutoModelForTokenClassification
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    labels = getattr(config, "num_labels", None)
    head_archs = [a for a in (config.architectures or []) if a.endswith(("SequenceClassification",
                                                                         "TokenClassification"))]
    if head_archs and labels != 1:
        raise ValueError(f"{who}: {path} has a {labels}-output head ({head_archs[0]}); a reward head needs "
                         "num_labels=1")
    from cdra_ray.engines.catalog import resolve_dtype

    model, info = auto.from_pretrained(str(path), num_labels=1, dtype=torch_dtype(resolve_dtype(dtype)),
                                       output_loading_info=True)
    missing = sorted(info.get("missing_keys", []))
    if missing and not allow_untrained_head:
        raise ValueError(
            f"{who}: {path} has no trained score head for {auto.__name__} (missing weights: {missing}). Point "
            f"reward.model at a trained reward-model directory (see cdra_ray/rewards/prm.py for how to make one), "
            f"or set reward.allow_untrained_head=true for a smoke run with a random head."
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(f"{who}: the tokenizer of {path} has neither a pad nor an EOS token to pad batches with")
    if model.config.pad_token_id is None:  # sequence heads pool at the last non-pad token: they need it
        model.config.pad_token_id = int(pad)
    model.to(torch.device(device)).eval().requires_grad_(False)
    return model, tokenizer


class HeadRewardModel:
    """A reward model that is an HF model with a one-output score head (``scalar_rm``, ``prm``): loading, the
    bounds they share, rendering with the length check, and batched forward passes (shortest rows together)."""

    needs_engine: ClassVar[bool] = False  # built with model_dir= (its own model loading)
    kind: ClassVar[str]  # the reward kind, in messages
    head: ClassVar[str]  # "sequence" | "token"

    def __init__(self, model_dir: str | Path, *, dtype: str = _D.dtype, device: str = _D.device,
                 batch_size: int = _D.batch_size, max_length: int = _D.max_length,
                 allow_untrained_head: bool = _D.allow_untrained_head, num_threads: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"{self.kind}: batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise ValueError(f"{self.kind}: max_length must be >= 2, got {max_length}")
        self._check_options()
        if num_threads is not None:
            import torch

            torch.set_num_threads(int(num_threads))
        self.model, self.tokenizer = load_head_model(model_dir, self.head, dtype=dtype, device=device,
                                                     allow_untrained_head=allow_untrained_head, who=self.kind)
        self.batch_size = batch_size
        self.max_length = max_length
        self.metrics = RewardMetrics()

    def _check_options(self) -> None:
        """Subclasses check their own options here, before the model loads."""

    def render(self, group: Group, response: int) -> ScoringInput:
        """The scored conversation of one response; longer than ``max_length`` tokens is an error naming it."""
        scenario, text = group.scenario, group.samples[response].response_text
        inp = render_scoring_input(self.tokenizer, scenario.preference, scenario.query, text)
        if len(inp.input_ids) > self.max_length:
            raise ValueError(
                f"{self.kind}: group {scenario.uid!r} response {response} renders to {len(inp.input_ids)} tokens, "
                f"over max_length={self.max_length} (reward.max_model_len); raise it or shorten the responses"
            )
        return inp

    def forward(self, rows: list[list[int]], read: Callable) -> list:
        """``read(logits_of_row, i)`` for every row ``i``, in input order; rows are batched shortest first."""
        import torch

        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out: list = [None] * len(rows)
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            ids, mask = pad_right([rows[i] for i in chunk], int(self.model.config.pad_token_id))
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for b, i in enumerate(chunk):
                out[i] = read(logits[b], i)
        return out

    def finish(self, outputs: list[RewardOutput]) -> list[RewardOutput]:
        self.metrics = self.metrics.merge(RewardMetrics.total([o.metrics for o in outputs]))
        return outputs
