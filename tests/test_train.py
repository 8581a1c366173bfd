"""The trainer as users run it: one process, two (torchrun + FSDP2 on gloo), killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

MODEL = "model={hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2}"
BASE = ["--set", MODEL, "--set", "data.seq_len=64", "--set", "global_batch=4", "--set", "micro_batch=2"]
BASE += ["--set", "warmup_steps=2", "--set", "log_every=1", "--set", "threads=1"]


def train_cmd(corpus, tok, out, *extra, torchrun: int = 0) -> list[str]:
    head = [sys.executable, "-m", "codemill.cli"]
    if torchrun:
        head = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(torchrun),
            "-m",
            "codemill.cli",
        ]
    return [
        *head,
        "train",
        "--corpus",
        str(corpus),
        "--tokenizer",
        str(tok),
        "--out",
        str(out),
        *BASE,
        *extra,
    ]


def run(cmd) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def losses(out) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def test_two_processes_take_the_same_steps_as_one(code_corpus, bpe_dir, tmp_path):
    extra = ["--set", "max_steps=2", "--set", "data_shards=2"]
    run(train_cmd(code_corpus, bpe_dir, tmp_path / "one", *extra))
    run(train_cmd(code_corpus, bpe_dir, tmp_path / "two", *extra, torchrun=2))
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2]
    assert all(abs(x - y) < 1e-5 for (_, x), (_, y) in zip(a, b, strict=True))
    wa, wb = (load_file(tmp_path / r / "final" / "model.safetensors") for r in ("one", "two"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def test_loader_workers_train_on_the_batches_of_the_training_process(code_corpus, bpe_dir, tmp_path):
    """The same steps, bit for bit, with the windows packed in-process and by two DataLoader workers."""
    extra = ["--set", "max_steps=3", "--set", "data_shards=2"]
    for n in (0, 2):
        run(train_cmd(code_corpus, bpe_dir, tmp_path / f"w{n}", *extra, "--set", f"loader_workers={n}"))
    assert losses(tmp_path / "w0") == losses(tmp_path / "w2")
    wa, wb = (load_file(tmp_path / r / "final" / "model.safetensors") for r in ("w0", "w2"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_wall_clock_budget_ends_every_rank_at_one_step_and_exports(code_corpus, bpe_dir, tmp_path):
    extra = ["--set", "max_steps=100000", "--set", "max_minutes=0.002", "--set", "data_shards=2"]
    run(train_cmd(code_corpus, bpe_dir, tmp_path / "two", *extra, torchrun=2))
    records = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]["step"]
    assert 1 <= last < 100 and all(r["data_s"] > 0 for r in records)
    assert (tmp_path / "two" / "final" / "model.safetensors").exists()
    assert (tmp_path / "two" / "state" / f"step-{last:08d}" / "meta.json").exists()


def test_a_run_resumes_only_with_its_settings_unless_asked(code_corpus, bpe_dir, tmp_path):
    out = tmp_path / "run"
    run(train_cmd(code_corpus, bpe_dir, out, "--set", "max_steps=2"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    changed = train_cmd(code_corpus, bpe_dir, out, "--set", "max_steps=3", "--set", "lr=3e-3")
    r = subprocess.run(changed, capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "train.lr 0.0003 -> 0.003" in r.stdout and "--resume-anyway" in r.stdout, (
        r.stdout
    )
    assert [s for s, _ in losses(out)] == [1, 2]  # nothing trained, nothing rewritten
    run([*changed, "--resume-anyway"])  # asked for: steps 3 under the new lr
    assert [s for s, _ in losses(out)] == [1, 2, 3] and json.loads((out / "run.json").read_text())["train"][
        "lr"
    ] == 3e-3
    run(
        train_cmd(code_corpus, bpe_dir, out, "--set", "max_steps=4", "--set", "lr=3e-3")
    )  # a longer run resumes
    wider = MODEL.replace("hidden_size: 32", "hidden_size: 48")
    r = subprocess.run([*changed, "--set", wider, "--resume-anyway"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "model.hidden_size 32 -> 48" in r.stdout, r.stdout + r.stderr[-2000:]


def test_fsdp2_mixed_precision_takes_the_steps_of_one_process_in_bf16(code_corpus, bpe_dir, tmp_path):
    """bf16 parameters and compute, fp32 gradient reduction and master weights under FSDP2 (gloo on
    CPU) against one process under bf16 autocast: the same losses within bf16's precision, falling."""
    extra = ["--set", "max_steps=6", "--set", "data_shards=2", "--set", "dtype=bf16", "--set", "lr=3e-3"]
    run(train_cmd(code_corpus, bpe_dir, tmp_path / "one", *extra))
    run(train_cmd(code_corpus, bpe_dir, tmp_path / "two", *extra, torchrun=2))
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] and all(
        abs(x - y) < 0.02 * x for (_, x), (_, y) in zip(a, b, strict=True)
    )
    assert b[-1][1] < b[0][1] - 0.1  # it learns
    weights = load_file(tmp_path / "two" / "final" / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())  # the optimizer stepped fp32 masters


def test_tied_embeddings_shard_train_and_round_trip_through_hugging_face(code_corpus, bpe_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from codemill.model.hf import import_hf

    tied = "model={hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, tie_embeddings: true}"
    extra = ["--set", tied, "--set", "max_steps=2", "--set", "data_shards=2"]
    run(train_cmd(code_corpus, bpe_dir, tmp_path / "one", *extra))
    run(train_cmd(code_corpus, bpe_dir, tmp_path / "two", *extra, torchrun=2))
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert all(abs(x - y) < 1e-5 for (_, x), (_, y) in zip(a, b, strict=True))
    final = tmp_path / "two" / "final"
    assert "lm_head.weight" not in load_file(final / "model.safetensors")  # one matrix, stored once
    ours = import_hf(final)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    hf = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval()
    ids = torch.randint(0, ours.cfg.vocab_size, (1, 12))
    with torch.no_grad():
        assert torch.allclose(ours(ids), hf(ids).logits, atol=1e-5)


def test_killed_run_resumes_to_the_same_loss_curve(code_corpus, bpe_dir, tmp_path):
    extra = ["--set", "max_steps=10", "--set", "ckpt_every=3", "--set", "keep_last=2", "--set", "log_every=2"]
    run(train_cmd(code_corpus, bpe_dir, tmp_path / "straight", *extra))
    cmd = train_cmd(code_corpus, bpe_dir, tmp_path / "killed", *extra)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "state"
    deadline = time.time() + 120
    while not (state / "step-00000003").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in state.glob("step-*"))
    assert done and "step-00000010" not in done, "the run finished before it could be killed"
    run(cmd)  # the same command resumes
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")  # bitwise on CPU
    wa, wb = (load_file(tmp_path / r / "final" / "model.safetensors") for r in ("straight", "killed"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any((tmp_path / "killed" / "tensorboard").iterdir())
    kept = sorted(p.name for p in state.glob("step-*"))
    assert kept == ["step-00000009", "step-00000010"]  # the last two, no leftovers


def test_continue_pretraining_from_a_hf_checkpoint_then_plot(code_corpus, bpe_dir, tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=2048,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "base")
    run(
        train_cmd(
            code_corpus,
            bpe_dir,
            tmp_path / "cont",
            "--init-from",
            str(tmp_path / "base"),
            "--set",
            "max_steps=3",
        )
    )
    final = tmp_path / "cont" / "final"
    assert (final / "tokenizer.json").exists() and json.loads((final / "codemill.json").read_text())[
        "format"
    ] == "codemill"
    model = AutoModelForCausalLM.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    assert model.config.vocab_size == 2048
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    r = subprocess.run(
        [sys.executable, "-m", "codemill.cli", "train", "plot", str(tmp_path / "cont")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and (tmp_path / "cont" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_errors_say_what_to_do(code_corpus, bpe_dir, tmp_path):
    r = subprocess.run(
        train_cmd(code_corpus, bpe_dir, tmp_path / "x", "--set", "global_batch=3"),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "split evenly" in r.stdout
    r = subprocess.run(
        train_cmd(code_corpus, bpe_dir, tmp_path / "x", "--set", "lr_max=1"), capture_output=True, text=True
    )
    assert r.returncode == 2 and "unknown train settings" in r.stdout
    with pytest.raises(AssertionError):
        run([sys.executable, "-m", "codemill.cli", "train", "plot", str(tmp_path / "nothing")])


def test_plan_counts_what_backward_keeps_on_the_meta_device():
    """The planner's activations come from autograd's saved tensors on meta: linear in the sequence
    (attention counted as a fused kernel keeps it), a checkpointed block keeps exactly its input, and
    states and time follow their definitions."""
    from codemill.model.llama import preset
    from codemill.train.metrics import flops_per_token
    from codemill.train.plan import meta_model, plan, saved_activations

    cfg = preset("small", num_layers=2)
    model = meta_model(cfg)
    real = sum(p.numel() for p in type(model)(cfg).parameters())
    assert model.num_params() == real  # the meta model is the model
    short, long = (saved_activations(model, 2, s, False).per_module["layers.1"] for s in (1024, 4096))
    assert 3.9 < long / short < 4.1  # 4x the tokens, 4x the bytes: no T x T scores
    ckpt = saved_activations(model, 2, 1024, True)
    assert ckpt.per_module["layers.1"] == 2 * 1024 * cfg.hidden_size * 2  # its bf16 input
    assert ckpt.recompute == saved_activations(model, 2, 1024, False).per_module["layers.0"]
    p = plan(model, seq_len=1024, micro_batch=2, global_batch=64, tokens=1e9, gpus=8, gpu_memory_gb=80,
             peak_tflops=989, mfu=0.4)  # fmt: skip
    assert p["states"] == 16 * real / 8 and p["steps"] == 1e9 / (64 * 1024)
    assert p["gpu_hours"] == pytest.approx(1e9 * flops_per_token(model, 1024) / (0.4 * 989e12) / 3600)
    assert p["memory"]["checkpointing"]["total"] < p["memory"]["no checkpointing"]["total"]
    tight = plan(model, seq_len=1024, micro_batch=2, global_batch=64, tokens=1e9, gpus=8, gpu_memory_gb=1.5,
                 peak_tflops=989, mfu=0.4)  # fmt: skip
    assert not tight["memory"]["no checkpointing"]["fits"]


def test_train_plan_and_dry_run_commands(tmp_path):
    from typer.testing import CliRunner

    from codemill.cli import app

    runner = CliRunner()
    r = runner.invoke(
        app, ["train", "plan", "recipes/aixcoder-7b.yaml", "--gpus", "64", "--tokens", "1.2e12"]
    )
    assert r.exit_code == 0 and "7.43B parameters" in r.output and "GPU-hours" in r.output, r.output
    r = runner.invoke(app, ["train", "--dry-run", "--recipe", "recipes/demo.yaml"])
    assert r.exit_code == 0 and "7,096,576" in r.output and "layers.1-3 (each)" in r.output, r.output
