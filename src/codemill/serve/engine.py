"""The completion engine: one model, `parallel` slots of KV cache, requests decoded together.

Each slot holds the prompt it last served; a request takes the free slot with the longest common
prefix and only what follows it is evaluated. With SPM the suffix comes first and typing at the
cursor only appends to the prefix, so consecutive keystrokes reuse almost everything. Requests in
flight decode together, one forward per token for all slots (continuous batching: a request joins
after its prefill and leaves when it stops), and every slot is a row of that forward whether busy or
not, so a request's numbers, and its greedy answer, do not depend on who else is decoding. Decoding
is greedy by default (temperature, top-p and top-k on request), text is released only when it ends
on a whole UTF-8 character, and generation stops on the format's stop tokens, stop strings, a token
cap or a time budget.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from codemill.errors import UserError
from codemill.formats import checkpoint_format, encode_fit
from codemill.model import packed
from codemill.model.hf import import_hf
from codemill.model.llama import KVCache, rope_tables


@dataclass
class Completion:
    text: str = ""
    stop_type: str = "limit"  # eos | word | limit | time | syntax
    stop_word: str = ""  # the stop string that ended it (stop_type "word")
    tokens: list[int] = field(default_factory=list)
    tokens_cached: int = 0
    tokens_evaluated: int = 0
    prompt_ms: float = 0.0
    decode_ms: float = 0.0
    slot: int = 0


@dataclass
class Session:
    """One request in a slot: its stop rules, the logits its next token is picked from, and the text
    released so far. `Engine.step` advances every live session by one token."""

    slot: int
    max_tokens: int
    stop: tuple[str, ...]
    temperature: float
    top_p: float
    top_k: int
    time_budget_s: float | None
    n_indent: int
    until: Callable[[str], int] | None
    gen: torch.Generator
    out: Completion
    logits: torch.Tensor | None = None
    emitted: str = ""  # released text is final: held back while a stop could still cut into it
    done: bool = False
    started: float = 0.0

    def accept(self, token: int, tok, stop_ids: set[int]) -> str:
        """Take the picked token; return the text it releases (all that is left when it stops)."""
        out = self.out
        if token in stop_ids:
            return self._finish("eos", tok)
        out.tokens.append(token)
        text = tok.decode(out.tokens)
        hit, word = min(((i, s) for s in self.stop if s and (i := text.find(s)) != -1), default=(-1, ""))
        # llama.cpp's rule: a new line indented less than n_indent ends the completion
        if self.n_indent and (d := _dedent_at(text, self.n_indent)) != -1 and (hit == -1 or d < hit):
            hit, word = d, ""
        if self.until is not None and (cut := self.until(text)) != -1 and (hit == -1 or cut < hit):
            out.text = text[:cut]
            return self._finish("syntax", tok)
        if hit != -1:
            out.text, out.stop_word = text[:hit], word
            return self._finish("word", tok)
        if len(out.tokens) >= self.max_tokens:
            return self._finish("limit", tok)
        if self.time_budget_s is not None and time.perf_counter() - self.started > self.time_budget_s:
            return self._finish("time", tok)
        safe = _releasable(text, self.stop, self.n_indent, self.until is not None)
        piece = safe[len(self.emitted) :] if len(safe) > len(self.emitted) else ""
        self.emitted = max(safe, self.emitted, key=len)
        return piece

    def _finish(self, stop_type: str, tok) -> str:
        self.done, self.out.stop_type = True, stop_type
        self.out.decode_ms = 1000 * (time.perf_counter() - self.started)
        if stop_type not in ("word", "syntax"):
            self.out.text = tok.decode(self.out.tokens).rstrip("\ufffd")
        return self.out.text[len(self.emitted) :]


class Engine:
    def __init__(self, path: str | Path, fmt: str | None = None, device: str | None = None,
                 max_len: int | None = None, compile: bool = False, parallel: int = 1,
                 dtype: str | None = None):  # fmt: skip
        """`parallel` slots, each with its own rows of the KV cache and its own cached prompt: that
        many requests decode together, one batched forward per token (`step`); on a CPU the linear
        layers large enough for that many rows run with oneDNN-packed weights (model/packed.py),
        which makes 4 rows cost about what 1 does. `compile`: decode with a torch.compile'd step over
        the whole preallocated cache (static shapes, one graph for every position), compiled here,
        before the first request. `dtype`: fp32 or bf16 weights and cache
        (default bf16 on a GPU, fp32 on a CPU)."""
        from codemill.data.tokenizer import load_tokenizer

        path = Path(path)
        self.fmt = checkpoint_format(path, fmt)
        self.tok = load_tokenizer(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype not in (None, "fp32", "bf16"):
            raise UserError(f"dtype must be fp32 or bf16, not {dtype!r}")
        bf16 = dtype == "bf16" or (dtype is None and self.device.type == "cuda")
        dtype = torch.bfloat16 if bf16 else torch.float32
        self.model = import_hf(path, dtype=dtype).to(self.device).eval()
        self.name = path.name
        self.max_len = min(max_len or self.model.cfg.max_seq_len, self.model.cfg.max_seq_len)
        self.parallel = parallel
        if self.device.type == "cpu" and packed.available():  # oneDNN's layout: model/packed.py
            packed.pack_linears(self.model, self.parallel)
        self.cache = KVCache.empty(self.model.cfg, self.max_len, self.device, dtype, batch=self.parallel)
        self.cache.rope = rope_tables(self.model.cfg, torch.arange(self.max_len, device=self.device))
        self.slots: list[list[int]] = [[] for _ in range(self.parallel)]  # token ids each slot's rows hold
        self.used = [0.0] * self.parallel  # when each slot last served, for least-recently-used reuse
        self.busy: set[int] = set()
        self.stop_ids = {self.tok.token_id(t) for t in self.fmt.stop_tokens}
        self._step = None
        if compile:
            step = torch.compile(self.model.decode_step, dynamic=False)
            zero = torch.zeros(self.parallel, dtype=torch.long, device=self.device)
            step(zero.view(-1, 1), zero, self.cache)  # compile now: the server says "loading" meanwhile
            self._step = step

    @property
    def cached(self) -> list[int]:
        """The token ids slot 0 holds (one slot: the engine's cache)."""
        return self.slots[0]

    def prompt(self, prefix: str, suffix: str | None = None, *, path: str | None = None, max_tokens: int = 64,
               context: list[tuple[str, str]] = ()) -> list[int]:  # fmt: skip
        """Prompt ids from formats.py, truncated inside its segments to leave room for the answer."""
        return self.prompt_fit(prefix, suffix, path=path, max_tokens=max_tokens, context=context)[0]

    def prompt_fit(self, prefix: str, suffix: str | None = None, *, path: str | None = None, max_tokens: int = 64,
                   context: list[tuple[str, str]] = ()) -> tuple[list[int], bool]:  # fmt: skip
        """`prompt` and whether it had to be cut."""
        parts = self.fmt.prompt(prefix, suffix, path=path, context=list(context))
        return encode_fit(parts, self.tok, self.max_len - max_tokens)

    def raw_ids(self, prompt: str | list[int | str]) -> list[int]:
        """llama-server's /completion prompt: text whose special-token strings become their ids (and
        the format's bos first), or a list of token ids and texts."""
        items = [prompt] if isinstance(prompt, str) else prompt
        specials = sorted(self.fmt.specials, key=len, reverse=True)
        split = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
        first_text = bool(items) and isinstance(items[0], str)  # llama-server adds bos before text only
        ids = [self.tok.token_id(self.fmt.bos)] if self.fmt.bos and first_text else []
        for item in items:
            if isinstance(item, int):
                if not 0 <= item < self.model.cfg.vocab_size:
                    raise UserError(
                        f"token id {item} is outside the vocabulary of {self.model.cfg.vocab_size}"
                    )
                ids.append(item)
                continue
            pieces = [p for p in split.split(item) if p]
            texts = iter(self.tok.encode_batch([p for p in pieces if p not in specials]))
            for p in pieces:
                ids += [self.tok.token_id(p)] if p in specials else next(texts)
        return ids

    def reset(self) -> None:
        """Forget every cached prompt (llama.cpp's `cache_prompt: false`, or a cold measurement)."""
        self.slots = [[] for _ in range(self.parallel)]

    def pick_slot(self, ids: list[int]) -> int:
        """A free slot: the one holding the longest common prefix with `ids`, else the least recently
        used (llama-server's slot selection)."""
        free = [i for i in range(self.parallel) if i not in self.busy]
        if not free:
            raise RuntimeError(f"all {self.parallel} slots are busy")
        return max(free, key=lambda i: (_common(self.slots[i], ids), -self.used[i]))

    def prefill(self, ids: list[int], slot: int = 0) -> tuple[torch.Tensor, int]:
        """Logits after `ids` in `slot`, evaluating only what its cache does not already hold."""
        common = min(_common(self.slots[slot], ids), len(ids) - 1)  # one token at least, for its logits
        self.slots[slot] = self.slots[slot][:common]
        logits = self.model.next_logits(
            torch.tensor([ids[common:]], device=self.device), self.cache.row(slot, common)
        )
        self.slots[slot] = list(ids)
        return logits, common

    def start(self, ids: list[int], *, max_tokens: int = 64, stop: tuple[str, ...] = (), temperature: float = 0.0,
              top_p: float = 1.0, top_k: int = 0, time_budget_s: float | None = None, seed: int | None = None,
              n_indent: int = 0, until: Callable[[str], int] | None = None, reset: bool = False,
              slot: int | None = None) -> Session:  # fmt: skip
        """Take a slot and evaluate the prompt: the session decodes from the next `step` on.
        `max_tokens` 0 only fills the cache (a warm-up) and is done at once. `reset`: the whole
        prompt is evaluated (llama.cpp's `cache_prompt: false`)."""
        if not ids:
            raise UserError("empty prompt")
        room = self.max_len - len(ids)
        if room <= 0 or (max_tokens > 0 and min(max_tokens, room) <= 0):
            raise UserError(f"the prompt ({len(ids)} tokens) leaves no room in the context of {self.max_len}")
        slot = self.pick_slot(ids) if slot is None else slot
        gen = torch.Generator(device=self.device)
        if seed is not None:
            gen.manual_seed(seed)
        s = Session(slot, min(max_tokens, room), stop, temperature, top_p, top_k, time_budget_s, n_indent, until,
                    gen, Completion(slot=slot))  # fmt: skip
        self.busy.add(slot)
        if reset:
            self.slots[slot] = []
        t0 = time.perf_counter()
        try:
            s.logits, s.out.tokens_cached = self.prefill(ids, slot)
        except BaseException:
            self.release(s)
            raise
        s.out.tokens_evaluated = len(ids) - s.out.tokens_cached
        s.out.prompt_ms = 1000 * (time.perf_counter() - t0)
        s.started = time.perf_counter()
        if max_tokens == 0:
            s.done = True
            self.release(s)
        return s

    def step(self, sessions: list[Session]) -> list[str]:
        """One token for every session: each picks from its logits and applies its stop rules; the
        ones that go on are evaluated in one batched forward over all slots. Returns each session's
        released text; a session that stopped gives up its slot."""
        greedy = [s.logits for s in sessions if s.temperature <= 0]
        argmax = iter(torch.stack(greedy).argmax(-1).tolist() if greedy else [])  # one sync for all
        pieces = []
        for s in sessions:
            token = (
                next(argmax)
                if s.temperature <= 0
                else self._pick(s.logits, s.temperature, s.top_p, s.top_k, s.gen)
            )
            pieces.append(s.accept(token, self.tok, self.stop_ids))
        live = [s for s in sessions if not s.done]
        for s in sessions:
            if s.done:
                self.release(s)
        if live:
            logits = self._decode({s.slot: s.out.tokens[-1] for s in live})
            for s in live:
                s.logits = logits[s.slot]
                self.slots[s.slot].append(s.out.tokens[-1])
        return pieces

    def release(self, s: Session) -> None:
        """The session gives up its slot (stopped, or its client left); the slot keeps its cache."""
        self.busy.discard(s.slot)
        self.used[s.slot] = time.perf_counter()

    def _decode(self, tokens: dict[int, int]) -> torch.Tensor:
        """Logits [slots, vocab] after one token in each slot of `tokens` (slot: token). Every slot
        is a row of the step, so its shapes are the same whichever slots are busy; an idle row writes
        its keys past what its slot holds, which costs it nothing."""
        pos = []
        for i, held in enumerate(self.slots):
            if i not in tokens and len(held) >= self.max_len:  # full: its last position is written over
                del held[-1]
            pos.append(len(held))
        ids = torch.tensor([[tokens.get(i, 0)] for i in range(self.parallel)], device=self.device)
        at = torch.tensor(pos, device=self.device)
        if self._step is not None:
            return self._step(ids, at, self.cache)
        lengths = [p + 1 if i in tokens else 0 for i, p in enumerate(pos)]
        return self.model.decode_step(ids, at, self.cache, lengths=lengths)

    def generate(self, ids: list[int], **kw) -> Iterator[tuple[str, Completion]]:
        """Yield (new text, running Completion) as text becomes final; the last yield has the stop type.
        `until` (codemill/stops.py) cuts the text at a line end it returns: stop type "syntax". The
        request decodes alone, with the same numbers as when `step` decodes it beside others."""
        s = self.start(ids, **kw)
        try:
            while not s.done:
                piece = self.step([s])[0]
                if piece or s.done:
                    yield piece, s.out
        finally:
            if not s.done:  # the caller stopped early (a client that left)
                self.release(s)

    def complete(self, ids: list[int], **kw) -> Completion:
        *_, (_, result) = self.generate(ids, **kw)
        return result

    @staticmethod
    def _pick(
        logits: torch.Tensor, temperature: float, top_p: float, top_k: int, gen: torch.Generator
    ) -> int:
        if temperature <= 0:
            return int(logits.argmax())
        logits = logits / temperature
        if top_k > 0:
            kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs, 1, generator=gen))


def _common(a: list[int], b: list[int]) -> int:
    return len(os.path.commonprefix([a, b]))  # noqa: RUF071 (any two sequences, here token ids)


def _dedent_at(text: str, n_indent: int) -> int:
    """Offset of the first line end followed by a non-blank line indented less than n_indent, or -1."""
    for m in re.finditer(r"\n([ \t]*)(?=\S)", text):
        if len(m.group(1).expandtabs(4)) < n_indent:
            return m.start()
    return -1


def _releasable(text: str, stop: tuple[str, ...], n_indent: int, whole_lines: bool = False) -> str:
    """The part of the text no later stop can take back: no half UTF-8 character, no partial stop
    string at the end, (with n_indent) not a trailing line whose indentation is still unknown, and
    (with a syntax stop) no line before it ends."""
    text = text.rstrip("\ufffd")
    if whole_lines:
        text = text[: text.rfind("\n") + 1]
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                text = text[:-k]
                break
    if n_indent and "\n" in text and not text[text.rfind("\n") + 1 :].strip():
        text = text[: text.rfind("\n")]
    return text
