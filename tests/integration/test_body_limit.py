"""The request-body limit over HTTP, in the web process the Procfile runs: refused before the body
is read (tasks.platform.middleware.BodyLimit, in front of Django), on every path."""

from __future__ import annotations

import json
import re
import select
import socket
import time
from collections.abc import Iterator

import pytest
import requests
from django.contrib.auth import get_user_model

from tasks.models import ApiToken, Job
from tests.integration.test_limits import post_operations
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)  # the web process must see the user and token

#: the limit of these tests' web processes (API_MAX_BODY_BYTES)
LIMIT = 64 * 1024
#: what the anonymous client tries to send
HUGE = 50 * 1024 * 1024
CHUNK = 64 * 1024
#: the most uvicorn hands the app in one receive: it stops reading the socket past 64 KiB of
#: unread body, and asyncio reads up to 256 KiB at a time
ONE_RECEIVE = 64 * 1024 + 256 * 1024
REFUSED = re.compile(r"request body refused \(over (\d+) bytes\): POST (\S+), Content-Length (\S+), (\d+) bytes read")


@pytest.fixture
def web(start_web) -> tuple[object, str, int]:
    process, base = start_web(env={"API_MAX_BODY_BYTES": str(LIMIT)})
    return process, base, int(base.rsplit(":", 1)[1])


def send_until_answered(port: int, head: bytes, body: Iterator[bytes], *, timeout: float = 60) -> tuple[bytes, int]:
    """Send ``head``, then ``body`` chunk by chunk until the server answers (or closes); the
    answer (status line, headers and body) and how many body bytes went out before it came."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head)
    sock.setblocking(False)
    answer, sent, pending, sending = b"", 0, b"", True
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not _complete(answer):
            readable, writable, _ = select.select([sock], [sock] if sending else [], [], 0.5)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                answer += data
            elif writable:
                if not pending:
                    pending = next(body, b"")
                    if not pending:
                        sending = False
                        continue
                try:
                    written = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    sending = False  # the server closed: read what it answered
                    continue
                sent += written
                pending = pending[written:]
    finally:
        sock.close()
    return answer, sent


def _complete(answer: bytes) -> bool:
    head, separator, body = answer.partition(b"\r\n\r\n")
    if not separator:
        return False
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return length is not None and len(body) >= int(length.group(1))


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def chunked(total: int, size: int) -> Iterator[bytes]:
    """A JSON-looking body of ``total`` bytes in HTTP/1.1 chunks of ``size``."""
    block = b"x" * size
    for _ in range(total // size):
        yield b"%x\r\n%s\r\n" % (size, block)
    yield b"0\r\n\r\n"


def refusals(process) -> list[tuple[int, str, str, int]]:
    return [(int(m[0]), m[1], m[2], int(m[3])) for m in REFUSED.findall(process.log())]


def test_a_streamed_anonymous_body_is_refused_once_it_passes_the_limit_and_no_further_byte_is_read(web):
    process, _, port = web
    head = (
        b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )

    answer, sent = send_until_answered(port, head, chunked(HUGE, CHUNK))

    status, headers, body = parse(answer)
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"detail": f"request body exceeds {LIMIT} bytes", "code": "body_too_large"}
    # Answered while the client was still sending: what it got out is the limit plus the sockets' buffers.
    assert sent < HUGE / 2, sent
    logged = wait_until(lambda: refusals(process), timeout=10, what="the refusal in the web log")
    assert len(logged) == 1
    limit, path, declared, read = logged[0]
    assert (limit, path, declared) == (LIMIT, "/api/jobs", "none")
    assert LIMIT < read <= LIMIT + ONE_RECEIVE, read
    assert not Job.objects.exists()


def test_a_declared_length_over_the_limit_is_refused_at_once_without_reading(web):
    process, _, port = web
    head = (
        b"POST /api/jobs/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % HUGE
    )
    started = time.monotonic()

    answer, sent = send_until_answered(port, head, iter(()), timeout=10)  # not one byte of the body

    status, headers, body = parse(answer)
    assert (status, json.loads(body)["code"]) == (413, "body_too_large")
    assert headers["connection"] == "close"
    assert time.monotonic() - started < 5
    assert sent == 0
    logged = wait_until(lambda: refusals(process), timeout=10, what="the refusal in the web log")
    assert logged == [(LIMIT, "/api/jobs/batch", str(HUGE), 0)]


def test_every_path_refuses_a_body_over_the_limit_and_takes_one_under_it(web):
    _, base, _ = web
    user = get_user_model().objects.create_superuser("poster", password="unused-pass-123")
    _, token = ApiToken.issue(user)
    bearer = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    oversized = json.dumps({"padding": "x" * LIMIT}).encode()
    paths = [path for path, _ in post_operations()] + ["/accounts/login/", "/accounts/register", "/admin/login/"]

    for path in paths:
        refused = requests.post(f"{base}{path}", data=oversized, headers=bearer, timeout=30)
        assert refused.status_code == 413, (path, refused.status_code)
        assert refused.json()["code"] == "body_too_large"
    assert not Job.objects.exists()

    # Under the limit the request reaches Django as before, with a declared length or chunked.
    small = b'{"task": "ops.ping", "delay_seconds": 60}'
    declared = requests.post(f"{base}/api/jobs", data=small, headers=bearer, timeout=30)
    streamed = requests.post(f"{base}/api/jobs", data=iter([small[:10], small[10:]]), headers=bearer, timeout=30)
    assert "Content-Length" not in streamed.request.headers
    assert (declared.status_code, streamed.status_code) == (202, 202), (declared.text, streamed.text)
    assert Job.objects.filter(owner=user).count() == 2
