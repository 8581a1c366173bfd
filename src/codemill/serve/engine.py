"""The completion engine: one model, one KV cache reused across requests.

A request's prompt is compared with the tokens already in the cache; only what follows their
longest common prefix is evaluated. With SPM the suffix comes first and typing at the cursor only
appends to the prefix, so consecutive keystrokes reuse almost everything. Decoding is greedy by
default (temperature, top-p and top-k on request), text is released only when it ends on a whole
UTF-8 character, and generation stops on the format's stop tokens, stop strings, a token cap or a
time budget.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from codemill.formats import checkpoint_format, encode_fit
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


class Engine:
    def __init__(self, path: str | Path, fmt: str | None = None, device: str | None = None,
                 max_len: int | None = None, compile: bool = False):  # fmt: skip
        """`compile`: decode with a torch.compile'd one-token step over the whole preallocated cache
        (static shapes, one graph for every position), compiled here, before the first request."""
        from codemill.data.tokenizer import load_tokenizer

        path = Path(path)
        self.fmt = checkpoint_format(path, fmt)
        self.tok = load_tokenizer(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = import_hf(path, dtype=dtype).to(self.device).eval()
        self.name = path.name
        self.max_len = min(max_len or self.model.cfg.max_seq_len, self.model.cfg.max_seq_len)
        self.cache = KVCache.empty(self.model.cfg, self.max_len, self.device, dtype)
        self.cached: list[int] = []  # the token ids whose keys and values are in the cache
        self.stop_ids = {self.tok.token_id(t) for t in self.fmt.stop_tokens}
        self._step = None
        if compile:
            self.cache.rope = rope_tables(self.model.cfg, torch.arange(self.max_len, device=self.device))
            step = torch.compile(self.model.decode_step, dynamic=False)
            zero = torch.zeros(1, dtype=torch.long, device=self.device)
            step(zero.view(1, 1), zero, self.cache)  # compile now: the server says "loading" meanwhile
            self._step = step

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
                    raise ValueError(
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
        """Forget the cached prompt (llama.cpp's `cache_prompt: false`, or a cold measurement)."""
        self.cached, self.cache.length = [], 0

    def prefill(self, ids: list[int]) -> tuple[torch.Tensor, int]:
        """Logits after `ids`, evaluating only what the cache does not already hold."""
        common = 0
        for a, b in zip(self.cached, ids, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # at least one token is evaluated, for its logits
        self.cache.length = common
        self.cached = self.cached[:common]
        logits = self.model.next_logits(torch.tensor([ids[common:]], device=self.device), self.cache)
        self.cached = list(ids)
        return logits, common

    def generate(self, ids: list[int], *, max_tokens: int = 64, stop: tuple[str, ...] = (), temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, time_budget_s: float | None = None,
                 seed: int | None = None, n_indent: int = 0,
                 until: Callable[[str], int] | None = None) -> Iterator[tuple[str, Completion]]:  # fmt: skip
        """Yield (new text, running Completion) as text becomes final; the last yield has the stop type.
        `until` (codemill/stops.py) cuts the text at a line end it returns: stop type "syntax"."""
        if not ids:
            raise ValueError("empty prompt")
        max_tokens = min(max_tokens, self.max_len - len(ids))
        if max_tokens <= 0:
            raise ValueError(
                f"the prompt ({len(ids)} tokens) leaves no room in the context of {self.max_len}"
            )
        gen = torch.Generator(device=self.device)
        if seed is not None:
            gen.manual_seed(seed)
        out = Completion()
        t0 = time.perf_counter()
        logits, out.tokens_cached = self.prefill(ids)
        out.tokens_evaluated = len(ids) - out.tokens_cached
        out.prompt_ms = 1000 * (time.perf_counter() - t0)
        t1 = time.perf_counter()
        emitted = ""  # released text is final: held back while a stop could still cut into it
        while True:
            token = self._pick(logits, temperature, top_p, top_k, gen)
            if token in self.stop_ids:
                out.stop_type = "eos"
                break
            out.tokens.append(token)
            text = self.tok.decode(out.tokens)
            hit, word = min(((i, s) for s in stop if s and (i := text.find(s)) != -1), default=(-1, ""))
            # llama.cpp's rule: a new line indented less than n_indent ends the completion
            if n_indent and (d := _dedent_at(text, n_indent)) != -1 and (hit == -1 or d < hit):
                hit, word = d, ""
            if until is not None and (cut := until(text)) != -1 and (hit == -1 or cut < hit):
                out.text, out.stop_type = text[:cut], "syntax"
                break
            if hit != -1:
                out.text, out.stop_type, out.stop_word = text[:hit], "word", word
                break
            safe = _releasable(text, stop, n_indent, until is not None)
            if len(safe) > len(emitted):
                yield safe[len(emitted) :], out
                emitted = safe
            if len(out.tokens) >= max_tokens:
                out.stop_type = "limit"
                break
            if time_budget_s is not None and time.perf_counter() - t1 > time_budget_s:
                out.stop_type = "time"
                break
            logits = self._decode(token)
            self.cached.append(token)
        out.decode_ms = 1000 * (time.perf_counter() - t1)
        if out.stop_type not in ("word", "syntax"):
            out.text = self.tok.decode(out.tokens).rstrip("\ufffd")
        yield out.text[len(emitted) :], out

    def _decode(self, token: int) -> torch.Tensor:
        ids = torch.tensor([[token]], device=self.device)
        if self._step is None:
            return self.model.next_logits(ids, self.cache)
        logits = self._step(ids, torch.tensor([self.cache.length], device=self.device), self.cache)[0]
        self.cache.length += 1
        return logits

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
