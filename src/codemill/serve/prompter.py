"""Prompt ids for requests: text laid out by the checkpoint's format, cut to fit, and checked.

Apart from the engine so that the server builds prompts in worker threads while the engine's own
thread decodes (tokenizing an editor's file takes 5-20 ms; the tokenizer lets go of the interpreter
lock): this holds no model and no cache, only the tokenizer, its chunk cache (thread-safe) and the
context length.
"""

from __future__ import annotations

import re

from codemill.formats import Format, encode_prompt
from codemill.serve.request import RequestError

CHUNK_ENTRIES = 1024


class Prompter:
    def __init__(self, fmt: Format, tok, max_len: int, vocab_size: int):
        from codemill.data.tokenizer import ChunkCache

        self.fmt, self.tok, self.max_len, self.vocab_size = fmt, tok, max_len, vocab_size
        # prompts: an editor's file, again on every keystroke. Each request adds the segments' last
        # chunks (about 16 KiB each, rarely met again) while its file's others stay hot, so a bound
        # of 1,024 (about 16 MiB) keeps some 20 files of 100 kB and fills within minutes: a server's
        # memory is flat after that (the default, 8,192, would grow for an hour, to some 130 MiB)
        self.chunks = ChunkCache(tok, entries=CHUNK_ENTRIES)
        specials = sorted(fmt.specials, key=len, reverse=True)
        self._specials, self._split = (
            set(specials),
            re.compile("(" + "|".join(map(re.escape, specials)) + ")"),
        )

    def prompt(self, prefix: str, suffix: str | None = None, *, max_tokens: int = 64, **request) -> list[int]:
        """Prompt ids from formats.py, truncated inside its segments to leave room for the answer."""
        return self.prompt_fit(prefix, suffix, max_tokens=max_tokens, **request)[0]

    def prompt_fit(
        self, prefix: str, suffix: str | None = None, *, max_tokens: int = 64, **request
    ) -> tuple[list[int], bool]:
        """`prompt` and whether it had to be cut (`request`: path, context, typed, spm, repo as
        `Format.prompt_groups` takes them); context files are dropped whole, oldest first."""
        return encode_prompt(self.fmt, self.chunks, self.max_len - max_tokens, prefix, suffix, **request)

    def raw_ids(self, prompt: str | list[int | str]) -> list[int]:
        """llama-server's /completion prompt: text whose special-token strings become their ids (and
        the format's bos first), or a list of token ids and texts."""
        items = [prompt] if isinstance(prompt, str) else prompt
        first_text = bool(items) and isinstance(items[0], str)  # llama-server adds bos before text only
        ids = [self.tok.token_id(self.fmt.bos)] if self.fmt.bos and first_text else []
        for item in items:
            if isinstance(item, int):
                if not 0 <= item < self.vocab_size:
                    raise RequestError(f"token id {item} is outside the vocabulary of {self.vocab_size}")
                ids.append(item)
                continue
            pieces = [p for p in self._split.split(item) if p]
            texts = iter(self.tok.encode_batch([p for p in pieces if p not in self._specials]))
            for p in pieces:
                ids += [self.tok.token_id(p)] if p in self._specials else next(texts)
        return ids
