"""The Ray Serve deployment of the reward service: one FastAPI ingress per replica, Serve's request batching.

Routes (under ``serve.route_prefix``):

- ``GET  /health``          200 with this replica's id and cumulative counts (parse routes, cache, model calls)
- ``POST /get_reward``       OpenRLHF's remote reward protocol (``protocol.parse_get_reward``)
- ``POST /v1/score_steps``   the native per-step route (``protocol.parse_score_steps``)

Concurrent requests meet in ``@serve.batch``: up to ``serve.max_batch_size`` requests waiting at most
``serve.batch_wait_timeout_s`` go to the reward model as one call (every step of every response of every
request in one engine batch). The engine runs on one worker thread, so the replica's event loop keeps answering
``/health`` and parsing new requests while it works. A bad request gets its 4xx before it reaches the batch; an
engine failure fails only the requests of that batch (500 naming the error) and the replica keeps serving.
Replicas, autoscaling, placement and the HTTP proxy are Serve's (``launch.py`` sets them from the config).
Graceful shutdown: Serve stops routing to a replica, waits for its in-flight requests
(``serve.graceful_shutdown_timeout_s``), then calls ``__del__``, which lets the engine thread finish.
"""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from cdra_ray.serving.protocol import (
    BadRequest,
    RecordResult,
    ScoreRecord,
    decode_json_body,
    get_reward_reply,
    parse_get_reward,
    parse_score_steps,
    score_steps_reply,
)

logger = logging.getLogger(__name__)

app = FastAPI(title="cdra_ray reward service", description="Pers-GenPRM step rewards over HTTP")


@serve.deployment(name="RewardDeployment")
@serve.ingress(app)
class RewardDeployment:
    """Builds the configured reward model in the replica, then serves it (``config`` is the root Config)."""

    def __init__(self, config, reward_dir: str):
        from cdra_ray.serving.scorer import build_scorer

        self.settings = config.serve
        self.template = re.compile(self.settings.preference_template)
        self.scorer = build_scorer(config, reward_dir)
        self._engine_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-engine")
        self._score.set_max_batch_size(self.settings.max_batch_size)
        self._score.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # not inside a Serve replica (a plain instance in a test)
            self.replica = "local"
        self.counts = {"requests": 0, "bad_requests": 0, "failed_requests": 0}

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "replica": self.replica, "counts": dict(self.counts),
                "metrics": self.scorer.metrics()}

    @app.post("/get_reward")
    async def get_reward(self, request: Request):
        async def parse(body: dict) -> list[ScoreRecord]:
            return parse_get_reward(body, self.template, max_records=self.settings.max_records,
                                    strip_suffixes=self.settings.end_markers)

        return await self._handle(request, parse, lambda records, results: get_reward_reply(
            results, replica=self.replica))

    @app.post("/v1/score_steps")
    async def score_steps(self, request: Request):
        async def parse(body: dict) -> list[ScoreRecord]:
            return parse_score_steps(body, max_records=self.settings.max_records)

        return await self._handle(request, parse, lambda records, results: score_steps_reply(
            records, results, replica=self.replica))

    # ------------------------------------------------------------------ plumbing
    async def _handle(self, request: Request, parse, reply):
        self.counts["requests"] += 1
        try:
            records = await parse(await self._read_json(request))
        except BadRequest as err:
            self.counts["bad_requests"] += 1
            return JSONResponse(err.to_json(), status_code=err.status)
        try:
            results = await self._score(records)
        except Exception as err:  # the engine failed on this batch: say so, keep serving
            self.counts["failed_requests"] += 1
            logger.exception("scoring failed")
            return JSONResponse({"detail": f"scoring failed: {type(err).__name__}: {err}", "field": None},
                                status_code=500)
        return reply(records, results)

    async def _read_json(self, request: Request) -> dict:
        """The body as a JSON object, read no further than ``serve.max_body_bytes`` (+1 to detect excess)."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BadRequest("body", f"{declared} bytes is over serve.max_body_bytes={limit}", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            chunks.append(chunk)
            if size > limit:
                break
        return decode_json_body(b"".join(chunks), limit)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)  # both reset from the config in __init__
    async def _score(self, batches: list[list[ScoreRecord]]) -> list[list[RecordResult]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._engine_thread, self.scorer.score_batches, batches)

    def __del__(self):
        engine_thread = getattr(self, "_engine_thread", None)
        if engine_thread is not None:
            engine_thread.shutdown(wait=True)
