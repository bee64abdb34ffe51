"""``serve``: the reward service over HTTP on Ray Serve (``cdra-ray serve-reward``).

The judge itself (kind, model, engine, critique budget, score mode, cache, and each replica's CPUs/GPUs) is the
``reward`` section, exactly as in training; this section only says how it is exposed: where it listens, how many
replicas, how requests are batched and bounded, and how a request without a preference field is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional

# Recovers (P, q) from a policy prompt rendered by cdra_ray.data.prompts.inference_messages, through a chat
# template (the user turn ends at "<|...|>" markers) or the plain-text fallback (ends at "\n\nAnswer:").
DEFAULT_PREFERENCE_TEMPLATE = (
    r"(?s)User preference:[ \t]*(?P<preference>.+?)[ \t]*\nQuestion:[ \t]*(?P<query>.+?)\s*"
    r"(?:<\||\n\nAnswer:|$)"
)

# end-of-turn markers a policy's decoded text may end with (OpenRLHF decodes with skip_special_tokens=False)
DEFAULT_END_MARKERS = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<eos>"]

AGGREGATES = ("mean", "sum")
UNPARSED_POLICIES = ("null", "default")


@dataclass
class ServeConfig:
    app_name: str = "cdra_reward"  # the Serve application's name
    route_prefix: str = "/"  # where the routes live: {prefix}get_reward, {prefix}v1/score_steps, {prefix}health
    host: str = "127.0.0.1"  # loopback by default; "0.0.0.0" exposes the service (put auth in front of it)
    port: int = 8000
    num_replicas: int = 1  # fixed replica count, used when autoscaling is off
    min_replicas: Optional[int] = None  # autoscaling bounds: set both to let Serve scale between them
    max_replicas: Optional[int] = None
    target_ongoing_requests: float = 2.0  # autoscaling target per replica
    max_ongoing_requests: int = 32  # requests a replica holds at once (>= max_batch_size)
    max_batch_size: int = 8  # HTTP requests folded into one engine batch (@serve.batch)
    batch_wait_timeout_s: float = 0.05  # how long the first request of a batch waits for others
    max_body_bytes: int = 1_000_000  # larger bodies get 413
    max_records: int = 256  # responses per request; more get 413
    aggregate: str = "mean"  # mean | sum: one reward per response from its step scores
    unparsed: str = "null"  # a step the judge's output gave no score for: null (reported as null, left out of the
    #                         response's reward) | default (reward.default_score, flagged in parse_outcomes)
    preference_template: str = DEFAULT_PREFERENCE_TEMPLATE  # regex over the prompt; named groups: preference
    #                                                         (required), query (optional: else the whole prompt)
    end_markers: List[str] = field(default_factory=lambda: list(DEFAULT_END_MARKERS))  # cut off a response's end
    request_timeout_s: Optional[float] = None  # end-to-end HTTP timeout of Serve's proxy; None = none
    graceful_shutdown_timeout_s: float = 20.0  # a stopping replica finishes in-flight requests for this long


def validate_serve(serve: ServeConfig) -> None:
    """Range and choice checks of the ``serve`` section; raises ``ConfigError`` naming the dotted key."""
    from cdra_ray.config.loading import ConfigError

    def fail(key: str, why: str) -> None:
        raise ConfigError(f"serve.{key}={getattr(serve, key)!r}: {why}")

    for key in ("num_replicas", "max_ongoing_requests", "max_batch_size", "max_body_bytes", "max_records",
                "target_ongoing_requests"):
        if getattr(serve, key) <= 0:
            fail(key, "must be > 0")
    for key in ("batch_wait_timeout_s", "graceful_shutdown_timeout_s"):
        if getattr(serve, key) < 0:
            fail(key, "must be >= 0")
    if not 0 < serve.port < 65536:
        fail("port", "must be a TCP port in 1..65535")
    if serve.aggregate not in AGGREGATES:
        fail("aggregate", f"must be one of {list(AGGREGATES)}")
    if serve.unparsed not in UNPARSED_POLICIES:
        fail("unparsed", f"must be one of {list(UNPARSED_POLICIES)}")
    if not serve.route_prefix.startswith("/"):
        fail("route_prefix", "must start with '/'")
    if serve.max_ongoing_requests < serve.max_batch_size:
        fail("max_ongoing_requests", f"must be >= serve.max_batch_size={serve.max_batch_size} (a replica could "
                                     "never fill a batch)")
    if (serve.min_replicas is None) != (serve.max_replicas is None):
        fail("min_replicas", "set serve.min_replicas and serve.max_replicas together (or neither: fixed "
                             "serve.num_replicas)")
    if serve.min_replicas is not None:
        if serve.min_replicas < 1:
            fail("min_replicas", "must be >= 1 (a reward service scaled to zero answers nothing)")
        if serve.max_replicas < serve.min_replicas:
            fail("max_replicas", f"must be >= serve.min_replicas={serve.min_replicas}")
    if serve.request_timeout_s is not None and serve.request_timeout_s <= 0:
        fail("request_timeout_s", "must be > 0 or null")
    try:
        pattern = re.compile(serve.preference_template)
    except re.error as err:
        raise ConfigError(f"serve.preference_template: not a valid regular expression ({err})") from None
    if "preference" not in pattern.groupindex:
        fail("preference_template", "needs a named group (?P<preference>...)")
