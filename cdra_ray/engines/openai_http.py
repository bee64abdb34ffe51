"""A judge behind any OpenAI-compatible ``/v1/completions`` endpoint (``vllm serve``, a hosted API, a gateway).

Why it exists: the reward models and evaluation judges only need text out of a model, and on a cluster the
judge is often a separate server shared by many runs. This backend lets them use one through the same
:class:`~cdra_ray.engines.base.GenerationEngine` protocol as the local engines, so choosing it is a config
value.

How a call works: every prompt (token ids rendered with the judge's tokenizer, loaded locally from
``tokenizer_dir``, never downloaded) is decoded back to text and sent as one ``POST {base}/v1/completions``
request; the requests of one :meth:`OpenAIHTTPEngine.generate` call run concurrently on a thread pool, and at
most ``max_concurrency`` requests of this engine are in flight at any time (across concurrent calls too).
Retries, timeouts and the in-flight cap are those of the shared transport (``http_transport.py``): timeouts,
connection errors, HTTP 429 and 5xx are retried with exponential backoff, other 4xx fail at once.

What differs from the local engines, by necessity (a text API hides tokens):

- ``Completion.token_ids`` is the returned text re-encoded with the local tokenizer: an approximation of the
  tokens the server sampled (BPE is not unique; an EOS or a cut stop string leaves no text). Judges parse text,
  so nothing downstream depends on these ids; do not train on them.
- ``Completion.logprobs``: the server's per-token log-probs (``logprobs=1`` is requested) when its tokens line
  up one-to-one with the re-encoded ids (their texts concatenate to the completion text and their count
  matches); otherwise ``NaN`` for every token, never a made-up 0.
- ``SamplingSettings.regex`` is sent as vLLM's structured-output extension ``"structured_outputs": {"regex":
  ...}`` (the field of ``CompletionRequest`` in ``vllm/entrypoints/openai/completion/protocol.py``, vLLM
  0.32). Servers without it (OpenAI itself rejects unknown fields) need ``supports_regex=False``: a request
  with a regex then raises :class:`EndpointNotSupported` (a ``NotImplementedError``), so a judge knows the
  score was not forced and takes its free-text route (counted as such) instead of mistaking free text for a
  constrained answer.
- ``temperature == 0`` sends ``n=1`` and returns ``n`` copies, like the local engines (vLLM rejects greedy
  with ``n > 1``).
- :meth:`~OpenAIHTTPEngine.sequence_logprobs` and :meth:`~OpenAIHTTPEngine.load_weights` raise
  :class:`EndpointNotSupported`: a judge endpoint scores nothing on demand and takes no weights.

Only the standard library is used (``urllib``), so the backend adds no dependency.
"""

from __future__ import annotations

import json
import logging
import math
import os
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

from cdra_ray.engines.base import Completion, SamplingSettings
from cdra_ray.engines.http_transport import HTTPRequestError, JSONPoster
from cdra_ray.engines.http_transport import snippet as _snippet

logger = logging.getLogger(__name__)

REGEX_FIELD = "structured_outputs"  # vLLM 0.32 CompletionRequest.structured_outputs = {"regex": ...}


class OpenAIHTTPError(HTTPRequestError):
    """A request to the endpoint failed for good (after the retries, or at once for a non-retryable 4xx)."""


class EndpointNotSupported(NotImplementedError):
    """An operation an OpenAI-compatible judge endpoint cannot do (scoring fixed tokens, loading weights)."""



# ---------------------------------------------------------------------------------------------- pure helpers
def completions_url(base_url: str) -> str:
    """``{base}/v1/completions``; ``base_url`` may already end in ``/v1`` (the OpenAI client convention)."""
    parsed = urllib.parse.urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"OpenAIHTTPEngine base_url must look like http://host:port[/v1], got {base_url!r}")
    base = base_url.rstrip("/")
    return base + ("/completions" if base.endswith("/v1") else "/v1/completions")


def completion_body(
    model: str,
    prompt: str,
    settings: SamplingSettings,
    *,
    n: int,
    send_regex: bool,
    logprobs: int | None = 1,
    extra_body: dict | None = None,
) -> dict:
    """The JSON body of one ``/v1/completions`` request (optional fields only when set)."""
    body: dict = {
        "model": model,
        "prompt": prompt,
        "n": n,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_tokens": settings.max_new_tokens,
    }
    if settings.seed is not None:
        body["seed"] = settings.seed
    if settings.stop:
        body["stop"] = list(settings.stop)
    if logprobs is not None:
        body["logprobs"] = logprobs
    if send_regex and settings.regex is not None:
        body[REGEX_FIELD] = {"regex": settings.regex}
    if extra_body:
        body.update(extra_body)
    return body


def aligned_logprobs(text: str, tokens, token_logprobs, num_tokens: int) -> list[float]:
    """The server's log-probs of the first tokens whose texts concatenate to ``text``, if those are exactly
    ``num_tokens`` (the local re-encoding's length); else ``num_tokens`` NaNs. Tokens after the text (an EOS,
    the tokens of a cut stop string) are ignored."""
    missing = [math.nan] * num_tokens
    if not isinstance(tokens, list) or not isinstance(token_logprobs, list) or len(tokens) != len(token_logprobs):
        return missing
    joined, count = "", 0
    while count < len(tokens) and len(joined) < len(text):
        if not isinstance(tokens[count], str):
            return missing
        joined += tokens[count]
        count += 1
    if joined != text or count != num_tokens:
        return missing
    values = token_logprobs[:count]
    if any(not isinstance(v, (int, float)) for v in values):
        return missing
    return [float(v) for v in values]


def leading_special_ids(tokenizer) -> list[int]:
    """The ids the tokenizer puts in front of every encoded text (e.g. a BOS), which the server's tokenizer will
    add again to a text prompt."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []




# ---------------------------------------------------------------------------------------------- the engine
class OpenAIHTTPEngine:
    """A :class:`~cdra_ray.engines.base.GenerationEngine` for judges served over an OpenAI-compatible API.

    ``base_url`` is the server (``http://host:8000`` or ``http://host:8000/v1``), ``model`` the served model
    name, ``tokenizer_dir`` a local directory with the served model's tokenizer (or the embedded model alias),
    ``api_key_env`` the environment variable holding the key (unset or empty: no Authorization header).
    ``timeout_s`` bounds each connect/read, ``max_retries`` counts retries after the first attempt, ``backoff_s``
    is the first retry's delay (doubling after each), ``max_concurrency`` caps requests in flight.
    ``supports_regex=False`` for servers without vLLM's structured outputs; ``request_logprobs=False`` for
    servers that reject ``logprobs``; ``extra_body`` is merged into every request body.

    Generation only: :meth:`sequence_logprobs` and :meth:`load_weights` raise :class:`EndpointNotSupported`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        tokenizer_dir: str | os.PathLike,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_concurrency: int = 8,
        supports_regex: bool = True,
        request_logprobs: bool = True,
        extra_body: dict | None = None,
    ):
        if not model:
            raise ValueError("OpenAIHTTPEngine model must name the served model (e.g. vllm serve --served-model-name)")
        self.url = completions_url(base_url)
        self.model = model
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_concurrency = int(max_concurrency)
        self.supports_regex = bool(supports_regex)
        self.request_logprobs = bool(request_logprobs)
        self.extra_body = dict(extra_body or {})
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env, "") if api_key_env else ""
        self._poster = JSONPoster(
            self.url, name="OpenAIHTTPEngine", timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s,
            max_concurrency=max_concurrency, error_cls=OpenAIHTTPError, hint=self._hint,
            headers={"Authorization": f"Bearer {self._api_key}"} if self._api_key else None,
        )
        self._tokenizer = _load_tokenizer(tokenizer_dir)
        self._leading_ids = leading_special_ids(self._tokenizer)

    def __repr__(self) -> str:
        return f"OpenAIHTTPEngine(url={self.url!r}, model={self.model!r})"

    @property
    def tokenizer(self):
        return self._tokenizer

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        """One request per prompt, run concurrently; ``settings.n`` completions per prompt, in prompt order."""
        for index, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompt {index} is empty: an engine needs at least one prompt token")
        if not prompts:
            return []
        if settings.regex is not None and not self.supports_regex:
            raise EndpointNotSupported(f"{self!r} was built with supports_regex=False: it cannot constrain output "
                                       "to a regular expression")
        greedy = settings.temperature == 0
        n = 1 if greedy else settings.n
        bodies = [
            completion_body(
                self.model,
                self.prompt_text(prompt),
                settings,
                n=n,
                send_regex=self.supports_regex,
                logprobs=1 if self.request_logprobs else None,
                extra_body=self.extra_body,
            )
            for prompt in prompts
        ]
        replies = self._run_all(bodies)
        results = []
        for reply in replies:
            completions = self._completions(reply, n)
            if greedy and settings.n > 1:
                completions = [_copy(completions[0]) for _ in range(settings.n)]
            results.append(completions)
        return results

    def prompt_text(self, prompt_ids: list[int]) -> str:
        """The prompt as text, special tokens kept (the chat template's markers), minus the leading specials the
        server's tokenizer adds by itself (a BOS would otherwise appear twice)."""
        ids = list(prompt_ids)
        if self._leading_ids and ids[: len(self._leading_ids)] == self._leading_ids:
            ids = ids[len(self._leading_ids) :]
        return self._tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _run_all(self, bodies: list[dict]) -> list[dict]:
        if len(bodies) == 1:
            return [self._post(bodies[0])]
        workers = min(self.max_concurrency, len(bodies))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-http")
        try:
            futures = [pool.submit(self._post, body) for body in bodies]
            return [future.result() for future in futures]
        finally:  # on the first failure, drop the requests not started yet
            pool.shutdown(wait=True, cancel_futures=True)

    def _completions(self, reply: dict, n: int) -> list[Completion]:
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or len(choices) != n:
            got = len(choices) if isinstance(choices, list) else "no"
            raise OpenAIHTTPError(
                f"OpenAIHTTPEngine: {self.url} answered with {got} choices where n={n} were requested: "
                f"{_snippet(json.dumps(reply))}",
                url=self.url, status=200, attempts=1,
            )
        ordered = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        completions = []
        for choice in ordered:
            text = choice.get("text") if isinstance(choice, dict) else None
            if not isinstance(text, str):
                raise OpenAIHTTPError(
                    f"OpenAIHTTPEngine: {self.url} returned a choice without a text field: "
                    f"{_snippet(json.dumps(choice))}",
                    url=self.url, status=200, attempts=1,
                )
            token_ids = list(self._tokenizer.encode(text, add_special_tokens=False))
            info = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else {}
            logprobs = aligned_logprobs(text, info.get("tokens"), info.get("token_logprobs"), len(token_ids))
            reason = choice.get("finish_reason")
            reason = reason if isinstance(reason, str) else str(reason)
            completions.append(Completion(text, token_ids, logprobs, reason))
        return completions

    # ------------------------------------------------------------------ HTTP with retries
    def _post(self, body: dict) -> dict:
        """POST ``body`` with retries; the parsed JSON reply, or :class:`OpenAIHTTPError`."""
        return self._poster.post(body, what=f" (model {self.model!r})")

    def _hint(self, status: int | None) -> str:
        if status in (401, 403):
            where = f"${self.api_key_env}" if self.api_key_env else "no api_key_env"
            return f"; check the API key ({where} is {'set' if self._api_key else 'unset'})"
        if status == 404:
            return "; check base_url and the served model name"
        if status == 400 and self.supports_regex:
            return f"; a server without vLLM's {REGEX_FIELD!r} extension needs supports_regex=False"
        return ""

    # ------------------------------------------------------------------ not available over a judge API
    def sequence_logprobs(self, prompt_ids: list[int], continuation_ids: list[int]) -> list[float]:
        """Not supported: an OpenAI-compatible completions endpoint does not score given tokens (use the vllm or
        hf engine for reference/policy log-probs)."""
        raise EndpointNotSupported(
            f"{self!r}.sequence_logprobs: an OpenAI-compatible endpoint cannot score fixed token sequences; use "
            "engine 'vllm' or 'hf' where log-probs of given tokens are needed"
        )

    def load_weights(self, named_tensors: Iterable) -> None:
        """Not supported: a remote judge endpoint takes no weights (it serves a frozen judge)."""
        raise EndpointNotSupported(
            f"{self!r}.load_weights: a remote OpenAI-compatible endpoint takes no weights; use engine 'vllm' or "
            "'hf' for a policy that is trained"
        )


def _load_tokenizer(tokenizer_dir: str | os.PathLike):
    """The judge's tokenizer from a local directory (or the embedded model alias); never a hub download."""
    from transformers import AutoTokenizer

    from cdra_ray.models.embedded import DEFAULT_ALIAS, smollm2_dir

    if str(tokenizer_dir).strip().lower() == DEFAULT_ALIAS:
        path = smollm2_dir()
    else:
        path = Path(tokenizer_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"OpenAIHTTPEngine tokenizer_dir {str(tokenizer_dir)!r} is not a local directory: pass the served "
                "model's tokenizer (a directory written by save_pretrained); cdra_ray never downloads it"
            )
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _copy(completion: Completion) -> Completion:
    return Completion(completion.text, list(completion.token_ids), list(completion.logprobs), completion.finish_reason)
