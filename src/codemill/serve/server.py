"""The HTTP server around the app (serve/http.py): its socket and uvicorn's settings against clients
that hold connections without using them.

A server on an editor's machine or a team's meets clients that open a connection and never finish
a request (slowloris: a header, then nothing), keep-alive connections nobody uses, and clients that
vanish mid-stream. uvicorn's own limits answer most of it: idle keep-alive connections are closed
after `KEEP_ALIVE_S`, a request head over `MAX_HEAD_BYTES` is refused, and past `MAX_CONNECTIONS`
connections uvicorn answers 503 instead of holding more. uvicorn 0.55 has no deadline for a request's
head, so `HeadDeadline` adds one: a connection that has not sent a whole head `HEAD_S` after it
opened, or after a head's first bytes, is closed. A client that vanishes mid-stream is seen by the handler
(serve/http.py), which gives its slot back.

A server runs for days, so every cache in it is bounded (oneDNN's and ideep's by model/packed.py `bound_onednn_caches`; the prompt cache by
`--cache-ram`; the prompter's chunk cache), and the C heap's free pages go back to the system after
requests (serve/http.py `trim_heap`): the process's memory stops growing once the caches are full.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from codemill.errors import UserError
from codemill.model.packed import bound_onednn_caches
from codemill.serve.engine import Engine
from codemill.serve.http import create_app

KEEP_ALIVE_S = 5.0  # an idle keep-alive connection is closed after this (uvicorn's default)
HEAD_S = 10.0  # a request's head must arrive whole within this, from the connection or the last answer
MAX_HEAD_BYTES = 16 * 1024  # h11's limit on an incomplete request head
MAX_CONNECTIONS = 4096  # connections and tasks held at once; beyond, uvicorn answers 503


class HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head (slowloris): it starts when the
    connection opens or a new head's first bytes come, and ends when the head is whole; an idle
    keep-alive connection is the keep-alive timeout's."""

    head_s = HEAD_S
    timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timer = self.loop.call_later(self.head_s, self._expire)

    def data_received(self, data: bytes) -> None:
        if self.timer is None and (self.cycle is None or self.cycle.response_complete):
            self.timer = self.loop.call_later(self.head_s, self._expire)  # a new head begins
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a head arrived whole: its request is being answered
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        self.timer = None
        if not self.transport.is_closing():
            self.transport.close()


def config(app: FastAPI, head_s: float = HEAD_S, **kw) -> uvicorn.Config:
    """uvicorn's settings for codemill's server (`serve` and the in-process `Server` alike)."""
    protocol = type("HeadDeadline", (HeadDeadline,), {"head_s": head_s})
    return uvicorn.Config(app, http=protocol, timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=MAX_CONNECTIONS,
                          h11_max_incomplete_event_size=MAX_HEAD_BYTES, log_level="warning", **kw)  # fmt: skip


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port for `serve`, or a UserError saying why not (a port in use)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(
                f"cannot listen on {host}:{port}: the port is in use (another server?); stop that "
                "server or choose another --port"
            ) from None
        raise UserError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; check --host and --port"
        ) from None
    return sock


def serve(engine: Engine | Callable[[], Engine], sock: socket.socket, **kw) -> None:
    """Serve on `sock` (from `listen`) until stopped. A model that fails to load stops the server: a
    UserError with the reason, rather than a server that answers 503 for ever."""
    bound_onednn_caches()
    server: uvicorn.Server | None = None
    failed: list[str] = []

    def stop(reason: str) -> None:
        failed.append(reason)
        if server is not None:
            server.should_exit = True

    server = uvicorn.Server(config(create_app(engine, on_load_error=stop, **kw)))
    if failed:  # it failed before the server existed
        server.should_exit = True
    server.run(sockets=[sock])
    if failed:
        raise UserError(f"the model failed to load: {failed[0]}")


class Server:
    """uvicorn in a background thread (tests and benchmarks run a real server on 127.0.0.1)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, head_s: float = HEAD_S):
        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(config(app, head_s, host=host, port=port))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
