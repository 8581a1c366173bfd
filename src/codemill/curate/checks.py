"""The curation checks, in the flow's order, and the one loop that runs them.

A check is a small object: the stage it accounts to, and a verdict per file (None keeps it, a
`Drop` says why not). Checks may rewrite a file (file rules decode its bytes, PII redacts it); the
loop records files and bytes in and out of every stage and a drop row per dropped file, so no check
touches the ledger. Adding a check is one class here and one line in SCAN or REFINE.

Scan checks run where repositories are read; the dedup checks apply the decisions the global dedup
stages took; refine checks run on what survives. The stage order is these two tuples.

The QUALITY checks (syntax, static analysis) are refine stages, but their verdicts are taken at scan
(`precheck`): dedup keeps, of each cluster, a copy that will pass them, and refine applies the
verdicts at their own stage without analysing the file again. Taken in refine instead, a cluster
whose kept copy then failed lost every copy (36 clusters of `installed`, rich/console.py among them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from codemill.curate import filters, licenses
from codemill.curate.config import CurateConfig
from codemill.curate.pii import SensitiveWords, redact
from codemill.curate.records import RawFile
from codemill.curate.sources import read_bytes
from codemill.curate.static import SYNTAX_RULE, Defect, analyzers
from codemill.curate.syntax import check_syntax
from codemill.langs import detect


@dataclass
class CheckedFile:
    """One file on its way through the checks."""

    repo: str
    path: str
    size: int
    license: str | None = None
    permissive: bool = False
    raw: RawFile | None = None  # scan: where to read it
    data: bytes = b""  # scan: its bytes once read
    read_error: str | None = None  # scan: None before the read, "" when it succeeded
    lang: str = ""
    text: str = ""
    sha256: str = ""  # of the bytes as read
    removed: tuple[str, str, str] | None = None  # refine: (stage, reason, detail) from dedup
    defects: list[Defect] | None = None  # the static analyzer's, found by the syntax check
    verdicts: dict[str, Drop | None] | None = None  # QUALITY verdicts taken at scan, applied in refine
    benchmark: str | None = None  # refine: the benchmark task the scan found it overlaps
    pii: int = 0
    extra: dict = field(default_factory=dict)  # counters the ledger sums (PII tags)


@dataclass(frozen=True)
class Drop:
    reason: str
    detail: str = ""
    excerpt: str | None = None  # None: the file's text


class Check:
    stage: str

    def __init__(self, cfg: CurateConfig):
        self.cfg = cfg

    def check(self, doc: CheckedFile) -> Drop | None:
        raise NotImplementedError

    def check_batch(self, docs: list[CheckedFile]) -> list[Drop | None]:
        return [self.check(d) for d in docs]

    def verdicts(self, docs: list[CheckedFile]) -> list[Drop | None]:
        """check_batch on the files whose verdict for this stage was not taken ahead (precheck)."""
        known = [d.verdicts.get(self.stage, _TODO) if d.verdicts else _TODO for d in docs]
        todo = [d for d, k in zip(docs, known, strict=True) if k is _TODO]
        fresh = iter(self.check_batch(todo) if todo else ())
        return [next(fresh) if k is _TODO else k for k in known]


_TODO = object()


# -- scan -------------------------------------------------------------------------------------


class Read(Check):
    stage = "read"

    def check(self, doc: CheckedFile) -> Drop | None:
        return Drop(doc.raw.error, excerpt="") if doc.raw.error else None


class Language(Check):
    stage = "language"

    def check(self, doc: CheckedFile) -> Drop | None:
        lang = detect(doc.path)
        if lang is None:
            return Drop("unknown_language", excerpt="")
        if lang.kind not in self.cfg.keep_kinds:
            return Drop(f"not_code:{lang.kind}", lang.name, excerpt="")
        doc.lang = lang.name
        return None


class License(Check):
    """A file that names its own license in its head (an SPDX line or a notice) is judged by it;
    any other by its repository's license as it reads for code (`licenses.code_license`). The
    file's bytes are read here once for this and the file rules."""

    stage = "license"

    def check(self, doc: CheckedFile) -> Drop | None:
        own = self._own(doc)
        if own is not None:
            expression, how = own
            doc.license = expression
            if licenses.is_permissive(expression, self.cfg):
                return None
            return Drop("not_permissive", f"{expression} (file {how})", excerpt="")
        if doc.permissive:
            return None
        if doc.license:
            return Drop("not_permissive", doc.license, excerpt="")
        return Drop("unknown_license", excerpt="") if self.cfg.drop_unknown_license else None

    def _own(self, doc: CheckedFile) -> tuple[str, str] | None:
        if doc.size > self.cfg.max_bytes:  # the file rules drop it unread
            return None
        data, err = read_once(doc, self.cfg.max_bytes)
        return None if err else licenses.file_license(data, self.cfg)


def read_once(doc: CheckedFile, limit: int) -> tuple[bytes, str | None]:
    """The file's bytes (at most limit + 1) or why they cannot be read, read on first use."""
    if doc.read_error is None and not doc.data:
        data, err = read_bytes(doc.raw, limit)
        doc.data, doc.read_error = data or b"", err or ""
    return doc.data, doc.read_error or None


class FileRules(Check):
    stage = "file_rules"

    def check(self, doc: CheckedFile) -> Drop | None:
        if doc.size > self.cfg.max_bytes:
            return Drop("too_large", f"{doc.size} bytes", excerpt="")
        data, err = read_once(doc, self.cfg.max_bytes)
        if err:
            return Drop(err, excerpt="")
        doc.size = len(data)
        text, reason, detail = filters.check_file(doc.path, doc.lang, data, self.cfg)
        if text is None:
            excerpt = "" if reason == "binary" else data[:2000].decode("utf-8", "replace")
            return Drop(reason, detail, excerpt=excerpt)
        doc.text = text
        doc.lang = detect(doc.path, text).name  # a `.h` header is C, C++ or Objective-C by its content
        return None


# -- refine: the dedup decisions, then the content checks -------------------------------------


class _DedupDecision(Check):
    def check(self, doc: CheckedFile) -> Drop | None:
        if doc.removed and doc.removed[0] == self.stage:
            return Drop(doc.removed[1], doc.removed[2])
        return None


class RepoScore(_DedupDecision):
    stage = "repo_score"


class ExactDedup(_DedupDecision):
    stage = "exact_dedup"


class NearDedup(_DedupDecision):
    stage = "near_dedup"


class Syntax(Check):
    """A file parses when its static analyzer's parser accepts it, else when tree-sitter's tree has no
    error. The analyzer run (ruff: one subprocess per batch) also finds the static-analysis defects,
    kept on the file for that stage, so a Python file is parsed once for both instead of once more by
    tree-sitter (which was a third of curate's CPU). Tree-sitter has the last word on what ruff
    rejects: it accepts Python 2, which ruff does not."""

    stage = "syntax"

    def __init__(self, cfg: CurateConfig):
        super().__init__(cfg)
        self.analyzers = analyzers(cfg.drop_severities if cfg.static_analysis else ())

    def check_batch(self, docs: list[CheckedFile]) -> list[Drop | None]:
        for analyzer in {id(a): a for a in self.analyzers.values()}.values():
            mine = [d for d in docs if d.lang in analyzer.langs]
            for d, defects in zip(mine, analyzer.analyze([(d.path, d.text) for d in mine]), strict=True):
                d.defects = defects
        return [self.check(d) for d in docs]

    def check(self, doc: CheckedFile) -> Drop | None:
        if doc.defects is not None and not any(x.rule == SYNTAX_RULE for x in doc.defects):
            return None
        reason = check_syntax(
            doc.lang, doc.path, doc.text, self.cfg.parse_timeout_s, self.cfg.syntax_max_error_share
        )
        return Drop(reason) if reason else None


class StaticAnalysis(Check):
    """Drops a file with a defect of a configured severity; the syntax check ran the analyzers."""

    stage = "static_analysis"

    def check(self, doc: CheckedFile) -> Drop | None:
        bad = [d for d in doc.defects or () if d.severity in self.cfg.drop_severities]
        if self.cfg.static_analysis and bad:
            return Drop(f"{bad[0].category}:{bad[0].rule}", f"line {bad[0].line}: {bad[0].message}")
        return None


class SensitiveWordsCheck(Check):
    stage = "sensitive_words"

    def __init__(self, cfg: CurateConfig):
        super().__init__(cfg)
        words = list(cfg.sensitive_words)
        if cfg.sensitive_words_file:
            words += [w.strip() for w in Path(cfg.sensitive_words_file).read_text().splitlines() if w.strip()]
        self.words = SensitiveWords(words)

    def check(self, doc: CheckedFile) -> Drop | None:
        word = self.words.find(doc.text)
        return Drop("sensitive_word", word) if word else None


class Pii(Check):
    """Never drops: replaces PII and secrets by tags and counts them."""

    stage = "pii"

    def check(self, doc: CheckedFile) -> Drop | None:
        if self.cfg.pii:
            red = redact(doc.text, doc.lang)
            if red.reverted:  # replacements that would have broken the file's parse: undone, counted
                doc.extra["pii:reverted"] = red.reverted
            if red.counts:
                doc.text = red.text
                doc.size = len(red.text.encode("utf-8"))
                doc.pii = sum(red.counts.values())
                doc.extra.update({f"pii:{k}": v for k, v in red.counts.items()})
        return None


class Decontamination(Check):
    """Applies the overlap the scan found on the tokens it hashes for MinHash (one tokenization per
    file; the text it saw is the file before PII tags replace anything)."""

    stage = "decontamination"

    def check(self, doc: CheckedFile) -> Drop | None:
        return Drop("benchmark_overlap", doc.benchmark) if doc.benchmark else None


SCAN: tuple[type[Check], ...] = (Read, Language, License, FileRules)
REFINE: tuple[type[Check], ...] = (
    RepoScore,
    ExactDedup,
    NearDedup,
    Syntax,
    StaticAnalysis,
    SensitiveWordsCheck,
    Pii,
    Decontamination,
)
STAGES: tuple[str, ...] = tuple(c.stage for c in SCAN + REFINE)
QUALITY: tuple[type[Check], ...] = (Syntax, StaticAnalysis)  # taken at scan, before dedup


def precheck(docs: list[CheckedFile], checks: list[Check]) -> None:
    """Take the QUALITY checks' verdicts now and keep them on the files (`CheckedFile.verdicts`), in stage
    order: a file that fails one is not analysed by the next, as in run_checks."""
    for d in docs:
        d.verdicts = {}
    for c in checks:
        for d, v in zip(docs, c.check_batch(docs), strict=True):
            d.verdicts[c.stage] = v
        docs = [d for d in docs if d.verdicts[c.stage] is None]


def quality_failure(doc: CheckedFile) -> tuple[str, str, str] | None:
    """(stage, reason, detail) of the QUALITY check the file fails, or None when it passes."""
    for stage, v in (doc.verdicts or {}).items():
        if v is not None:
            return stage, v.reason, v.detail
    return None


def verdicts_from(failure: tuple[str, str, str] | None) -> dict[str, Drop | None]:
    """CheckedFile.verdicts back from quality_failure's value (as the scan table stores it)."""
    out: dict[str, Drop | None] = {}
    for c in QUALITY:
        if failure and failure[0] == c.stage:
            out[c.stage] = Drop(failure[1], failure[2])
            break
        out[c.stage] = None
    return out


def run_checks(docs: list[CheckedFile], checks: list[Check], ledger) -> list[CheckedFile]:
    """The files that pass every check, in order; the ledger gets every stage's counts and drops."""
    for c in checks:
        sizes = [d.size for d in docs]
        verdicts = c.verdicts(docs)
        kept = []
        for d, size_in, v in zip(docs, sizes, verdicts, strict=True):
            if d.extra:
                ledger.extra.update(d.extra)
                d.extra = {}
            if v is None:
                ledger.keep(c.stage, size_in, d.size)
                kept.append(d)
            else:
                excerpt = d.text if v.excerpt is None else v.excerpt
                ledger.drop(c.stage, v.reason, size_in, d.repo, d.path, v.detail, excerpt)
        docs = kept
    return docs
