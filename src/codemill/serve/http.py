"""HTTP API for editors: OpenAI-compatible `/v1/completions` and llama.cpp-style `/infill`.

This module parses bodies into a `Request` (serve/request.py: prompt ids from serve/prompter.py, typed
`Params`) and shapes answers; the queue and the engine's thread are serve/batcher.py's. The path of a
request: parse (a worker thread builds the prompt) → `Batcher.submit` (queued, or refused) → the
engine thread decodes it beside the others → its text comes back to the handler, which streams or
answers it. The queue holds `max_queue` waiting requests, past which the server sheds load: 503 with
`Retry-After` and `x-should-retry: false` (openai-python would otherwise resend a stale completion); a newer request from the same client (its `x-client-id` header, else its
address) replaces that client's queued older one, answered 409 at once, and with an `x-client-id`
also its request still decoding: an editor that sends a request per keystroke only waits for the
last. The client's connection is checked whenever its text moves on and every 20 ms, waiting or
decoding, so a client that leaves gives its place or slot back within a token or so. A request error
(serve/request.py `RequestError`) is a 4xx; anything else is a bug: 500, its traceback logged. The
server listens while the model loads:
`/health` and every other route answer 503 until it is ready. Invalid requests get a 4xx with an
OpenAI error object; a body over `max_body_bytes` gets a 413 however it is sent (its Content-Length,
or its bytes counted as they come: `BodyLimit`).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from codemill.errors import UserError
from codemill.formats import CHUNK_PATH
from codemill.serve.batcher import Batcher, QueueFull, Replaced, Task
from codemill.serve.engine import Completion, Engine
from codemill.serve.prompter import Prompter
from codemill.serve.request import Params, Request, RequestError, check_fits
from codemill.stops import syntax_stop


class InfillExtra(BaseModel):
    filename: str = CHUNK_PATH  # llama-server's name for a chunk that gives none
    text: str


class CompletionBody(BaseModel):
    model: str | None = None
    prompt: str
    suffix: str | None = None
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    seed: int | None = None
    input_extra: list[InfillExtra] = []  # llama.cpp's cross-file snippets, placed by the model's format
    path: str | None = None  # codemill's extension: the file's path, where the format puts it
    syntax_stop: bool = False  # codemill's extension: stop where the completion closes a syntactic unit
    # OpenAI fields codemill does not implement: accepted only at their defaults, else a 400 names them
    n: int = 1
    best_of: int = 1
    logprobs: int | None = None
    echo: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    def unsupported(self) -> str | None:
        for name in (
            "n",
            "best_of",
            "logprobs",
            "echo",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
        ):
            if getattr(self, name) != type(self).model_fields[name].default:
                return name
        return None


class LlamaBody(BaseModel):
    """What llama-server's /completion and /infill share."""

    n_predict: int = Field(64, ge=0)
    n_indent: int = Field(0, ge=0)
    t_max_predict_ms: int = Field(0, ge=0)
    cache_prompt: bool = True
    stop: list[str] = []
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stream: bool = False
    response_fields: list[str] = []  # answer only these (paths such as "timings/prompt_n"), flat
    samplers: list[str] | str | None = None  # accepted; codemill applies top_k, top_p, temperature
    id_slot: int = -1  # accepted; the free slot holding the longest common prefix serves (answers name it)
    path: str | None = None  # codemill's extensions, as in /v1/completions
    syntax_stop: bool = False


class InfillBody(LlamaBody):
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[InfillExtra] = []
    prompt: str = ""


class RawBody(LlamaBody):
    prompt: str | list[int | str]


def llama_answer(
    name: str, ids: list[int], result: Completion, body: LlamaBody, truncated: bool, prompt: str
) -> dict:
    """llama-server's final answer (tools/server: to_json_non_oaicompat), `response_fields` applied."""
    predicted_s, prompt_s = result.decode_ms / 1000, result.prompt_ms / 1000
    n, evaluated = len(result.tokens), result.tokens_evaluated
    word = result.stop_type == "word" and result.stop_word
    answer = {
        "index": 0,
        "content": result.text,
        "tokens": [],
        "id_slot": result.slot,
        "stop": True,
        "model": name,
        "tokens_predicted": n,
        "tokens_evaluated": len(ids),
        "generation_settings": {
            **body.model_dump(
                include={"n_predict", "temperature", "top_k", "top_p", "seed", "stop", "n_indent"}
            ),
            "samplers": ["top_k", "top_p", "temperature"],
        },
        "prompt": prompt,
        "has_new_line": "\n" in result.text,
        "truncated": truncated,
        "stop_type": "eos" if result.stop_type in ("eos", "syntax") else "word" if word else "limit",
        "stopping_word": word or "",
        "tokens_cached": len(ids) + n,  # what the cache holds after the request, as llama-server counts
        "timings": {
            "cache_n": result.tokens_cached,
            "prompt_n": evaluated,
            "prompt_ms": result.prompt_ms,
            "prompt_per_token_ms": result.prompt_ms / evaluated if evaluated else 0.0,
            "prompt_per_second": evaluated / prompt_s if prompt_s else 0.0,
            "predicted_n": n,
            "predicted_ms": result.decode_ms,
            "predicted_per_token_ms": result.decode_ms / n if n else 0.0,
            "predicted_per_second": n / predicted_s if predicted_s else 0.0,
            "draft_n": result.draft_n,
            "draft_n_accepted": result.draft_n_accepted,
        },
    }
    if not body.response_fields:
        return answer
    out = {}
    for field in body.response_fields:  # llama-server's json_get_nested_values: flat "a/b" keys
        value: Any = answer
        for key in field.split("/"):
            value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        if value is not _MISSING:
            out[field] = value
    return out


_MISSING = object()


def error(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    headers: dict | None = None,
    param: str | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def _client(request: HTTPRequest) -> str:
    return request.headers.get("x-client-id") or (request.client.host if request.client else "")


@dataclass
class Limits:
    api_key: str | None
    max_tokens: int  # the server's cap on new tokens per request
    max_body_bytes: int
    max_queue: int
    access_log: bool  # one line per request on stderr (client, method, path, status, ms, tokens)


def create_app(
    engine: Engine | Callable[[], Engine],
    *,
    api_key: str | None = None,
    max_tokens: int = 512,
    max_body_bytes: int = 1 << 20,
    max_queue: int = 8,
    access_log: bool = True,
    on_load_error: Callable[[str], None] | None = None,
) -> FastAPI:
    """`engine` or a function that loads one: the server then answers 503 until it returns, and
    with the reason if it fails (`on_load_error` is told it too)."""
    app = FastAPI(title="codemill serve")
    state = app.state
    state.limits = Limits(api_key, max_tokens, max_body_bytes, max_queue, access_log)
    state.stats, state.batcher, state.error = Counter(), None, None
    state.trimmed = time.monotonic()

    def ready(e: Engine) -> None:  # the engine is the batcher's from here on
        state.prompter, state.name, state.batcher = e.prompter, e.name, Batcher(e, max_queue)

    if isinstance(engine, Engine):
        ready(engine)
    else:

        def load():
            try:
                ready(engine())
            except Exception as e:  # the server says why on every route
                state.error = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
                if not isinstance(e, UserError):  # possibly a bug: its traceback goes to the log
                    traceback.print_exception(e, file=sys.stderr)
                if on_load_error is not None:
                    on_load_error(state.error)

        threading.Thread(target=load, daemon=True).start()
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_middleware(BodyLimit, limit=max_body_bytes)  # inside `guard`: its 413 reaches the route
    app.middleware("http")(guard)
    for path, handler, method in (
        ("/health", health, "GET"),
        ("/v1/models", models, "GET"),
        ("/metrics", metrics, "GET"),
        ("/v1/completions", completions, "POST"),
        ("/infill", infill, "POST"),
        ("/completion", completion, "POST"),
    ):
        app.add_api_route(path, handler, methods=[method])
    return app


class BodyLimit:
    """Counts a request body's bytes as they come in and answers 413 (raised from `receive`, so the
    route's error handler writes it) as soon as they pass `limit`: a chunked body has no
    Content-Length for `refusal` to check, and the rest of it is never held."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise StarletteHTTPException(
                    413, f"request body over the limit of {self.limit} bytes; send a shorter one"
                )
            return message

        await self.app(scope, counted, send)


async def invalid(_req: HTTPRequest, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(x) for x in first.get("loc", []) if x != "body" and not isinstance(x, int))
    message = f"invalid request: {where or 'body'}: {first.get('msg', 'malformed body')}"
    return error(400, message, param=where or None)


async def http_error(_req: HTTPRequest, exc: StarletteHTTPException):  # a body that is not UTF-8, a 404...
    return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


def refusal(request: HTTPRequest) -> JSONResponse | None:
    state, limits = request.app.state, request.app.state.limits
    if state.batcher is None:
        message = f"the model failed to load: {state.error}" if state.error else "the model is loading"
        return error(503, message, "unavailable", {"retry-after": "1"})
    authorized = request.headers.get("authorization", "") == f"Bearer {limits.api_key}"
    if limits.api_key and request.url.path != "/health" and not authorized:
        return error(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")
    size = int(request.headers.get("content-length") or 0)
    if size > limits.max_body_bytes:
        return error(413, f"request body of {size} bytes is over the limit of {limits.max_body_bytes}")
    return None


def _read_as_json(request: HTTPRequest) -> None:
    """Every POST body is JSON, whatever its content type says, as llama-server reads it (`curl -d`
    sends a form type, which FastAPI would parse as a form)."""
    if request.method == "POST" and "json" not in request.headers.get("content-type", ""):
        headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
        request.scope["headers"] = [*headers, (b"content-type", b"application/json")]


async def guard(request: HTTPRequest, call_next):
    t0 = time.perf_counter()
    _read_as_json(request)
    response = refusal(request)
    if response is None:
        request.app.state.stats["requests"] += 1
        response = await call_next(request)
    if not request.app.state.limits.access_log:
        return response

    def log() -> None:
        ms, tokens = 1000 * (time.perf_counter() - t0), getattr(request.state, "tokens", 0)
        line = f"{_client(request)} {request.method} {request.url.path} {response.status_code} {ms:.0f} ms"
        print(f"{line} {tokens} tokens", file=sys.stderr, flush=True)

    if isinstance(response, JSONResponse):
        log()
        return response

    async def logged(body):  # the line is written once the last byte of the answer has gone
        async for chunk in body:
            yield chunk
        log()

    response.body_iterator = logged(response.body_iterator)
    return response


async def health():
    return {"status": "ok"}


async def models(request: HTTPRequest):
    name = request.app.state.name
    return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "codemill"}]}


async def metrics(request: HTTPRequest):
    lines = [f"codemill_{k}_total {v}" for k, v in sorted(request.app.state.stats.items())]
    batcher = request.app.state.batcher
    lines.append(f"codemill_queue_waiting {batcher.held}")
    if (prompts := batcher.engine.prompts) is not None:  # serve/prompt_cache.py: counters, read only
        lines += [
            f"codemill_prompt_cache_prompts {len(prompts.kept)}",
            f"codemill_prompt_cache_max_prompts {prompts.max_prompts}",
            f"codemill_prompt_cache_bytes {prompts.nbytes}",
            f"codemill_prompt_cache_limit_bytes {prompts.limit}",  # --cache-ram: where the growth stops
        ]
    return PlainTextResponse("\n".join(lines) + "\n")


# --- parsing: each endpoint's body into a Request -------------------------------------------------
def parse_openai(body: CompletionBody, prompter: Prompter, cap: int) -> Request:
    if (name := body.unsupported()) is not None:
        raise RequestError(
            f"`{name}` is not supported by codemill serve; leave it at its default", param=name
        )
    context = [(e.filename, e.text) for e in body.input_extra]
    ids, truncated = prompter.prompt_fit(
        body.prompt, body.suffix, path=body.path, max_tokens=min(body.max_tokens, cap), context=context
    )
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    until = until_for(body, body.prompt, body.suffix or "")
    params = Params(max_tokens=body.max_tokens, stop=stop, temperature=body.temperature, top_p=body.top_p,
                    seed=body.seed, until=until)  # fmt: skip
    return Request(ids, params, truncated)


def parse_infill(body: InfillBody, prompter: Prompter, cap: int) -> Request:
    """llama-server's /infill as llama-server lays it out (PSM, its placeholders for the repository
    and a file without a name, the typed `prompt` after the prefix): the same ids, so a model trained
    with `data.repo_context` meets the layout it was trained on here and under llama-server."""
    context = [(e.filename, e.text) for e in body.input_extra]
    ids, truncated = prompter.prompt_fit(
        body.input_prefix,
        body.input_suffix,
        path=body.path,
        max_tokens=min(max(body.n_predict, 1), cap),
        context=context,
        typed=body.prompt,
        spm=False,
    )
    prefix = body.input_prefix + body.prompt
    return Request(ids, llama_params(body, until_for(body, prefix, body.input_suffix)), truncated)


def parse_raw(body: RawBody, prompter: Prompter, cap: int) -> Request:
    """llama-server's raw completion: the prompt as given (special-token strings parsed), no format."""
    ids = prompter.raw_ids(body.prompt)
    text = body.prompt if isinstance(body.prompt, str) else prompter.tok.decode(ids)
    return Request(ids, llama_params(body, until_for(body, text, "")))


def llama_params(body: LlamaBody, until) -> Params:
    return Params(max_tokens=body.n_predict, stop=tuple(body.stop), temperature=body.temperature,
                  top_k=body.top_k, top_p=body.top_p, seed=body.seed, n_indent=body.n_indent,
                  time_budget_s=body.t_max_predict_ms / 1000 if body.t_max_predict_ms else None,
                  until=until, reset=not body.cache_prompt)  # fmt: skip


def until_for(body: CompletionBody | LlamaBody, prefix: str, suffix: str):
    if not body.syntax_stop:
        return None
    if (until := syntax_stop(prefix, suffix, body.path)) is None:
        raise RequestError(
            "syntax_stop needs a `path` whose language has a tree-sitter grammar", param="syntax_stop"
        )
    return until


async def prepare(request: HTTPRequest, parse, body) -> Request | JSONResponse:
    """The endpoint's Request, checked the same way for every endpoint, or the 4xx answer. The prompt
    is built in a worker thread: tokenizing a long file takes 5-20 ms, which would hold up the other
    requests' text and the engine's thread (the tokenizer lets go of the interpreter lock)."""
    prompter, cap = request.app.state.prompter, request.app.state.limits.max_tokens

    def parsed() -> Request:
        req = parse(body, prompter, cap)
        if (n := req.params.max_tokens) > cap:
            raise RequestError(f"{n} new tokens are over the server's limit of {cap}")
        check_fits(req.ids, n, prompter.max_len)
        return req

    try:
        return await asyncio.to_thread(parsed)
    except RequestError as e:
        return error(e.status, str(e), param=e.param)


# --- executing: one path for every endpoint --------------------------------------------------------
WATCH_S = 0.02  # how often a request's connection is looked at when no text came
RETRY_AFTER_S = 1  # a full queue's answer: an editor's next keystroke comes sooner anyway


async def execute(request: HTTPRequest, req: Request, stream_piece=None) -> Any:
    """Queue the request and follow it, watching the connection as text comes: the Completion, an
    error response, or None when the client left."""
    state = request.app.state
    stats, batcher = state.stats, state.batcher
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    emit = lambda text, end: loop.call_soon_threadsafe(events.put_nowait, (text, end))  # noqa: E731
    named = request.headers.get("x-client-id") is not None
    task = Task(req, emit, _client(request), named, stream_piece is not None)
    try:
        batcher.submit(task)
    except QueueFull:
        headers = {"retry-after": str(RETRY_AFTER_S), "x-should-retry": "false"}  # no stale retries
        return error(503, "the queue is full; try again later", "server_busy", headers)
    try:
        while True:
            try:  # text may be held back while a stop string could still match: look anyway
                piece, result = await asyncio.wait_for(events.get(), WATCH_S)
            except TimeoutError:
                piece, result = "", None
            if isinstance(result, Replaced):
                stats["replaced"] += 1
                return error(409, "replaced by a newer request from the same client", "request_replaced")
            if isinstance(result, Exception):  # a bug: the engine thread logged its traceback
                return error(500, f"{type(result).__name__}: {result}", "server_error")
            if await request.is_disconnected():
                stats["disconnects"] += 1
                return None
            if piece and stream_piece is not None:
                await stream_piece(piece)
            if result is not None:
                break
    finally:
        batcher.cancel(task)  # the client left, or its answer is complete: harmless then
        trim_heap(state)
    stats["tokens_generated"] += len(result.tokens)
    stats["draft_tokens"] += result.draft_n
    stats["draft_tokens_accepted"] += result.draft_n_accepted
    request.state.tokens = len(result.tokens)
    stats["tokens_cached"] += result.tokens_cached
    stats["tokens_evaluated"] += result.tokens_evaluated
    return result


def stream(request: HTTPRequest, req: Request, piece, last, end: str = "") -> StreamingResponse:
    """Server-sent events: `piece(text)` per released text, `last(result)` at the end (or the error
    object), then `end`."""
    queue: asyncio.Queue = asyncio.Queue()

    async def produce():
        async def put(text: str):
            await queue.put(piece(text))

        result = await execute(request, req, put)
        if isinstance(result, JSONResponse):
            await queue.put(json.loads(result.body))
        elif result is not None:
            await queue.put(last(result))
        await queue.put(None)

    async def events():
        task = asyncio.create_task(produce())
        while (item := await queue.get()) is not None:
            yield f"data: {json.dumps(item)}\n\n"
        if end:
            yield end
        await task

    return StreamingResponse(events(), media_type="text/event-stream")


TRIM_S = 2.0  # the least time between two trims of the C heap
_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's; elsewhere None


def trim_heap(state) -> None:
    """After a request, at most every TRIM_S: glibc's malloc_trim gives the heap's free pages back to
    the system. Each prompt's tensors have their own sizes (prefill chunks, prompt-cache copies), and
    glibc serves them from its heaps, where the holes they leave kept the free part growing (25 to
    52 MB over 100 requests of the demo model, RSS with it; trimmed, RSS flat). A trim takes 1-2 ms
    (35 at worst on a loaded 2-core machine)."""
    if _malloc_trim is None or time.monotonic() - state.trimmed < TRIM_S:
        return
    _malloc_trim(0)
    state.trimmed = time.monotonic()


# --- answering: each endpoint's response shape -----------------------------------------------------
async def completions(body: CompletionBody, request: HTTPRequest):
    req = await prepare(request, parse_openai, body)
    if isinstance(req, JSONResponse):
        return req
    name, cid, created = request.app.state.name, f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(text: str, finish: str | None) -> dict:
        return {"id": cid, "object": "text_completion", "created": created, "model": name,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}  # fmt: skip

    reason = lambda r: "length" if r.stop_type in ("limit", "time") else "stop"  # noqa: E731
    if body.stream:
        return stream(
            request, req, lambda piece: chunk(piece, None), lambda r: chunk("", reason(r)), "data: [DONE]\n\n"
        )
    result = await execute(request, req)
    if not isinstance(result, Completion):
        return result
    out = chunk(result.text, reason(result))
    n, m = len(req.ids), len(result.tokens)
    out["usage"] = {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}
    return out


async def infill(body: InfillBody, request: HTTPRequest):
    return await llama_style(request, body, await prepare(request, parse_infill, body))


async def completion(body: RawBody, request: HTTPRequest):
    return await llama_style(request, body, await prepare(request, parse_raw, body))


async def llama_style(request: HTTPRequest, body: LlamaBody, req: Request | JSONResponse):
    """/infill and /completion: llama-server's answer, streamed as its server-sent events or whole."""
    if isinstance(req, JSONResponse):
        return req
    state = request.app.state
    prompt = state.prompter.tok.decode(req.ids)
    finish = lambda r: llama_answer(state.name, req.ids, r, body, req.truncated, prompt)  # noqa: E731
    if not body.stream or body.n_predict == 0:  # n_predict 0: a warm-up, the prompt into a slot
        result = await execute(request, req)
        return finish(result) if isinstance(result, Completion) else result
    piece = lambda text: {"index": 0, "content": text, "tokens": [], "stop": False}  # noqa: E731
    return stream(request, req, piece, lambda r: {**finish(r), "content": ""})  # text went in pieces
