"""Wrong use and bad input (issue 30): a clear one-line error and exit 2, never a traceback, a hang or
a server that reads whatever it is sent. Real servers on 127.0.0.1 and the real command line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from codemill.cli import app
from codemill.errors import UserError


def cli(*args) -> tuple[int, str]:
    """`codemill ARGS` in this process: its exit code and what it printed (one line, however wide)."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output  # no traceback
    return r.exit_code, " ".join(r.output.split())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model: Path, port: int, *args) -> subprocess.Popen:
    """`codemill serve` in its own process, as a user starts it."""
    cmd = [sys.executable, "-m", "codemill.cli", "serve", str(model), "--port", str(port), *args]
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def healthy(proc: subprocess.Popen, url: str) -> None:
    """Wait until the server's /health says it is ready (it loads the model first)."""
    for _ in range(1200):
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    pytest.fail(f"{url} not ready after 120 s")


def refused(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"`codemill serve` still runs after {timeout:.0f} s: {out}")
    return proc.returncode, " ".join(out.split())


@pytest.fixture
def damaged(tiny_checkpoint, tmp_path):
    """A copy of the tiny checkpoint, to break."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


def truncate(path: Path, keep: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))


# --- item 2: request bodies are bounded however they are sent ------------------------------------
def _rss_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_a_chunked_body_over_the_limit_gets_413_before_it_is_read(tiny_checkpoint):
    """50 MB sent with `Transfer-Encoding: chunked` (no Content-Length to check) is refused with a
    413 once past the 1 MiB limit, and the server's peak memory stays within a few MB of its start;
    the server answers the next request as before."""
    port = free_port()
    proc = serve(
        tiny_checkpoint, port, "--parallel", "1", "--no-lookup", "--cache-ram", "0", "--no-access-log"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        healthy(proc, url)
        small = {"prompt": "def f(x):\n    return ", "max_tokens": 2}
        assert httpx.post(url + "/v1/completions", json=small).status_code == 200
        try:  # peak RSS from now on (Linux >= 4.0); else the peak of samples taken every ms
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
            exact = True
        except OSError:
            exact = False
        start = _rss_kib(proc.pid, "VmRSS")
        samples, done = [start], threading.Event()

        def sample():
            while not done.is_set():
                samples.append(_rss_kib(proc.pid, "VmRSS"))
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
        chunk = b"x" * 65536

        def body():  # a generator: httpx sends it chunked
            yield b'{"prompt": "'
            for _ in range(800):  # 52 MB
                yield chunk
            yield b'", "max_tokens": 2}'

        try:
            r = httpx.post(url + "/v1/completions", content=body(), timeout=120,
                           headers={"content-type": "application/json"})  # fmt: skip
        finally:
            done.set()
            sampler.join()
        peak = _rss_kib(proc.pid, "VmHWM") if exact else max(samples)
        assert r.status_code == 413 and "limit of 1048576 bytes" in r.json()["error"]["message"], r.text
        assert peak - start < 8 * 1024, f"peak RSS {peak - start} KiB above its start"
        assert httpx.post(url + "/v1/completions", json=small).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)


# --- items 7, 8: serve checks its port and its weights before it says it serves ------------------
def test_serve_on_a_busy_port_refuses_before_it_says_it_serves(tiny_checkpoint):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out = refused(serve(tiny_checkpoint, port))
    assert code == 2 and "serving" not in out, out
    assert f"127.0.0.1:{port}" in out and "--port" in out and "Traceback" not in out, out


def test_serve_refuses_weights_cut_short(damaged):
    truncate(damaged / "model.safetensors")
    code, out = refused(serve(damaged, free_port()))
    assert code == 2 and "serving" not in out and "Traceback" not in out, out
    assert "model.safetensors" in out and "cut short" in out, out


def test_serve_stops_when_the_model_fails_to_load_after_it_started(damaged):
    """Weights whole but not those config.json describes: the load fails in the background, the
    server says why on its console and exits 2 rather than answering 503 for ever."""
    cfg = json.loads((damaged / "config.json").read_text())
    cfg["num_hidden_layers"] += 1
    (damaged / "config.json").write_text(json.dumps(cfg))
    code, out = refused(serve(damaged, free_port()))
    assert code == 2 and "the model failed to load" in out and "missing" in out, out
    assert "Traceback" not in out, out


# --- item 9: eval and export on a damaged checkpoint -----------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "header", "config-json", "config-key"])
def test_eval_and_export_name_the_damaged_file(damaged, tmp_path, damage):
    if damage == "truncated":
        truncate(damaged / "model.safetensors"), (want := ["model.safetensors", "cut short"])
    elif damage == "header":
        (damaged / "model.safetensors").write_bytes(b"\x0e\x00\x00\x00\x00\x00\x00\x00{not a header}")
        want = ["model.safetensors", "header"]
    elif damage == "config-json":
        (damaged / "config.json").write_text('{"vocab_size": 2048,')
        want = ["config.json", "not valid JSON"]
    else:
        cfg = json.loads((damaged / "config.json").read_text())
        del cfg["hidden_size"]
        (damaged / "config.json").write_text(json.dumps(cfg))
        want = ["config.json", "hidden_size"]
    for args in (
        ["eval", "humaneval", "--model", damaged, "--out", tmp_path / "eval", "--limit", "1"],
        ["eval", "fim-loss", "--model", damaged, "--out", tmp_path / "loss", "--data", tmp_path],
        ["export", "gguf", damaged, "--out", tmp_path / "m.gguf"],
    ):
        code, out = cli(*args)
        assert code == 2 and all(w in out for w in want), (args, out)
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "m.gguf.tmp").exists()


def test_check_checkpoint_reads_headers_only_and_finds_every_damage(damaged):
    from codemill.model.hf import check_checkpoint

    check_checkpoint(damaged)  # whole: no error
    (damaged / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(UserError, match="too short"):
        check_checkpoint(damaged)
    (damaged / "model.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(UserError, match="header of 1,099,511,627,776 bytes"):
        check_checkpoint(damaged)
    (damaged / "model.safetensors").unlink()
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
    (damaged / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=r"model-00001-of-00002\.safetensors.*missing"):
        check_checkpoint(damaged)
    (damaged / "model.safetensors.index.json").write_text("[")
    with pytest.raises(UserError, match=r"model\.safetensors\.index\.json.*not valid JSON"):
        check_checkpoint(damaged)


# --- item 10: recipe files -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, want",
    [
        (None, "cannot read"),
        ("train:\n  lr: [1e-3\n", "not valid YAML.*line 3"),
        ("- train\n- data\n", "holds a list, not a mapping of sections.*curate, data, train, run"),
        (
            "trian:\n  max_steps: 5\n",
            r"unknown section 'trian' \(did you mean train\?\).*curate, data, train, run",
        ),
        ("train: 5\n", "section train holds 5, not a mapping of settings"),
    ],
    ids=["missing", "malformed", "list", "misspelt", "scalar-section"],
)
def test_a_bad_recipe_is_named_with_what_is_wrong(tmp_path, text, want):
    import re

    recipe = tmp_path / "recipe.yaml"
    if text is not None:
        recipe.write_text(text)
    for args in (["train", "plan", recipe], ["train", "--dry-run", "--recipe", recipe],
                 ["data", "stats", tmp_path, "--tokenizer", tmp_path, "--recipe", recipe],
                 ["run", recipe, "--out", tmp_path / "run"]):  # fmt: skip
        code, out = cli(*args)
        assert code == 2 and str(recipe) in out and re.search(want, out), (args, out)
    assert not (tmp_path / "run").exists()


# --- item 12: --set values are checked where the settings are made ---------------------------------
@pytest.mark.parametrize(
    "setting, want",
    [
        ("micro_batch", "--set 'micro_batch': write key=value"),
        ("=4", "--set '=4': write key=value"),
        ("micro_batch=0", "train.micro_batch is 0; it must be at least 1"),
        ("max_steps=-1", "train.max_steps is -1; it must be at least 1"),
        ("grad_clip=0", "train.grad_clip is 0; it must be above 0"),
        ("warmup_steps=1.5", "train.warmup_steps: expected a whole number, got 1.5"),
        ("micro_batch=true", "train.micro_batch: expected a number, got True"),
        ("data.seq_len=", "data.seq_len: expected a number, got None"),
        ("data.fim_spm_rate=2", "data.fim_spm_rate is 2; it must be at most 1"),
        ("data.max_clusters=[1", "--set 'data.max_clusters=[1': the value is not valid YAML"),
    ],
)
def test_set_values_are_checked(setting, want):
    code, out = cli("train", "--dry-run", "--recipe", "recipes/demo.yaml", "--set", setting)
    assert code == 2 and want in out, out


def test_settings_bounds_apply_to_recipes_and_whole_numbers_written_as_floats():
    from codemill.train.config import TrainConfig

    assert TrainConfig.from_dict({"max_steps": "1e3", "lr": "3e-4"}).max_steps == 1000
    with pytest.raises(UserError, match=r"train\.keep_last is 0; it must be at least 1"):
        TrainConfig.from_dict({"keep_last": 0})
    assert TrainConfig.from_dict({"data_shards": 0, "max_minutes": 0}).data_shards == 0


def test_train_plan_refuses_the_batch_train_refuses():
    code, out = cli("train", "plan", "recipes/demo.yaml", "--gpus", "1", "--set", "micro_batch=3")
    assert code == 2 and "global_batch 8 must split evenly" in out and "micro_batch 3" in out, out
    code, out = cli("train", "plan", "recipes/demo.yaml", "--gpus", "3")
    assert code == 2 and "world size 3" in out, out
    code, out = cli("train", "plan", "recipes/demo.yaml", "--gpus", "2")
    assert code == 0 and "GPU-hours" in out, out


# --- items 3, 4, 5, 13: curate on small, broken and stale inputs -----------------------------------
def _stdlib_rows(n: int, repos: int) -> list[dict]:
    files = sorted((Path(os.__file__).parent / "json").glob("*.py"))[:n]
    return [
        {"repo": f"org/r{i % repos}", "path": f.name, "content": f.read_text(), "license": "MIT"}
        for i, f in enumerate(files)
    ]


def _broken_tables(tmp_path: Path) -> tuple[Path, Path]:
    """A Parquet file cut short (no footer) and one whose first row group's data is overwritten."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(_stdlib_rows(4, 2))
    good = tmp_path / "good.parquet"
    pq.write_table(table, good, row_group_size=2, compression="NONE")
    data = bytearray(good.read_bytes())
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: len(data) // 2])
    chunk = pq.ParquetFile(good).metadata.row_group(0).column(2)  # content: a 26 KB chunk
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data[start : start + 64] = b"\xab" * 64
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(bytes(data))
    return cut, damaged


def test_curate_counts_broken_tables_and_takes_small_ones_resumes_nothing_stale(tmp_path):
    """A 4-repository JSONL table with the default tasks, beside a Parquet file without its footer
    and one with a damaged row group: the broken ones counted, the rest curated; a rerun says it is
    complete; an old corpus whose .work was deleted is never mixed into a new one."""
    table = tmp_path / "small.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in _stdlib_rows(4, 4)))
    cut, damaged = _broken_tables(tmp_path)
    out = tmp_path / "corpus"
    code, text = cli("curate", cut, damaged, table, "--out", out)
    assert code == 0, text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["read"]["drops"] == {"broken_table:ArrowInvalid": 1, "broken_table:OSError": 1}
    assert manifest["files"]["out"] >= 4  # the JSONL's files and the damaged table's good row group
    shards = {p.name: p.read_bytes() for p in out.glob("files-*.parquet")}

    code, text = cli("curate", cut, damaged, table, "--out", out)
    assert code == 0 and "already complete" in text, text
    shutil.rmtree(out / ".work")
    code, text = cli("curate", table, "--out", out)
    assert code == 2 and "holds a corpus of other sources" in text and "new --out" in text, text
    assert {p.name: p.read_bytes() for p in out.glob("files-*.parquet")} == shards


def test_curate_where_no_file_survives_says_so(tmp_path):
    src = tmp_path / "src"
    (src / "prose").mkdir(parents=True)
    (src / "prose" / "README.md").write_text("Notes only, no code.\n")
    (src / "broken.tar.gz").write_bytes(b"\x1f\x8b not a gzip stream")
    code, text = cli("curate", src, "--out", tmp_path / "out")
    assert code == 2 and "no file survived curation" in text and "broken_archive" in text, text
    assert f"codemill corpus stats {tmp_path / 'out'}" in text


def test_an_interrupted_curate_says_a_rerun_resumes(tmp_path):
    src = Path(os.__file__).parent  # the standard library: its scan outlasts the signal by far
    cmd = [sys.executable, "-m", "codemill.cli", "curate", str(src), "--out", str(tmp_path / "out")]
    # as from a terminal: a suite started in the background (`make test &`) ignores SIGINT, and Python
    # then leaves Ctrl-C ignored in its children too
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "400"}, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.time() + 120
    while not (tmp_path / "out" / ".work" / "scan").is_dir() and time.time() < deadline:  # scan started
        time.sleep(0.2)
    os.killpg(proc.pid, 2)  # Ctrl-C reaches the whole process group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "rerun the same command to resume" in out, out


# --- item 6: outputs that cannot be written are refused before the work ----------------------------
@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_outputs_are_checked_before_the_work(tmp_path, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    bad = blocker / "out" if where == "under-a-file" else Path("/proc/codemill-out")
    corpus, recipe = tmp_path / "corpus", "recipes/demo.yaml"
    commands = [
        ["curate", tmp_path, "--out", bad],
        ["tokenizer", "train", corpus, "--out", bad],
        ["data", "stats", corpus, "--tokenizer", corpus, "--json", bad / "stats.json"],
        ["train", "--corpus", corpus, "--tokenizer", corpus, "--out", bad],
        ["eval", "humaneval", "--model", "reference", "--out", bad],
        ["eval", "compare", tmp_path, "--out", bad / "cmp.md"],
        ["bench", "build", "fim", corpus, "--out", bad],
        ["bench", "build", "crossfile", corpus, "--out", bad],
        ["run", recipe, "--out", bad],
        ["ablate", recipe, "--out", bad],
        ["export", "gguf", corpus, "--out", bad / "m.gguf"],
        ["corpus", "audit", corpus, "--out", bad / "audit.md"],
    ]
    for args in commands:
        code, out = cli(*args)
        assert code == 2 and "cannot write" in out and "choose another place" in out, (args, out)
    code, out = cli("tokenizer", "train", corpus, "--out", blocker)
    assert code == 2 and "is a file; give a directory" in out, out


# --- item 11: benchmarks built from a corpus too small to hold a repository out --------------------
def test_bench_build_on_a_corpus_with_nothing_held_out_says_what_to_change(tmp_path, code_corpus):
    for kind in ("fim", "crossfile"):
        code, out = cli("bench", "build", kind, code_corpus, "--out", tmp_path / kind, "--holdout", "1e-9")
        assert code == 2 and "falls in the held-out share" in out and "--holdout" in out, (kind, out)


def test_every_held_out_repository_is_listed_whatever_its_languages(tmp_path):
    from conftest import POLYGLOT, write_corpus

    from codemill.eval.builders import build_crossfile, build_fim

    corpus = write_corpus(
        tmp_path / "c", {"demo/polyglot": POLYGLOT, "only/go": {"a.go": POLYGLOT["go/geo/geo.go"]}}
    )
    for build in (build_fim, build_crossfile):
        build(corpus, tmp_path / build.__name__, holdout=1.0)
        listed = (tmp_path / build.__name__ / "heldout_repos.txt").read_text().split()
        assert listed == ["demo/polyglot", "only/go"], (build.__name__, listed)


# --- item 14: the smaller ones ---------------------------------------------------------------------
def test_smaller_wrong_uses_get_one_line_errors(tmp_path, damaged, code_corpus):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    code, out = cli("eval", "mbpp", "--model", "reference", "--data", bad, "--out", tmp_path / "e")
    assert code == 2 and f"--data {bad}: not a mbpp benchmark file" in out, out
    code, out = cli("eval", "compare", tmp_path)
    assert code == 2 and "has no results.json" in out, out
    code, out = cli("ablate", "recipes/demo.yaml", "--seeds", "a,b", "--out", tmp_path / "ab")
    assert code == 2 and "--seeds 'a,b': give whole numbers" in out, out
    code, out = cli("data", "stats", code_corpus, "--tokenizer", bad)
    assert code == 2 and f"{bad} is not a tokenizer" in out, out
    code, out = cli("eval", "nosuch", "--model", tmp_path / "nowhere", "--out", tmp_path / "e")
    assert code == 2 and "unknown suite 'nosuch'" in out and "fim-loss" in out, out
    (damaged / "codemill.json").write_text("{broken")
    code, out = cli("export", "gguf", damaged, "--out", tmp_path / "m.gguf")
    assert code == 2 and "codemill.json is not a JSON object" in out, out


def test_an_unknown_repository_names_some_that_exist():
    from codemill.data.preview import find_repo

    repos = ["python-stdlib-3.11", "numpy-2.1.0", "rich-14.0.0"]
    assert find_repo("python-stdlib", repos) == "python-stdlib-3.11"
    with pytest.raises(UserError, match=r"its 3 repositories: numpy-2\.1\.0, python-stdlib-3\.11, rich"):
        find_repo("zzzz", repos)


def test_evaluate_refuses_a_suite_that_generates_nothing(tmp_path):
    """fim-loss scores a checkpoint's loss: handing it to the generating runner would score nothing."""
    from codemill.eval.models import Reference
    from codemill.eval.runner import evaluate

    with pytest.raises(UserError, match="generates nothing"):
        evaluate("fim-loss", Reference(), tmp_path, unsafe=True)
