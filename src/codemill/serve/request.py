"""What a completion request is once parsed, from the HTTP body to the decoding loop, and its error.

Every endpoint turns its body into a `Request` (the prompt's ids and typed `Params`); the batcher
queues it, the engine decodes it. `RequestError` is a problem with the request (answered 4xx, no
traceback); any other exception on the way is a bug (answered 500, traceback logged).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class RequestError(Exception):
    """A request the server cannot serve as sent: the client can fix it (HTTP 4xx)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


@dataclass(frozen=True)
class Params:
    """How a request decodes and when it stops."""

    max_tokens: int = 64  # 0: only fill the cache with the prompt (a warm-up)
    stop: tuple[str, ...] = ()
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    time_budget_s: float | None = None
    seed: int | None = None
    n_indent: int = 0  # llama.cpp's rule: a new line indented less ends the completion
    until: Callable[[str], int] | None = None  # a syntax stop (codemill/stops.py)
    reset: bool = False  # evaluate the whole prompt (llama.cpp's `cache_prompt: false`)


@dataclass
class Request:
    """A completion request as every endpoint hands it on."""

    ids: list[int]
    params: Params
    truncated: bool = False  # the prompt was cut to fit the context


def check_fits(ids: list[int], max_tokens: int, max_len: int) -> None:
    """The one length check: the prompt and its new tokens (at least one) fit the context."""
    if not ids:
        raise RequestError(
            f"{max_tokens} new tokens leave no room for the prompt in the context of {max_len}"
        )
    if len(ids) + max(max_tokens, 1) > max_len:
        raise RequestError(
            f"prompt of {len(ids)} tokens plus {max_tokens} new ones exceeds the context of {max_len}"
        )
