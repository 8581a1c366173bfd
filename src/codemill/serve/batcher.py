"""Continuous batching: one thread owns the engine and decodes every request in flight together.

A request joins after its prefill and leaves when it stops or its client goes; the others keep
decoding meanwhile (llama-server's slots). Requests reach the thread through a queue and their text
comes back through the callback they brought, called from this thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from codemill.serve.engine import Completion, Engine, Session

Emit = Callable[[str, Completion | Exception | None], None]  # (text, the result when done, or the error)


@dataclass
class Job:
    ids: list[int]
    options: dict
    emit: Emit
    stream: bool = True  # the client takes text as it comes; otherwise only the end is sent
    gone: threading.Event = field(default_factory=threading.Event)  # the client left: stop decoding it


class Batcher:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.jobs: queue.Queue[Job] = queue.Queue()
        threading.Thread(target=self._loop, daemon=True, name="codemill-batcher").start()

    def submit(self, ids: list[int], emit: Emit, stream: bool = True, **options) -> Job:
        """Queue a request (the caller keeps at most `engine.parallel` in flight). `stream`: text is
        handed over as it comes, else only with the end (each hand-over wakes the server's event loop,
        which then competes with this thread for the interpreter lock)."""
        job = Job(ids, options, emit, stream)
        self.jobs.put(job)
        return job

    def _loop(self) -> None:
        live: list[tuple[Session, Job]] = []
        while True:
            try:  # wait for work when idle; otherwise take what arrived and decode on
                while True:
                    self._admit(self.jobs.get(block=not live), live)
            except queue.Empty:
                pass
            self._drop_gone(live)
            if not live:
                continue
            try:
                pieces = self.engine.step([s for s, _ in live])
            except Exception as e:  # a failed step fails the requests in it, not the server
                for s, job in live:
                    self.engine.release(s)
                    _send(job, "", e)
                live.clear()
                continue
            for (s, job), piece in zip(live, pieces, strict=True):
                if s.done or (piece and job.stream):
                    _send(job, piece, s.out if s.done else None)
            live[:] = [(s, j) for s, j in live if not s.done]

    def _drop_gone(self, live: list[tuple[Session, Job]]) -> None:
        for s, job in [x for x in live if x[1].gone.is_set()]:
            self.engine.release(s)
            live.remove((s, job))

    def _admit(self, job: Job, live: list[tuple[Session, Job]]) -> None:
        self._drop_gone(live)  # their slots are free for this one
        if job.gone.is_set():
            return
        try:
            s = self.engine.start(job.ids, **job.options)
        except Exception as e:
            _send(job, "", e)
            return
        if s.done:  # a warm-up: the prompt is in the cache
            _send(job, "", s.out)
        else:
            live.append((s, job))


def _send(job: Job, text: str, end: Completion | Exception | None) -> None:
    """Hand text to the request's callback; one that fails (its event loop closed) loses its
    request, never the thread that serves the others."""
    try:
        job.emit(text, end)
    except Exception:
        job.gone.set()
