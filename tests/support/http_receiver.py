"""A real HTTP server in the test process that plays a webhook receiver: scripted answers, and a
record of every request (path, headers, raw body) that worker processes send it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.processes import wait_until


@dataclass(frozen=True)
class Answer:
    """What the receiver answers one request: a status, a body, after holding it ``delay`` seconds."""

    status: int = 200
    body: bytes = b"ok"
    delay: float = 0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    at: float  # time.time() when it arrived


@dataclass
class HttpReceiver:
    """``answer(...)`` scripts the next answers in order; once they are used up, ``default`` answers."""

    default: Answer = field(default_factory=Answer)
    requests: list[Received] = field(default_factory=list)
    _script: deque[Answer] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def answer(self, *answers: Answer, then: Answer | None = None) -> None:
        with self._lock:
            self._script = deque(answers)
            if then is not None:
                self.default = then

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(self, count: int, *, path: str | None = None, timeout: float = 30) -> list[Received]:
        """The requests (to ``path``) once at least ``count`` arrived."""

        def arrived() -> list[Received] | None:
            got = self.received(path)
            return got if len(got) >= count else None

        return wait_until(arrived, timeout=timeout, what=f"{count} request(s) to the webhook receiver")

    def _next_answer(self) -> Answer:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _record(self, request: Received) -> None:
        with self._lock:
            self.requests.append(request)

    def start(self) -> HttpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver._record(Received(self.path, headers, body, time.time()))
                answer = receiver._next_answer()
                time.sleep(answer.delay)
                # The client may have given up waiting (a timeout under test): nobody to answer.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)

            def log_message(self, *args) -> None:
                """Quiet: the test reads ``requests`` instead."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
