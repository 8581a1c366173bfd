"""Completion latency of codemill's engine against transformers' generate() and llama.cpp on the same model.

Same checkpoint, same prompt ids (a real file split at a line), 64 new tokens, greedy, CPU, in one run:
- transformers `generate()` (its own KV cache within the call, nothing kept between calls);
- codemill cold (empty cache), warm (the same request again), and typing (the prompt grown by the
  characters a user types, one request per keystroke, as an editor sends them), with one slot and with
  `--parallel` slots (every decode step has a row per slot and as many again for drafts: a lone request
  fills the rows no request holds with prompt-lookup drafts, or with `--no-lookup` pays for its slots'
  rows idle; `--draft-rows 0`: drafts only in idle slots' rows), eager, `--compile` and bf16,
  and with every layer on MKL as before oneDNN packing (model/packed.py); besides the whole request,
  ms per decoded token from codemill's own count (the prompt's evaluation excluded);
- llama.cpp (llama-cpp-python, the checkpoint exported with `codemill export gguf` in f32), the same
  three, reusing its cache over the longest common prefix as llama-server does, without and with
  llama-cpp-python's prompt-lookup drafts;
- real positions decoded alone and `--parallel` at once in one engine, by drafting setting
  (`--batch-positions`), and a long prompt joining a decoding request, by `--prefill-chunk`;
- a typing request's prompt ids built from a whole real file: tokenized whole, and through the
  engine's chunk cache.

`--quick` (benchmarks/gpu_check.sh, on a GPU): codemill alone on `--device`, no transformers or llama.cpp:
cold, warm and typing latency and decode tokens/s of the served configuration (`--parallel` slots with
drafts, the device's default dtype), one slot, the other dtype (on a CPU only with `--quick-bf16`) and
(`--compile-quick`) the compiled step; `--parallel` real positions decoded at once; then the concurrent clients through `codemill serve`
(`--clients 4,8`). `--json` writes every number.

Then, through `codemill serve` on 127.0.0.1 with `--parallel` slots, in its own process as an editor
would find it (the clients here would otherwise share the server's interpreter lock), httpx clients:
- keystroke replay: real files typed character by character (60-180 ms between keys and a 0.4-1.2 s
  pause before one key in ten, seeded), by 1, 4 and 8 editor-like clients at once (`--typing-clients`),
  each sending `/infill` after each debounce pause and dropping (disconnecting) the request still in
  flight when a newer one goes out: p50 / p90 / p95 latency, errors, tokens reused against evaluated,
  and the time spent on requests that were cancelled;
- concurrent clients: N clients each completing M different positions at once: p50 / p90 / p95
  latency and the error count.

    python benchmarks/bench_serve.py --model runs/demo/train/final [--replay-files 3 --clients 4]
    python benchmarks/bench_serve.py --model M --quick --device cuda --clients 4,8 --json serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from codemill.model import packed
from codemill.serve.engine import Engine
from codemill.serve.request import Params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("runs/demo/train/final"))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument(
        "--replay-files", type=int, default=3, help="files typed in the keystroke replay (0: skip)"
    )
    ap.add_argument("--chars", type=int, default=80, help="characters typed per file")
    ap.add_argument("--debounce", type=str, default="100,350", help="debounce pauses to replay, ms")
    ap.add_argument("--clients", type=str, default="4", help="concurrent clients, e.g. 4,8 (0: skip)")
    ap.add_argument("--compile-http", action="store_true", help="serve the HTTP parts with the compiled step")
    ap.add_argument("--no-lookup-http", action="store_true", help="serve the HTTP parts without drafts")
    ap.add_argument("--draft-rows-http", type=int, default=None, help="the served engine's --draft-rows")
    ap.add_argument("--cache-ram-http", type=int, default=None, help="the served engine's --cache-ram (MiB)")
    ap.add_argument("--http-only", action="store_true", help="only the parts through `codemill serve`")
    ap.add_argument("--requests", type=int, default=6, help="requests per concurrent client")
    ap.add_argument("--parallel", type=int, default=4, help="slots of the served engine")
    ap.add_argument("--typing-clients", type=str, default="1,4,8", help="typists at once in the replay")
    ap.add_argument(
        "--batch-positions", type=int, default=40, help="real positions decoded alone and 4 at once (0: skip)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="codemill's engines on --device and the clients only"
    )
    ap.add_argument("--device", default=None, help="--quick: cuda or cpu (default: cuda when there is one)")
    ap.add_argument("--compile-quick", action="store_true", help="--quick: the compiled step too")
    ap.add_argument("--quick-bf16", action="store_true", help="--quick on a CPU: bf16 too (slow)")
    ap.add_argument("--json", type=Path, default=None, help="--quick: write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-m]*.py"))
    clients = [int(x) for x in args.clients.split(",") if int(x) > 0]
    if args.quick:
        numbers = quick_table(args, files)
        if clients:
            with serving(args.model, args.parallel, False) as url:
                numbers["clients"] = [asyncio.run(concurrent(url, files, n, args.requests)) for n in clients]
        if args.json:
            args.json.write_text(json.dumps(numbers, indent=1) + "\n")
        return
    if not args.http_only:
        engine_table(args)
        if args.batch_positions:
            batch_table(args, files)
        prefill_table(args, files)
        prompt_table(args, files)
    with serving(
        args.model,
        args.parallel,
        args.compile_http,
        not args.no_lookup_http,
        args.draft_rows_http,
        args.cache_ram_http,
    ) as url:
        if args.replay_files:
            for debounce in (int(x) for x in args.debounce.split(",")):
                for typists in (int(x) for x in args.typing_clients.split(",")):
                    asyncio.run(replay(url, args.parallel, files, args.replay_files, args.chars, debounce / 1000,
                                       typists))  # fmt: skip
        for n in clients:
            asyncio.run(concurrent(url, files, n, args.requests))


def engine_table(args) -> None:
    """The engines in this process against transformers and llama.cpp on one prompt."""
    text = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    cut = text.index("\n", len(text) // 3) + 1
    prefix, suffix = text[:cut] + "    ", text[cut:]
    from transformers import AutoModelForCausalLM

    engine = Engine(args.model)
    hf = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    ids = engine.prompt(prefix, suffix, path="textwrap.py", max_tokens=args.tokens)
    stops = sorted(engine.stop_ids)

    def hf_run() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            hf.generate(torch.tensor([ids]), max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                        pad_token_id=stops[0])  # fmt: skip
        return time.perf_counter() - t0

    decode: dict[str, list[float]] = {}  # ms per decoded token, prompt excluded (codemill's own count)

    def ours(eng: Engine, prompt: list[int], cold: bool, label: str) -> float:
        if cold:
            eng.reset()
        t0 = time.perf_counter()
        c = eng.complete(prompt, max_tokens=args.tokens, stop=())
        decode.setdefault(label, []).append(c.decode_ms / len(c.tokens))
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    compiled = Engine(args.model, compile=True, parallel=args.parallel)
    compile_s = time.perf_counter() - t0
    rows = {"transformers generate()": []}
    hf_run()  # warm-up
    rows["transformers generate()"] = [hf_run() for _ in range(args.repeats)]
    p = args.parallel
    engines = [
        ("codemill, 1 slot", engine),
        ("codemill, 1 slot, --no-lookup", Engine(args.model, lookup=False)),
        ("codemill --compile, 1 slot", Engine(args.model, compile=True)),
        (f"codemill, {p} slots", Engine(args.model, parallel=p)),
        (f"codemill, {p} slots, --draft-rows 0", Engine(args.model, parallel=p, draft_rows=0)),
        (f"codemill, {p} slots, --no-lookup", Engine(args.model, parallel=p, lookup=False)),
        (f"codemill --compile, {p} slots", compiled),
        (
            f"codemill --compile, {p} slots, --no-lookup",
            Engine(args.model, compile=True, parallel=p, lookup=False),
        ),
        (f"codemill --dtype bf16, {p} slots", Engine(args.model, parallel=p, dtype="bf16")),
    ]
    pack_from, packed.PACK_FROM = packed.PACK_FROM, 1 << 62  # as before packing: MKL for every layer
    engines += [
        ("codemill, 1 slot, unpacked", Engine(args.model)),
        (f"codemill, {p} slots, --no-lookup, unpacked", Engine(args.model, parallel=p, lookup=False)),
    ]
    packed.PACK_FROM = pack_from
    for label, eng in engines:
        eng.stop_ids = set()  # both decode exactly `tokens` tokens
        ours(eng, ids, True, "warm-up")
        for run, cold in (("cold cache", True), ("same request again", False)):
            name = f"{label}, {run}"
            rows[name] = [ours(eng, ids, cold, name) for _ in range(args.repeats)]
        typed, name = prefix, f"{label}, typing (one request per keystroke)"
        rows[name] = []
        for ch in "return text"[: args.repeats * 2]:
            typed += ch
            prompt = eng.prompt(typed, suffix, path="textwrap.py", max_tokens=args.tokens)
            rows[name].append(ours(eng, prompt, False, name))
    rows.update(llama_cpp_rows(args, ids, [engine.prompt(prefix + "return text"[:k], suffix, path="textwrap.py",
                                                          max_tokens=args.tokens) for k in range(1, args.repeats * 2 + 1)]))  # fmt: skip
    base = statistics.median(rows["transformers generate()"])
    table = Table(
        title=f"{args.tokens}-token greedy completion, prompt {len(ids)} tokens, CPU, {args.threads} threads"
    )
    for col in ("run", "median s", "ms/token", "decode ms/token", "vs generate()"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for name, ts in rows.items():
        m = statistics.median(ts)
        dec = f"{statistics.median(decode[name]):.2f}" if name in decode else "-"
        table.add_row(name, f"{m:.3f}", f"{1000 * m / args.tokens:.1f}", dec, f"{base / m:.2f}x")
    Console(width=200).print(table)
    cfg = engine.model.cfg
    Console(width=200).print(
        f"model: {args.model} ({cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}); "
        f"--compile took {compile_s:.1f} s at load"
    )


def quick_table(args, files: list[Path]) -> dict:
    """codemill's engines on `--device` (no transformers, no llama.cpp: a GPU machine has neither to
    compare on its device): the served configuration, one slot, the other dtype and the compiled step;
    cold cache, the same request again and typing, whole-request seconds and decode tokens/s; then
    `--parallel` real positions decoded at once in the served configuration."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    text = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    cut = text.index("\n", len(text) // 3) + 1
    prefix, suffix = text[:cut] + "    ", text[cut:]
    p, other = args.parallel, "fp32" if device == "cuda" else "bf16"
    configs = [(f"{p} slots (served)", {"parallel": p}), ("1 slot", {"parallel": 1})]
    if device == "cuda" or args.quick_bf16:  # bf16 on a CPU without AMX: some 30x slower, never served
        configs.append((f"{p} slots, {other}", {"parallel": p, "dtype": other}))
    if args.compile_quick:
        configs.append((f"{p} slots, --compile", {"parallel": p, "compile": True}))
    table = Table(title=f"{args.tokens}-token greedy completion on {device}, medians of {args.repeats}")
    for col in ("engine", "load s", "cold s", "again s", "typing s", "decode ms/token", "decode tokens/s"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    rows, ids = [], []
    for label, kw in configs:
        t0 = time.perf_counter()
        eng = Engine(args.model, device=device, **kw)
        load = time.perf_counter() - t0
        eng.stop_ids = set()  # every request decodes exactly `tokens` tokens
        ids = eng.prompt(prefix, suffix, path="textwrap.py", max_tokens=args.tokens)
        for _ in range(2):  # warm-up: a cold request, then the same again (both paths' first calls)
            eng.complete(ids, max_tokens=args.tokens, stop=())
        runs: dict[str, list[tuple[float, float]]] = {}  # seconds, decode ms per token
        for run, cold in (("cold", True), ("again", False)):
            for _ in range(args.repeats):
                if cold:
                    eng.reset()
                t = time.perf_counter()
                c = eng.complete(ids, max_tokens=args.tokens, stop=())
                runs.setdefault(run, []).append((time.perf_counter() - t, c.decode_ms / len(c.tokens)))
        typed = prefix
        for ch in "return text"[: args.repeats * 2]:
            typed += ch
            prompt = eng.prompt(typed, suffix, path="textwrap.py", max_tokens=args.tokens)
            t = time.perf_counter()
            c = eng.complete(prompt, max_tokens=args.tokens, stop=())
            runs.setdefault("typing", []).append((time.perf_counter() - t, c.decode_ms / len(c.tokens)))
        med = {
            k: (statistics.median(s for s, _ in v), statistics.median(d for _, d in v))
            for k, v in runs.items()
        }
        decode = statistics.median(d for v in runs.values() for _, d in v)
        row = {"engine": label, "device": device, "dtype": "bf16" if eng.cache.k[0].dtype == torch.bfloat16 else "fp32",
               "load_s": load, **{f"{k}_s": m[0] for k, m in med.items()},
               **{f"{k}_decode_ms_per_token": m[1] for k, m in med.items()},
               "decode_ms_per_token": decode, "decode_tokens_per_s": 1000 / decode}  # fmt: skip
        rows.append(row)
        table.add_row(label, f"{load:.1f}", f"{row['cold_s']:.3f}", f"{row['again_s']:.3f}", f"{row['typing_s']:.3f}",
                      f"{decode:.2f}", f"{1000 / decode:,.0f}")  # fmt: skip
        if label.endswith("(served)"):
            batch = _at_once(eng, files, p)
            mcfg, params = eng.model.cfg, sum(t.numel() for t in eng.model.parameters())
        del eng
    Console(width=200).print(table)
    Console(width=200).print(
        f"{batch['requests']} real positions x 32 tokens, {p} at once on {p} slots: "
        f"{batch['tokens_per_s']:,.0f} tokens/s, {batch['ms_per_step']:.2f} ms a step"
    )
    return {"model": str(args.model), "layers": mcfg.num_layers, "hidden": mcfg.hidden_size,
            "vocab": mcfg.vocab_size, "parameters": params, "device": device,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None, "tokens": args.tokens,
            "prompt_tokens": len(ids), "repeats": args.repeats, "parallel": p, "engines": rows,
            "at_once": batch}  # fmt: skip


def _at_once(eng: Engine, files: list[Path], p: int) -> dict:
    """`p` real positions at a time, 32 greedy tokens each, decoded together on `p` slots."""
    positions = _positions(files, 2 * p, seed=3)
    prompts = [eng.prompt(pre, suf, path=path, max_tokens=32) for path, pre, suf in positions]
    eng.reset()
    steps = tokens = 0
    wall = 0.0
    for i in range(0, len(prompts), p):
        sessions = [eng.start(ids, Params(max_tokens=32)) for ids in prompts[i : i + p]]
        t0 = time.perf_counter()
        while live := [s for s in sessions if not s.done]:
            eng.step(live)
            steps += 1
        wall += time.perf_counter() - t0
        tokens += sum(len(s.out.tokens) for s in sessions)
    return {"requests": len(prompts), "at_once": p, "tokens": tokens, "steps": steps,
            "tokens_per_s": tokens / wall, "ms_per_step": 1000 * wall / steps}  # fmt: skip


def batch_table(args, files: list[Path]) -> None:
    """Real file positions (32 tokens each, greedy) decoded in one engine alone and `--parallel` at once,
    with each drafting setting: tokens per step for each request, drafts taken, ms per token and per
    step, and a request's decode time (from its prefill's end, the others' prefills included). The
    engine's side of the typing replay, without HTTP and the clients sharing its cores."""
    p = args.parallel
    positions = _positions(files, args.batch_positions, seed=3)
    table = Table(title=f"{len(positions)} real positions, 32 tokens each, greedy, {p} slots")
    for col in ("engine", "at once", "tokens / step / request", "drafts taken", "ms / step", "ms / token",
                "p50 decode s"):  # fmt: skip
        table.add_column(col, justify="left" if col == "engine" else "right")
    for label, kw in ((f"draft rows {p} (default)", {}), ("draft rows 0", {"draft_rows": 0}),
                      ("--no-lookup", {"lookup": False})):  # fmt: skip
        eng = Engine(args.model, parallel=p, prefill_chunk=1 << 20, **kw)  # whole prompts: steps only decode
        prompts = [eng.prompt(pre, suf, path=path, max_tokens=32) for path, pre, suf in positions]
        eng.complete(prompts[0], max_tokens=8)  # warm-up
        for at_once in (1, p):
            eng.reset()
            steps = rows = tokens = drafted = taken = 0  # rows: a live request's place in a step
            wall, latency = 0.0, []
            for i in range(0, len(prompts), at_once):
                sessions = [eng.start(ids, Params(max_tokens=32)) for ids in prompts[i : i + at_once]]
                t0 = time.perf_counter()
                while live := [s for s in sessions if not s.done]:
                    eng.step(live)
                    steps, rows = steps + 1, rows + len(live)
                wall += time.perf_counter() - t0
                for s in sessions:
                    tokens, drafted, taken = (
                        tokens + len(s.out.tokens),
                        drafted + s.out.draft_n,
                        taken + s.out.draft_n_accepted,
                    )
                    latency.append(s.out.decode_ms / 1000)
            table.add_row(label, str(at_once), f"{tokens / rows:.2f}",
                          f"{taken / drafted:.0%}" if drafted else "-", f"{1000 * wall / steps:.2f}",
                          f"{1000 * wall / tokens:.2f}", f"{statistics.median(latency):.3f}")  # fmt: skip
    Console(width=200).print(table)


def prefill_table(args, files: list[Path]) -> None:
    """A long prompt arriving while another request decodes, by `--prefill-chunk`: the prompt's own
    time until it is in, and the longest pause between the decoding request's steps meanwhile."""
    positions = _positions(files, 12, seed=4)
    table = Table(title="a long prompt joins a decoding request, 2 slots")
    for col in ("prefill chunk", "prompt tokens", "prompt in, ms", "longest pause of the other, ms",
                "median step of the other, ms"):  # fmt: skip
        table.add_column(col, justify="right")
    for chunk in (4096, 512, 128, 32):
        eng = Engine(args.model, parallel=2, prefill_chunk=chunk)
        eng.stop_ids = set()  # the other decodes all its tokens
        ins, pauses, steps, n = [], [], [], 0
        for i in range(0, len(positions), 2):
            (pa, pre_a, _), (pb, pre_b, suf_b) = positions[i], positions[i + 1]
            eng.reset()
            other = eng.start(eng.prompt(pre_a[-400:], None, path=pa, max_tokens=64), Params(max_tokens=64))
            eng.step([other])
            long_ids = eng.prompt(pre_b, suf_b, path=pb, max_tokens=16)
            n = max(n, len(long_ids))
            t0 = time.perf_counter()
            new = eng.start(long_ids, Params(max_tokens=16))
            gaps = [time.perf_counter() - t0]  # the other waits for the first chunk too
            while new.pending:
                t = time.perf_counter()
                eng.step([other, new])
                gaps.append(time.perf_counter() - t)
            ins.append(new.out.prompt_ms)
            pauses.append(1000 * max(gaps))
            steps.append(1000 * statistics.median(gaps))
            eng.release(other)
            eng.release(new)
        table.add_row(str(chunk), f"up to {n}", f"{statistics.median(ins):.0f}", f"{statistics.median(pauses):.0f}",
                      f"{statistics.median(steps):.1f}")  # fmt: skip
    Console(width=200).print(table)


def prompt_table(args, files: list[Path]) -> None:
    """Building a typing request's prompt ids from the whole file, tokenized whole (what llama-server
    does with an editor's prefix and suffix) and through the engine's chunk cache (data/tokenizer.py),
    one keystroke after another; the ids are checked equal."""
    from codemill.formats import encode_fit

    eng = Engine(args.model)
    table = Table(title="a typing request's prompt ids, whole file tokenized against the chunk cache")
    for col in ("file", "characters", "prompt tokens", "whole, ms", "chunk cache, ms", "ratio"):
        table.add_column(col, justify="left" if col == "file" else "right")
    for path, prefix, suffix in _positions(files, 8, seed=1):
        whole, cached = [], []
        eng.prompt(prefix, suffix, path=path)  # the file's first request fills the cache
        for k in range(1, args.repeats * 2 + 1):
            parts = eng.fmt.prompt(prefix + "x" * k, suffix, path=path)
            t0 = time.perf_counter()
            a = encode_fit(parts, eng.tok, eng.max_len - 64)
            t1 = time.perf_counter()
            b = encode_fit(parts, eng.prompter.chunks, eng.max_len - 64)
            cached.append(time.perf_counter() - t1)
            whole.append(t1 - t0)
            assert a == b, "the chunk cache changed a prompt's ids"
        w, c = statistics.median(whole), statistics.median(cached)
        table.add_row(path, f"{len(prefix) + len(suffix):,}", str(len(a[0])), f"{1000 * w:.2f}", f"{1000 * c:.2f}",
                      f"{w / c:.0f}x")  # fmt: skip
    Console(width=200).print(table)


@contextlib.contextmanager
def serving(model: Path, parallel: int, compile: bool, lookup: bool = True, draft_rows: int | None = None,
            cache_ram: int | None = None) -> Iterator[str]:  # fmt: skip
    """`codemill serve` in a process of its own on a free port; its URL once /health answers."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "codemill.cli", "serve", str(model), "--port", str(port), "--parallel",
           str(parallel), "--no-access-log", *(["--compile"] if compile else []),
           *([] if lookup else ["--no-lookup"]), *([] if draft_rows is None else ["--draft-rows", str(draft_rows)]),
           *([] if cache_ram is None else ["--cache-ram", str(cache_ram)])]  # fmt: skip
    server = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"codemill serve exited with {server.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def llama_cpp_rows(args, ids: list[int], typed: list[list[int]]) -> dict[str, list[float]]:
    """The same runs through llama.cpp: cold, the same request again, typing (prefix reuse)."""
    import tempfile

    import llama_cpp
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    from codemill.model.gguf import export_gguf

    rows = {}
    with tempfile.TemporaryDirectory() as d:
        export_gguf(args.model, Path(d) / "m.gguf", "f32")
        for label, draft in (
            ("llama.cpp", None),
            ("llama.cpp + prompt lookup (3 tokens)", LlamaPromptLookupDecoding(3, 3)),
        ):
            llm = llama_cpp.Llama(model_path=str(Path(d) / "m.gguf"), n_ctx=2048, n_batch=2048, n_threads=args.threads,
                                  verbose=False, draft_model=draft)  # fmt: skip

            def run(prompt: list[int], cold: bool, llm=llm) -> float:
                if cold:
                    llm.reset()
                t0 = time.perf_counter()
                for k, _ in enumerate(
                    llm.generate(prompt, temp=0.0, top_k=1, reset=True), 1
                ):  # reuses the prefix
                    if k == args.tokens:
                        break
                return time.perf_counter() - t0

            run(ids, True)  # warm-up
            rows[f"{label}, cold cache"] = [run(ids, True) for _ in range(args.repeats)]
            rows[f"{label}, same request again"] = [run(ids, False) for _ in range(args.repeats)]
            rows[f"{label}, typing (one request per keystroke)"] = [run(p, False) for p in typed]
    return rows


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _positions(files: list[Path], n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """n (path, prefix, suffix) cut at the start of a random line of a real file."""
    import random

    rng, out = random.Random(seed), []
    while len(out) < n:
        f = rng.choice(files)
        text = f.read_text(errors="replace")
        lines = text.splitlines(keepends=True)
        if len(lines) < 20:
            continue
        k = rng.randrange(10, len(lines) - 5)
        out.append((f.name, "".join(lines[:k]), "".join(lines[k:])))
    return out


async def replay(url: str, slots: int, files: list[Path], per_client: int, chars: int, debounce: float,
                 typists: int = 1) -> None:  # fmt: skip
    """`typists` editors at once, each typing `per_client` files of its own."""
    import random

    import httpx

    done, cancelled_s, served = [], [], []
    counts = dict.fromkeys(
        ("cached", "evaluated", "drafted", "accepted", "sent", "errors", "replaced", "busy"), 0
    )
    positions = _positions(files, per_client * typists, seed=1)

    async def typist(k: int, client) -> None:
        rng = random.Random(k)
        for path, prefix, rest in positions[k * per_client : (k + 1) * per_client]:
            typed, inflight, timer = rest[:chars], None, None

            async def send(prefix, path, rest):
                nonlocal inflight
                if inflight is not None and not inflight.done():
                    inflight.cancel()  # the editor drops it: the connection closes, decoding stops
                counts["sent"] += 1
                inflight = asyncio.create_task(one(prefix, path, rest))

            async def one(prefix, path, suffix):
                t0 = time.perf_counter()
                try:
                    body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 32, "path": path}
                    r = await client.post("/infill", json=body, headers={"x-client-id": f"editor-{k}"})
                except asyncio.CancelledError:
                    cancelled_s.append(time.perf_counter() - t0)
                    raise
                if r.status_code != 200:  # 409: a newer keystroke replaced it in the queue; 503: queue full
                    counts[{409: "replaced", 503: "busy"}.get(r.status_code, "errors")] += 1
                    return
                done.append(time.perf_counter() - t0)
                timings = r.json()["timings"]
                served.append((timings["prompt_ms"] + timings["predicted_ms"]) / 1000)
                counts["cached"] += timings["cache_n"]  # llama-server's: reused from the slot
                counts["evaluated"] += timings["prompt_n"]
                counts["drafted"] += timings["draft_n"]
                counts["accepted"] += timings["draft_n_accepted"]

            for i in range(len(typed)):
                prefix_now, rest_now = prefix + typed[: i + 1], rest[len(typed) :]  # new code, same suffix
                if timer is not None:
                    timer.cancel()

                async def later(p=prefix_now, r=rest_now, path=path):
                    await asyncio.sleep(debounce)
                    await send(p, path, r)

                timer = asyncio.create_task(later())
                # 60-180 ms between keys, and a pause to think before one key in ten
                await asyncio.sleep(
                    rng.uniform(0.06, 0.18) + (rng.uniform(0.4, 1.2) if rng.random() < 0.1 else 0)
                )
            await timer
            if inflight is not None:
                await asyncio.gather(inflight, return_exceptions=True)

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await asyncio.gather(*(typist(k, client) for k in range(typists)))
    table = Table(
        title=f"keystroke replay: {typists} typist(s) x {per_client} files x {chars} characters, debounce "
        f"{1000 * debounce:.0f} ms, {slots} slots"
    )
    for col in ("sent", "completed", "replaced (409)", "busy (503)", "errors", "cancelled", "p50 s", "p90 s",
                "p95 s", "server p50 s", "tokens reused : evaluated", "drafts accepted", "s on cancelled"):  # fmt: skip
        table.add_column(col, justify="right")
    table.add_row(str(counts["sent"]), str(len(done)), str(counts["replaced"]), str(counts["busy"]),
                  str(counts["errors"]), str(len(cancelled_s)),
                  f"{_pct(done, 0.5):.3f}", f"{_pct(done, 0.9):.3f}", f"{_pct(done, 0.95):.3f}", f"{_pct(served, 0.5):.3f}",
                  f"{counts['cached']:,} : {counts['evaluated']:,}",
                  f"{counts['accepted']:,} / {counts['drafted']:,}", f"{sum(cancelled_s):.2f}")  # fmt: skip
    Console(width=200).print(table)


async def concurrent(url: str, files: list[Path], clients: int, requests: int) -> dict:
    import httpx

    latencies, errors = [], 0
    positions = _positions(files, clients * requests, seed=2)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def user(k: int):
            nonlocal errors
            for path, prefix, suffix in positions[k * requests : (k + 1) * requests]:
                t0 = time.perf_counter()
                body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 32, "path": path}
                r = await client.post("/infill", json=body, headers={"x-client-id": f"user-{k}"})
                errors += r.status_code != 200
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(user(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    table = Table(title=f"{clients} concurrent clients x {requests} completions (32 tokens), loopback")
    for col in ("requests", "errors", "p50 s", "p90 s", "p95 s", "wall s"):
        table.add_column(col, justify="right")
    table.add_row(str(len(latencies)), str(errors), f"{_pct(latencies, 0.5):.3f}", f"{_pct(latencies, 0.9):.3f}",
                  f"{_pct(latencies, 0.95):.3f}", f"{wall:.1f}")  # fmt: skip
    Console(width=200).print(table)
    return {"clients": clients, "requests": len(latencies), "errors": errors, "p50_s": _pct(latencies, 0.5),
            "p90_s": _pct(latencies, 0.9), "p95_s": _pct(latencies, 0.95), "wall_s": wall}  # fmt: skip


if __name__ == "__main__":
    main()
