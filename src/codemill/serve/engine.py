"""The completion engine: one model, `parallel` slots of KV cache, requests decoded together.

Each slot holds the prompt it last served; a request takes the free slot with the longest common
prefix and only what follows it is evaluated. With SPM the suffix comes first and typing at the
cursor only appends to the prefix, so consecutive keystrokes reuse almost everything. Requests in
flight decode together, one forward per token for all slots (continuous batching: a request joins
after its prefill and leaves when it stops). That forward has the same rows whoever is busy (one per
slot, and rows for prompt-lookup drafts), so a request's numbers, and its greedy answer, do not
depend on who else is decoding. Decoding is greedy by default (temperature, top-p and top-k on
request), text is released only when it ends on a whole UTF-8 character, and generation stops on the
format's stop tokens, stop strings, a token cap or a time budget.
"""

from __future__ import annotations

import re
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from codemill.errors import UserError
from codemill.formats import checkpoint_format, trained_context
from codemill.model import packed
from codemill.model.hf import import_hf
from codemill.serve.kvcache import KVCache
from codemill.serve.prompt_cache import PromptCache, common_prefix
from codemill.serve.prompter import Prompter
from codemill.serve.request import Params, check_fits


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
    draft_n: int = 0  # prompt-lookup drafts fed, and how many of them were the tokens picked
    draft_n_accepted: int = 0


@dataclass(eq=False)  # a session is itself: hashed by identity
class Session:
    """One request in a slot: its stop rules, the logits its next tokens are picked from, and the text
    released so far. `Engine.step` advances every live session by one token, or several when drafts
    it fed are verified."""

    slot: int
    params: Params
    gen: torch.Generator
    out: Completion
    history: array = field(default_factory=lambda: array("i"))  # prompt and answer ids, for lookup
    pending: list[int] = field(default_factory=list)  # prompt ids not evaluated yet (chunked prefill)
    logits: torch.Tensor | None = None  # [1 + drafts, vocab]: after the fed token, after each draft
    drafts: list[int] = field(default_factory=list)  # fed beside the token, not yet verified
    emitted: str = ""  # released text is final: held back while a stop could still cut into it
    done: bool = False
    started: float = 0.0  # when the prompt was in: decoding time counts from here
    arrived: float = 0.0

    def accept(self, token: int, tok, stop_ids: set[int]) -> str:
        """Take the picked token; return the text it releases (all that is left when it stops)."""
        out, p = self.out, self.params
        if token in stop_ids:
            return self._finish("eos", tok)
        out.tokens.append(token)
        self.history.append(token)
        text = tok.decode(out.tokens)
        hit, word = min(((i, s) for s in p.stop if s and (i := text.find(s)) != -1), default=(-1, ""))
        # llama.cpp's rule: a new line indented less than n_indent ends the completion
        if p.n_indent and (d := _dedent_at(text, p.n_indent)) != -1 and (hit == -1 or d < hit):
            hit, word = d, ""
        if p.until is not None and (cut := p.until(text)) != -1 and (hit == -1 or cut < hit):
            out.text = text[:cut]
            return self._finish("syntax", tok)
        if hit != -1:
            out.text, out.stop_word = text[:hit], word
            return self._finish("word", tok)
        if len(out.tokens) >= p.max_tokens:
            return self._finish("limit", tok)
        if p.time_budget_s is not None and time.perf_counter() - self.started > p.time_budget_s:
            return self._finish("time", tok)
        safe = _releasable(text, p.stop, p.n_indent, p.until is not None)
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
                 dtype: str | None = None, lookup: bool = True, draft_rows: int | None = None,
                 prefill_chunk: int = 512, cache_ram_mib: int = 8192):  # fmt: skip
        """`parallel` slots, each with its own rows of the KV cache and its own cached prompt: that
        many requests decode together, one batched forward per token (`step`); on a CPU the linear
        layers large enough for that many rows run with oneDNN-packed weights (model/packed.py),
        which makes 4 rows cost about what 1 does. `compile`: decode with a torch.compile'd step,
        compiled here, before the first request, with dynamic shapes and the per-row attention left
        eager (the same graphs whatever the lengths and whoever is busy). `dtype`: fp32 or bf16
        weights and cache (default bf16 on a GPU, fp32 on a CPU). `lookup`: a greedy request fills the rows no request
        holds with drafts from prompt lookup, verified in the same step (several tokens a step, the
        same answer: `step`). `draft_rows`: rows of every step beyond the slots, for drafts only
        (default: as many as slots with `lookup`, none without), so requests get drafts when every
        slot is held too; they cost compute, not cache (drafts go in their request's own cache row).
        `prefill_chunk`: a prompt is evaluated this many tokens a step, between the decode steps of
        the others, so a long prompt delays them by a chunk at a time (llama-server's ubatch).
        `cache_ram_mib`: prompts a slot gives up are kept in this much host memory and copied back
        for a request that shares more with them (serve/prompt_cache.py; 0: none)."""
        from codemill.data.tokenizer import load_tokenizer

        path = Path(path)
        self.fmt = checkpoint_format(path, fmt)
        self.tok = load_tokenizer(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype not in (None, "fp32", "bf16"):
            raise UserError(f"dtype must be fp32 or bf16, not {dtype!r}")
        bf16 = dtype == "bf16" or (dtype is None and self.device.type == "cuda")
        dtype = torch.bfloat16 if bf16 else torch.float32
        self.model = import_hf(path, dtype=dtype).to(self.device).eval().fuse()
        self.name = path.name
        # the window the checkpoint was trained on: positions past it were never trained
        self.max_len = min(
            max_len or trained_context(path, self.model.cfg.max_seq_len), self.model.cfg.max_seq_len
        )
        self.prompter = Prompter(self.fmt, self.tok, self.max_len, self.model.cfg.vocab_size)
        self.parallel, self.lookup = parallel, lookup
        if prefill_chunk < 1:
            raise UserError(f"prefill_chunk must be at least 1, not {prefill_chunk}")
        self.prefill_chunk = prefill_chunk
        draft_rows = (parallel if lookup else 0) if draft_rows is None else draft_rows
        if draft_rows < 0 or (draft_rows and not lookup):
            raise UserError(f"draft_rows must be 0, or positive with lookup on, not {draft_rows}")
        self.batch_rows = parallel + draft_rows  # the rows of every decode step
        if self.device.type == "cpu" and packed.available():  # oneDNN's layout: model/packed.py
            packed.pack_linears(self.model, self.batch_rows)
        # past max_len, one scratch position per batch row: where an idle row writes its keys
        capacity = self.max_len + self.batch_rows
        self.cache = KVCache.empty(self.model.cfg, capacity, self.device, dtype, slots=self.parallel)
        self.slots: list[list[int]] = [[] for _ in range(self.parallel)]  # token ids each slot's rows hold
        self.used = [0.0] * self.parallel  # when each slot last served, for least-recently-used reuse
        self.busy: set[int] = set()
        if cache_ram_mib < 0:
            raise UserError(f"cache_ram_mib must be 0 (off) or more, not {cache_ram_mib}")
        self.prompts = PromptCache(cache_ram_mib << 20) if cache_ram_mib else None
        self.stop_ids = {self.tok.token_id(t) for t in self.fmt.stop_tokens}
        self._step = self.model.next_logits  # a decode step's forward, over a `StepCache`
        if compile:  # compiled now: the server says "loading" meanwhile
            self._step = torch.compile(self.model.next_logits, dynamic=True)
            n = self.batch_rows
            ids = torch.zeros(n, 1, dtype=torch.long, device=self.device)
            pos = torch.arange(1, n + 1, device=self.device)
            self._step(
                ids, self.cache.step(pos, [2 + i for i in range(n)], [i % self.parallel for i in range(n)])
            )

    @property
    def cached(self) -> list[int]:
        """The token ids slot 0 holds (one slot: the engine's cache)."""
        return self.slots[0]

    def prompt(self, prefix: str, suffix: str | None = None, *, max_tokens: int = 64, **request) -> list[int]:
        """Prompt ids for a completion at a position (serve/prompter.py)."""
        return self.prompter.prompt(prefix, suffix, max_tokens=max_tokens, **request)

    def reset(self) -> None:
        """Forget every cached prompt, the prompt cache's too (a cold measurement)."""
        self.slots = [[] for _ in range(self.parallel)]
        if self.prompts is not None:
            self.prompts.clear()

    def pick_slot(self, ids: list[int]) -> int:
        """A free slot: the one holding the longest common prefix with `ids`, else the least recently
        used (llama-server's slot selection)."""
        free = [i for i in range(self.parallel) if i not in self.busy]
        if not free:
            raise RuntimeError(f"all {self.parallel} slots are busy")
        return max(free, key=lambda i: (common_prefix(self.slots[i], ids), -self.used[i]))

    def start(self, ids: list[int], params: Params) -> Session:
        """Take a slot and evaluate the prompt's first `prefill_chunk` tokens past what the slot's cache
        holds; `step` evaluates the rest a chunk at a time, and the session decodes from the step
        after its last chunk (at once for most prompts: typing reuses the cache). `max_tokens` 0
        only fills the cache (a warm-up): done when the prompt is in. `reset`: the whole prompt is
        evaluated (llama.cpp's `cache_prompt: false`). Its callers check that the request fits the context
        (`request.check_fits`) and that a slot is free (the batcher admits no more than there are)."""
        slot = self.pick_slot(ids)
        gen = torch.Generator(device=self.device)
        if params.seed is not None:
            gen.manual_seed(params.seed)
        s = Session(slot, params, gen, Completion(slot=slot), array("i", ids))
        self.busy.add(slot)
        self._swap(slot, [] if params.reset else ids)
        if params.reset:
            self.slots[slot] = []
        s.arrived = time.perf_counter()
        common = min(common_prefix(self.slots[slot], ids), len(ids) - 1)  # one token at least, for its logits
        self.slots[slot] = self.slots[slot][:common]
        s.pending, s.out.tokens_cached, s.out.tokens_evaluated = list(ids[common:]), common, len(ids) - common
        self._prefill(s)
        return s

    def _swap(self, slot: int, ids: list[int]) -> None:
        """Keep what the slot holds in the prompt cache when the request overwrites most of it, and
        copy a kept prompt into the slot when it shares a longer prefix with the request."""
        if self.prompts is None:
            return
        held = self.slots[slot]
        mine = common_prefix(held, ids)
        n, kept = self.prompts.best(ids)
        better = kept is not None and n > mine
        if not better and len(held) - mine <= len(held) // 2:
            return
        if better:
            self.prompts.drop(kept)  # it goes into the slot: saving the slot's may not evict it
        self.prompts.save(held, self.cache, slot)
        if better:
            self.slots[slot] = self.prompts.restore(kept, n, self.cache, slot)

    def _prefill(self, s: Session) -> None:
        """Evaluate the session's next chunk of prompt in its slot; after the last, its logits."""
        chunk = s.pending[: self.prefill_chunk]
        held = self.slots[s.slot]
        try:
            logits = self.model.next_logits(
                torch.tensor([chunk], device=self.device), self.cache.row(s.slot, len(held))
            )
        except BaseException:
            self.release(s)
            raise
        held += chunk
        del s.pending[: len(chunk)]
        if s.pending:
            return
        s.logits, s.started = logits, time.perf_counter()
        s.out.prompt_ms = 1000 * (s.started - s.arrived)
        if s.params.max_tokens == 0:
            s.done = True
            self.release(s)

    def step(self, sessions: list[Session]) -> list[str]:
        """Advance every session: each picks its next token and applies its stop rules, and goes on
        picking while the drafts it fed last step turn out to be the tokens it picks (each draft's
        logits were computed as if it had been fed alone, so the answer is the same as without
        drafts). The ones that go on are evaluated in one batched forward over all slots, with
        drafts (prompt lookup) in the rows no session holds. A session whose prompt is not in yet
        has its next chunk evaluated instead. Returns each session's released text; a session
        that stopped gives up its slot."""
        prefilling = [s for s in sessions if s.pending]
        ready = [s for s in sessions if not s.pending]
        greedy = [s.logits for s in ready if s.params.temperature <= 0]
        argmax = iter(torch.cat(greedy).argmax(-1).tolist() if greedy else [])  # one sync for all
        pieces: dict[Session, str] = {}
        for s in ready:
            if s.params.temperature <= 0:
                picks = [next(argmax) for _ in range(len(s.logits))]
            else:
                picks = [self._pick(s.logits[0], s.params, s.gen)]
            piece, verified = "", 0
            for token in picks:
                piece += s.accept(token, self.tok, self.stop_ids)
                if s.done or verified == len(s.drafts) or s.drafts[verified] != token:
                    break
                verified += 1
            s.out.draft_n_accepted += verified
            self._forget_drafts(s, verified)
            pieces[s] = piece
        live = [s for s in ready if not s.done]
        for s in ready:
            if s.done:
                self.release(s)
        if live:
            self._draft(live)
            logits = self._decode(live)
            for s in live:
                self.slots[s.slot] += [s.out.tokens[-1], *s.drafts]
                s.logits = logits[s]
        for s in prefilling:
            self._prefill(s)
        return [pieces.get(s, "") for s in sessions]

    def _forget_drafts(self, s: Session, keep: int = 0) -> None:
        """The slot keeps the first `keep` drafts fed last step (verified) and drops the rest."""
        if len(s.drafts) > keep:
            del self.slots[s.slot][keep - len(s.drafts) :]
        s.drafts = []

    def _draft(self, live: list[Session]) -> None:
        """Prompt lookup drafts for greedy sessions, as many as the rows no session holds allow: an
        even share each, and rows one session's lookup leaves unused go to the sessions after it."""
        spare = self.batch_rows - len(live)
        greedy = [s for s in live if s.params.temperature <= 0] if self.lookup else []
        for i, s in enumerate(greedy):
            room = min(
                self.max_len - len(self.slots[s.slot]) - 1, s.params.max_tokens - len(s.out.tokens) - 1
            )
            share = -(-spare // (len(greedy) - i))  # what is left, over the sessions left, rounded up
            s.drafts = lookup(s.history, min(share, room)) if room > 0 and share > 0 else []
            s.out.draft_n += len(s.drafts)
            spare -= len(s.drafts)

    def release(self, s: Session) -> None:
        """The session gives up its slot (stopped, or its client left); the slot keeps its cache."""
        self._forget_drafts(s)
        self.busy.discard(s.slot)
        self.used[s.slot] = time.perf_counter()

    def _decode(self, live: list[Session]) -> dict[Session, torch.Tensor]:
        """Each live session's logits [1 + drafts, vocab] after its last token and each of its drafts.
        The step always has `batch_rows` rows, so its shapes are the same whichever slots are busy: a
        session's token is fed in the batch row of its slot, its drafts in rows no session holds
        (reading and writing its slot's cache), and an idle row writes its keys at a scratch
        position past max_len, which no row attends to."""
        # per batch row: the cache row it reads and writes, its token, position and attended length
        rows: list[tuple[int, int, int, int] | None] = [None] * self.batch_rows
        spare = iter(sorted(set(range(self.batch_rows)) - {s.slot for s in live}))
        at = {s: [s.slot] + [next(spare) for _ in s.drafts] for s in live}
        for s, mine in at.items():
            n = len(self.slots[s.slot])
            for j, (i, token) in enumerate(zip(mine, [s.out.tokens[-1], *s.drafts], strict=True)):
                rows[i] = (s.slot, token, n + j, n + j + 1)
        for i, r in enumerate(rows):
            if r is None:
                rows[i] = (0, 0, self.max_len + i, 0)
        cache_rows, tokens, pos, lengths = (list(c) for c in zip(*rows, strict=True))
        ids = torch.tensor(tokens, device=self.device).view(-1, 1)
        logits = self._step(ids, self.cache.step(torch.tensor(pos, device=self.device), lengths, cache_rows))
        return {s: logits[i] for s, i in at.items()}

    def generate(self, ids: list[int], **params) -> Iterator[tuple[str, Completion]]:
        """Yield (new text, running Completion) as text becomes final; the last yield has the stop type.
        `params`: `Params`' fields; a prompt that does not fit with them raises RequestError. `until`
        (codemill/stops.py) cuts the text at a line end it returns: stop type "syntax". The request
        decodes alone, with the same numbers as when `step` decodes it beside others."""
        p = Params(**params)
        check_fits(ids, p.max_tokens, self.max_len)
        s = self.start(ids, p)
        try:
            while not s.done:
                piece = self.step([s])[0]
                if piece or s.done:
                    yield piece, s.out
        finally:
            if not s.done:  # the caller stopped early (a client that left)
                self.release(s)

    def complete(self, ids: list[int], **params) -> Completion:
        *_, (_, result) = self.generate(ids, **params)
        return result

    def run(self, requests: list[tuple[list[int], Params]]) -> Iterator[tuple[int, Completion]]:
        """Decode many requests through the slots: each starts as a slot frees up and every one in
        flight advances in the same `step` (the batcher's loop, without its queue and thread: eval
        decodes a suite this way). Yields (index, Completion) as each ends; the answers are those
        each request gets decoding alone. Every prompt is checked to fit before any starts."""
        for ids, p in requests:
            check_fits(ids, p.max_tokens, self.max_len)
        waiting = list(enumerate(requests))[::-1]
        live: list[tuple[int, Session]] = []
        try:
            while waiting or live:
                while waiting and len(self.busy) < self.parallel:
                    i, (ids, p) = waiting.pop()
                    s = self.start(ids, p)
                    if s.done:  # a warm-up: the prompt is in
                        yield i, s.out
                    else:
                        live.append((i, s))
                if not live:
                    continue
                self.step([s for _, s in live])
                for i, s in live:
                    if s.done:
                        yield i, s.out
                live = [(i, s) for i, s in live if not s.done]
        finally:
            for _, s in live:  # the caller stopped early, or a step failed
                if not s.done:
                    self.release(s)

    @staticmethod
    def _pick(logits: torch.Tensor, params: Params, gen: torch.Generator) -> int:
        temperature, top_p, top_k = params.temperature, params.top_p, params.top_k
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


def lookup(history: array, k: int, longest: int = 3) -> list[int]:
    """Prompt lookup drafts (llama.cpp's and vLLM's n-gram speculation): up to `k` tokens that followed
    the latest earlier occurrence of the last n tokens, the longest n from `longest` down to 1 that
    occurs. Code repeats itself (names, calls, whole lines of the suffix), so these are often right."""
    data, size = history.tobytes(), history.itemsize
    for n in range(min(longest, len(history) - 1), 0, -1):
        tail, end = data[-n * size :], len(data) - size  # a match must end before the last token
        while (i := data.rfind(tail, 0, end)) != -1:
            if i % size == 0:  # on a token boundary
                start = i // size + n
                return history[start : start + k].tolist()
            end = i + len(tail) - 1
    return []


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
