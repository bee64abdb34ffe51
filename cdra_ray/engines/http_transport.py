"""JSON over HTTP POST with retries, timeouts and a cap on requests in flight (standard library only).

Shared by the OpenAI-compatible judge engine (``openai_http.py``) and the reward-service client
(``cdra_ray/client.py``): both send one JSON body per request to one URL and need the same failure policy.
Timeouts, connection errors, HTTP 429 and 5xx are retried with exponential backoff (``backoff_s * 2**k``, a
little jitter, at least the server's ``Retry-After``); other 4xx mean the request itself is wrong and fail at
once. The last error names the URL, the status or exception, and the number of attempts.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

logger = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 60.0  # never wait longer than this for a server's Retry-After
_BODY_SNIPPET = 500  # characters of an error reply quoted in exceptions
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


class HTTPRequestError(RuntimeError):
    """A request failed for good (after the retries, or at once for a non-retryable 4xx)."""

    def __init__(self, message: str, *, url: str, status: int | None, attempts: int, body: str = ""):
        super().__init__(message)
        self.url = url
        self.status = status  # HTTP status of the last reply; None for a timeout or connection error
        self.attempts = attempts
        self.body = body  # the last error reply (shortened), "" when there was none


class _Failure(Exception):
    """One failed attempt: ``retryable`` decides whether the retry loop goes on."""

    def __init__(self, description: str, *, status: int | None, retryable: bool, retry_after: float | None = None,
                 body: str = ""):
        super().__init__(description)
        self.description = description
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.body = body


def snippet(raw: bytes | str) -> str:
    """A reply body as one short line, for error messages."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = " ".join(text.split())
    return text if len(text) <= _BODY_SNIPPET else text[:_BODY_SNIPPET] + "..."


def _retry_after_seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


class JSONPoster:
    """POSTs JSON bodies to ``url`` and returns the parsed JSON replies.

    ``timeout_s`` bounds each connect/read, ``max_retries`` counts retries after the first attempt, ``backoff_s``
    is the first retry's delay (doubling after each), ``max_concurrency`` caps requests in flight across all
    threads using this poster. ``name`` leads every error message; ``error_cls`` is the exception raised (a
    subclass of :class:`HTTPRequestError`); ``hint`` may add advice for a rejected request's status.
    Loopback URLs never go through an environment proxy; remote ones honour ``HTTP(S)_PROXY`` as usual.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_concurrency: int = 8,
        headers: dict[str, str] | None = None,
        error_cls: type[HTTPRequestError] = HTTPRequestError,
        hint: Callable[[int | None], str] | None = None,
    ):
        if timeout_s <= 0:
            raise ValueError(f"{name} timeout_s must be > 0, got {timeout_s}")
        if max_retries < 0:
            raise ValueError(f"{name} max_retries must be >= 0, got {max_retries}")
        if backoff_s < 0:
            raise ValueError(f"{name} backoff_s must be >= 0, got {backoff_s}")
        if max_concurrency < 1:
            raise ValueError(f"{name} max_concurrency must be >= 1, got {max_concurrency}")
        self.url = url
        self.name = name
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_concurrency = int(max_concurrency)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        self.error_cls = error_cls
        self.hint = hint or (lambda status: "")
        self._slots = threading.BoundedSemaphore(self.max_concurrency)  # in-flight cap across calls
        host = urllib.parse.urlparse(url).hostname or ""
        handlers = [urllib.request.ProxyHandler({})] if host in _LOOPBACK or host.startswith("127.") else []
        self._opener = urllib.request.build_opener(*handlers)
        self._random = random.Random()

    def post(self, body: dict, *, what: str = "") -> dict:
        """POST ``body`` with retries; the parsed JSON reply, or ``error_cls``. ``what`` names the request."""
        data = json.dumps(body).encode("utf-8")
        attempts = self.max_retries + 1
        where = f"{self.name}: POST {self.url}{what}"
        for attempt in range(1, attempts + 1):
            try:
                with self._slots:
                    return self._attempt(data)
            except _Failure as failure:
                if not failure.retryable:
                    raise self.error_cls(
                        f"{where} was rejected: {failure.description} (not retried: a 4xx other than 429 means the "
                        f"request itself is wrong{self.hint(failure.status)})",
                        url=self.url, status=failure.status, attempts=attempt, body=failure.body,
                    ) from None
                if attempt == attempts:
                    raise self.error_cls(
                        f"{where} failed after {attempts} attempts (max_retries={self.max_retries}, "
                        f"timeout_s={self.timeout_s}); last error: {failure.description}",
                        url=self.url, status=failure.status, attempts=attempts, body=failure.body,
                    ) from None
                delay = self.backoff_s * 2 ** (attempt - 1) * (1.0 + 0.25 * self._random.random())
                if failure.retry_after is not None:
                    delay = max(delay, min(failure.retry_after, MAX_RETRY_AFTER_S))
                logger.warning("%s: attempt %d/%d failed (%s); retrying in %.2f s",
                               where, attempt, attempts, failure.description, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _attempt(self, data: bytes) -> dict:
        request = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:  # before URLError: HTTPError is a subclass
            try:
                detail = snippet(err.read())
            except (OSError, http.client.HTTPException):
                detail = ""
            status = int(err.code)
            raise _Failure(
                f"HTTP {status} {err.reason}: {detail}".rstrip(": "),
                status=status,
                retryable=status == 429 or status >= 500,
                retry_after=_retry_after_seconds(err.headers.get("Retry-After") if err.headers else None),
                body=detail,
            ) from None
        except urllib.error.URLError as err:  # connection refused, DNS, a timeout while connecting
            reason = err.reason
            raise _Failure(f"{type(reason).__name__}: {reason}", status=None, retryable=True) from None
        except TimeoutError as err:  # no reply within timeout_s
            raise _Failure(f"TimeoutError: no reply within timeout_s={self.timeout_s} ({err})", status=None,
                           retryable=True) from None
        except (OSError, http.client.HTTPException) as err:  # reset, closed or truncated connection
            raise _Failure(f"{type(err).__name__}: {err}", status=None, retryable=True) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise _Failure(f"HTTP 200 with a body that is not JSON: {snippet(raw)}", status=200,
                           retryable=False) from None
