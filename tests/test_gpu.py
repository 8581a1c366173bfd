"""The CUDA paths: bf16 FSDP2 against fp32, the trainer in bf16 and compiled, the serving engine on the
GPU against the CPU, fim-loss's scoring on the GPU. Marked `gpu` and skipped without CUDA;
benchmarks/gpu_check.sh runs them (`pytest -m gpu tests/test_gpu.py`) on the first GPU lent.

CODEMILL_TEST_DEVICE=cpu runs them on the CPU instead (gpu_check.sh --cpu-smoke does, so they cannot
rot where there is no GPU); the device-against-CPU comparisons then compare the CPU with itself.

Tolerances and why (docs: METHOD.md of the device machine; bf16 keeps 8 bits of mantissa, a relative
rounding of 2^-9 = 2e-3 per operand, fp32 24 bits):
- fp32 on the GPU against the CPU: the same greedy tokens and fim-loss nats within 1e-4 relative.
  Only summation order differs (~1e-6); the random checkpoint is drawn with std 0.1 so that its greedy
  path has no near-tie (its smallest top-1 margin is checked to be over 1e-3 of a logit that moves
  by about 0.8), so a different token is a bug, not rounding. TF32 stays off (PyTorch's default).
- bf16 against fp32: logits within 3e-2 relative (L2) and the same top-1 at 90% of the positions at
  least; losses of a training step within 1% and of a short run within 2% (the 2% of
  test_train.py's FSDP2 test), gradients within 5e-2 relative. Measured on the CPU's bf16 for these
  sizes: logits 1.1e-2 and 98% top-1, losses 0.1-0.3%, gradients 0.5-2e-2; the GPU's bf16 products
  also accumulate in fp32, so the same order is expected, and the bounds leave about 3x.
- compiled against eager training, both bf16: losses within 2% (inductor fuses and reorders the
  bf16 roundings).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os

import pytest
import torch

DEVICE = os.environ.get("CODEMILL_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not DEVICE, reason="needs CUDA (CODEMILL_TEST_DEVICE=cpu runs these on the CPU)"),
]
PREFIX = "import json\n\n\ndef load(path):\n    with open(path) as f:\n        "
SUFFIX = "\n    return data\n"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in fp64 (METHOD.md's measure)."""
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2's sharded parameters and gradients) as a whole tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@pytest.fixture(scope="module")
def text_ids(bpe_dir) -> torch.Tensor:
    """4 windows of 257 real code tokens (standard library files, the test tokenizer)."""
    from conftest import STDLIB

    from codemill.data.tokenizer import load_tokenizer

    tok = load_tokenizer(bpe_dir)
    text = "".join((STDLIB / f).read_text() for f in ("textwrap.py", "shlex.py", "colorsys.py", "heapq.py"))
    ids = tok.encode_batch([text])[0][: 4 * 257]
    return torch.tensor(ids).view(4, 257)


@pytest.fixture
def one_rank_group():
    """A process group of one rank (NCCL on CUDA, gloo on the CPU), as torchrun would make, in-process."""
    import torch.distributed as dist

    dist.init_process_group(
        "nccl" if DEVICE == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def _model(vocab: int = 2048):
    from codemill.model.llama import Llama, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, hidden_size=256, intermediate_size=688, num_layers=2, num_heads=4,
                      num_kv_heads=2, max_seq_len=512)  # fmt: skip
    model = Llama(cfg)
    model.init_weights()
    return model


def test_fsdp2_bf16_steps_track_fp32(text_ids, one_rank_group):
    """FSDP2 with train/dist.py's mixed-precision policy (bf16 parameters and compute, fp32 gradient
    reduction into fp32 sharded parameters), on a mesh of one GPU, against the same model in fp32:
    the same losses over three AdamW steps and the same first gradients within bf16's tolerance, and
    the optimizer steps fp32 masters. `dist.shard` returns the model unsharded at world size 1 (one
    GPU trains without FSDP2), so the test applies its two `fully_shard` calls itself, as it does on
    more GPUs."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from codemill.train.config import TrainConfig
    from codemill.train.optim import build_optimizer

    ref = _model().to(DEVICE)
    sharded = copy.deepcopy(ref)
    mesh = init_device_mesh(DEVICE, (1,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)  # dist.shard's
    for block in sharded.model.layers:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(sharded, mesh=mesh, mp_policy=mp)
    x, y = text_ids[:, :-1].to(DEVICE), text_ids[:, 1:].to(DEVICE)
    tcfg = TrainConfig(lr=3e-3, warmup_steps=0)
    runs = {}
    for name, model, bf16 in (("fp32", ref, False), ("bf16", sharded, True)):
        opt = build_optimizer(model, tcfg)
        losses, grads = [], None
        for _ in range(3):
            autocast = torch.autocast(DEVICE, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with autocast:  # as the loop: autocast whenever bf16 (FSDP2's policy casts the parameters)
                loss = model(x, targets=y).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            if grads is None:
                grads = {n: full(p.grad).float().clone() for n, p in model.named_parameters()}
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        runs[name] = losses, grads
    (a, ga), (b, gb) = runs["fp32"], runs["bf16"]
    assert all(abs(p - q) < 0.01 * p for p, q in zip(a, b, strict=True)), (a, b)
    assert b[-1] < b[0]  # it learns
    errors = {n: rel(gb[n], ga[n]) for n in ga}
    assert max(errors.values()) < 5e-2, errors
    assert all(full(p).dtype == torch.float32 for p in sharded.parameters())  # fp32 masters
    assert all(p.device.type == DEVICE for p in sharded.parameters())


def _train(corpus, tokenizer, out, **train) -> list[dict]:
    """`codemill train` in this process (the function the command calls) on the test corpus."""
    from codemill.data.config import DataConfig
    from codemill.train.config import TrainConfig
    from codemill.train.loop import train as run

    model = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}
    tcfg = TrainConfig.from_dict({"model": model, "max_steps": 6, "warmup_steps": 2, "global_batch": 4,
                                  "micro_batch": 2, "log_every": 1, "lr": 3e-3, **train})  # fmt: skip
    run(corpus, tokenizer, out, DataConfig(seq_len=64), tcfg)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(rows: list[dict]) -> list[float]:
    return [r["loss"] for r in rows]


def test_trainer_on_the_device_in_bf16_tracks_fp32(code_corpus, bpe_dir, tmp_path):
    """The trainer as one GPU runs it (bf16 autocast, no FSDP2) against fp32 on the same batches: the
    same losses within 2%, falling; MFU reported where the device's peak is known; the export in bf16
    from a GPU (fp32 from a CPU)."""
    from safetensors.torch import load_file

    from codemill.train.metrics import PEAK_FLOPS

    fp32 = _train(code_corpus, bpe_dir, tmp_path / "fp32", dtype="fp32")
    bf16 = _train(code_corpus, bpe_dir, tmp_path / "bf16", dtype="bf16")
    assert [r["step"] for r in bf16] == [r["step"] for r in fp32] == [1, 2, 3, 4, 5, 6]
    assert all(abs(p - q) < 0.02 * p for p, q in zip(_losses(fp32), _losses(bf16), strict=True)), (fp32, bf16)
    assert bf16[-1]["loss"] < bf16[0]["loss"] - 0.1
    if DEVICE == "cuda" and any(k in torch.cuda.get_device_name() for k in PEAK_FLOPS):
        assert all(r["mfu"] is not None and 0 < r["mfu"] < 1 for r in bf16)
    weights = load_file(tmp_path / "bf16" / "final" / "model.safetensors")
    want = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    assert all(w.dtype == want for w in weights.values())


@pytest.fixture(scope="module")
def sharp_checkpoint(tmp_path_factory, bpe_dir):
    """A random checkpoint with std 0.1: its greedy path has no near-tie (checked below)."""
    from conftest import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("sharp"), bpe_dir, std=0.1)


@pytest.fixture(scope="module")
def cpu_answer(sharp_checkpoint):
    """The CPU's fp32 greedy answer (one slot, no drafts) and its prompt; the answer's smallest top-1
    margin is checked so that a different token on the GPU cannot be a tie broken by rounding."""
    from codemill.serve.engine import Engine

    cpu = Engine(sharp_checkpoint, device="cpu", dtype="fp32", parallel=1, lookup=False)
    cpu.stop_ids = set()  # always 32 tokens
    ids = cpu.prompt(PREFIX, SUFFIX, path="io.py", max_tokens=32)
    answer = cpu.complete(ids, max_tokens=32).tokens
    with torch.no_grad():
        top = cpu.model(torch.tensor([ids + answer]))[0, len(ids) - 1 : -1].topk(2, -1).values
    assert (top[:, 0] - top[:, 1]).min() > 1e-3, "the test checkpoint has a near-tie: draw another"
    return ids, answer


@pytest.mark.parametrize(
    "kw", [{"parallel": 1, "lookup": False}, {"parallel": 4}], ids=["1-slot", "4-slots-drafts"]
)
def test_engine_on_the_device_gives_the_cpus_greedy_tokens_in_fp32(sharp_checkpoint, cpu_answer, kw):
    """The serving engine on the GPU in fp32 (one slot, and the served configuration: 4 slots with
    prompt-lookup drafts) decodes the CPU's greedy tokens, token for token, also when the same request
    comes again (its cache reused)."""
    _same_answer(sharp_checkpoint, cpu_answer, kw)


def _same_answer(checkpoint, cpu_answer, kw: dict) -> None:
    from codemill.serve.engine import Engine

    ids, answer = cpu_answer
    engine = Engine(checkpoint, device=DEVICE, dtype="fp32", **kw)
    engine.stop_ids = set()
    assert engine.cache.k[0].device.type == DEVICE and engine.cache.k[0].dtype == torch.float32
    assert engine.complete(ids, max_tokens=32).tokens == answer
    again = engine.complete(ids, max_tokens=32)
    assert again.tokens == answer and again.tokens_cached == len(ids) - 1


def test_engine_in_bf16_stays_within_tolerance_of_fp32(sharp_checkpoint, cpu_answer):
    """bf16 weights and cache (the GPU's default) against fp32 on the same device, teacher-forced
    over the prompt and the fp32 answer: logits within 3e-2 relative, the same top-1 at 90% of the
    positions or more; and the bf16 engine, drafts on, answers a whole request."""
    from codemill.serve.engine import Engine

    ids, answer = cpu_answer
    fp32, bf16 = (Engine(sharp_checkpoint, device=DEVICE, dtype=d) for d in ("fp32", "bf16"))
    assert bf16.cache.k[0].dtype == torch.bfloat16
    seq = torch.tensor([ids + answer], device=DEVICE)
    with torch.no_grad():
        a, b = fp32.model(seq)[0], bf16.model(seq)[0]
    assert rel(b, a) < 3e-2
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
    bf16.stop_ids = set()
    assert len(bf16.complete(ids, max_tokens=32).tokens) == 32


def test_fim_loss_scores_on_the_device_as_on_the_cpu(text_ids):
    """eval/loss.py's `score` (fim-loss's batched, right-padded scoring) on the GPU in fp32 gives the
    CPU's nats within 1e-4 relative."""
    import numpy as np

    from codemill.eval.loss import score

    model = _model().eval()
    seqs = [
        (row[:n].tolist(), np.ones(n - 1, dtype=bool))
        for row, n in zip(text_ids, (257, 200, 120, 31), strict=True)
    ]
    seqs.append((text_ids[0, :100].tolist(), np.arange(99) >= 60))  # a middle: only its tokens scored
    on_cpu = score(model, seqs, "cpu")
    on_dev = score(copy.deepcopy(model).to(DEVICE), seqs, torch.device(DEVICE))
    assert [n for _, n in on_cpu] == [n for _, n in on_dev] == [256, 199, 119, 30, 39]
    assert all(abs(a - b) <= 1e-4 * abs(a) for (a, _), (b, _) in zip(on_cpu, on_dev, strict=True))


# compiled last: the slowest to start (inductor's kernels), so a budget cut leaves the others run


def test_trainer_compiled_on_the_device_tracks_eager(code_corpus, bpe_dir, tmp_path):
    """`compile: true` (each block through torch.compile, inductor's kernels on a GPU) against eager,
    both bf16 as a GPU trains: the same losses within 2%, falling."""
    eager = _train(code_corpus, bpe_dir, tmp_path / "eager", dtype="bf16")
    compiled = _train(code_corpus, bpe_dir, tmp_path / "compiled", dtype="bf16", compile=True)
    assert [r["step"] for r in compiled] == [r["step"] for r in eager]
    assert all(abs(p - q) < 0.02 * p for p, q in zip(_losses(eager), _losses(compiled), strict=True)), (
        eager,
        compiled,
    )
    assert compiled[-1]["loss"] < compiled[0]["loss"] - 0.1


def test_engine_compiled_on_the_device_gives_the_cpus_greedy_tokens_in_fp32(sharp_checkpoint, cpu_answer):
    """The served configuration's compiled decode step (`--compile`) on the GPU, in fp32: the CPU's
    greedy tokens, token for token."""
    _same_answer(sharp_checkpoint, cpu_answer, {"parallel": 4, "compile": True})
