"""Tokenizers: train a byte-level BPE for code; load it or a SentencePiece model behind one interface.

The BPE splits text before merging with a pre-tokenizer that llama.cpp implements exactly (the
default `qwen2`: digits alone, letters with one leading non-letter, punctuation runs with the line
ends after them, newlines with the whitespace before them), so a GGUF export tokenizes every text as
codemill does. Each pre-tokenizer here carries llama.cpp's name for it (`tokenizer.ggml.pre`);
`codemill`, our earlier split (a newline with the indentation after it as one piece), compresses
held-out code less well than `qwen2` and no llama.cpp pre-tokenizer reproduces it (docs/benchmarks.md).
Byte-level BPE has no unknown token and no normalizer, so any string round-trips exactly. Format
sentinels are special tokens that text can never produce (`encode_special_tokens`); the PII
placeholders curation writes are ordinary added tokens, so the text `<EMAIL>` in content becomes one id.

SentencePiece models (aiXcoder-7B's `tokenizer.model`) go through the same interface; each text
segment is encoded behind a throwaway character so SentencePiece adds no dummy `▁`, as aiXcoder's
own code does after its PR #35.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from codemill.curate.corpus import corpus_rows, shards
from codemill.errors import UserError
from codemill.formats import PII_TOKENS, Format

META = "▁"  # SentencePiece's space
SENTINEL_SHAPE = re.compile(r"▁?<[^<>\s]+>$")  # an ordinary piece shaped like a sentinel
CODEMILL_SPLIT = (
    r"\p{N}"  # one digit
    r"|[^\S\r\n]*(?:\r?\n)+[^\S\r\n]*"  # line ends with the indentation that follows them
    r"|[^\S\r\n]?[\p{L}\p{M}_]+"  # identifiers and words, with one leading space
    r"|[^\S\r\n]?[^\s\p{L}\p{M}\p{N}_]+"  # punctuation runs
    r"|[^\S\r\n]+(?!\S)|[^\S\r\n]+"  # other whitespace runs
)
# llama.cpp's own spelling of these regexes (src/llama-vocab.cpp), which its tokenizer runs exactly
_QWEN2_LIKE = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|DIGITS"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_SPLITS = {
    "codemill": (CODEMILL_SPLIT,),
    "qwen2": (_QWEN2_LIKE.replace("DIGITS", r"\p{N}"),),
    "llama3": (_QWEN2_LIKE.replace("DIGITS", r"\p{N}{1,3}"),),
    "starcoder": (r"\p{N}", _GPT2),
    "deepseek-coder": (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"),
}
PRETOKENIZERS = tuple(_SPLITS)
LLAMA_CPP_PRETOKENIZERS = ("qwen2", "llama3", "starcoder", "deepseek-coder")  # tokenizer.ggml.pre
DEFAULT_PRETOKENIZER = "qwen2"


def pre_tokenizer(name: str) -> pre_tokenizers.PreTokenizer:
    """The regex splits applied one after another (as llama.cpp does), then the byte-level alphabet."""
    if name not in _SPLITS:
        raise UserError(f"unknown pre-tokenizer {name!r}; use one of {', '.join(PRETOKENIZERS)}")
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _SPLITS[name]]
    return pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )


def pretokenizer_name(tok: Tokenizer) -> str | None:
    """Which of PRETOKENIZERS a tokenizer.json uses (None: another one, which llama.cpp may not know)."""
    used = json.loads(tok.to_str()).get("pre_tokenizer")
    for name in PRETOKENIZERS:
        probe = Tokenizer(models.BPE())
        probe.pre_tokenizer = pre_tokenizer(name)
        if json.loads(probe.to_str())["pre_tokenizer"] == used:
            return name
    return None


class HFTokenizer:
    """A `tokenizer.json` (HF tokenizers)."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.tok.encode_special_tokens = True  # sentinel text in content stays text

    @classmethod
    def load(cls, path: str | Path) -> HFTokenizer:
        return cls(Tokenizer.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        i = self.tok.token_to_id(token)
        if i is None:
            raise UserError(
                f"token {token!r} is not in this vocabulary; is the format right for this tokenizer?"
            )
        return i

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)


# Where each pre-tokenizer always starts a new piece: before a line whose indentation (spaces and
# tabs) ends on a character Python calls non-space (Unicode's White_Space is within Python's space).
# `codemill` keeps a newline with the indentation after it, so its pieces start after the indentation;
# `qwen2` and `llama3` end a piece with the last newline of a whitespace run; `deepseek-coder`
# isolates newlines. `starcoder` matches whitespace runs not followed by a non-space (`\s+(?!\S)`),
# which the end of a chunk would change: only a lone newline between two non-spaces is a cut there.
# The text before a cut must also end the same way alone: a whitespace run that holds a newline ends
# at it for `qwen2`, holds the indentation after it for `codemill`.
_PIECE_STARTS = {
    "codemill": re.compile(r"\n[ \t]*(?=\S)"),
    "qwen2": re.compile(r"\n(?=[ \t]*\S)"),
    "llama3": re.compile(r"\n(?=[ \t]*\S)"),
    "starcoder": re.compile(r"(?<=\S)\n(?=\S)"),
    "deepseek-coder": re.compile(r"\n(?=\S)"),
}


class ChunkCache:
    """Token ids of texts that mostly repeat, from ids kept per chunk: an editor sends its whole file
    on every keystroke, and tokenizing a 100 kB file takes 15-20 ms on a CPU core that decoding
    needs (docs/benchmarks.md). A text is cut into chunks of at least `chunk` characters where its
    pre-tokenizer always starts a new piece (`_PIECE_STARTS`), so the chunks' ids joined are the
    whole text's ids, and chunks count from the text's start, so typing at the end of a prefix only
    re-tokenizes its last chunk. For a tokenizer whose pre-tokenizer is not one of ours, or with an
    added token that could match across a cut, it tokenizes whole texts. Safe to share between threads."""

    def __init__(self, tok: HFTokenizer | SPTokenizer, chunk: int = 2048, entries: int = 8192):
        self.tok, self.chunk, self.entries = tok, chunk, entries
        name = pretokenizer_name(tok.tok) if isinstance(tok, HFTokenizer) else None
        spec = json.loads(tok.tok.to_str()) if name else {}
        # an added token matched across a cut (one with whitespace in it, or taking the whitespace
        # beside it) would make the chunks' ids differ from the text's
        spans = any(any(c.isspace() for c in t["content"]) or t["lstrip"] or t["rstrip"]
                    for t in spec.get("added_tokens", []) if not t["special"])  # fmt: skip
        plain = spec.get("normalizer") is None and spec.get("model", {}).get("dropout") is None
        self.starts = _PIECE_STARTS[name] if name and plain and not spans else None
        self.ids: OrderedDict[str, list[int]] = OrderedDict()
        self.lock = threading.Lock()

    def token_id(self, token: str) -> int:
        return self.tok.token_id(token)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.starts is None:
            return self.tok.encode_batch(texts)
        chunks = [self._cut(t) for t in texts]
        with self.lock:
            known = {c: self.ids[c] for cs in chunks for c in cs if c in self.ids}
            for c in known:
                self.ids.move_to_end(c)
        new = list(dict.fromkeys(c for cs in chunks for c in cs if c not in known))
        known.update(zip(new, self.tok.encode_batch(new), strict=True))
        with self.lock:
            for c in new:
                self.ids[c] = known[c]
            while len(self.ids) > self.entries:
                self.ids.popitem(last=False)
        return [[i for c in cs for i in known[c]] for cs in chunks]

    def _cut(self, text: str) -> list[str]:
        out, start = [], 0
        while len(text) - start > self.chunk:
            m = self.starts.search(text, start + self.chunk)
            if m is None:
                break
            out.append(text[start : m.end()])
            start = m.end()
        return [*out, text[start:]]


class SPTokenizer:
    """A SentencePiece `tokenizer.model`, encoding each segment without a dummy prefix.

    SentencePiece matches its user-defined pieces (aiXcoder's `▁<AIX-SPAN-MIDDLE>`) anywhere in the
    text it encodes, its merges can reach a sentinel kept as an ordinary piece (CodeLlama's
    `▁<PRE>`), and it turns a literal `▁` into a space on the way back. So a text holding any of
    these is cut before it is encoded: a sentinel's text in two parts encoded apart (it stays text, as
    `encode_special_tokens` keeps it in the BPE), a literal `▁` as its UTF-8 byte pieces (a model
    without byte fallback has none: there it reads back as a space, as SentencePiece does). PII
    placeholders stay whole: curation writes them to be one id."""

    GUARD = "☺"

    def __init__(self, path: str | Path):
        import sentencepiece
        from sentencepiece import sentencepiece_model_pb2

        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self._guard = self.sp.encode(self.GUARD)
        model = sentencepiece_model_pb2.ModelProto()
        model.ParseFromString(self.sp.serialized_model_proto())
        kinds = sentencepiece_model_pb2.ModelProto.SentencePiece
        sentinels = {
            p.piece
            for p in model.pieces
            if p.type == kinds.USER_DEFINED or (p.type == kinds.NORMAL and SENTINEL_SHAPE.match(p.piece))
        }
        cores = sorted({p.lstrip(META) or p for p in sentinels - set(PII_TOKENS)}, key=len, reverse=True)
        # where text is cut: inside every sentinel's text (after its first character), and around ▁
        self._cuts = re.compile("|".join([f"(?<={re.escape(c[0])})(?={re.escape(c[1:])})" for c in cores
                                          if len(c) > 1] + [META]))  # fmt: skip
        meta = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in META.encode()]
        self._meta = meta if model.trainer_spec.byte_fallback else None

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def token_id(self, token: str) -> int:
        i = self.sp.piece_to_id(token)
        if i == self.sp.unk_id() and token != self.sp.id_to_piece(i):
            raise UserError(f"piece {token!r} is not in this SentencePiece model")
        return i

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [
            self._encode(t) if self._cuts.search(t) else ids
            for t, ids in zip(texts, self._plain(texts), strict=True)
        ]

    def _plain(self, texts: list[str]) -> list[list[int]]:
        g = len(self._guard)
        return [
            ids[g:] if ids[:g] == self._guard else ids
            for ids in self.sp.encode([self.GUARD + t for t in texts])
        ]

    def _encode(self, text: str) -> list[int]:
        """A text holding a sentinel's text or a literal ▁, in parts that hold neither."""
        out: list[int] = []
        pieces = [p for p in re.split(f"({META})", text) if p]
        for piece in pieces:
            if piece == META and self._meta is not None:
                out += self._meta
            else:
                out += [i for ids in self._plain(self._cuts.split(piece)) for i in ids]
        return out

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(self._guard + list(ids))[len(self.GUARD) :]


def load_tokenizer(path: str | Path) -> HFTokenizer | SPTokenizer:
    """A tokenizer directory or file: `tokenizer.json` (HF) or `tokenizer.model` (SentencePiece)."""
    p = Path(path)
    for candidate in (p, p / "tokenizer.json", p / "tokenizer.model"):
        if candidate.is_file():
            try:
                return SPTokenizer(candidate) if candidate.suffix == ".model" else HFTokenizer.load(candidate)
            except Exception as e:  # tokenizers and sentencepiece raise bare Exception / RuntimeError
                raise UserError(
                    f"{candidate} is not a tokenizer ({str(e).splitlines()[0][:200]}); give a tokenizer.json, "
                    "a tokenizer.model or a directory holding one (`codemill tokenizer train` writes one)"
                ) from None
    raise UserError(f"no tokenizer.json or tokenizer.model at {p}; train one with `codemill tokenizer train`")


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    fmt: Format,
    show_progress: bool = True,
    pretokenizer: str = DEFAULT_PRETOKENIZER,
    length: int | None = None,
) -> Tokenizer:
    """A byte-level BPE with `vocab_size` ids in all: the format's specials first, PII tokens last.
    `length`: about how many texts come, for the progress bar's total."""
    specials = list(fmt.specials)
    pii = list(PII_TOKENS) if fmt.pii else []
    if vocab_size < 256 + len(specials) + len(pii):
        raise UserError(f"vocab_size {vocab_size} is smaller than the 256 bytes plus the special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer(pretokenizer)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(pii),
        special_tokens=[AddedToken(s, special=True, normalized=False) for s in specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer, length=length)
    tok.add_tokens([AddedToken(t, special=False, normalized=False, single_word=False) for t in pii])
    return tok


def save_tokenizer(tok: Tokenizer, out: Path, fmt: Format) -> None:
    """`tokenizer.json` plus the config files `PreTrainedTokenizerFast` / `AutoTokenizer` read."""
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": fmt.eos,
        "bos_token": fmt.bos,
        "pad_token": fmt.pad,
        "unk_token": None,
        "additional_special_tokens": [t for t in fmt.specials if t not in (fmt.eos, fmt.bos, fmt.pad)],
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 20,
        "codemill_format": fmt.name,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    specials = {k: config[k] for k in ("eos_token", "bos_token", "pad_token") if config[k]}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def chunks(texts: Iterable[str], size: int = 1 << 16) -> Iterator[str]:
    """Long files in pieces at line ends, so no single training input holds the trainer's memory."""
    for t in texts:
        while len(t) > size:
            cut = t.rfind("\n", 0, size) + 1 or size
            yield t[:cut]
            t = t[cut:]
        if t:
            yield t


def training_texts(corpus: str | Path, max_bytes: int, size: int = 1 << 16) -> tuple[Iterator[str], int]:
    """The tokenizer's inputs (`chunks` of `corpus_texts`) and about how many there are, from the
    shards' row-group metadata (nothing read), so the trainer's bar has a total."""
    import pyarrow.parquet as pq

    texts = chunks(corpus_texts(corpus, max_bytes), size)  # checks the corpus first
    n, seen = 0.0, 0
    for f in shards(corpus):
        meta = pq.ParquetFile(f).metadata
        col = meta.schema.to_arrow_schema().get_field_index("content")
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            nbytes = rg.column(col).total_uncompressed_size
            share = min(1.0, (max_bytes - seen) / max(nbytes, 1))
            n, seen = n + share * (rg.num_rows + nbytes / size), seen + nbytes
            if seen >= max_bytes:
                return texts, round(n)
    return texts, round(n)


def corpus_texts(corpus: str | Path, max_bytes: int) -> Iterator[str]:
    """File contents of a curated corpus in corpus order, up to `max_bytes` of UTF-8."""
    seen = 0
    for (text,) in corpus_rows(corpus, ["content"], 256):
        seen += len(text.encode("utf-8"))
        yield text
        if seen >= max_bytes:
            return
