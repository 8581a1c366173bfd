"""The Python half of benchmarks/gpu_check.sh (read that script's header first).

    python benchmarks/gpu_check.py prepare [--toy] [--out runs/gpu_check]   # here, with network
    python benchmarks/gpu_check.py env --json F                             # versions, matmul peak
    python benchmarks/gpu_check.py train --data D --run R --json F ...      # the timed training run
    python benchmarks/gpu_check.py checkpoint --preset P --tokenizer T --out C
    python benchmarks/gpu_check.py report --work W --out OUT                # gpu_check.json and .md

`prepare` builds what the device machine cannot (it has no network and none of the curation stack):
the embedded corpus (`codemill curate installed`, cut to whole repositories under a size cap), a
32,768-id tokenizer for the `small` preset and an 8,192-id one for `demo`, the held-out FIM and
cross-file benchmarks fim-loss scores, and the wheels of the Python packages the device image lacks
(for its Python 3.12). Everything goes into one folder, `runs/gpu_check` (ignored by git), which the
device call carries.

`train` is `codemill.train.loop.train` as `codemill train` runs it, with `train.max_minutes` as the
deadline (the step that ends past it is the last, and checkpoints and exports as at max_steps) and each
record's `data_s` (the wall time spent building windows on the CPU). fim-loss (eval/loss.py's
`fim_loss`, on the GPU) scores the run's initial weights before and the exported model after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("env", "gpu-tests", "bench-train", "train-small", "serve-demo", "serve-small")
# what the device image lacks for these steps (/work/.library/device/KINDS.md lists what it has):
# tree-sitter and grammars (the data stream's SFIM and import graph), xxhash 3 (the stream hashes str,
# which xxhash 4 rejects), and the HTTP server's stack (fastapi, pydantic, uvicorn)
WHEELS = (
    "tree-sitter", "tree-sitter-python", "tree-sitter-java", "tree-sitter-javascript", "tree-sitter-typescript",
    "tree-sitter-c", "tree-sitter-cpp", "tree-sitter-c-sharp", "tree-sitter-go", "tree-sitter-rust", "xxhash",
    "fastapi", "starlette", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "annotated-doc",
    "opentelemetry-api", "uvicorn", "typing-extensions",
)  # fmt: skip
PACKAGES = ("transformers", "tokenizers", "numpy", "pyarrow", "typer", "xxhash", "tree-sitter", "scikit-learn",
            "fastapi", "pydantic", "uvicorn", "httpx", "triton", "pytest")  # fmt: skip
TOY_FILE_BYTES = 20_000  # --toy: smaller files, 0.7 MB of text in all (3.1 MB with every size)
CARRY_LIMIT = 60 * 2**20  # the device call carries 64 MiB in all, the repository's own files included


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="corpus, tokenizers, benchmarks and wheels for the device call")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check")
    p.add_argument("--curated", type=Path, default=ROOT / "runs" / "gpu_check_curated",
                   help="where `codemill curate installed` writes the whole corpus (not carried)")  # fmt: skip
    p.add_argument("--cap-mb", type=float, default=30.0, help="Parquet MB of the corpus carried")
    p.add_argument("--toy", action="store_true", help="--cpu-smoke: standard-library packages, tiny sizes")
    p.add_argument("--no-wheels", action="store_true")
    p = sub.add_parser("env", help="versions, the device, its measured bf16 matmul rate and copy bandwidth")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--site", type=Path, default=None, help="where the carried wheels were installed")
    p = sub.add_parser("train", help="fim-loss before, a training run to a deadline, fim-loss after")
    p.add_argument("--data", type=Path, required=True, help="what `prepare` wrote")
    p.add_argument("--run", type=Path, required=True, help="run directory (emptied first)")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--preset", default="small")
    p.add_argument("--model", default="{}", help="overrides of the preset, YAML, e.g. '{num_layers: 2}'")
    p.add_argument("--seconds", type=float, default=240.0, help="the deadline, from the start of train()")
    p.add_argument("--max-steps", type=int, default=1000, help="the schedule's length (the deadline cuts it)")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--global-batch", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--files", type=int, default=100, help="held-out files fim-loss scores left to right")
    p.add_argument("--limit", type=int, default=None, help="FIM and cross-file tasks fim-loss scores")
    p = sub.add_parser("checkpoint", help="a preset's initial weights with a tokenizer, for bench_serve")
    p.add_argument("--preset", required=True)
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="{}")
    p = sub.add_parser("report", help="gpu_check.json and gpu_check.md from the steps' results")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mode", default="gpu")
    args = ap.parse_args()
    {"prepare": prepare, "env": env, "train": train, "checkpoint": checkpoint, "report": report}[args.cmd](
        args
    )


# -- prepare (here, on a CPU with network) ------------------------------------------------------------


def prepare(args) -> None:
    out: Path = args.out
    t0 = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if args.toy:
        source = _toy_source(out.parent / (out.name + "-source"))
        vocab, demo_vocab, tok_bytes, holdout, per_type, per_repo = 2048, 1024, 4 << 20, 0.3, 3, 2
    else:
        source = args.curated
        if not (source / "manifest.json").exists():
            print(f"curating the embedded corpus into {source} (`codemill curate installed`)", flush=True)
            _run([sys.executable, "-m", "codemill.cli", "curate", "installed", "--out", str(source),
                  "--set", f"tasks={max(4, 2 * (os.cpu_count() or 1))}", "--set", f"workers={os.cpu_count() or 1}"])  # fmt: skip
        vocab, demo_vocab, tok_bytes, holdout, per_type, per_repo = 32768, 8192, 60 << 20, 0.1, 20, 5
    info = {"source": str(source), **_cut(source, out / "corpus", args.cap_mb * 1e6)}
    from codemill.data.tokenizer import chunks, corpus_texts, save_tokenizer, train_bpe
    from codemill.eval.builders import build_crossfile, build_fim
    from codemill.formats import get_format

    fmt = get_format("codemill")
    for name, n in (("tokenizer", vocab), ("tokenizer-demo", demo_vocab)):
        t = time.perf_counter()
        tok = train_bpe(chunks(corpus_texts(out / "corpus", tok_bytes)), n, fmt, show_progress=False)
        save_tokenizer(tok, out / name, fmt)
        print(f"{name}: {n:,} ids in {time.perf_counter() - t:.0f} s", flush=True)
    fim = build_fim(out / "corpus", out / "bench" / "fim", holdout=holdout, per_type=per_type)
    cross = build_crossfile(out / "corpus", out / "bench" / "crossfile", holdout=holdout, per_repo=per_repo)
    if not sum(fim["tasks"].values()):
        raise SystemExit("no FIM task was built: no held-out repository in the corpus")
    info |= {"vocab": vocab, "demo_vocab": demo_vocab, "fim_tasks": sum(fim["tasks"].values()),
             "crossfile_tasks": sum(cross["tasks"].values()), "heldout_repos": fim["repos"]}  # fmt: skip
    if not args.no_wheels:
        info["wheels"] = _wheels(out / "wheels")
    info["mb"] = _size(out) / 1e6
    info["seconds"] = time.perf_counter() - t0
    (out / "prepared.json").write_text(json.dumps(info, indent=1) + "\n")
    tracked = sum(
        (ROOT / f).stat().st_size
        for f in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
        if (ROOT / f).is_file()
    )
    print(json.dumps(info, indent=1))
    if _size(out) + tracked > CARRY_LIMIT:
        raise SystemExit(
            f"{out} ({_size(out) / 2**20:.1f} MiB) and the repository do not fit the 64 MiB a call carries"
        )


def _toy_source(root: Path) -> Path:
    """A corpus in curate's layout from standard-library packages, one repository each (no curation:
    the smoke checks the device steps, not curate); files under TOY_FILE_BYTES, so that the tokenizers,
    the benchmarks and fim-loss's held-out files cost a fraction of what the large modules would."""
    import sysconfig

    import pyarrow as pa
    import pyarrow.parquet as pq

    from codemill.langs import detect

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    pkgs = ("json", "email", "urllib", "wsgiref", "xmlrpc", "html", "http", "logging", "concurrent/futures",
            "importlib", "sqlite3", "dbm", "tomllib", "zoneinfo", "asyncio", "unittest", "ctypes", "curses",
            "multiprocessing", "xml/dom", "xml/etree", "xml/sax", "venv", "ensurepip", "pydoc_data")  # fmt: skip
    rows = []
    for pkg in pkgs:
        for f in [f for f in sorted((stdlib / pkg).glob("*.py")) if f.stat().st_size < TOY_FILE_BYTES][:12]:
            lang = detect(f.name)
            rows.append({"repo": f"stdlib/{pkg}", "path": f"{pkg}/{f.name}", "lang": lang.name if lang else "Text",
                         "content": f.read_text(errors="replace")})  # fmt: skip
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "files-00000.parquet", row_group_size=64)
    return root


def _cut(source: Path, out: Path, cap_bytes: float) -> dict:
    """Whole repositories of `source` in a seeded random order, as many as keep the Parquet under
    `cap_bytes` (rows of a repository together, as curate writes them)."""
    import random

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pa.concat_tables(pq.read_table(f) for f in sorted(source.glob("files-*.parquet")))
    sizes: dict[str, int] = {}
    for repo, n in zip(table.column("repo").to_pylist(), pc.binary_length(table.column("content")).to_pylist(),
                       strict=True):  # fmt: skip
        sizes[repo] = sizes.get(repo, 0) + n
    order = sorted(sizes)
    random.Random(0).shuffle(order)

    def write(text_cap: float) -> tuple[set[str], int, int]:
        keep, text = set(), 0
        for repo in order:
            if text + sizes[repo] <= text_cap:
                keep.add(repo)
                text += sizes[repo]
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        cut = table.filter(pc.is_in(table.column("repo"), pa.array(sorted(keep))))
        pq.write_table(cut, out / "files-00000.parquet", row_group_size=256, compression="zstd")
        return keep, text, _size(out)

    ratio, best = 3.0, 0.0  # text bytes per Parquet byte (zstd), corrected after each try
    for _ in range(5):
        keep, text, written = write(cap_bytes * ratio)
        if written <= cap_bytes:
            best = max(best, ratio)
            if written >= 0.9 * cap_bytes:
                break
        ratio = (
            ratio * 0.97 * cap_bytes / written
            if written > cap_bytes or not best
            else ratio * cap_bytes / written
        )
    if written > cap_bytes:
        keep, text, written = write(cap_bytes * best)
    files = pq.ParquetFile(out / "files-00000.parquet").metadata.num_rows
    print(f"corpus: {len(keep)} of {len(sizes)} repositories, {files:,} files, {text / 1e6:.1f} MB of "
          f"text in {written / 1e6:.1f} MB of Parquet", flush=True)  # fmt: skip
    return {"repos": len(keep), "repos_in_source": len(sizes), "files": files, "text_mb": text / 1e6,
            "parquet_mb": written / 1e6}  # fmt: skip


def _wheels(dest: Path) -> list[str]:
    """The installed version of each package in WHEELS, as a wheel for the device's CPython 3.12."""
    from importlib.metadata import PackageNotFoundError, version

    dest.mkdir(parents=True, exist_ok=True)
    pins = []
    for name in WHEELS:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            print(f"{name} is not installed here: not carried", flush=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                              "manylinux2014_x86_64", "manylinux1_x86_64")]  # fmt: skip
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
          "--implementation", "cp", *platforms, "-d", str(dest), *pins])  # fmt: skip
    return sorted(p.name for p in dest.glob("*.whl"))


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}")


# -- env -----------------------------------------------------------------------------------------------


def env(args) -> None:
    import torch

    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
        "packages": _versions(PACKAGES),
        "wheels_installed": sorted(p.name for p in args.site.glob("*.dist-info")) if args.site else [],
        "gpu": None,
    }
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        props = torch.cuda.get_device_properties(dev)
        info["gpu"] = torch.cuda.get_device_name(dev)
        info |= {"capability": ".".join(map(str, torch.cuda.get_device_capability(dev))),
                 "gpu_memory_gib": props.total_memory / 2**30, "multiprocessors": props.multi_processor_count}  # fmt: skip
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit",
                              "--format=csv,noheader"], capture_output=True, text=True)  # fmt: skip
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        n, reps = 8192, 10
    else:
        dev, n, reps = torch.device("cpu"), 256, 3
    info["matmul_bf16_tflops"], info["copy_gb_per_s"] = _ceilings(dev, n, reps)
    import codemill.train.metrics as metrics

    peak = metrics.peak_flops(dev, 0.0)
    info["peak_bf16_tflops"] = peak / 1e12 if peak else None  # the datasheet figure MFU is taken against
    args.json.write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info, indent=1))


def _ceilings(dev, n: int, reps: int) -> tuple[float, float]:
    """bf16 n x n x n matrix products on random data (METHOD.md: never zeros) and a device-to-device
    copy, each the mean of `reps` after three warm-ups: the ceilings measured on this machine."""
    import torch

    a, b = (torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(2))
    src = torch.randn(1 << 26 if dev.type == "cuda" else n * n, device=dev)  # 256 MiB on a GPU
    dst = torch.empty_like(src)

    def timed(fn) -> float:
        for _ in range(3):
            fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / reps

    mm = timed(lambda: a @ b)
    cp = timed(lambda: dst.copy_(src))
    return 2 * n**3 / mm / 1e12, 2 * src.numel() * 4 / cp / 1e9


def _versions(names) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


# -- train ---------------------------------------------------------------------------------------------


def train(args) -> None:
    import torch
    import yaml

    import codemill.train.loop as loop
    from codemill.data.config import DataConfig
    from codemill.data.tokenizer import load_tokenizer
    from codemill.eval.loss import fim_loss, heldout_texts
    from codemill.formats import get_format
    from codemill.model.hf import import_hf
    from codemill.train.config import TrainConfig
    from codemill.train.metrics import flops_per_token

    data, run = args.data, args.run
    if run.exists():
        shutil.rmtree(run)  # a run directory that exists would be resumed
    run.mkdir(parents=True)
    held = data / "bench" / "fim" / "heldout_repos.txt"
    crossfile = data / "bench" / "crossfile" if (data / "bench" / "crossfile").is_dir() else None
    dcfg = DataConfig.from_dict({"seq_len": args.seq_len, "exclude_repos": str(held)})
    tcfg = TrainConfig.from_dict({
        "preset": args.preset, "model": yaml.safe_load(args.model) or {}, "max_steps": args.max_steps,
        "warmup_steps": args.warmup, "global_batch": args.global_batch, "micro_batch": args.micro_batch,
        "lr": args.lr, "min_lr": args.lr / 10, "compile": args.compile, "log_every": args.log_every,
        "ckpt_every": 10**9, "keep_last": 1, "max_minutes": args.seconds / 60,
    })  # fmt: skip
    tok, fmt = load_tokenizer(data / "tokenizer"), get_format(dcfg.format)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    texts = heldout_texts(data / "corpus", held, args.files)
    kw = {"files": texts, "crossfile": crossfile, "limit": args.limit, "context": args.seq_len}

    t = time.perf_counter()
    init = loop.build_model(tcfg, tok.vocab_size, args.seq_len, device)  # the run's own initial weights
    before = fim_loss(init, tok, fmt, data / "bench" / "fim", run / "fim-loss-before", name="before", **kw)
    before_s = time.perf_counter() - t
    n_params, fpt = init.num_params(), flops_per_token(init, args.seq_len)
    del init
    partial = {"preset": args.preset, "parameters": n_params, "fim_loss": {"before": _bpb(before)}}
    args.json.write_text(json.dumps(partial, indent=1) + "\n")  # kept if training fails

    start = time.perf_counter()
    final = loop.train(data / "corpus", data / "tokenizer", run / "train", dcfg, tcfg, console=None)
    train_s = time.perf_counter() - start
    records = [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = records[-1]["step"] if records else 0
    stopped_by, data_s = (
        "deadline" if steps < args.max_steps else "max_steps",
        sum(r["data_s"] for r in records),
    )
    partial |= {"stopped_by": stopped_by, "train_s": train_s, "data_s": data_s, "records": records}
    args.json.write_text(json.dumps(partial, indent=1) + "\n")  # kept if fim-loss after fails

    t = time.perf_counter()
    trained = import_hf(final).to(device)
    after = fim_loss(trained, tok, fmt, data / "bench" / "fim", run / "fim-loss-after", name="after", **kw)
    after_s = time.perf_counter() - t
    steady = records[1:] or records  # the first interval holds the compilation
    out = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "preset": args.preset,
        "parameters": n_params,
        "flops_per_token": fpt,
        "seq_len": args.seq_len,
        "global_batch": args.global_batch,
        "micro_batch": args.micro_batch,
        "compiled": args.compile,
        "deadline_s": args.seconds,
        "stopped_by": stopped_by,
        "steps": records[-1]["step"] if records else 0,
        "planned_steps": args.max_steps,
        "tokens": records[-1]["tokens"] if records else 0,
        "train_s": train_s,  # model build, compilation, steps, final checkpoint and export
        "data_s": data_s,  # building windows on the CPU, inside the training process
        "data_share": data_s / train_s,
        "tokens_per_s": sum(r["tokens_per_s_per_device"] for r in steady) / len(steady) if steady else None,
        "mfu": (sum(r["mfu"] for r in steady) / len(steady))
        if steady and steady[0]["mfu"] is not None
        else None,
        "loss_first": records[0]["loss"] if records else None,
        "loss_last": records[-1]["loss"] if records else None,
        "padding": records[-1]["padding"] if records else None,
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "fim_loss_s": {"before": before_s, "after": after_s},
        "heldout_files": len(texts),
        "fim_loss": {"before": _bpb(before), "after": _bpb(after)},
        "curve": [{k: r[k] for k in ("step", "loss", "tokens_per_s_per_device", "mfu")} for r in records],
    }
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "curve"}, indent=1))


def _bpb(results: dict) -> dict:
    """Bits per byte of fim-loss's headline measures."""
    s = results["summary"]
    a, ltr, x = s.get("all", {}), s.get("left-to-right", {}), s.get("cross-file", {})
    return {"tasks": a.get("tasks"), "psm": a.get("psm_bits_per_byte"), "spm": a.get("spm_bits_per_byte"),
            "files": ltr.get("bits_per_byte"), "crossfile_tasks": x.get("tasks"),
            "crossfile_infile": x.get("infile_bits_per_byte"), "crossfile_retrieval": x.get("retrieval_bits_per_byte")}  # fmt: skip


# -- checkpoint ----------------------------------------------------------------------------------------


def checkpoint(args) -> None:
    """A preset's initial weights (seed 0) in the HF layout with the tokenizer, as the trainer exports."""
    import torch
    import yaml

    from codemill.data.tokenizer import load_tokenizer
    from codemill.model.hf import export_hf
    from codemill.model.llama import Llama
    from codemill.train.config import TrainConfig
    from codemill.train.loop import TOKENIZER_FILES, model_config

    tok = load_tokenizer(args.tokenizer)
    cfg = model_config(
        TrainConfig(preset=args.preset, model=yaml.safe_load(args.model) or {}), tok.vocab_size, 0
    )
    torch.manual_seed(0)
    model = Llama(cfg)
    model.init_weights()
    export_hf(model, args.out, dtype=torch.bfloat16)
    for name in TOKENIZER_FILES:
        if (args.tokenizer / name).exists():
            shutil.copy2(args.tokenizer / name, args.out / name)
    (args.out / "codemill.json").write_text(json.dumps({"format": "codemill"}) + "\n")
    print(f"{args.out}: {args.preset}, {model.num_params() / 1e6:.1f}M parameters, vocab {cfg.vocab_size}")


# -- report --------------------------------------------------------------------------------------------


def report(args) -> None:
    """gpu_check.json (one object per step: name, seconds, budget, status, exit code, its numbers, and
    the end of its log when it did not pass) and gpu_check.md (the table for docs/benchmarks.md)."""
    work, out = args.work, args.out
    steps = []
    for line in (work / "steps.tsv").read_text().splitlines():
        name, budget, rc, seconds = line.split("\t")
        rc = int(rc)
        numbers = _load(work / f"{name}.json")
        if numbers is None and name == "gpu-tests":  # pytest's JUnit report, or its -v lines if it was cut
            numbers = _pytest(
                work / f"{name}.xml", work / f"{name}.log", "cpu" if args.mode == "smoke" else "cuda"
            )
        status = "ok" if rc == 0 else ("timeout" if rc in (124, 137) else "failed")
        step = {"name": name, "seconds": round(float(seconds), 1), "budget_s": int(budget), "status": status,
                "exit_code": rc, "numbers": numbers}  # fmt: skip
        log = work / f"{name}.log"
        if status != "ok" and log.exists():
            step["log_tail"] = log.read_text(errors="replace").splitlines()[-40:]
        steps.append(step)
    env_ = next((s["numbers"] for s in steps if s["name"] == "env"), None) or {}
    result = {
        "date": env_.get("date") or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": args.mode,
        "gpu": env_.get("gpu"),
        "torch": env_.get("torch"),
        "cuda": env_.get("cuda"),
        "python": env_.get("python"),
        "seconds": round(sum(s["seconds"] for s in steps), 1),
        "steps": steps,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    (out / "gpu_check.md").write_text(md)
    print(md)


def _pytest(xml: Path, log: Path, device: str) -> dict | None:
    """Each test's outcome: from the JUnit report, or, when the step was cut before pytest wrote it,
    from the `-v` lines of its log (`tests/test_gpu.py::name PASSED`)."""
    import re
    import xml.etree.ElementTree as ET

    tests = []
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
            tests.append(
                {"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0)}
            )
    elif log.exists():
        for m in re.finditer(
            r"^\S+::(\S+) (PASSED|FAILED|ERROR|SKIPPED)", log.read_text(errors="replace"), re.M
        ):
            outcome = {"PASSED": "passed", "FAILED": "failure", "ERROR": "error", "SKIPPED": "skipped"}[m[2]]
            tests.append({"test": m[1], "outcome": outcome, "seconds": None})
    if not tests:
        return None
    count = lambda o: sum(t["outcome"] == o for t in tests)  # noqa: E731
    return {"device": device, "passed": count("passed"), "failed": count("failure") + count("error"),
            "skipped": count("skipped"), "complete": xml.exists(), "tests": tests}  # fmt: skip


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _f(x, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def summary(step: dict) -> str:
    """One cell: what the step measured."""
    n, name = step["numbers"] or {}, step["name"]
    if not n:
        return "-"
    if name == "env":
        return (f"{n.get('gpu') or 'CPU'}; bf16 matmul {_f(n.get('matmul_bf16_tflops'), '.1f')} TFLOP/s measured "
                f"(peak {_f(n.get('peak_bf16_tflops'), '.0f')}); copy {_f(n.get('copy_gb_per_s'), ',.0f')} GB/s")  # fmt: skip
    if name == "gpu-tests":
        failed = [t["test"] for t in n["tests"] if t["outcome"] in ("failure", "error")]
        return (f"{n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped on {n['device']}"
                + ("" if n["complete"] else " (cut by the budget: these from its log)")
                + (f"; failed: {', '.join(failed)}" if failed else ""))  # fmt: skip
    if name == "bench-train":
        return (f"{n['preset']} ({n['parameters'] / 1e6:,.0f}M), {n['batch']} x {n['seq_len']}, {n['dtype']}"
                f"{', compiled' if n['compiled'] else ''}: {n['tokens_per_s']:,.0f} tokens/s, MFU {_f(n.get('mfu'), '.1%')}, "
                f"{_f(n.get('max_memory_gib'), '.1f')} GiB")  # fmt: skip
    if name == "train-small":
        b, a = n["fim_loss"]["before"], n["fim_loss"]["after"]
        return (f"{n['steps']} steps ({n['stopped_by']}), {n['tokens']:,} tokens in {n['train_s']:.0f} s, "
                f"{_f(n.get('tokens_per_s'), ',.0f')} tokens/s, MFU {_f(n.get('mfu'), '.1%')}, data {n['data_share']:.0%} "
                f"of the time; loss {_f(n['loss_first'], '.2f')} → {_f(n['loss_last'], '.2f')}; fim-loss PSM "
                f"{_f(b['psm'])} → {_f(a['psm'])}, files {_f(b['files'])} → {_f(a['files'])} bits/byte")  # fmt: skip
    if name.startswith("serve-"):
        e = (n.get("engines") or [{}])[0]
        c = {x["clients"]: x for x in n.get("clients", [])}
        conc = "; " + ", ".join(
            f"{k} clients p50 {v['p50_s']:.3f} s ({v['errors']} errors)" for k, v in sorted(c.items())
        )
        return (f"{(n.get('parameters') or 0) / 1e6:,.1f}M parameters; served engine cold / again / typing "
                f"{_f(e.get('cold_s'))} / {_f(e.get('again_s'))} / {_f(e.get('typing_s'))} s, decode "
                f"{_f(e.get('decode_tokens_per_s'), ',.0f')} tokens/s; {n['at_once']['at_once']} at once "
                f"{n['at_once']['tokens_per_s']:,.0f} tokens/s{conc if c else ''}")  # fmt: skip
    return "-"


def markdown(r: dict) -> str:
    head = (f"GPU check ({'CPU smoke' if r['mode'] == 'smoke' else 'bash benchmarks/gpu_check.sh'}), {r['date']}: "
            f"{r['gpu'] or 'no GPU'}, torch {r['torch']}, CUDA {r['cuda']}, Python {r['python']}; "
            f"{r['seconds']:.0f} s in all.")  # fmt: skip
    lines = [head, "", "| step | status | seconds (budget) | result |", "|---|---|---|---|"]
    for s in r["steps"]:
        try:
            cell = summary(s)
        except (KeyError, TypeError, IndexError, ValueError):  # a step that failed part-way
            cell = "numbers incomplete: see gpu_check.json"
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} ({s['budget_s']}) | {cell} |")
    by = {s["name"]: s["numbers"] for s in r["steps"] if s["numbers"]}
    for part in (_fim_table, _serve_tables):
        try:
            lines += part(by)
        except (KeyError, TypeError, IndexError, ValueError):
            lines += ["", "(a table is left out: its step's numbers are incomplete, see gpu_check.json)"]
    return "\n".join(lines) + "\n"


def _fim_table(by: dict) -> list[str]:
    """fim-loss of the training run's initial weights and of its result."""
    if not (n := by.get("train-small")) or "after" not in n["fim_loss"]:
        return []
    lines = ["", f"fim-loss of the `{n['preset']}` run, bits per byte on the held-out repositories "
             f"({n['fim_loss']['after']['tasks']} FIM tasks, {n['heldout_files']} files):", "",
             "| weights | FIM middles PSM | FIM middles SPM | files, left to right | cross-file in-file | cross-file retrieval |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for label, key in (("initial (before)", "before"), (f"after {n['steps']} steps", "after")):
        b = n["fim_loss"][key]
        lines.append(f"| {label} | {_f(b['psm'])} | {_f(b['spm'])} | {_f(b['files'])} | {_f(b['crossfile_infile'])} "
                     f"| {_f(b['crossfile_retrieval'])} |")  # fmt: skip
    return lines


def _serve_tables(by: dict) -> list[str]:
    """Each serving run's engines, and its concurrent clients."""
    lines = []
    for key in ("serve-demo", "serve-small"):
        if not (n := by.get(key)):
            continue
        lines += ["", f"`{key}`: {n['layers']} layers, hidden {n['hidden']}, vocab {n['vocab']}, on {n['gpu'] or n['device']}, "
                  f"{n['tokens']}-token greedy completions of a {n['prompt_tokens']}-token prompt, medians of {n['repeats']}:", "",
                  "| engine | dtype | load s | cold s | again s | typing s | decode ms/token | decode tokens/s |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for e in n["engines"]:
            lines.append(f"| {e['engine']} | {e['dtype']} | {e['load_s']:.1f} | {e['cold_s']:.3f} | {e['again_s']:.3f} | "
                         f"{e['typing_s']:.3f} | {e['decode_ms_per_token']:.2f} | {e['decode_tokens_per_s']:,.0f} |")  # fmt: skip
        a = n["at_once"]
        lines += ["", f"{a['requests']} real positions x 32 tokens, {a['at_once']} at once on {a['at_once']} slots: "
                  f"{a['tokens_per_s']:,.0f} tokens/s, {a['ms_per_step']:.2f} ms a step."]  # fmt: skip
        for c in n.get("clients", []):
            lines += ["", f"{c['clients']} concurrent clients through `codemill serve`: {c['requests']} requests, "
                      f"{c['errors']} errors, p50 {c['p50_s']:.3f} s, p95 {c['p95_s']:.3f} s, wall {c['wall_s']:.1f} s."]  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
