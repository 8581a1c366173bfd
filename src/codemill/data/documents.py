"""The documents of one stream shard: its units in order, Algorithm 1's file order per repository,
the objective drawn for each file, and the tokens of each document (`TokenDoc`).

Units are repositories (and chunks of natural-language text), in a new random order each epoch.
Shard s of S takes every S-th unit of that order from the s-th, so ranks never overlap and together
cover everything. Every random choice comes from a generator keyed by (seed, epoch, repository,
file), so the documents do not depend on the shard count and a unit's documents can be rebuilt from
its name alone (what a resume does). The packer (data/packer.py) asks for the pieces context-level
objectives cut (`cut`, `rest`): what fits depends on the room left in its window.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from codemill.data.config import DataConfig
from codemill.data.document import TokenDoc
from codemill.data.objectives import Sample, fim_split, make_sample
from codemill.data.ordering import draw, order_files
from codemill.data.repo import CodeCorpus, SourceFile, TextCorpus, lines_of
from codemill.data.stats import StreamStats
from codemill.errors import UserError
from codemill.formats import Format, Pieces, fit, get_format

EMPTY = np.zeros(0, dtype=np.int32)


def keyed_rng(*key: object) -> random.Random:
    return random.Random(xxhash.xxh64_intdigest("\x00".join(map(str, key))))


class DocumentBuilder:
    """Shard `shard` of `shards`: its units per epoch (`units`), a unit's documents (`plan`, then
    `encode`) and, at context level, the pieces of a file cut to fit a window's room."""

    def __init__(
        self,
        corpus: str | CodeCorpus,
        tokenizer,
        cfg: DataConfig,
        *,
        shard: int = 0,
        shards: int = 1,
        stats: StreamStats | None = None,
    ):
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} out of range for {shards} shards")
        self.cfg, self.tok, self.stats, self.shard, self.shards = cfg, tokenizer, stats, shard, shards
        self.fmt: Format = get_format(cfg.format)
        self.ids = {t: tokenizer.token_id(t) for t in self.fmt.specials}
        self.pad_id = self.ids[self.fmt.pad or self.fmt.eos]
        self.window_len = cfg.seq_len + 1
        self.sources: dict[str, Any] = {
            "code": corpus if isinstance(corpus, CodeCorpus) else CodeCorpus(corpus)
        }
        self.weights = {"code": 1.0 - cfg.text_share}
        if cfg.text_share > 0:
            self.sources["text"] = TextCorpus(list(cfg.text), cfg.text_column)
            self.weights["text"] = cfg.text_share
        self.excluded: set[int] = set()
        if cfg.exclude_repos:  # held-out repositories never enter the stream
            names = set(Path(cfg.exclude_repos).read_text().split())
            self.excluded = {u for u, r in enumerate(self.sources["code"].repos) if r in names}
        self.excluded_files: set[tuple[str, str]] = set()
        if cfg.exclude_files:  # held-out files of repositories that are otherwise trained on
            lines = Path(cfg.exclude_files).read_text().splitlines()
            self.excluded_files = {tuple(line.split("\t", 1)) for line in lines if "\t" in line}
        for name, src in self.sources.items():
            if len(src) < shards:
                raise UserError(
                    f"the {name} source has {len(src)} units, fewer than the {shards} shards "
                    "(train.data_shards, else the world size); use fewer shards or a larger corpus"
                )
        self._units: dict[str, tuple[int, list[int]]] = {}  # per source: its current epoch's units
        self._rest_doc: tuple[tuple, TokenDoc | None] = ((), None)
        self._lines: tuple[SourceFile | None, np.ndarray, np.ndarray] = (None, EMPTY, EMPTY)
        self._tree: tuple[SourceFile | None, Any] = (None, None)

    def units(self, source: str, epoch: int) -> list[int]:
        """This shard's units of `source` in epoch `epoch`: every shard strides through one order of
        all units, a permutation keyed by (seed, epoch) with `shuffle_repos`, else the corpus order.
        Shuffled, a short run samples the whole corpus instead of its first repositories."""
        epoch = epoch if self.cfg.shuffle_repos else 0
        if self._units.get(source, (None,))[0] != epoch:
            order = list(range(len(self.sources[source])))
            if self.cfg.shuffle_repos:
                keyed_rng(self.cfg.seed, epoch, source, "units").shuffle(order)
            excluded = self.excluded if source == "code" else set()
            self._units[source] = (epoch, [u for u in order[self.shard :: self.shards] if u not in excluded])
        return self._units[source][1]

    # --- a unit's documents ----------------------------------------------------------------------
    def plan(self, source: str, unit: int, epoch: int) -> list[Callable[[], list[TokenDoc]]]:
        """The unit's documents in order, as makers (a file's documents each): only the ones packed
        next are built."""
        if source == "text":
            texts = self.sources["text"].read(unit)
            return [partial(self._text_doc, t, (epoch, "text", unit, row)) for row, t in enumerate(texts)]
        cfg = self.cfg
        repo, files = self.sources["code"].read(unit)
        if self.excluded_files:
            files = [f for f in files if (repo, f.path) not in self.excluded_files]
        strategy, order = order_files(files, keyed_rng(cfg.seed, epoch, repo), cfg.ordering, cfg.max_clusters)
        # its own draw: runs that differ only in file order train each repository on the same objective
        objective_rng = keyed_rng(cfg.seed, epoch, repo, "objective")
        repo_objective = draw(cfg.code_objectives, objective_rng) if cfg.objective_unit == "repo" else None
        if self.stats is not None:
            self.stats.repo(strategy)
        plan = []
        if cfg.repo_metadata and self.fmt.repo_name:
            plan.append(
                lambda: [TokenDoc(EMPTY, "ntp", True, parts=self.fmt.repo_start(repo), strategy=strategy)]
            )
        for i in order:
            plan.append(partial(self._file_doc, files[i], (epoch, repo), strategy, repo_objective))
        return plan

    def _file_doc(self, f: SourceFile, key: tuple, strategy: str, objective: str | None) -> list[TokenDoc]:
        key = (self.cfg.seed, *key, f.path)
        rng = keyed_rng(*key)
        drawn = objective or draw(self.cfg.code_objectives, rng)
        origin = {"file": f, "key": key, "drawn": drawn}
        context = drawn != "ntp" and self.fmt.repo_level and self.cfg.repo_context > 0
        if context and keyed_rng(*key, "context").random() < self.cfg.repo_context:
            parts = self.fmt.context_file(f.path, f.text)  # for the next file, as an editor's snippets are
            return [
                TokenDoc(
                    EMPTY, "ntp", True, f.path, Sample("ntp", f.text), strategy, parts, **origin, context=True
                )
            ]
        sample = self._sample(f, drawn, rng)
        if self.cfg.fim_layouts == "both" and sample.suffix is not None:
            return [self._doc(f.path, replace(sample, spm=spm), strategy, **origin) for spm in (False, True)]
        return [self._doc(f.path, sample, strategy, **origin)]

    def _sample(
        self, f: SourceFile, objective: str, rng: random.Random, within: tuple[int, int] | None = None
    ) -> Sample:
        cfg = self.cfg
        tree = None
        if within is not None and objective == "sfim":  # pieces of one file share its tree
            if self._tree[0] is not f:
                self._tree = (f, f.tree())
            tree = self._tree[1]
        return make_sample(
            f,
            objective,
            rng,
            fim_spm=cfg.fim_spm_rate,
            sfim_spm=cfg.sfim_spm_rate,
            policy=cfg.sfim,
            fallback=cfg.sfim_fallback,
            within=within,
            tree=tree,
        )

    def _text_doc(self, text: str, key: tuple) -> list[TokenDoc]:
        rng = keyed_rng(self.cfg.seed, *key)
        if draw(self.cfg.text_objectives, rng) == "fim":
            pre, mid, suf = fim_split(text, rng)
            return [self._doc(None, Sample("fim", pre, mid, suf, rng.random() < self.cfg.fim_spm_rate), None)]
        return [self._doc(None, Sample("ntp", text), None)]

    def _doc(self, path: str | None, s: Sample, strategy: str | None, **origin) -> TokenDoc:
        parts = self.fmt.document(path=path, prefix=s.prefix, middle=s.middle, suffix=s.suffix, spm=s.spm)
        return TokenDoc(EMPTY, s.objective, s.suffix is None, path, s, strategy, parts, **origin)

    # --- tokens ----------------------------------------------------------------------------------
    def encode(self, docs: list[TokenDoc]) -> list[list[TokenDoc]]:
        """Tokenize every text part of a batch of documents at once (specials go in by id); each
        document comes back as a group: itself, plus what a long FIM document spilled."""
        texts = [p.text for d in docs for p in d.parts if p.role != "special"]
        encoded = iter(self.tok.encode_batch(texts))
        out = []
        for d in docs:
            pieces = [([self.ids[p.text]] if p.role == "special" else next(encoded), p.role) for p in d.parts]
            context = self.cfg.fim_level == "context" and d.file is not None  # cut when packed
            if not d.splittable and not context and sum(len(ids) for ids, _ in pieces) > self.window_len:
                out.append(self._fit(d, pieces))
                continue
            self._set_ids(d, pieces)
            out.append([d])
        return out

    def _fit(self, d: TokenDoc, pieces: Pieces) -> list[TokenDoc]:
        """A FIM document longer than a window is cut as prompts are (`formats.fit`); the cut prefix
        head and suffix tail are not lost but spilled as NTP before and after it."""
        if sum(len(ids) for ids, role in pieces if role not in ("prefix", "suffix")) > self.window_len:
            s = d.sample  # the middle alone does not fit: train on the file as NTP
            self.count("middle_longer_than_window")
            ntp = Sample("ntp", s.prefix + s.middle + s.suffix, fallback="middle_longer_than_window")
            return self.encode([self._doc(d.path, ntp, d.strategy)])[0]
        kept, head, tail = self._whole_chars(*fit(pieces, self.window_len))
        self._set_ids(d, kept)
        start = d.ids[: d.opening].tolist()
        end = [self.ids[self.fmt.eos]] if self.fmt.eos_per_file else []
        self.count("fim_context_spilled")

        def spill(ids: list[int]) -> TokenDoc:
            return TokenDoc(np.asarray(ids, dtype=np.int32), "ntp", True, d.path, strategy=d.strategy)

        return ([spill(start + head)] if head else []) + [d] + ([spill(start + tail + end)] if tail else [])

    def _whole_chars(
        self, kept: Pieces, head: list[int], tail: list[int]
    ) -> tuple[Pieces, list[int], list[int]]:
        """`fit` cuts at tokens, and byte-level BPE can split a character between two: the spilled
        head must not end in half a character nor the kept prefix start with the rest (they become
        two documents), and the same for the suffix and its tail. The kept side gives up the token or
        three that hold the split character (a UTF-8 character has at most 4 bytes)."""
        out = []
        for ids, role in kept:
            if role == "prefix" and head:
                whole = head + ids
                cut = self.char_cut(whole, len(head), +1)
                head, ids = whole[:cut], whole[cut:]
            elif role == "suffix" and tail:
                whole = ids + tail
                cut = self.char_cut(whole, len(ids), -1)
                ids, tail = whole[:cut], whole[cut:]
            out.append((ids, role))
        return out, head, tail

    def char_cut(self, ids, cut: int, step: int) -> int:
        """`cut` moved by `step` until ids[cut:] starts on a whole character (at most 3 tokens: a
        UTF-8 character has at most 4 bytes)."""
        for _ in range(3):
            if not 0 < cut < len(ids) or not self.tok.decode(list(ids[cut : cut + 4])).startswith("\ufffd"):
                break
            cut += step
        return cut

    def _set_ids(self, d: TokenDoc, pieces: Pieces) -> None:
        d.ids = np.fromiter((t for ids, _ in pieces for t in ids), dtype=np.int32)
        d.frame = sum(len(ids) for ids, role in pieces if role not in ("prefix", "middle", "suffix", "body"))
        if not d.splittable:  # where the file's opening ends and where its prefix lies
            starts = np.cumsum([0] + [len(ids) for ids, _ in pieces])
            roles = [role for _, role in pieces]
            d.opening = int(
                starts[
                    next(
                        i
                        for i, (ids, r) in enumerate(pieces)
                        if r == "special" and ids == [self.ids[self.fmt.prefix]]
                    )
                ]
            )
            if "prefix" in roles:
                i = roles.index("prefix")
                d.prefix_at, d.prefix_len = int(starts[i]), len(pieces[i][0])

    # --- context level: a file in pieces ------------------------------------------------------------
    def rest(self, d: TokenDoc, char: int, ntp: bool) -> TokenDoc:
        """File `d`'s text from `char` on with the file's objective, or (`ntp`) its next line alone as
        NTP (a line longer than a window), built once."""
        if self._rest_doc[0] == (id(d), char, ntp):
            return self._rest_doc[1]
        f = d.file
        if ntp:
            ends, _ = self._line_tokens(f)
            sample = Sample("ntp", f.text[char : int(ends[np.searchsorted(ends, char, "right")])])
        else:
            sample = self._sample(f, d.drawn, keyed_rng(*d.key, char), within=(char, len(f.text)))
        doc = self.encode([self._doc(d.path, sample, d.strategy, file=f, key=d.key, drawn=d.drawn)])[0][0]
        self._rest_doc = ((id(d), char, ntp), doc)
        return doc

    def _line_tokens(self, f: SourceFile) -> tuple[np.ndarray, np.ndarray]:
        """Where each line of `f` ends and the tokens up to it (lines tokenized alone), once per file."""
        if self._lines[0] is not f:
            lines = lines_of(f.text)
            ends = np.cumsum([len(line) for line in lines])
            self._lines = (f, ends, np.cumsum([len(ids) for ids in self.tok.encode_batch(lines)]))
        return self._lines[1], self._lines[2]

    def tokens_from(self, f: SourceFile, char: int) -> int:
        """About how many tokens `f` holds from `char` on (its lines tokenized alone)."""
        ends, tokens = self._line_tokens(f)
        first = int(np.searchsorted(ends, char, "right"))
        return int(tokens[-1] - (tokens[first - 1] if first else 0))

    def cut(self, d: TokenDoc, room: int, char: int) -> tuple[TokenDoc, int] | None:
        """The longest head of `d`'s text ending at a line end whose document (the objective applied to
        it alone, SFIM choosing its node inside it) fits in `room` tokens, and its length in characters."""
        budget = room - d.frame - 4  # each cut may re-tokenize a token or two differently
        if budget < 16:
            return None
        ends, tokens = self._line_tokens(d.file)
        first = int(np.searchsorted(ends, char, "right"))  # pieces start at line ends
        before = tokens[first - 1] if first else 0
        fits = int(np.searchsorted(tokens[first:] - before, budget, "right"))
        while fits > 0:
            used = int(ends[first + fits - 1]) - char
            sample = self._sample(
                d.file, d.drawn, keyed_rng(*d.key, char, "piece"), within=(char, char + used)
            )
            piece = self.encode([self._doc(d.path, sample, d.strategy, file=d.file)])[0][0]  # never _fit
            if len(piece.ids) <= room:
                return piece, used
            fits -= max(1, fits // 8)
        return None

    def count(self, event: str) -> None:
        if self.stats is not None:
            self.stats.count(event)
