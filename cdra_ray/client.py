"""A served Pers-GenPRM as a TRL reward function: ``(prompts, completions, **kwargs) -> list[float | None]``.

    from cdra_ray.client import RewardClient
    reward = RewardClient("http://127.0.0.1:8000/")
    trainer = GRPOTrainer(model=..., reward_funcs=[reward], train_dataset=..., args=GRPOConfig(...))

Each call posts the batch to the service's ``get_reward`` route (OpenRLHF's body shape) in chunks of
``batch_size`` responses, at most ``max_concurrency`` chunks in flight; every chunk has ``timeout_s`` per attempt
and ``max_retries`` retries on timeouts, connection errors, 429 and 5xx (the transport of the OpenAI-compatible
engine, ``engines/http_transport.py``); a 4xx fails at once with the service's message naming the field.

The preference: when the dataset has a ``preference`` column (``preference_key``), TRL passes it as a keyword
argument and it is sent as ``preferences``; otherwise the service reads it from the prompt text with its
``serve.preference_template``. Conversational prompts and completions (lists of chat messages) are sent as the
text of their messages. A response whose steps all went unparsed gets ``None`` from the service (under its
default ``serve.unparsed=null``), which TRL turns into NaN and leaves out; the share of unparsed steps is logged
through TRL's ``log_metric`` as ``pers_genprm/unparsed_step_rate``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from cdra_ray.engines.http_transport import HTTPRequestError, JSONPoster


class RewardServiceError(HTTPRequestError):
    """The reward service refused a request or kept failing (after the retries)."""


def message_text(item: Any) -> str:
    """A prompt or completion as text: a string as is, a list of chat messages as their contents joined."""
    if isinstance(item, str):
        return item
    if isinstance(item, list) and all(isinstance(m, dict) and "content" in m for m in item):
        return "\n".join(str(m["content"]) for m in item)
    raise TypeError(f"expected a string or a list of chat messages with 'content', got {type(item).__name__}")


class RewardClient:
    """A TRL reward function calling a served reward model (``cdra-ray serve-reward``) at ``url``."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 300.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_concurrency: int = 4,
        batch_size: int = 16,
        preference_key: str = "preference",
        name: str = "pers_genprm",
    ):
        if batch_size < 1:
            raise ValueError(f"RewardClient batch_size must be >= 1, got {batch_size}")
        self.url = url.rstrip("/") + "/get_reward"
        self.batch_size = batch_size
        self.preference_key = preference_key
        self.__name__ = name  # TRL logs each reward function's mean under its name
        self.max_concurrency = max_concurrency
        self._poster = JSONPoster(self.url, name="RewardClient", timeout_s=timeout_s, max_retries=max_retries,
                                  backoff_s=backoff_s, max_concurrency=max_concurrency,
                                  error_cls=RewardServiceError)
        self.last_counts: dict[str, Any] = {}  # the service's counts for the last call, summed over its chunks

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"RewardClient: {len(prompts)} prompts but {len(completions)} completions")
        prompt_texts = [message_text(p) for p in prompts]
        queries = [p + message_text(c) for p, c in zip(prompt_texts, completions)]
        preferences = kwargs.get(self.preference_key)
        bodies = []
        for start in range(0, len(queries), self.batch_size):
            body: dict[str, Any] = {"query": queries[start: start + self.batch_size],
                                    "prompts": prompt_texts[start: start + self.batch_size]}
            if preferences is not None:
                body["preferences"] = [str(p) for p in preferences[start: start + self.batch_size]]
            bodies.append(body)
        replies = self._post_all(bodies)

        rewards: list[float | None] = []
        steps = unparsed = 0
        for body, reply in zip(bodies, replies):
            values = reply.get("rewards") if isinstance(reply, dict) else None
            if not isinstance(values, list) or len(values) != len(body["query"]):
                raise RewardServiceError(
                    f"RewardClient: {self.url} replied without one reward per response: {str(reply)[:300]}",
                    url=self.url, status=200, attempts=1)
            rewards.extend(None if v is None else float(v) for v in values)
            counts = reply.get("counts") or {}
            steps += int(counts.get("steps", 0))
            unparsed += int(counts.get("unparsed_steps", 0))
        self.last_counts = {"responses": len(rewards), "steps": steps, "unparsed_steps": unparsed}
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and steps:
            log_metric(f"{self.__name__}/unparsed_step_rate", unparsed / steps)
        return rewards

    def _post_all(self, bodies: list[dict]) -> list[dict]:
        if len(bodies) == 1:
            return [self._poster.post(bodies[0])]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(bodies)),
                                thread_name_prefix="reward-client") as pool:
            return list(pool.map(self._poster.post, bodies))
