"""Published benchmark data: which file comes from where, under which license, with which checksum.

One registry entry per data file. Data whose license allows redistribution ships inside the package
(`codemill/eval/data/`, with its license and attribution; the JSON Lines gzipped here, the checksum
being that of the file as shipped); the rest is downloaded on first use from its published location
at a pinned commit into `$CODEMILL_CACHE/benchmarks` (default ~/.cache/codemill) and checked against
a pinned SHA-256. data/README.md lists the files and why each ships or not.

A file is looked up as `rel` (its path in the layout mbpp/, multipl-e/, ...), in this order:
1. `$CODEMILL_BENCHMARKS/<rel>` (or `<rel>.gz`) when the variable is set: an override, used as is;
2. the package's copy;
3. the cache, when its SHA-256 is the pinned one;
4. a download from the published URL (or `$CODEMILL_BENCHMARKS_URL/<rel>`, a mirror of this layout),
   into a temporary file that is checked and then renamed into the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from codemill.cache import cache_dir
from codemill.errors import UserError

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
TIMEOUT_S = 60


@dataclass(frozen=True)
class BenchFile:
    rel: str  # its path in the benchmarks layout (as under $CODEMILL_BENCHMARKS)
    license: str
    source: str  # repository @ commit : path of the published bytes
    sha256: str  # of the file as shipped or downloaded
    size: int  # bytes, as shipped or downloaded
    url: str | None = None  # where it is downloaded from; None: it ships in the package
    shipped: str | None = None  # its name in the package when gzipped here (rel + ".gz")
    upstream_sha256: str | None = None  # of the published bytes, when it ships gzipped

    @property
    def bundled(self) -> bool:
        return self.url is None


DEEPSEEK = "deepseek-ai/DeepSeek-Coder @a4ba628dfdc2e56f1fd6cdd86df103ce4d3df73e"
INFILLING = "openai/human-eval-infilling @88062ff9859c875d04db115b698ed4b0f0395170"
SAFIM = "gonglinyuan/safim @c8df3d41804defbd13e70c51d8eee4a22491c8e2"
QWEN = "QwenLM/Qwen2.5-Coder @9027d612ed973e943942b009e02d805835d455be"


def _raw(source: str, path: str) -> str:
    repo, commit = source.split(" @")
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def _infilling(name: str, sha256: str, size: int) -> BenchFile:
    return BenchFile(f"human-eval-infilling/{name}", "MIT", f"{INFILLING} : data/{name}", sha256, size)


def _safim(kind: str, sha256: str, size: int) -> BenchFile:
    name = f"{kind}_completion.jsonl.gz"
    return BenchFile(f"safim/{name}", "MIT", f"{SAFIM} : data/{name}", sha256, size)


MULTIPLE = {  # language: (sha256 as shipped, size as shipped, sha256 of the published file)
    "cpp": (
        "98589714131a5542d8988d756e4dd7bf442889229af5f4a56919621778db8fa7",
        42688,
        "8717eabdf202137158c84506144b0fb1e73d5ecccbe5363ec79009ca014df629",
    ),
    "java": (
        "621a13774326b9688565a3a49da27c840ed33428d8c23ff33cfdefe629f5b7a7",
        42965,
        "b21b015763452ec4f9f4e0e6425148ec331ace4da1232c8b4d441186185f6265",
    ),
    "js": (
        "801c2bbaec2ace94d8b9af546373d7d1f95475f4dcde345e186875888c31516e",
        38588,
        "634e2eee8d6e22de07c121b972207683dd96be76256bf44bdfc1a3386b739287",
    ),
}

FILES: dict[str, BenchFile] = {
    f.rel: f
    for f in (
        # MBPP, CC-BY-4.0: ships (attribution in data/mbpp/NOTICE), gzipped
        BenchFile(
            "mbpp/mbpp.jsonl",
            "CC-BY-4.0",
            f"google-research/google-research : mbpp/mbpp.jsonl (byte-identical to {DEEPSEEK} : "
            "Evaluation/MBPP/data/mbpp.jsonl)",
            "2809de2a637dffecb4bd58128bcfe1250d0a335779b019956b7f3c28f646e4a6",
            130053,
            shipped="mbpp/mbpp.jsonl.gz",
            upstream_sha256="ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",
        ),
        BenchFile(
            "mbpp/sanitized-mbpp.json",
            "CC-BY-4.0",
            "google-research/google-research : mbpp/sanitized-mbpp.json",
            "3501e8556289886806e0447255b9d781f9b456fe52d0f6c77968831c8ff51eb4",
            57693,
            shipped="mbpp/sanitized-mbpp.json.gz",
            upstream_sha256="7fec016546acaee11dbe14f9f0bb670e59f41919f7b522a59fba34871da78551",
        ),
        # MultiPL-E's HumanEval in C++, Java, JavaScript, MIT (the copied repository and the
        # dataset card; data/multipl-e/NOTICE): ships, gzipped
        *(
            BenchFile(
                f"multipl-e/humaneval-{lang}.jsonl",
                "MIT",
                f"{DEEPSEEK} : Evaluation/HumanEval/data/humaneval-{lang}.jsonl (= HF nuprl/MultiPL-E "
                f"humaneval-{lang})",
                sha256,
                size,
                shipped=f"multipl-e/humaneval-{lang}.jsonl.gz",
                upstream_sha256=upstream,
            )
            for lang, (sha256, size, upstream) in MULTIPLE.items()
        ),
        # HumanEval-infilling, MIT: ships as published (already gzipped), LICENSE beside
        _infilling(
            "HumanEval-SingleLineInfilling.jsonl.gz",
            "1277073e7ddce163ef68598c2bca777f688a53df99422f097e37362090f88e1f",
            75058,
        ),
        _infilling(
            "HumanEval-MultiLineInfilling.jsonl.gz",
            "2f341612eee1d35da1357a4f365e0c0b3ba6e2b62eb491e88aaefa4855af0349",
            170082,
        ),
        _infilling(
            "HumanEval-RandomSpanInfilling.jsonl.gz",
            "b4f330d8a8ff97bf85d9def497dffcae4d741e506449386a877236e422e33e8d",
            89591,
        ),
        _infilling(  # one span per problem, drawn apart from random-span's (read_problems misnames it)
            "HumanEval-RandomSpanInfillingLight.jsonl.gz",
            "1432250ecac0cb56e6f97f8faf0970419ef892a98fda7e1f5aa4c4b87209b760",
            45730,
        ),
        # SAFIM, MIT: ships as published (already gzipped), LICENSE beside, so it evaluates offline (the
        # files left the repository after this commit; its current release is on a dataset hub)
        _safim("api", "90ec4750379f3bbe91310624dbee16bd299e148bf32036c9c4d7fe0c74688f33", 45229),
        _safim("block", "a6ee546933f3c74a1fa95f544206e9b6467434ab2044ee58e365421a9ced22d4", 3404355),
        _safim("control", "63eb4c0382e1f20bbb21efbd30997390ca0c8c9a9adee9018caccdb3224bb68a", 3375538),
        # SantaCoder-FIM (HF bigcode/santacoder-fim-task): no license stated with the data, so it is
        # not redistributed: downloaded on first use from the copy Qwen2.5-Coder publishes
        BenchFile(
            "santacoder-fim/santacoder-fim-task.train.parquet",
            "unstated (see origin)",
            f"{QWEN} : qwencoder-eval/base/benchmarks/fim-bench/hm_fim/data/train.parquet "
            "(= HF bigcode/santacoder-fim-task)",
            "54d62b5a4f1554ca3f7ab65f901fe1fecdb3eaebac28ebd52a90397c9239c6d9",
            1918113,
            url=_raw(QWEN, "qwencoder-eval/base/benchmarks/fim-bench/hm_fim/data/train.parquet"),
        ),
    )
}


def cache_root() -> Path:
    """Where downloaded benchmark files are kept: $CODEMILL_CACHE/benchmarks (~/.cache/codemill)."""
    return cache_dir("benchmarks")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def find(rel: str, files: dict[str, BenchFile] | None = None) -> Path | None:
    """The local path of benchmark file `rel` without downloading: the override, the package's copy or
    a cached download whose checksum holds; None when it has to be downloaded."""
    files = FILES if files is None else files
    override = os.environ.get("CODEMILL_BENCHMARKS")
    if override:
        for p in (Path(override) / rel, Path(override) / (rel + ".gz")):
            if p.is_file():
                return p
        raise UserError(
            f"CODEMILL_BENCHMARKS={override} has no {rel}: place the file there, or unset the variable "
            "to use the copy codemill ships or downloads"
        )
    if rel not in files:
        raise UserError(f"{rel} is not a benchmark file codemill knows ({', '.join(sorted(files))})")
    entry = files[rel]
    if entry.bundled:
        p = PACKAGE_DATA / (entry.shipped or entry.rel)
        if not p.is_file():
            raise UserError(f"{p} is missing from this installation of codemill: reinstall it")
        return p
    dest = cache_root() / entry.rel
    if dest.is_file() and sha256_of(dest) == entry.sha256:
        return dest
    return None


def locate(rel: str, files: dict[str, BenchFile] | None = None) -> Path:
    """The local path of benchmark file `rel` (the module's lookup order), downloading it into the
    cache when it is neither overridden nor shipped nor cached."""
    files = FILES if files is None else files
    found = find(rel, files)
    return found if found is not None else fetch(files[rel], cache_root() / rel)


def url_of(entry: BenchFile) -> str:
    """The entry's published URL, or its place under $CODEMILL_BENCHMARKS_URL (a mirror)."""
    mirror = os.environ.get("CODEMILL_BENCHMARKS_URL")
    if mirror:
        return mirror.rstrip("/") + "/" + entry.rel
    assert entry.url is not None, entry.rel
    return entry.url


def fetch(entry: BenchFile, dest: Path) -> Path:
    """Download `entry` to `dest`: into a temporary file beside it, checked against the pinned SHA-256,
    then renamed into place. A wrong checksum keeps nothing; no network says what to place where."""
    url = url_of(entry)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise UserError(f"cannot write {entry.rel} into {dest.parent} ({e}): set CODEMILL_CACHE") from e
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        print(f"downloading {entry.rel} ({entry.size / 1e6:.1f} MB) from {url}", file=sys.stderr)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
                while chunk := resp.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
            published = f" (published at {entry.url})" if url != entry.url else ""
            raise UserError(
                f"could not download {entry.rel} ({reason}). Download {url}{published} and place it at "
                f"{dest} (SHA-256 {entry.sha256}), or pass the file with --data"
            ) from e
        got = h.hexdigest()
        if got != entry.sha256:
            raise UserError(
                f"{url}: SHA-256 {got}, expected {entry.sha256} ({entry.source}); the download was "
                f"not kept. Place the right file at {dest}, or pass a file with --data"
            )
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def read_text(path: str | Path) -> str:
    """A benchmark file's text, gunzipped when its name ends in .gz."""
    p = Path(path)
    if p.suffix == ".gz":
        with gzip.open(p, "rt", encoding="utf-8") as f:
            return f.read()
    return p.read_text(encoding="utf-8")
