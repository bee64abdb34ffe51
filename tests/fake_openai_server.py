"""A scripted OpenAI-compatible ``/v1/completions`` server on loopback, for the HTTP engine's tests.

The test hands in ``respond(request) -> Reply``; the server records every request (path, headers, JSON body)
and how many were in flight at once. ``Reply(hang=True)`` holds the connection without answering until the
server closes, which is how a client timeout is provoked without the client or the test sleeping.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Recorded:
    index: int  # arrival order, from 0
    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class Reply:
    status: int = 200
    body: dict | str = ""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # never answer (until the server shuts down)


def completion_reply(texts: list[str], *, finish_reason: str = "stop", logprobs: list[dict | None] | None = None,
                     reverse: bool = False) -> Reply:
    """An OpenAI completions body with one choice per text (``reverse`` lists them in reverse index order)."""
    choices = [
        {"index": i, "text": t, "finish_reason": finish_reason, "logprobs": (logprobs or [None] * len(texts))[i]}
        for i, t in enumerate(texts)
    ]
    if reverse:
        choices.reverse()
    return Reply(body={"id": "cmpl-test", "object": "text_completion", "model": "judge", "choices": choices})


class FakeOpenAIServer:
    """``with FakeOpenAIServer(respond) as server: ... server.base_url ... server.requests``"""

    def __init__(self, respond: Callable[[Recorded], Reply]):
        self.respond = respond
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.closing = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                with fake.lock:
                    record = Recorded(len(fake.requests), self.path, dict(self.headers.items()), json.loads(raw))
                    fake.requests.append(record)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    reply = fake.respond(record)
                    if reply.hang:
                        fake.closing.wait(timeout=30)
                        return
                    payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                    data = payload.encode("utf-8")
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timed out) first
                    pass
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing.set()  # release hanging handlers
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
