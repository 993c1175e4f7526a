"""The web's connections send small writes at once (TCP_NODELAY).

The Procfile runs uvicorn with ``--workers 2``: its supervisor binds the listening socket
(``Config.bind_socket``) and hands it to each worker, and asyncio turns Nagle's algorithm off only
on connections accepted from a socket that says it is TCP. uvicorn 0.54 bound it without saying
so: every response on a kept-alive connection after the first waited for the client's delayed
ACK before its body left, about 45 ms a request on Linux (uvicorn issue #3149, fixed in 0.55).
"""

from __future__ import annotations

import asyncio
import re
import socket

from uvicorn import Config

from tests.support.processes import BASE_DIR


def test_the_procfile_runs_several_web_workers():
    web = next(line for line in (BASE_DIR / "Procfile").read_text().splitlines() if line.startswith("web:"))
    workers = re.search(r"--workers (\d+)", web)
    assert workers and int(workers.group(1)) > 1  # the path below: the supervisor binds the socket


def test_connections_accepted_from_the_supervisors_socket_have_nagle_off():
    listener = Config("project.asgi:application", host="127.0.0.1", port=0, workers=2).bind_socket()

    async def nodelay_of_an_accepted_connection() -> int:
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()

        class Report(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted_socket = transport.get_extra_info("socket")
                accepted.set_result(accepted_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Report, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname())
            try:
                return await asyncio.wait_for(accepted, 5)
            finally:
                writer.close()

    assert asyncio.run(nodelay_of_an_accepted_connection()) != 0
