"""Generation with plain transformers: the dependency-light fallback and the reference the vLLM engine is
checked against.

Semantics follow vLLM 0.32 so the two engines are interchangeable behind :class:`GenerationEngine`:

- log-probs are vLLM's default ``logprobs_mode="raw_logprobs"``: log-softmax of the model's logits before
  temperature and top-p, so ``Completion.logprobs`` equal :meth:`HFEngine.sequence_logprobs` of the same
  tokens at any temperature. Under a ``regex`` constraint they are taken after the grammar mask (vLLM applies
  the structured-output bitmask to the logits before it computes log-probs), i.e. over the allowed tokens;
- an EOS token ends a completion with ``finish_reason="stop"`` and stays in ``token_ids`` (not in the text);
- a stop string ends it with ``"stop"``: the text is cut before the stop string, ``token_ids`` keep every
  generated token up to the one that completed it;
- ``temperature == 0`` is greedy; ``n`` greedy completions are identical copies;
- text is detokenized incrementally like vLLM (``DecodeStream`` primed with the prompt): a trailing incomplete
  UTF-8 sequence is held back instead of rendered as U+FFFD.

Each prompt is prefilled once and its KV cache repeated ``n`` times; finished rows leave the batch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import torch

from cdra_ray.engines.base import Completion, SamplingSettings
from cdra_ray.engines.regex_constraint import RegexConstraint, token_texts
from cdra_ray.engines.weights import validate_weight_names

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def eos_token_ids(tokenizer, model_dir: str | Path | None = None, config=None) -> list[int]:
    """EOS ids the way vLLM collects them: the tokenizer's EOS plus ``generation_config.eos_token_id``."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    candidates = []
    if config is not None:
        candidates.append(getattr(config, "eos_token_id", None))
    if model_dir is not None and (Path(model_dir) / "generation_config.json").is_file():
        from transformers import GenerationConfig

        candidates.append(GenerationConfig.from_pretrained(str(model_dir)).eos_token_id)
    for value in candidates:
        if value is None:
            continue
        ids.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    if not ids:
        raise ValueError(f"no EOS token id found in the tokenizer or the config of {model_dir}")
    return sorted(ids)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set logits outside the smallest set of tokens with cumulative probability >= top_p to -inf. (B, V)"""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the tokens ranked above each token
    drop_sorted = mass_before >= top_p  # the top token always has mass_before = 0, so it is kept
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


class HFEngine:
    """A :class:`~cdra_ray.engines.base.GenerationEngine` on transformers (CPU or one GPU)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "float32",
        num_threads: int | None = None,
        seed: int = 0,
        max_batch_size: int = 64,
        device: str = "cpu",
        attn_implementation: str = "sdpa",
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cdra_ray.models.embedded import resolve_model

        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        if max_batch_size < 1:
            raise ValueError(f"HFEngine max_batch_size must be >= 1, got {max_batch_size}")
        self.model_dir = resolve_model(model_dir)
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self._model = AutoModelForCausalLM.from_pretrained(
            str(self.model_dir), dtype=torch_dtype(dtype), attn_implementation=attn_implementation
        ).to(self.device)
        self._model.eval()
        self._model.requires_grad_(False)
        self.eos_ids = eos_token_ids(self._tokenizer, self.model_dir, self._model.config)
        pad = self._tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_ids[0]
        self._generator = torch.Generator().manual_seed(seed)  # used when SamplingSettings.seed is None
        self._token_texts: list[str] | None = None
        self._constraints: dict[str, RegexConstraint] = {}

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(self, prompts: Sequence[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        """All prompts at once (in chunks of ``max_batch_size`` rows); ``settings.n`` completions per prompt."""
        for index, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompt {index} is empty: an engine needs at least one prompt token")
        if settings.seed is not None:
            generator = torch.Generator().manual_seed(settings.seed)
        else:
            generator = self._generator
        constraint = self._constraint(settings.regex) if settings.regex is not None else None
        n_sampled = 1 if settings.temperature == 0 else settings.n
        per_chunk = max(1, self.max_batch_size // n_sampled)
        results: list[list[Completion]] = []
        for start in range(0, len(prompts), per_chunk):
            chunk = [list(p) for p in prompts[start : start + per_chunk]]
            results += self._generate_chunk(chunk, n_sampled, settings, generator, constraint)
        if n_sampled != settings.n:  # greedy: n identical completions
            results = [[_copy(group[0]) for _ in range(settings.n)] for group in results]
        return results

    def _generate_chunk(self, prompts, n, settings, generator, constraint) -> list[list[Completion]]:
        model, device = self._model, self.device
        num_prompts, longest = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((num_prompts, longest), self.pad_id, dtype=torch.long)
        attention = torch.zeros((num_prompts, longest), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every row's last prompt token is at -1
            input_ids[row, longest - len(prompt) :] = torch.tensor(prompt)
            attention[row, longest - len(prompt) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            position_ids=positions.to(device),
            use_cache=True,
        )
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float()
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            attention = attention.repeat_interleave(n, dim=0)
            positions = positions.repeat_interleave(n, dim=0)
        next_position = positions[:, -1] + 1  # (B,)
        rows = [_Row(_TextStream(self._tokenizer, prompts[i // n])) for i in range(num_prompts * n)]
        active = list(range(len(rows)))  # batch slot -> row index
        eos = set(self.eos_ids)
        for step in range(settings.max_new_tokens):
            if constraint is not None:
                logits = self._apply_constraint(logits, [rows[r] for r in active], constraint)
            logprobs = torch.log_softmax(logits, dim=-1)
            if settings.temperature == 0:
                tokens = logits.argmax(dim=-1)
            else:
                scaled = top_p_filter(logits / settings.temperature, settings.top_p)
                probs = torch.softmax(scaled, dim=-1).cpu()
                tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)
            chosen = logprobs.gather(-1, tokens[:, None]).squeeze(1).tolist()
            keep: list[int] = []
            for slot, (row_index, token, logprob) in enumerate(zip(active, tokens.tolist(), chosen)):
                row = rows[row_index]
                row.token_ids.append(token)
                row.logprobs.append(logprob)
                row.text += row.stream.step(token)
                if token in eos:
                    row.finish_reason = "stop"
                elif settings.stop:
                    cut = _first_stop(row.text, settings.stop)
                    if cut is not None:
                        row.text, row.finish_reason = row.text[:cut], "stop"
                if row.finish_reason is None and step + 1 == settings.max_new_tokens:
                    row.finish_reason = "length"
                if row.finish_reason is None:
                    keep.append(slot)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep)
                cache.batch_select_indices(index.to(device))
                attention, next_position, tokens = attention[index], next_position[index], tokens[index]
                active = [active[slot] for slot in keep]
            attention = torch.cat([attention, torch.ones((len(active), 1), dtype=torch.long)], dim=1)
            out = model(
                input_ids=tokens[:, None].to(device),
                attention_mask=attention.to(device),
                position_ids=next_position[:, None].to(device),
                past_key_values=cache,
                use_cache=True,
            )
            next_position = next_position + 1
            logits = out.logits[:, -1, :].float()
        completions = [Completion(r.text, r.token_ids, r.logprobs, r.finish_reason or "length") for r in rows]
        return [completions[i * n : (i + 1) * n] for i in range(num_prompts)]

    def _constraint(self, pattern: str) -> RegexConstraint:
        if pattern not in self._constraints:
            if self._token_texts is None:
                self._token_texts = token_texts(self._tokenizer)
            if len(self._constraints) >= 16:
                self._constraints.pop(next(iter(self._constraints)))
            self._constraints[pattern] = RegexConstraint(pattern, self._token_texts, self.eos_ids)
        return self._constraints[pattern]

    def _apply_constraint(self, logits: torch.Tensor, rows: list[_Row], constraint: RegexConstraint):
        mask = torch.full_like(logits, float("-inf"))
        vocab = logits.shape[-1]
        for slot, row in enumerate(rows):
            text = row.text
            allowed = [i for i in constraint.allowed_ids(text) if i < vocab]
            if not allowed:  # dead end (no token continues the match): end the completion
                logger.warning("regex %r cannot continue %r; forcing EOS", constraint.pattern, text)
                allowed = [i for i in self.eos_ids if i < vocab]
            mask[slot, allowed] = 0.0
        return logits + mask

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def sequence_logprobs(self, prompt_ids: list[int], continuation_ids: list[int]) -> list[float]:
        """log p(continuation token | everything before it) under the current weights (no sampling processors)."""
        if len(prompt_ids) == 0:
            raise ValueError("sequence_logprobs: prompt_ids is empty; the first token has no context to score it")
        if len(continuation_ids) == 0:
            return []
        ids = torch.tensor([list(prompt_ids) + list(continuation_ids)], device=self.device)
        logits = self._model(input_ids=ids).logits[0].float()
        start = len(prompt_ids) - 1
        predicting = logits[start : start + len(continuation_ids)]
        target = torch.tensor(continuation_ids, device=self.device)[:, None]
        return torch.log_softmax(predicting, dim=-1).gather(-1, target).squeeze(1).tolist()

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy a complete set of weights (HF names) into the model; unknown, missing or misshapen names fail
        before anything is copied (see :mod:`cdra_ray.engines.weights`)."""
        incoming = dict(named_tensors)
        shapes = {name: tuple(p.shape) for name, p in self._model.named_parameters()}
        tied = bool(getattr(self._model.config, "tie_word_embeddings", False))
        validate_weight_names(incoming, shapes, tied, where=f"HFEngine({self.model_dir})")
        state = self._model.state_dict()
        for name, tensor in incoming.items():
            target = state.get(name)
            if target is None:  # a tied lm_head.weight the state dict does not list: the embedding covers it
                continue
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))


class _Row:
    __slots__ = ("token_ids", "logprobs", "text", "finish_reason", "stream")

    def __init__(self, stream: "_TextStream"):
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.stream = stream


class _TextStream:
    """Incremental detokenization as vLLM does it (``tokenizers.decoders.DecodeStream`` primed with the prompt,
    special tokens skipped): a trailing incomplete UTF-8 sequence is held back, not rendered as U+FFFD, so
    both engines return the same text. Slow tokenizers fall back to re-decoding the whole completion."""

    _INVALID_PREFIX = "Invalid prefix encountered"

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self._tokenizer = tokenizer
        self._backend = getattr(tokenizer, "_tokenizer", None)
        self._ids: list[int] = []
        self._text = ""
        if self._backend is not None:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(ids=list(prompt_ids), skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        if self._backend is None:
            self._ids.append(token_id)
            text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
            new, self._text = text[len(self._text) :], text
            return new
        try:
            piece = self._stream.step(self._backend, token_id)
        except Exception as exc:  # tokenizers can emit a non-monotonic prefix; restart the stream like vLLM
            if not str(exc).startswith(self._INVALID_PREFIX):
                raise
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(skip_special_tokens=True)
            piece = self._stream.step(self._backend, token_id)
        return piece or ""


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    positions = [text.find(s) for s in stops if s]
    positions = [p for p in positions if p >= 0]
    return min(positions) if positions else None


def _copy(completion: Completion) -> Completion:
    return Completion(completion.text, list(completion.token_ids), list(completion.logprobs), completion.finish_reason)
