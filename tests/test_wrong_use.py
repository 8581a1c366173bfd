"""Wrong use and bad input (issue 30): a clear one-line error and exit 2, never a traceback, a hang or
a server that reads whatever it is sent. Real servers on 127.0.0.1 and the real command line."""

from __future__ import annotations

import json
import os
import shutil
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
        for _ in range(1200):
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
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
