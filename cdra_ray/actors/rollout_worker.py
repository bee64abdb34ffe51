"""RolloutWorker: samples G responses per scenario from the current policy and cuts them into steps.

A plain class (testable without Ray); ``cdra_ray.actors.shells`` runs it as a threaded Ray actor. Calls for
single scenarios arrive as groups stream through the driver; a :class:`MicroBatcher` folds concurrent calls
into one engine call. Every group is tagged with the policy version whose weights sampled it, and weights
are only ever swapped while no batch is generating (the batcher's engine lock).
"""

from __future__ import annotations

import time
from typing import Iterable

import torch

from cdra_ray.actors.batching import MicroBatcher
from cdra_ray.actors.shared_weights import PackedWeights, unpack_weights
from cdra_ray.algorithms.steps import segment_steps
from cdra_ray.algorithms.token_steps import token_steps_for_response
from cdra_ray.data.prompts import render_prompt_ids
from cdra_ray.engines.base import GenerationEngine, SamplingSettings
from cdra_ray.messages import Group, Sample, Scenario


def segment_group(group: Group, tokenizer, max_steps: int | None) -> Group:
    """``group`` with ``step_spans`` (characters) and ``token_steps`` (step index per generated token)."""
    step_spans, token_steps = [], []
    for sample in group.samples:
        spans = segment_steps(sample.response_text, max_steps=max_steps)
        step_spans.append(spans)
        token_steps.append(
            token_steps_for_response(tokenizer, sample.response_token_ids, spans, text=sample.response_text))
    return group.with_segmentation(step_spans, token_steps)


class RolloutWorker:
    def __init__(
        self,
        engine: GenerationEngine,
        *,
        group_size: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        max_prompt_tokens: int = 1024,
        max_steps: int | None = None,
        seed: int = 0,
        max_wait_s: float = 0.05,
    ):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.group_size = group_size
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.max_steps = max_steps
        self.seed = seed
        # the version of the weights the engine holds: 0 = built from the model directory; afterwards only
        # ever the value delivered with weights (load_weights / finish_weight_update), never counted here
        self.policy_version = 0
        self._batcher: MicroBatcher[Scenario, Group] = MicroBatcher(self._generate_batch, max_wait_s=max_wait_s)

    def generate_group(self, scenario: Scenario) -> Group:
        """G responses for one scenario (blocks until the batch it joined has been generated)."""
        return self._batcher(scenario)

    def _generate_batch(self, scenarios: list[Scenario]) -> list[Group]:
        prompts = [render_prompt_ids(self.tokenizer, s, self.max_prompt_tokens) for s in scenarios]
        # One seed per call: reproducible for a given (seed, policy version, first scenario) and distinct
        # across updates, so a resumed run samples what the uninterrupted run would have sampled.
        settings = SamplingSettings(
            n=self.group_size, temperature=self.temperature, top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=(self.seed * 1_000_003 + self.policy_version * 10_007 + scenarios[0].index) % (2**31),
        )
        start = time.perf_counter()
        completions = self.engine.generate(prompts, settings)
        share = (time.perf_counter() - start) / len(scenarios)
        groups = []
        for scenario, prompt_ids, outs in zip(scenarios, prompts, completions):
            samples = [Sample(c.text, list(c.token_ids), list(c.logprobs), c.finish_reason) for c in outs]
            group = Group(scenario=scenario, prompt_token_ids=list(prompt_ids), samples=samples,
                          policy_version=self.policy_version, timings={"generate": share})
            groups.append(segment_group(group, self.tokenizer, self.max_steps))
        return groups

    def load_weights(self, named_tensors: dict[str, torch.Tensor] | PackedWeights | Iterable,
                     policy_version: int) -> int:
        """Swap in the learner's weights; waits for any running batch, blocks new ones until done."""
        if isinstance(named_tensors, PackedWeights):
            items = unpack_weights(named_tensors)
        else:
            items = named_tensors.items() if isinstance(named_tensors, dict) else named_tensors
        with self._batcher.engine_lock:
            self.engine.load_weights(items)
            self.policy_version = policy_version
        return self.policy_version

    # -- GPU path: vLLM's NCCL weight transfer (learner rank 0 broadcasts; see learner/weight_sync_gpu.py) --
    # The engine lock is taken at start and released at finish, so no batch generates while weights stream in.
    def _sync_client(self):
        from cdra_ray.engines.vllm_gpu import LLMWeightSyncClient

        return LLMWeightSyncClient(self.engine.llm)

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self._sync_client().init_weight_transfer_engine(init_info)

    def start_weight_update(self) -> None:
        self._batcher.engine_lock.acquire()
        self._sync_client().start_weight_update()

    def update_weights(self, update_info: dict) -> None:
        self._sync_client().update_weights(update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        try:
            self._sync_client().finish_weight_update(weight_version)
            if weight_version is not None:
                self.policy_version = int(weight_version)
        finally:
            self._batcher.engine_lock.release()

    def sequence_logprobs(self, prompt_ids: list[int], continuation_ids: list[int]) -> list[float]:
        """The engine's log-probs of a fixed continuation: how tests prove a weight sync really happened."""
        with self._batcher.engine_lock:
            return self.engine.sequence_logprobs(prompt_ids, continuation_ids)

    def batch_sizes(self) -> list[int]:
        return list(self._batcher.batch_sizes)
