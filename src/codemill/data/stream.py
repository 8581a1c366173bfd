"""The training stream: ordering → objective → tokenize → pack, deterministic and resumable.

Units are repositories (and chunks of natural-language text), in a new random order each epoch.
Shard s of S takes every S-th unit of that order from the s-th, so ranks and loader workers never
overlap and together cover everything. Every random choice comes
from a generator keyed by (seed, epoch, repository, file), so the stream does not depend on the
shard count, and the state (unit cursors, the position in the current unit) is enough to rebuild it
exactly: the current unit's documents are recomputed, not stored.

Packing: documents go into windows of seq_len + 1 tokens in Algorithm 1 order. NTP documents
continue across windows (aiXcoder's "Transformer-XL style"); a FIM document is never cut: when it
does not fit in what is left of a window, the head of its prefix fills that space as NTP and the
document opens the next window (padding, objective 0, fills any rest); a document longer than a window
is cut as prompts are (`formats.fit`) and what was cut is spilled as NTP around it. Windows may hold
the end of one repository and the start of the next.
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
from codemill.data.objectives import Objective, Sample, fim_split, make_sample
from codemill.data.ordering import draw, order_files
from codemill.data.repo import CodeCorpus, SourceFile, TextCorpus, lines_of
from codemill.data.stats import StreamStats
from codemill.errors import UserError
from codemill.formats import Format, Pieces, fit, get_format

EMPTY = np.zeros(0, dtype=np.int32)


def keyed_rng(*key: object) -> random.Random:
    return random.Random(xxhash.xxh64_intdigest("\x00".join(map(str, key))))


class TrainingStream:
    """An iterator of windows: {"tokens": int32[seq_len+1], "objective": uint8[seq_len+1]}."""

    def __init__(
        self,
        corpus: str | CodeCorpus,
        tokenizer,
        cfg: DataConfig,
        *,
        rank: int = 0,
        world: int = 1,
        worker: int = 0,
        workers: int = 1,
        stats: StreamStats | None = None,
        epochs: int | None = None,
    ):
        """`epochs`: stop after this many passes over the code (None: never stop)."""
        self.cfg, self.tok, self.stats, self.epochs = cfg, tokenizer, stats, epochs
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
        shard, shards = rank * workers + worker, world * workers
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} out of range for world {world} x workers {workers}")
        self.shard, self.shards = shard, shards
        self.excluded: set[int] = set()
        if cfg.exclude_repos:  # held-out repositories never enter the stream
            names = set(Path(cfg.exclude_repos).read_text().split())
            self.excluded = {u for u, r in enumerate(self.sources["code"].repos) if r in names}
        self.excluded_files: set[tuple[str, str]] = set()
        if cfg.exclude_files:  # held-out files of repositories that are otherwise trained on
            lines = Path(cfg.exclude_files).read_text().splitlines()
            self.excluded_files = {tuple(line.split("\t", 1)) for line in lines if "\t" in line}
        self._units: dict[str, tuple[int, list[int]]] = {}  # per source: its current epoch's units
        for name, src in self.sources.items():
            if len(src) < shards:
                raise UserError(
                    f"the {name} source has {len(src)} units, fewer than the {shards} shards "
                    "(ranks x loader workers); use fewer loader workers or a larger corpus"
                )
        self.state: dict[str, Any] = {
            "pos": dict.fromkeys(self.sources, 0),
            "epoch": dict.fromkeys(self.sources, 0),
            "emitted": dict.fromkeys(self.sources, 0),
            "current": None,  # {"source", "unit", "epoch", "doc", "part", "offset"}
        }
        self._plan: list[Callable[[], TokenDoc]] | None = None
        self._batch: tuple[int, list[TokenDoc]] = (0, [])
        self._rest_doc: tuple[tuple, TokenDoc | None] = ((), None)
        self._lines: tuple[SourceFile | None, np.ndarray, np.ndarray] = (None, EMPTY, EMPTY)
        self._tree: tuple[SourceFile | None, Any] = (None, None)
        self.batch_docs = 64

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            **{k: dict(s[k]) for k in ("pos", "epoch", "emitted")},
            "current": dict(s["current"]) if s["current"] else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["pos"]) != set(self.sources):
            raise UserError(
                f"state is for sources {sorted(state['pos'])}, this stream has {sorted(self.sources)}"
            )
        self.state = {
            **{k: dict(state[k]) for k in ("pos", "epoch", "emitted")},
            "current": dict(state["current"]) if state["current"] else None,
        }
        self._plan = None

    # --- documents -----------------------------------------------------------------------------
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
            self._count("middle_longer_than_window")
            ntp = Sample("ntp", s.prefix + s.middle + s.suffix, fallback="middle_longer_than_window")
            return self.encode([self._doc(d.path, ntp, d.strategy)])[0]
        kept, head, tail = self._whole_chars(*fit(pieces, self.window_len))
        self._set_ids(d, kept)
        start = d.ids[: d.opening].tolist()
        end = [self.ids[self.fmt.eos]] if self.fmt.eos_per_file else []
        self._count("fim_context_spilled")

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
                cut = self._char_cut(whole, len(head), +1)
                head, ids = whole[:cut], whole[cut:]
            elif role == "suffix" and tail:
                whole = ids + tail
                cut = self._char_cut(whole, len(ids), -1)
                ids, tail = whole[:cut], whole[cut:]
            out.append((ids, role))
        return out, head, tail

    def _char_cut(self, ids, cut: int, step: int) -> int:
        """`cut` moved by `step` until ids[cut:] starts on a whole character (at most 3 tokens: a
        UTF-8 character has at most 4 bytes)."""
        for _ in range(3):
            if not 0 < cut < len(ids) or not self.tok.decode(list(ids[cut : cut + 4])).startswith("\ufffd"):
                break
            cut += step
        return cut

    # --- context-level objectives ---------------------------------------------------------------
    def _rest(self, d: TokenDoc, char: int, ntp: bool) -> TokenDoc:
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

    def _tokens_from(self, f: SourceFile, char: int) -> int:
        ends, tokens = self._line_tokens(f)
        first = int(np.searchsorted(ends, char, "right"))
        return int(tokens[-1] - (tokens[first - 1] if first else 0))

    def _cut(self, d: TokenDoc, room: int, char: int) -> tuple[TokenDoc, int] | None:
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

    def _stat(self, d: TokenDoc, continued: bool) -> None:
        """Documents are counted as they are packed, each piece of a file cut at context level too."""
        if self.stats is not None:
            self.stats.doc(d, continued)

    def _count(self, event: str) -> None:
        if self.stats is not None:
            self.stats.count(event)

    # --- packing -------------------------------------------------------------------------------
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

    def _next_unit(self) -> bool:
        """Move to the next unit of the source furthest behind its share; False when all is done."""
        s = self.state
        live = [k for k in self.weights if not self._exhausted(k)]
        if "code" not in live:
            return False
        source = min(live, key=lambda k: (s["emitted"][k] / self.weights[k], k))
        if s["pos"][source] == len(self.units(source, s["epoch"][source])):  # the epoch's last unit is done
            s["pos"][source], s["epoch"][source] = 0, s["epoch"][source] + 1
        unit, epoch = self.units(source, s["epoch"][source])[s["pos"][source]], s["epoch"][source]
        s["pos"][source] += 1
        s["current"] = {"source": source, "unit": unit, "epoch": epoch, "doc": 0, "part": 0, "offset": 0,
                        "char": 0, "ntp": False}  # fmt: skip
        self._plan = None
        return True

    def _exhausted(self, source: str) -> bool:
        s = self.state
        last = s["pos"][source] == len(self.units(source, s["epoch"][source])) and s["epoch"][source] + 1 >= (
            self.epochs or 0
        )
        return self.epochs is not None and last

    def _group(self, k: int) -> list[TokenDoc]:
        """The documents of plan entry k, building and tokenizing the next batch when needed."""
        start, groups = self._batch
        if not start <= k < start + len(groups):
            made = [make() for make in self._plan[k : k + self.batch_docs]]
            flat = iter(self.encode([d for docs in made for d in docs]))
            groups = [[d for _ in docs for d in next(flat)] for docs in made]
            self._batch = (k, groups)
            start = k
        return groups[k - start]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        s, w = self.state, self.window_len
        window: list[int] = []  # windows are filled within one call, so the state never holds one
        objective: list[int] = []
        while True:
            if s["current"] is None and not self._next_unit():
                if not window:
                    raise StopIteration
                room = w - len(window)  # the last window, padded
                return self._emit(window + [self.pad_id] * room, objective + [0] * room)
            cur = s["current"]
            if self._plan is None:
                self._plan = self.plan(cur["source"], cur["unit"], cur["epoch"])
                self._batch = (0, [])
            if cur["doc"] == len(self._plan):
                s["current"] = None
                continue
            group = self._group(cur["doc"])
            doc, room = group[cur["part"]], w - len(window)
            char = cur.get("char", 0)  # context level: where the rest of a file cut in pieces starts
            continued = bool(char or cur.get("ntp"))
            if cur.get("ntp"):
                doc = self._rest(doc, char, True)
            elif char and self._tokens_from(doc.file, char) + doc.frame + 4 <= room:
                doc, char = self._rest(doc, char, False), 0  # the rest may fit whole: build it
            code = Objective.of(doc.objective)
            done, pad = False, 0
            if doc.splittable:
                if cur["offset"] == 0:
                    self._stat(doc, continued)
                take = doc.ids[cur["offset"] : cur["offset"] + room]
                cur["offset"] += len(take)
                done = cur["offset"] == len(doc.ids)
                if done and cur.get("ntp"):  # the long line is packed: the file goes on in pieces
                    cur["char"], cur["ntp"], cur["offset"] = char + len(doc.sample.prefix), False, 0
                    done = cur["char"] == len(doc.file.text)
            elif not char and len(ids := doc.without_head(cur["offset"])) <= room:
                take, done = ids, True
                self._stat(doc, continued)
            elif self.cfg.fim_level == "context" and doc.file is not None:
                # the objective applies to the piece of the file that fits what is left of the window
                got = self._cut(doc, room, cur.get("char", 0))
                if got is not None:
                    piece, used = got
                    take, code = piece.ids, Objective.of(piece.objective)
                    cur["char"] = cur.get("char", 0) + used
                    done = cur["char"] == len(doc.file.text)
                    self._stat(piece, continued)
                    self._count("context_piece")
                elif room == w:  # not one line fits a whole window: the rest of the file is NTP
                    cur["ntp"], take = True, doc.ids[:0]
                    self._count("line_longer_than_window")
                else:  # too little room for a piece: padding, the file opens the next window
                    take, pad = doc.ids[:0], room
            else:  # a FIM document is never cut: it opens the next window
                # what is left here takes the head of its prefix as NTP, as long as the document keeps
                # a quarter of its prefix (at least 64 tokens); padding fills the rest
                keep = min(doc.prefix_len, max(64, doc.prefix_len // 4))
                n = max(0, min(room - doc.opening, doc.prefix_len - cur["offset"] - keep))
                n = self._char_cut(doc.ids[doc.prefix_at + cur["offset"] :], n, -1)
                take = doc.head(cur["offset"], n) if n else doc.ids[:0]
                cur["offset"] += n
                code, pad = Objective.NTP, room - len(take)
            if done:
                cur["part"], cur["offset"], cur["char"], cur["ntp"] = cur["part"] + 1, 0, 0, False
                if cur["part"] == len(group):
                    cur["doc"], cur["part"] = cur["doc"] + 1, 0
            window += take.tolist() + [self.pad_id] * pad
            objective += [code] * len(take) + [0] * pad
            s["emitted"][cur["source"]] += len(take)
            if len(window) == w:
                return self._emit(window, objective)

    def _emit(self, window: list[int], objective: list[int]) -> dict[str, np.ndarray]:
        out = {
            "tokens": np.asarray(window, dtype=np.int32),
            "objective": np.asarray(objective, dtype=np.uint8),
        }
        if self.stats is not None:
            self.stats.window(out["objective"])
        return out
