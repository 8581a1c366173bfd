"""The server's one queue and the one thread that owns the engine (llama-server's task queue and slots).

`submit` admits a request or refuses it (`QueueFull`), and a newer request from the same client
replaces that client's older one: waiting, it leaves the queue at once; decoding, it is stopped when
the client named itself (`x-client-id`), so an editor that sends a request per keystroke waits only for
its last, which finds the older one's slot and cached prompt free. `cancel` takes back a request
whose client left, waiting or decoding. The thread starts waiting requests as slots free up (never
more than the engine has), decodes every request in a slot together, one step for all (continuous
batching: a request joins after its prefill and leaves when it stops or its client goes), and hands
each its text through the callback it brought. Nothing else touches the engine's model or cache.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from codemill.serve.engine import Completion, Engine, Session
from codemill.serve.request import Request

# (text, then the end: the Completion, `Replaced` or a bug's exception; None before it)
Emit = Callable[[str, Completion | Exception | None], None]


class QueueFull(Exception):
    """`max_queue` requests already wait: the server sheds this one (HTTP 503 with Retry-After)."""


class Replaced(Exception):
    """A newer request from the same client took this one's place (HTTP 409)."""


@dataclass(eq=False)  # a task is itself: compared by identity
class Task:
    """A request in the queue or in a slot, and where its text goes."""

    request: Request
    emit: Emit
    client: str = ""  # who sent it: a newer request from the same client replaces it while it waits
    named: bool = False  # the client named itself (x-client-id): a newer request stops it decoding too
    stream: bool = True  # the client takes text as it comes; otherwise only the end is sent
    gone: threading.Event = field(default_factory=threading.Event)  # stop decoding it: nobody listens


class Batcher:
    def __init__(self, engine: Engine, max_queue: int = 8):
        self.engine, self.max_queue = engine, max_queue
        self.lock = threading.Condition()
        self.waiting: deque[Task] = deque()
        self.running: dict[str, Task] = {}  # named client: its request in a slot
        self.live: list[tuple[Session, Task]] = []  # the engine thread's own
        threading.Thread(target=self._loop, daemon=True, name="codemill-engine").start()

    def submit(self, task: Task) -> None:
        """Queue a request, replacing its client's older one; `QueueFull` when `max_queue` others wait
        (a replacement takes no new place, so an editor holds one place however fast it types). `stream`:
        text is handed over as it comes, else only with the end (each hand-over wakes the server's
        event loop, which then competes with the engine thread for the interpreter lock)."""
        with self.lock:
            older = next((t for t in self.waiting if t.client == task.client), None)
            if older is None and len(self.waiting) >= self.max_queue:
                raise QueueFull
            if older is not None:
                self.waiting.remove(older)
                _send(older, "", Replaced())
            if task.named and (decoding := self.running.pop(task.client, None)) is not None:
                decoding.gone.set()  # before the newer one is admitted: its slot is free first
                _send(decoding, "", Replaced())
            self.waiting.append(task)
            self.lock.notify()

    def cancel(self, task: Task) -> None:
        """The client left (or its answer went): a waiting request gives its place back at once, one in
        a slot stops within a step. Harmless for a request that ended."""
        with self.lock:
            task.gone.set()
            if task in self.waiting:
                self.waiting.remove(task)

    @property
    def held(self) -> int:
        """Requests waiting or in a slot."""
        return len(self.waiting) + len(self.live)

    def _loop(self) -> None:
        live = self.live
        while True:
            self._drop_gone()
            with self.lock:
                while not self.waiting and not live:
                    self.lock.wait()
                starting = []
                while self.waiting and len(live) + len(starting) < self.engine.parallel:
                    starting.append(task := self.waiting.popleft())
                    if task.named:
                        self.running[task.client] = task
            for task in starting:
                self._start(task)
            if not live:
                continue
            try:
                pieces = self.engine.step([s for s, _ in live])
            except Exception as e:  # a failed step fails the requests in it, not the server
                _log(e)
                for s, task in live:
                    self.engine.release(s)
                    self._end(task, "", e)
                live.clear()
                continue
            for (s, task), piece in zip(live, pieces, strict=True):
                if s.done:
                    self._end(task, piece, s.out)
                elif piece and task.stream:
                    _send(task, piece, None)
            live[:] = [(s, t) for s, t in live if not s.done]

    def _drop_gone(self) -> None:
        for s, task in [x for x in self.live if x[1].gone.is_set()]:
            self.engine.release(s)
            self.live.remove((s, task))
            self._forget(task)

    def _start(self, task: Task) -> None:
        if task.gone.is_set():  # cancelled as it left the queue: no prefill for nobody
            self._forget(task)
            return
        try:
            s = self.engine.start(task.request.ids, task.request.params)
        except Exception as e:
            _log(e)
            self._end(task, "", e)
            return
        if s.done:  # a warm-up: the prompt is in the cache
            self._end(task, "", s.out)
        else:
            self.live.append((s, task))

    def _end(self, task: Task, text: str, end: Completion | Exception) -> None:
        self._forget(task)
        _send(task, text, end)

    def _forget(self, task: Task) -> None:
        with self.lock:
            if self.running.get(task.client) is task:
                del self.running[task.client]


def _send(task: Task, text: str, end: Completion | Exception | None) -> None:
    """Hand text to the request's callback; one that fails (its event loop closed) loses its
    request, never the thread that serves the others."""
    try:
        task.emit(text, end)
    except Exception:
        task.gone.set()


def _log(e: Exception) -> None:
    """A bug in the engine: its traceback goes to the server's log (the client gets a 500)."""
    traceback.print_exception(e, file=sys.stderr)
