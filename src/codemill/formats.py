"""Prompt and training formats: the one definition of special tokens and FIM layouts.

Data builds training documents with `Format.document`; eval and serve build prompts with
`Format.prompt`, which is the same layout with the middle left open, so a model is always queried
the way it was trained. Both return `Part`s, not strings: special tokens are inserted by id and text
segments are tokenized one by one, so code containing the text `<fim_prefix>` can never forge the
sentinel, and SentencePiece tokenizers add no dummy `▁` between segments (aiXcoder-7B issue #39).

PSM is `<PRE> prefix <SUF> suffix <MID> middle`; SPM is `<PRE> <SUF> suffix <MID> prefix middle`
(the FIM paper's "variant 2", used by bigcode, SAFIM and aiXcoder).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

from codemill.errors import UserError
from codemill.langs import detect

PII_TAGS = ("EMAIL", "NAME", "IP_ADDRESS", "USERNAME", "PASSWORD", "KEY")
PII_TOKENS = tuple(f"<{t}>" for t in PII_TAGS)  # what curation writes in place of PII; single ids

ROLES = ("special", "meta", "header", "prefix", "suffix", "middle", "body")


class Part(NamedTuple):
    """A segment of a document: a special token (inserted by id) or text (tokenized alone)."""

    role: str  # one of ROLES; "special" parts hold the token's string
    text: str


@dataclass(frozen=True)
class Format:
    name: str
    prefix: str
    suffix: str
    middle: str
    eos: str
    bos: str | None = None
    pad: str | None = None
    repo_name: str | None = None
    file_sep: str | None = None
    header: bool = False  # aiXcoder's two-line comment header (path, language) before the code
    path_comment: bool = False  # DeepSeek-Coder: the path as a leading comment
    spm: bool = True  # whether the model was trained with SPM
    eos_per_file: bool = True  # every file ends with eos (else only the repository does)
    pii: bool = False  # the PII placeholders are single tokens of this vocabulary
    lead: str = ""  # text before the PSM prefix (CodeLlama: "<PRE> {prefix} <SUF>{suffix} <MID>")

    @property
    def specials(self) -> tuple[str, ...]:
        """Tokens that must be single ids and never be produced from text."""
        names = (self.eos, self.bos, self.pad, self.prefix, self.suffix, self.middle)
        names += (self.repo_name, self.file_sep)
        return tuple(dict.fromkeys(t for t in names if t))

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        """Tokens that end a completion."""
        extra = (self.file_sep, self.prefix, self.suffix, self.middle, self.pad)
        return tuple(dict.fromkeys(t for t in (self.eos, *extra) if t))

    def repo_start(self, repo: str) -> list[Part]:
        """What opens a repository's stream, before its first file."""
        return [Part("special", self.repo_name), Part("meta", f"{repo}\n")] if self.repo_name else []

    def file_start(self, path: str | None) -> list[Part]:
        parts = [Part("special", self.bos)] if self.bos else []
        if self.file_sep and path is not None:
            parts += [Part("special", self.file_sep), Part("meta", f"{path}\n")]
        elif self.path_comment and path is not None and (c := comment(path, path)):
            parts.append(Part("meta", c))
        return parts

    @property
    def repo_level(self) -> bool:
        """Qwen2.5-Coder's repository-level layout, which llama-server's /infill builds: files of the
        repository as `<file_sep>path\\n` + code, one after another with no end token between them,
        the file completed last."""
        return bool(self.repo_name and self.file_sep)

    def context_file(self, path: str | None, code: str) -> list[Part]:
        """Another file of the repository, before the one completed: in a repository-level format it
        runs into the next file (training lays out `data.repo_context` files so), otherwise it is a
        whole NTP document."""
        if self.repo_level:
            return [*self.file_start(path or CHUNK_PATH), *self.file_header(path), Part("body", code)]
        return self.document(path=path, prefix=code)

    def file_header(self, path: str | None) -> list[Part]:
        return [Part("header", h)] if self.header and path and (h := aix_header(path)) else []

    def document(
        self,
        *,
        path: str | None,
        prefix: str,
        middle: str | None = None,
        suffix: str | None = None,
        spm: bool = False,
        end: bool = True,
    ) -> list[Part]:
        """One file as trained: NTP when suffix is None, else FIM with `middle` after the sentinel.

        With middle=None (and end=False) it is the inference prompt, ending where the middle starts.
        """
        parts = self.file_start(path)
        header = self.file_header(path)
        if suffix is None:
            parts += [*header, Part("body", prefix)]
        else:
            if spm and not self.spm:
                raise UserError(f"format {self.name} has no SPM layout")
            pre, suf = Part("special", self.prefix), Part("special", self.suffix)
            mid = Part("special", self.middle)
            if spm:
                parts += [pre, suf, Part("suffix", suffix), mid, *header, Part("prefix", prefix)]
            else:
                parts += [pre, *header, Part("prefix", self.lead + prefix), suf, Part("suffix", suffix), mid]
            if middle is not None:
                parts.append(Part("middle", middle))
        if end and (self.eos_per_file or suffix is not None):
            parts.append(Part("special", self.eos))
        return [p for p in parts if p.role == "special" or p.text]

    def prompt_groups(
        self,
        prefix: str,
        suffix: str | None = None,
        *,
        path: str | None = None,
        spm: bool | None = None,
        repo: str | None = None,
        context: list[tuple[str, str]] = (),
        typed: str = "",
    ) -> tuple[list[Part], list[list[Part]], list[Part]]:
        """An inference prompt in three parts: its opening, the cross-file `context` files (path,
        code), oldest first, and the file to complete. A FIM prompt of a repository-level format is
        llama-server's /infill layout (tools/server/server-common.cpp, `format_prompt_infill`): the
        repository line, the context files, the current file's separator line, then the sentinels;
        where the request names no repository or path, llama-server's placeholders stand in. `typed`
        (llama-server's `prompt`: the text typed on the current line) follows the prefix as a
        segment of its own, tokenized apart as llama-server does."""
        if self.repo_level and suffix is not None:
            repo, path = repo or REPO_PLACEHOLDER, path or PATH_PLACEHOLDER
        head = self.repo_start(repo) if repo else []
        files = [self.context_file(p, code) for p, code in context]
        spm = self.spm if spm is None else spm
        current = self.document(path=path, prefix=prefix, suffix=suffix, spm=spm, end=False)
        if typed:
            current.insert(_after_prefix(current, self.prefix, spm or suffix is None), Part("prefix", typed))
        return head, files, current

    def prompt(self, prefix: str, suffix: str | None = None, **request) -> list[Part]:
        """`prompt_groups` joined: the training document cut where the middle starts, after the
        repository's other files."""
        head, files, current = self.prompt_groups(prefix, suffix, **request)
        return [*head, *(p for f in files for p in f), *current]


def _after_prefix(parts: list[Part], sentinel: str, at_end: bool) -> int:
    """Where the prefix ends: after its text, or (empty) at the end of an SPM or NTP prompt, else
    after the PSM prefix sentinel and any header."""
    roles = [p.role for p in parts]
    if "prefix" in roles:
        return len(roles) - roles[::-1].index("prefix")
    if at_end:
        return len(parts)
    at = parts.index(Part("special", sentinel)) + 1
    while at < len(parts) and parts[at].role == "header":
        at += 1
    return at


# llama-server's names where an /infill request gives none (format_prompt_infill): the repository,
# the current file, a context chunk
REPO_PLACEHOLDER, PATH_PLACEHOLDER, CHUNK_PATH = "myproject", "filename", "tmp"

Pieces = list[tuple[list[int], str]]  # token ids per part, with the part's role


def pieces(parts: list[Part], tok) -> Pieces:
    """Specials by id, each text segment tokenized alone."""
    enc = iter(tok.encode_batch([p.text for p in parts if p.role != "special"]))
    return [([tok.token_id(p.text)] if p.role == "special" else next(enc), p.role) for p in parts]


def fit(pieces: Pieces, budget: int, align: int = 1) -> tuple[Pieces, list[int], list[int]]:
    """Cut pieces to `budget` tokens the one way training and inference both do: the prefix (or body)
    keeps its tail and the suffix its head, the room left by the other parts split evenly between them
    (what one side does not need goes to the other). Returns the kept pieces and the prefix head and
    suffix tail that were cut. `align` cuts the prefix head at multiples of that many tokens, so a
    prefix growing at its end (typing) keeps the same start and the server's cache stays valid."""
    room = max(0, budget - sum(len(ids) for ids, role in pieces if role not in ("prefix", "body", "suffix")))
    pre = sum(len(ids) for ids, role in pieces if role in ("prefix", "body"))
    suf = sum(len(ids) for ids, role in pieces if role == "suffix")
    keep_suf = min(suf, max(room // 2, room - pre))
    keep_pre = min(pre, room - keep_suf)
    # several prefix pieces (cross-file snippets before the file's own prefix) share the allowance
    # from the cursor outwards: the last prefix piece keeps its tail first, the first suffix its head
    keep: dict[int, int] = {}
    for order, roles, left in ((reversed, ("prefix", "body"), keep_pre), (iter, ("suffix",), keep_suf)):
        for i in order(range(len(pieces))):
            if pieces[i][1] in roles:
                n = len(pieces[i][0])
                keep[i] = min(n, left)
                left -= keep[i]
                if roles[0] == "prefix" and keep[i] < n:  # cut here: nothing further out is kept
                    keep[i], left = max(0, n - -(-(n - keep[i]) // align) * align), 0
    kept, head, tail = [], [], []
    for i, (ids, role) in enumerate(pieces):
        if role in ("prefix", "body"):
            cut = len(ids) - keep[i]
            head, ids = head + ids[:cut], ids[cut:]
        elif role == "suffix":
            ids, tail = ids[: keep[i]], tail + ids[keep[i] :]
        kept.append((ids, role))
    return kept, head, tail


PROMPT_ALIGN = 64  # inference prompts cut their prefix head at multiples of 64 tokens (see `fit`)


def encode_fit(
    parts: list[Part], tok, budget: int | None = None, align: int = PROMPT_ALIGN
) -> tuple[list[int], bool]:
    """Token ids of a prompt, cut with `fit` when longer than `budget`, and whether it was cut."""
    got = pieces(parts, tok)
    cut = budget is not None and sum(len(ids) for ids, _ in got) > budget
    if cut:
        got = fit(got, budget, align)[0]
    return [i for ids, _ in got for i in ids], cut


def encode(parts: list[Part], tok, budget: int | None = None, align: int = PROMPT_ALIGN) -> list[int]:
    """Token ids of a prompt, cut with `fit` when longer than `budget`."""
    return encode_fit(parts, tok, budget, align)[0]


def encode_prompt(
    fmt: Format, tok, budget: int | None, prefix: str, suffix: str | None = None, *, align: int = PROMPT_ALIGN,
    **request,
) -> tuple[list[int], bool]:  # fmt: skip
    """Prompt ids within `budget`, and whether anything was left out: the file to complete first
    (cut by `fit` if it alone is too long), then the context files that fit in what is left, each
    whole, the newest (last) first; older ones are dropped, never cut to an empty file."""
    head, files, current = fmt.prompt_groups(prefix, suffix, **request)
    groups = [head, *files, current]
    got = pieces([p for g in groups for p in g], tok)
    split, at = [], 0
    for g in groups:
        split.append(got[at : at + len(g)])
        at += len(g)
    ids = lambda ps: [i for p, _ in ps for i in p]  # noqa: E731
    head_ids, file_ids, cur = ids(split[0]), [ids(f) for f in split[1:-1]], split[-1]
    if budget is None:
        return head_ids + [i for f in file_ids for i in f] + ids(cur), False
    room = budget - len(head_ids)
    cut = sum(len(p) for p, _ in cur) > room
    cur_ids = ids(fit(cur, room, align)[0] if cut else cur)
    room -= len(cur_ids)
    kept: list[list[int]] = []
    for f in reversed(file_ids):
        if len(f) > room:
            cut = True
            break
        kept.insert(0, f)
        room -= len(f)
    return head_ids + [i for f in kept for i in f] + cur_ids, cut


def comment(path: str, text: str) -> str | None:
    """`text` as a one-line comment in the language of `path`; None if it has no comment syntax."""
    lang = detect(path)
    if lang is None:
        return None
    if lang.line_comment:
        return f"{lang.line_comment} {text}\n"
    if lang.block_comment:
        return f"{lang.block_comment[0]} {text} {lang.block_comment[1]}\n"
    return None


def aix_header(path: str) -> str | None:
    """aiXcoder-7B's per-file header: the path, then the language, as two comment lines."""
    lang = detect(path)
    first = comment(path, f"the file path is: {path}")
    if lang is None or first is None:
        return None
    return first + comment(path, f"the code file is written by {lang.name}")


STARCODER2 = Format(
    "starcoder2",
    "<fim_prefix>",
    "<fim_suffix>",
    "<fim_middle>",
    "<|endoftext|>",
    pad="<fim_pad>",
    repo_name="<repo_name>",
    file_sep="<file_sep>",
    eos_per_file=False,
)
# codemill's own: StarCoder2's sentinels, an end token after every file, the PII placeholders
CODEMILL = dataclasses.replace(STARCODER2, name="codemill", eos_per_file=True, pii=True)
DEFAULT_FORMAT = CODEMILL.name  # a tokenizer's, a training stream's and an unlabelled checkpoint's

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        CODEMILL,
        Format(
            "aixcoder",
            "▁<AIX-SPAN-PRE>",
            "▁<AIX-SPAN-POST>",
            "▁<AIX-SPAN-MIDDLE>",
            "</s>",
            bos="<s>",
            header=True,
        ),
        STARCODER2,
        Format(
            "deepseek-coder",
            "<｜fim▁begin｜>",
            "<｜fim▁hole｜>",
            "<｜fim▁end｜>",
            "<｜end▁of▁sentence｜>",
            bos="<｜begin▁of▁sentence｜>",
            path_comment=True,
            spm=False,
        ),
        Format(
            "qwen2.5-coder",
            "<|fim_prefix|>",
            "<|fim_suffix|>",
            "<|fim_middle|>",
            "<|endoftext|>",
            pad="<|fim_pad|>",
            repo_name="<|repo_name|>",
            file_sep="<|file_sep|>",
            spm=False,
            eos_per_file=False,
        ),
        Format("codellama", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>", bos="<s>", spm=False, lead=" "),
    )
}


def codemill_info(path: str | Path) -> dict:
    """A checkpoint's `codemill.json` (what codemill trained it with), {} when it has none."""
    info = Path(path) / "codemill.json"
    if not info.exists():
        return {}
    try:
        d = json.loads(info.read_text())
    except (ValueError, OSError) as e:
        d = e
    if not isinstance(d, dict):
        raise UserError(
            f"{info} is not a JSON object ({d}); restore it from the run's final/, or delete it and "
            "pass --format"
        )
    return d


def checkpoint_format(path: str | Path, name: str | None = None) -> Format:
    """`name`, else the format a checkpoint was trained with (its `codemill.json`), else codemill's."""
    return get_format(name or codemill_info(path).get("format") or DEFAULT_FORMAT)


def trained_context(path: str | Path, positions: int) -> int:
    """The window a codemill checkpoint was trained on (its `codemill.json`), at most the model's
    `positions`. Positions past it were never trained, so evaluation keeps prompts inside it."""
    seq_len = (codemill_info(path).get("data") or {}).get("seq_len")
    return min(positions, seq_len or positions)


def has_token(tok, token: str | None) -> bool:
    """Whether a tokenizer has `token` as one id (None: nothing to have)."""
    try:
        return token is None or tok.token_id(token) is not None
    except UserError:
        return False


def detect_format(tok) -> Format:
    """The format whose FIM sentinels a tokenizer carries (a base model brought to `codemill adapt`):
    codemill's own when it also has the PII placeholders, else the first family that matches."""
    has = partial(has_token, tok)
    found = [f for f in FORMATS.values() if all(has(t) for t in (f.prefix, f.suffix, f.middle, f.eos))]
    if found and found[0].pii and not all(has(t) for t in PII_TOKENS):
        found = found[1:]
    if not found:
        raise UserError(
            "the base model's tokenizer has the FIM tokens of none of "
            f"{', '.join(FORMATS)}; pass --format if it is one of them under another name (a base "
            "without FIM tokens cannot be adapted here: NTP-only adaptation is not built)"
        )
    return found[0]


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise UserError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]
