"""What answers a benchmark: a checkpoint, an OpenAI-compatible server, the benchmark's own
solutions, or nothing.

Every model takes `Request`s (a prefix, an optional suffix for FIM, stop strings) and returns one
completion per request. A checkpoint is decoded by serve's engine, so that eval measures what an
editor gets from `codemill serve`; one of an architecture the engine does not run falls back to
transformers (`load_model`). Prompts are built as serve builds them, by `formats.py` (the
definitions training used) from the format in the checkpoint's `codemill.json` (or the one given).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from codemill.errors import UserError
from codemill.formats import get_format
from codemill.serve.request import Params, RequestError
from codemill.stops import syntax_stop as syntax_rule

if TYPE_CHECKING:
    from codemill.serve.prompter import Prompter


@dataclass
class Request:
    prefix: str
    suffix: str | None = None
    stop: tuple[str, ...] = ()
    max_tokens: int = 512
    reference: str = ""  # the benchmark's solution: what the `reference` model answers
    path: str | None = None
    context: list[tuple[str, str]] = field(default_factory=list)  # cross-file (path, code) snippets
    context_tokens: int = 512  # CrossCodeEval's budget for them
    temperature: float = 0.0  # 0: greedy
    top_p: float = 0.95
    seed: int = 0  # sampling is reproducible per request
    spm: bool | None = None  # FIM layout: SPM, PSM, or None for the format's own
    syntax_stop: bool = False  # FIM: stop where the completion closes a syntactic unit (stops.py)
    meta: dict = field(default_factory=dict)

    def snippets(self, tok) -> list[tuple[str, str]]:
        """The cross-file snippets, in order, that fit `context_tokens` (CrossCodeEval's rule)."""
        kept, used = [], 0
        for (path, code), ids in zip(
            self.context, tok.encode_batch([c for _, c in self.context]), strict=True
        ):
            if used + len(ids) > self.context_tokens:
                break
            kept.append((path, code))
            used += len(ids)
        return kept


class Model(Protocol):
    name: str
    inference: str  # what decodes: engine, transformers, endpoint, or reference, empty, generations

    def complete(self, requests: list[Request]) -> list[str]: ...


def truncate(text: str, stops: tuple[str, ...]) -> str:
    """The completion up to the first stop string."""
    cut = min((i for s in stops if s and (i := text.find(s)) != -1), default=len(text))
    return text[:cut]


def syntax_until(r: Request):
    """Serve's syntax stop for a FIM request that asks for it (stops.py), else None."""
    return syntax_rule(r.prefix, r.suffix, r.path) if r.syntax_stop and r.suffix is not None else None


def syntax_cut(r: Request, text: str) -> str:
    """With `r.syntax_stop`, a completion made without the rule cut where serve's syntax stop would
    have stopped it: the same line end (stops.py), for models that do not apply it as they decode."""
    until = syntax_until(r)
    cut = until(text) if until is not None else -1
    return text if cut == -1 else text[:cut]


class Reference:
    """Answers with the benchmark's own solution: every suite must score 100% (the harness self-test)."""

    name = inference = "reference"

    def complete(self, requests: list[Request]) -> list[str]:
        return [syntax_cut(r, r.reference) for r in requests]


class Empty:
    """Answers nothing: the floor every suite must show."""

    name = inference = "empty"

    def complete(self, requests: list[Request]) -> list[str]:
        return ["" for _ in requests]


class Generations:
    """Completions made elsewhere (vLLM, llama.cpp, an API, another harness), read from a JSON Lines
    file of `{"task_id", "completion"}`, several lines per task for pass@k, so that they are judged by
    the same post-processing and execution as codemill's own. Request `seed` k is the task's k-th line."""

    inference = "generations"

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"--generations {path}: no such file")
        self.name = path.stem
        self.path = path
        self.by_task: dict[str, list[str]] = {}
        self.first_line: dict[str, int] = {}  # task id: the line that first names it, for errors
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                tid, completion = row["task_id"], row["completion"]
            except (ValueError, TypeError, KeyError) as e:
                raise UserError(
                    f"{path} line {n}: not a JSON object with task_id and completion ({type(e).__name__}: {e})"
                ) from None
            if not isinstance(completion, str):
                raise UserError(f"{path} line {n}: completion is not a string")
            self.by_task.setdefault(str(tid), []).append(completion)
            self.first_line.setdefault(str(tid), n)

    def check(self, task_ids: set[str], suite: str) -> None:
        """Every task the file names is one of the suite's (all of them, whatever --limit keeps)."""
        for tid, n in sorted(self.first_line.items(), key=lambda x: x[1]):
            if tid not in task_ids:
                raise UserError(f"{self.path} line {n}: task {tid!r} is not one of {suite}'s")

    def complete(self, requests: list[Request]) -> list[str]:
        return [syntax_cut(r, truncate(self.by_task[r.meta["task_id"]][r.seed], r.stop)) for r in requests]


class Checkpoint:
    """A checkpoint decoded by serve's `Engine`: the prompt layout and cut, KV-cache slots, stop rules
    (stop strings, the format's stop tokens, the syntax stop) and decoding an editor gets from
    `codemill serve`. Requests share `parallel` slots, a request starting as another ends; greedy
    answers do not depend on which others decode beside them. Sampling uses the engine's sampler
    seeded by the request's seed (reproducible, but not transformers' random stream)."""

    inference = "engine"

    def __init__(
        self, path: str | Path, fmt: str | None = None, device: str | None = None, parallel: int = 8
    ):
        from codemill.serve.engine import Engine

        # eval's prompts rarely recur beyond what the slots hold: no host-memory prompt cache
        self.engine = Engine(path, fmt, device=device, parallel=parallel, cache_ram_mib=0)
        self.name = self.engine.name

    def prompt_ids(self, r: Request) -> list[int]:
        return prompt_ids(self.engine.prompter, r)

    def params(self, r: Request) -> Params:
        """The request as serve decodes it (`syntax_stop`: serve's own rule, applied as tokens come)."""
        until = syntax_until(r)
        sampled = r.temperature > 0
        return Params(max_tokens=r.max_tokens, stop=r.stop, temperature=r.temperature,
                      top_p=r.top_p if sampled else 1.0, seed=r.seed, until=until)  # fmt: skip

    def complete(self, requests: list[Request]) -> list[str]:
        jobs = [(self.prompt_ids(r), self.params(r)) for r in requests]
        out = [""] * len(jobs)
        try:
            for i, done in self.engine.run(jobs):
                out[i] = done.text
        except RequestError as e:  # only a token cap as long as the context: nothing else is left
            raise UserError(f"{self.name}: {e}; lower --max-tokens") from None
        return out


def prompt_ids(prompter: Prompter, r: Request) -> list[int]:
    """A request's prompt ids as serve builds them (serve/prompter.py), with CrossCodeEval's
    snippets where the format puts the repository's other files."""
    return prompter.prompt(r.prefix, r.suffix, max_tokens=r.max_tokens, path=r.path, spm=r.spm,
                           context=r.snippets(prompter.tok))  # fmt: skip


class Transformers:
    """A checkpoint decoded by transformers' `generate`: the fallback for architectures serve's engine
    does not run (model/hf.py's import maps the Llama family only; StarCoder2, for one, is not), and
    the reference the engine is tested against (tests/test_eval_engine.py). Greedy requests go 8 at a
    time (left-padded), sampled ones one by one with their own seeds. Prompts are serve's."""

    inference = "transformers"

    def __init__(self, path: str | Path, fmt: str | None = None, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        from codemill.data.tokenizer import load_tokenizer
        from codemill.formats import checkpoint_format, trained_context
        from codemill.serve.prompter import Prompter

        path = Path(path)
        fmt_ = checkpoint_format(path, fmt)
        self.tok = load_tokenizer(path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.name = path.name
        self.stop_ids = [self.tok.token_id(t) for t in fmt_.stop_tokens]
        self.context = trained_context(path, getattr(self.model.config, "max_position_embeddings", 2048))
        self.prompter = Prompter(fmt_, self.tok, self.context, self.model.config.vocab_size)

    def complete(self, requests: list[Request]) -> list[str]:
        out = []
        for i in range(0, len(requests), 8):
            chunk = requests[i : i + 8]
            batched = None
            if len(chunk) > 1 and all(r.temperature <= 0 for r in chunk):
                batched = self._greedy_batch(chunk)
            out += batched if batched is not None else self._one_by_one(chunk)
        return out

    def _finish(self, r: Request, tokens: list[int]) -> str:
        tokens = tokens[: r.max_tokens]
        for i, t in enumerate(tokens):
            if t in self.stop_ids:
                tokens = tokens[:i]
                break
        text = self.tok.decode(tokens).removesuffix("\ufffd")  # a character cut by the token cap, as serve
        return syntax_cut(r, truncate(text, r.stop))

    def _greedy_batch(self, requests: list[Request]) -> list[str] | None:
        """Greedy requests decoded together, prompts left-padded; None when they do not fit the context."""
        import torch

        prompts = [prompt_ids(self.prompter, r) for r in requests]
        width, new = max(map(len, prompts)), max(r.max_tokens for r in requests)
        if width + new > self.context:
            return None
        pad = self.stop_ids[0]
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        with torch.no_grad():
            gen = self.model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                      eos_token_id=self.stop_ids, pad_token_id=pad)  # fmt: skip
        return [self._finish(r, row.tolist()) for r, row in zip(requests, gen[:, width:], strict=True)]

    def _one_by_one(self, requests: list[Request]) -> list[str]:
        import torch

        out = []
        for r in requests:
            ids = torch.tensor([prompt_ids(self.prompter, r)], device=self.device)
            sampling = {"do_sample": r.temperature > 0}
            if r.temperature > 0:
                sampling.update(temperature=r.temperature, top_p=r.top_p)
                torch.manual_seed(r.seed)
            with torch.no_grad():
                gen = self.model.generate(
                    ids,
                    max_new_tokens=r.max_tokens,
                    **sampling,
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.stop_ids[0],
                )
            out.append(self._finish(r, gen[0, ids.shape[1] :].tolist()))
        return out


class Endpoint:
    """An OpenAI-compatible server (codemill serve, vLLM, llama.cpp): `POST /v1/completions` with
    `prompt` and `suffix`, greedy unless the request samples, requests sent concurrently. Cross-file
    snippets travel as llama.cpp's `input_extra` and the file path as `path`, which codemill serve
    places by the model's format; a server that ignores them sees the in-file context only. Stop strings are also
    applied here, since OpenAI's API caps them at four."""

    inference = "endpoint"

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, workers: int = 4,
                 stops: tuple[str, ...] = ()):  # fmt: skip
        """`stops`: the served model's format's stop tokens (formats.py), cut here when a server returns
        them as text."""
        import httpx

        self.stops = stops
        base = url.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=base, headers=headers, timeout=httpx.Timeout(600.0, connect=10.0))
        self.workers = workers
        if model is None:
            try:
                listed = self.client.get("/models")
                listed.raise_for_status()
                model = listed.json()["data"][0]["id"]
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
                raise UserError(f"{base}/models did not name a model ({e}); is the server up?") from e
        self.name = model

    def _one(self, r: Request) -> str:
        import httpx

        body = {"model": self.name, "prompt": r.prefix, "max_tokens": r.max_tokens, "temperature": r.temperature,
                "top_p": r.top_p if r.temperature > 0 else 1.0, "seed": r.seed}  # fmt: skip
        if r.suffix is not None:
            body["suffix"] = r.suffix
        if r.stop:
            body["stop"] = list(r.stop[:4])
        if r.path is not None:
            body["path"] = r.path  # codemill serve's extension; other servers ignore it
        if r.syntax_stop and r.suffix is not None and r.path is not None:
            body["syntax_stop"] = True  # codemill serve's extension; cut below for other servers
        if r.context:
            body["input_extra"] = [{"filename": p, "text": c} for p, c in r.context]
        # concurrent requests are separate clients, or codemill serve would let each replace the last
        headers = {"x-client-id": f"codemill-eval-{id(r)}"}
        for attempt in range(6):
            resp = self.client.post("/completions", json=body, headers=headers)
            if resp.status_code not in (429, 503):
                break
            time.sleep(0.5 * 2**attempt)  # busy or loading: back off
        if resp.status_code != 200:
            raise httpx.HTTPStatusError(
                f"{resp.status_code}: {resp.text[:300]}", request=resp.request, response=resp
            )
        return syntax_cut(r, truncate(resp.json()["choices"][0]["text"], (*r.stop, *self.stops)))

    def complete(self, requests: list[Request]) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        if any(r.spm for r in requests):
            raise UserError("a server lays out FIM prompts itself: --fim-mode spm needs a checkpoint")
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self._one, requests))


def load_model(spec: str, fmt: str | None = None, api_key: str | None = None) -> Model:
    """`reference`, `empty`, an http(s):// endpoint, or a checkpoint directory: decoded by serve's
    engine, or by transformers (said on stderr) when the engine cannot run its architecture."""
    if spec == "reference":
        return Reference()
    if spec == "empty":
        return Empty()
    if spec.startswith(("http://", "https://")):
        url, _, name = spec.partition("#")  # http://host:port/v1#model-id picks one of several models
        return Endpoint(url, name or None, api_key, stops=get_format(fmt).stop_tokens if fmt else ())
    path = Path(spec)
    if not (path / "config.json").exists():
        raise UserError(
            f"{spec} is not a checkpoint directory (no config.json), an http(s):// endpoint, reference or empty"
        )
    if (why := engine_problem(path)) is not None:
        print(f"{path}: serve's engine cannot run it ({why}); generating with transformers instead, "
              "so these numbers are transformers' decoding, not what `codemill serve` would answer", file=sys.stderr)  # fmt: skip
        return Transformers(path, fmt)
    return Checkpoint(path, fmt)


def engine_problem(path: Path) -> str | None:
    """Why serve's engine cannot load a checkpoint's architecture (model/hf.py maps the Llama
    family: Llama, Mistral, Qwen2, DeepSeek-Coder), or None when it can."""
    from codemill.model.hf import hf_config

    try:
        hf_config(path)
    except UserError as e:
        return str(e)
    return None
