"""HTTP API for editors: OpenAI-compatible `/v1/completions` and llama.cpp-style `/infill`.

The engine has `parallel` slots: that many requests decode together in one thread (serve/batcher.py),
the others wait, up to `max_queue` waiting clients, past which the server answers 429 with
`x-should-retry: false`. A newer request from the same client (its `x-client-id` header, else its
address) replaces that client's queued older one, which is answered 409 at once, and with an
`x-client-id` it also stops that client's request still decoding: an editor that sends a request per
keystroke only waits for the last, which finds the older one's slot and cached prompt free. The
client's connection is checked whenever its text moves on and every 20 ms, so a disconnect frees its
slot within a token or so. The server listens while the model loads:
`/health` and every other route answer 503 until it is ready. Invalid requests get a 4xx with an
OpenAI error object; a body over `max_body_bytes` gets a 413 however it is sent (its Content-Length,
or its bytes counted as they come: `BodyLimit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from codemill.errors import UserError
from codemill.formats import CHUNK_PATH
from codemill.serve.batcher import Batcher
from codemill.serve.engine import Completion, Engine
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


class Busy(Exception):
    pass


class Replaced(Exception):
    pass


class Gone(Exception):
    """The client hung up while its request waited: its place in the queue is given back."""


class EngineSlot:
    """The engine's turn-taking: `parallel` holders and FIFO waiters. A newer waiter from the same
    client replaces the older one (which raises `Replaced`) and takes no new place; other newcomers
    find `max_queue` waiters at most (holders are not counted), so an editor that sends a request per
    keystroke holds one place however fast it types."""

    def __init__(self, max_queue: int, parallel: int = 1):
        self.lock = asyncio.Semaphore(parallel)
        self.max_queue = max_queue
        self.n = 0  # requests waiting or holding
        self.waiting: dict[str, asyncio.Event] = {}

    @contextlib.asynccontextmanager
    async def hold(self, client: str, gone=None):
        """`gone`: an awaitable that finishes if the client hangs up while waiting (raises `Gone`)."""
        older = self.waiting.get(client)
        if older is None and len(self.waiting) >= self.max_queue:
            if asyncio.iscoroutine(gone):
                gone.close()
            raise Busy
        self.n += 1
        mine = asyncio.Event()
        if older is not None:
            older.set()
        self.waiting[client] = mine
        try:
            acquire = asyncio.ensure_future(self.lock.acquire())
            replaced = asyncio.ensure_future(mine.wait())
            left = asyncio.ensure_future(gone) if gone is not None else asyncio.Future()
            await asyncio.wait({acquire, replaced, left}, return_when=asyncio.FIRST_COMPLETED)
            if mine.is_set() or (left.done() and not acquire.done()):
                if acquire.done() and not acquire.cancelled():
                    self.lock.release()
                else:
                    acquire.cancel()
                left.cancel()
                raise Replaced if mine.is_set() else Gone
            replaced.cancel()
            left.cancel()
            if self.waiting.get(client) is mine:
                del self.waiting[client]  # running now: a newer request queues behind it
            try:
                yield
            finally:
                self.lock.release()
        finally:
            self.n -= 1
            if self.waiting.get(client) is mine:
                del self.waiting[client]


def _client(request: Request) -> str:
    return request.headers.get("x-client-id") or (request.client.host if request.client else "")


@dataclass
class Limits:
    api_key: str | None
    max_tokens: int  # the server's cap on new tokens per request
    max_body_bytes: int
    max_queue: int
    access_log: bool  # one line per request on stderr (client, method, path, status, ms, tokens)


@dataclass
class Job:
    """A completion request as every endpoint hands it on: the prompt's ids and `Engine.start`'s
    options (max_tokens among them)."""

    ids: list[int]
    options: dict
    truncated: bool = False  # the prompt was cut to fit the context


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


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
    state.stats, state.engine, state.error = Counter(), None, None
    state.running = {}  # x-client-id: its request decoding now and that request's event queue

    def ready(e: Engine) -> None:
        state.batcher, state.slot, state.engine = Batcher(e), EngineSlot(max_queue, e.parallel), e

    if isinstance(engine, Engine):
        ready(engine)
    else:

        def load():
            try:
                ready(engine())
            except Exception as e:  # the server says why on every route
                state.error = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
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


async def invalid(_req: Request, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(x) for x in first.get("loc", []) if x != "body" and not isinstance(x, int))
    message = f"invalid request: {where or 'body'}: {first.get('msg', 'malformed body')}"
    return error(400, message, param=where or None)


async def http_error(_req: Request, exc: StarletteHTTPException):  # a body that is not UTF-8, a 404...
    return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


def refusal(request: Request) -> JSONResponse | None:
    state, limits = request.app.state, request.app.state.limits
    if state.engine is None:
        message = f"the model failed to load: {state.error}" if state.error else "the model is loading"
        return error(503, message, "unavailable", {"retry-after": "1"})
    authorized = request.headers.get("authorization", "") == f"Bearer {limits.api_key}"
    if limits.api_key and request.url.path != "/health" and not authorized:
        return error(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")
    size = int(request.headers.get("content-length") or 0)
    if size > limits.max_body_bytes:
        return error(413, f"request body of {size} bytes is over the limit of {limits.max_body_bytes}")
    return None


def _read_as_json(request: Request) -> None:
    """Every POST body is JSON, whatever its content type says, as llama-server reads it (`curl -d`
    sends a form type, which FastAPI would parse as a form)."""
    if request.method == "POST" and "json" not in request.headers.get("content-type", ""):
        headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
        request.scope["headers"] = [*headers, (b"content-type", b"application/json")]


async def guard(request: Request, call_next):
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


async def models(request: Request):
    name = request.app.state.engine.name
    return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "codemill"}]}


async def metrics(request: Request):
    lines = [f"codemill_{k}_total {v}" for k, v in sorted(request.app.state.stats.items())]
    lines.append(f"codemill_queue_waiting {request.app.state.slot.n}")
    if (prompts := request.app.state.engine.prompts) is not None:  # serve/prompt_cache.py
        lines += [
            f"codemill_prompt_cache_prompts {len(prompts.kept)}",
            f"codemill_prompt_cache_max_prompts {prompts.max_prompts}",
            f"codemill_prompt_cache_bytes {prompts.nbytes}",
            f"codemill_prompt_cache_limit_bytes {prompts.limit}",  # --cache-ram: where the growth stops
        ]
    return PlainTextResponse("\n".join(lines) + "\n")


# --- parsing: each endpoint's body into a Job ---------------------------------------------------
def parse_openai(body: CompletionBody, engine: Engine, cap: int) -> Job:
    if (name := body.unsupported()) is not None:
        raise ApiError(400, f"`{name}` is not supported by codemill serve; leave it at its default", name)
    context = [(e.filename, e.text) for e in body.input_extra]
    ids, truncated = engine.prompt_fit(
        body.prompt, body.suffix, path=body.path, max_tokens=min(body.max_tokens, cap), context=context
    )
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    until = until_for(body, body.prompt, body.suffix or "")
    options = {"max_tokens": body.max_tokens, "stop": stop, "temperature": body.temperature,
               "top_p": body.top_p, "seed": body.seed, "until": until}  # fmt: skip
    return Job(ids, options, truncated)


def parse_infill(body: InfillBody, engine: Engine, cap: int) -> Job:
    """llama-server's /infill as llama-server lays it out (PSM, its placeholders for the repository
    and a file without a name, the typed `prompt` after the prefix): the same ids, so a model trained
    with `data.repo_context` meets the layout it was trained on here and under llama-server."""
    context = [(e.filename, e.text) for e in body.input_extra]
    ids, truncated = engine.prompt_fit(
        body.input_prefix,
        body.input_suffix,
        path=body.path,
        max_tokens=min(max(body.n_predict, 1), cap),
        context=context,
        typed=body.prompt,
        spm=False,
    )
    prefix = body.input_prefix + body.prompt
    return Job(ids, llama_options(body, until_for(body, prefix, body.input_suffix)), truncated)


def parse_raw(body: RawBody, engine: Engine, cap: int) -> Job:
    """llama-server's raw completion: the prompt as given (special-token strings parsed), no format."""
    ids = engine.raw_ids(body.prompt)
    text = body.prompt if isinstance(body.prompt, str) else engine.tok.decode(ids)
    return Job(ids, llama_options(body, until_for(body, text, "")))


def llama_options(body: LlamaBody, until) -> dict:
    return {"max_tokens": body.n_predict, "stop": tuple(body.stop), "temperature": body.temperature,
            "top_k": body.top_k, "top_p": body.top_p, "seed": body.seed, "n_indent": body.n_indent,
            "time_budget_s": body.t_max_predict_ms / 1000 if body.t_max_predict_ms else None,
            "until": until, "reset": not body.cache_prompt}  # fmt: skip


def until_for(body: CompletionBody | LlamaBody, prefix: str, suffix: str):
    if not body.syntax_stop:
        return None
    if (until := syntax_stop(prefix, suffix, body.path)) is None:
        raise ApiError(
            400, "syntax_stop needs a `path` whose language has a tree-sitter grammar", "syntax_stop"
        )
    return until


async def prepare(request: Request, parse, body) -> Job | JSONResponse:
    """The endpoint's Job, validated the same way for every endpoint, or the 4xx answer. The prompt
    is built in a worker thread: tokenizing a long file takes 5-20 ms, which would hold up the other
    requests' text and the batcher (the tokenizer lets go of the interpreter lock)."""
    engine, cap = request.app.state.engine, request.app.state.limits.max_tokens
    try:
        job = await asyncio.to_thread(parse, body, engine, cap)
        n = job.options["max_tokens"]
        if n > cap:
            raise ApiError(400, f"{n} new tokens are over the server's limit of {cap}")
        if not job.ids:
            raise ApiError(
                400, f"{n} new tokens leave no room for the prompt in the context of {engine.max_len}"
            )
        if len(job.ids) + max(n, 1) > engine.max_len:
            raise ApiError(
                400,
                f"prompt of {len(job.ids)} tokens plus {n} new ones exceeds the context of {engine.max_len}",
            )
    except ApiError as e:
        return error(e.status, str(e), param=e.param)
    except ValueError as e:
        return error(400, str(e))
    return job


# --- executing: one path for every endpoint --------------------------------------------------------
@contextlib.asynccontextmanager
async def turn(request: Request):
    """None while this request holds a slot, or the error response when it may not have one."""

    async def hangs_up():
        while not await request.is_disconnected():
            await asyncio.sleep(0.05)

    try:
        async with request.app.state.slot.hold(_client(request), hangs_up()):
            yield None
    except Gone:
        request.app.state.stats["disconnects"] += 1
        yield GONE
    except Busy:
        yield error(429, "the server is busy; try again later", "server_busy", {"x-should-retry": "false"})
    except Replaced:
        request.app.state.stats["replaced"] += 1
        yield error(409, "replaced by a newer request from the same client", "request_replaced")


GONE = object()  # what `turn` yields for a client that left while queued: nothing to answer
WATCH_S = 0.02  # how often a decoding request's connection is looked at when no text came


async def execute(request: Request, job: Job, stream_piece=None) -> Any:
    """Decode in a slot beside the other requests, watching the connection as text comes: the
    Completion, an error response, or None when the client left. A request with an `x-client-id`
    stops that client's request still decoding (an editor's newest request replaces its last one),
    as it arrives, so it finds that request's slot and cached prompt free."""
    stats = request.app.state.stats
    running, client = request.app.state.running, request.headers.get("x-client-id")
    if client and (older := running.get(client)) is not None:  # before queueing: its slot is free sooner
        older_work, older_events = older
        older_work.gone.set()
        older_events.put_nowait(("", None))  # its handler answers at once and gives back its place
    async with turn(request) as refused:
        if refused is GONE:
            return None
        if refused is not None:
            return refused
        if await request.is_disconnected():  # gone while queued: no prefill for nobody
            stats["disconnects"] += 1
            return None
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        emit = lambda text, end: loop.call_soon_threadsafe(events.put_nowait, (text, end))  # noqa: E731
        work = request.app.state.batcher.submit(job.ids, emit, stream_piece is not None, **job.options)
        if client:
            running[client] = work, events
        try:
            while True:
                try:  # text may be held back while a stop string could still match: look anyway
                    piece, result = await asyncio.wait_for(events.get(), WATCH_S)
                except TimeoutError:
                    piece, result = "", None
                if isinstance(result, ValueError):
                    return error(400, str(result))
                if isinstance(result, Exception):
                    return error(500, f"{type(result).__name__}: {result}", "server_error")
                if result is None and work.gone.is_set():  # replaced by its client's newer request
                    stats["replaced"] += 1
                    return error(409, "replaced by a newer request from the same client", "request_replaced")
                if await request.is_disconnected():
                    work.gone.set()
                    stats["disconnects"] += 1
                    return None
                if piece and stream_piece is not None:
                    await stream_piece(piece)
                if result is not None:
                    break
        finally:
            if client and running.get(client, (None,))[0] is work:
                del running[client]
        stats["tokens_generated"] += len(result.tokens)
        stats["draft_tokens"] += result.draft_n
        stats["draft_tokens_accepted"] += result.draft_n_accepted
        request.state.tokens = len(result.tokens)
        stats["tokens_cached"] += result.tokens_cached
        stats["tokens_evaluated"] += result.tokens_evaluated
        return result


def stream(request: Request, job: Job, piece, last, end: str = "") -> StreamingResponse:
    """Server-sent events: `piece(text)` per released text, `last(result)` at the end (or the error
    object), then `end`."""
    queue: asyncio.Queue = asyncio.Queue()

    async def produce():
        async def put(text: str):
            await queue.put(piece(text))

        result = await execute(request, job, put)
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


# --- answering: each endpoint's response shape -----------------------------------------------------
async def completions(body: CompletionBody, request: Request):
    job = await prepare(request, parse_openai, body)
    if isinstance(job, JSONResponse):
        return job
    name, cid, created = request.app.state.engine.name, f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(text: str, finish: str | None) -> dict:
        return {"id": cid, "object": "text_completion", "created": created, "model": name,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}  # fmt: skip

    reason = lambda r: "length" if r.stop_type in ("limit", "time") else "stop"  # noqa: E731
    if body.stream:
        return stream(
            request, job, lambda piece: chunk(piece, None), lambda r: chunk("", reason(r)), "data: [DONE]\n\n"
        )
    result = await execute(request, job)
    if not isinstance(result, Completion):
        return result
    out = chunk(result.text, reason(result))
    n, m = len(job.ids), len(result.tokens)
    out["usage"] = {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}
    return out


async def infill(body: InfillBody, request: Request):
    return await llama_style(request, body, await prepare(request, parse_infill, body))


async def completion(body: RawBody, request: Request):
    return await llama_style(request, body, await prepare(request, parse_raw, body))


async def llama_style(request: Request, body: LlamaBody, job: Job | JSONResponse):
    """/infill and /completion: llama-server's answer, streamed as its server-sent events or whole."""
    if isinstance(job, JSONResponse):
        return job
    engine = request.app.state.engine
    finish = lambda r: llama_answer(engine.name, job.ids, r, body, job.truncated, engine.tok.decode(job.ids))  # noqa: E731
    if not body.stream or body.n_predict == 0:  # n_predict 0: a warm-up, the prompt into a slot
        result = await execute(request, job)
        return finish(result) if isinstance(result, Completion) else result
    piece = lambda text: {"index": 0, "content": text, "tokens": [], "stop": False}  # noqa: E731
    return stream(request, job, piece, lambda r: {**finish(r), "content": ""})  # text went in pieces


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
    import uvicorn

    server: uvicorn.Server | None = None
    failed: list[str] = []

    def stop(reason: str) -> None:
        failed.append(reason)
        if server is not None:
            server.should_exit = True

    server = uvicorn.Server(uvicorn.Config(create_app(engine, on_load_error=stop, **kw), log_level="warning"))
    if failed:  # it failed before the server existed
        server.should_exit = True
    server.run(sockets=[sock])
    if failed:
        raise UserError(f"the model failed to load: {failed[0]}")


class Server:
    """uvicorn in a background thread (tests and benchmarks run a real server on 127.0.0.1)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
