"""The training loop: one code path from a laptop CPU to torchrun on many nodes.

The global batch is drawn from `data_shards` training streams, each contributing
global_batch / data_shards windows per step, and rank r reads shards r, r + world, ... (through a
DataLoader whose `loader_workers` pack them ahead of the step; data/loader.py). So the sequences of a
step do not depend on the world size nor on the workers, the loss is normalized by the global count of
trained tokens, and one process and N processes take the same optimizer step (tested).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import signal
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from codemill.data.config import DataConfig
from codemill.data.loader import WindowLoader
from codemill.data.objectives import Objective
from codemill.data.tokenizer import load_tokenizer
from codemill.errors import UserError, atomic_write, writing
from codemill.model import lora
from codemill.model.hf import export_hf, import_hf
from codemill.model.llama import Llama, ModelConfig, preset
from codemill.train import checkpoint
from codemill.train.config import TrainConfig
from codemill.train.dist import Dist, all_reduce, setup, shard, teardown
from codemill.train.loss import objective_sums
from codemill.train.metrics import Metrics, flops_per_token, peak_flops
from codemill.train.optim import build_optimizer, lr_at

TRAINED = [o for o in Objective if o != Objective.PADDING]  # the rows of the loss sums that carry a loss
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def model_config(tcfg: TrainConfig, vocab: int | None, seq_len: int) -> ModelConfig:
    """The preset with the recipe's overrides, the vocabulary padded to a multiple of 128 (Megatron's
    rule; None keeps the preset's) and room for the sequence length."""
    cfg = preset(tcfg.preset, **tcfg.model)
    if vocab is not None:
        cfg.vocab_size = -(-vocab // 128) * 128
    cfg.max_seq_len = max(cfg.max_seq_len, seq_len)
    return cfg


def build_model(tcfg: TrainConfig, vocab: int, seq_len: int, device: torch.device) -> Llama:
    if tcfg.lora_rank and not tcfg.init_from:
        raise UserError("train.lora_rank adapts a checkpoint: give it one with --init-from (train.init_from)")
    if tcfg.init_from:
        model = import_hf(tcfg.init_from, **tcfg.model)
        if model.cfg.vocab_size < vocab:
            raise UserError(
                f"{tcfg.init_from} has {model.cfg.vocab_size} ids but the tokenizer {vocab}: use the checkpoint's tokenizer"
            )
        return model.to(device)
    with torch.device("meta"):
        model = Llama(model_config(tcfg, vocab, seq_len))
    model.to_empty(device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tcfg.seed)  # the same initial weights on every rank and world size
        model.init_weights()
    return model


def _bf16(tcfg: TrainConfig, device: torch.device) -> bool:
    if tcfg.dtype not in ("auto", "bf16", "fp32"):
        raise UserError(f"train.dtype must be auto, bf16 or fp32, not {tcfg.dtype!r}")
    return tcfg.dtype == "bf16" or (tcfg.dtype == "auto" and device.type == "cuda")


def _autocast(tcfg: TrainConfig, device: torch.device):
    """bf16 compute on one process; under FSDP2 the mixed-precision policy casts (autocast is then a no-op)."""
    return (
        torch.autocast(device.type, dtype=torch.bfloat16) if _bf16(tcfg, device) else contextlib.nullcontext()
    )


def _lora(tcfg: TrainConfig) -> dict:
    """The adapter settings, as model/lora.py takes them."""
    return {"rank": tcfg.lora_rank, "alpha": tcfg.lora_alpha, "dropout": tcfg.lora_dropout,
            "targets": tcfg.lora_targets}  # fmt: skip


def _plan(tcfg: TrainConfig, d: Dist) -> tuple[list[int], int, int]:
    """This rank's data shards, windows per shard per step, and micro-steps per step."""
    shards = tcfg.data_shards or d.world
    per_rank = tcfg.global_batch // d.world
    if shards % d.world or tcfg.global_batch % shards or per_rank % tcfg.micro_batch:
        raise UserError(
            f"global_batch {tcfg.global_batch} must split evenly over data_shards {shards}, world size {d.world} "
            f"and micro_batch {tcfg.micro_batch}"
        )
    return list(range(d.rank, shards, d.world)), tcfg.global_batch // shards, per_rank // tcfg.micro_batch


def train(
    corpus: str | Path,
    tokenizer: str | Path,
    out: str | Path,
    dcfg: DataConfig,
    tcfg: TrainConfig,
    console=None,
    resume_anyway: bool = False,
) -> Path:
    """Train (or resume the run in `out`); returns the exported final model directory. A run is
    resumed only with the settings it was started with (`RESUMABLE` aside), unless `resume_anyway`."""
    out = Path(out)
    d = setup()
    try:
        with _stop_signals():
            return _train(Path(corpus), Path(tokenizer), out, dcfg, tcfg, d, console, resume_anyway)
    finally:
        teardown(d)


# SIGUSR1: Slurm's warning before a time limit or a preemption (`sbatch --signal`); SIGTERM: scancel,
# a preempting scheduler, `kill`. Either ends the run at the next step with a checkpoint.
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_received: list[int] = []


@contextlib.contextmanager
def _stop_signals():
    """Record STOP_SIGNALS while training (only the main thread may set handlers); restore after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    old = {s: signal.signal(s, lambda n, _: _received.append(n)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _stopped(out: Path, step: int, d: Dist) -> None:
    """After the checkpoint of a signalled step: stopped.json tells a batch script to requeue."""
    name = signal.Signals(_received[0]).name if _received else "a signal on another rank"
    if d.main:
        (out / "stopped.json").write_text(json.dumps({"step": step, "signal": name}) + "\n")
    raise UserError(
        f"stopped by {name} after step {step}, saved in {out / 'state'}; rerun the same command to resume"
    )


# what may change when a run resumes: when it ends, how often it logs and saves, and how it computes
# (the same math); everything else (data, objectives, optimiser, batch, model, corpus, tokenizer)
# would continue one run's weights and data position under another's settings
RESUMABLE = {"train.max_steps", "train.max_minutes", "train.ckpt_every", "train.keep_last", "train.log_every",
             "train.threads", "train.peak_flops", "train.compile", "train.activation_checkpointing",
             "train.loss_chunk", "train.max_bad_steps", "train.spike", "train.loader_workers"}  # fmt: skip


def _digest(tokenizer: Path) -> str:
    """The tokenizer's identity: a hash of its files (a directory's, or the one file)."""
    files = [tokenizer / n for n in TOKENIZER_FILES] if tokenizer.is_dir() else [tokenizer]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _changed(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two run.json dicts (keys only one side has: skipped)."""
    out = []
    for k in old.keys() & new.keys():
        key = f"{prefix}{k}"
        if isinstance(old[k], dict) and isinstance(new[k], dict) and k in ("data", "train", "model"):
            out += _changed(old[k], new[k], f"{key}.")
        elif old[k] != new[k] and key not in RESUMABLE:
            out.append(f"{key} {old[k]!r} -> {new[k]!r}")
    return out


def _train(corpus, tokenizer, out, dcfg, tcfg, d: Dist, console, resume_anyway: bool = False) -> Path:
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    tok = load_tokenizer(tokenizer)
    shards, per_shard, accum = _plan(tcfg, d)
    model = build_model(tcfg, tok.vocab_size, dcfg.seq_len, d.device)
    model.checkpointing = tcfg.activation_checkpointing
    fpt = flops_per_token(model, dcfg.seq_len)
    n_params = model.num_params()
    if tcfg.lora_rank:
        lora.add_adapters(model, **_lora(tcfg), seed=tcfg.seed)
        if _bf16(tcfg, d.device):
            lora.freeze_to(model, torch.bfloat16)
    model = shard(model, d, bf16=_bf16(tcfg, d.device))
    if tcfg.compile:
        for block in model.model.layers:
            block.compile()
    optim = build_optimizer(model, tcfg)
    torch.manual_seed(tcfg.seed + 1 + d.rank)  # dropout streams, one per rank

    out.mkdir(parents=True, exist_ok=True)
    state_dir = out / "state"
    step, tokens_seen = 0, 0
    interval = torch.zeros(len(Objective), 2, dtype=torch.float64, device=d.device)  # sums since the last log
    data: dict[int, dict] = {}  # the shards' stream states to start from
    config = {"data": dcfg.to_dict(), "train": tcfg.to_dict(), "model": model.cfg.to_dict(),
              "corpus": str(corpus.resolve()), "tokenizer": _digest(tokenizer)}  # fmt: skip
    config = json.loads(json.dumps(config))  # tuples as lists, as run.json reads back
    say = _say(console, d)
    watch = Watch(tcfg)
    if checkpoint.complete(state_dir):
        changed = (
            _changed(json.loads((out / "run.json").read_text()), config)
            if (out / "run.json").exists()
            else []
        )
        if changed and (not resume_anyway or any(c.startswith(("model.", "tokenizer ")) for c in changed)):
            raise UserError(
                f"{out} holds a run started with other settings ({'; '.join(changed)}): rerun with its "
                "settings to resume it, give another --out for a new run, or pass --resume-anyway to "
                "continue its weights and data position under the new settings (not for model or "
                "tokenizer changes)"
            )
        last = checkpoint.newest_whole(state_dir, d, say)
        if last is None:
            raise UserError(
                f"no checkpoint in {state_dir} verifies (each is kept as step-N.bad, with what is wrong "
                "said above): restore one from a copy, or rerun to start the run afresh"
            )
        meta, data = checkpoint.load(last, model, optim, shards, d)
        step, tokens_seen = meta["step"], meta["tokens"]
        interval = torch.tensor(meta["interval"], dtype=torch.float64, device=d.device)
        watch.load(meta)
    windows = WindowLoader(
        corpus, tok, dcfg, shards, tcfg.data_shards or d.world, per_shard, tcfg.loader_workers, data
    )
    if d.main:
        atomic_write(out / "run.json", json.dumps(config, indent=2) + "\n", "the run settings")
    metrics = Metrics(out, d.main, step, watch.events)
    peak = peak_flops(d.device, tcfg.peak_flops)
    progress = _progress(console, tcfg.max_steps, step) if d.main and console else None
    t_last, tokens_last = time.perf_counter(), tokens_seen
    deadline, data_s, last, stop = t_last + tcfg.max_minutes * 60, 0.0, step >= tcfg.max_steps, False
    while not last:
        t = time.perf_counter()
        tokens, codes = windows.next_step()
        data_s += time.perf_counter() - t
        tokens, codes = tokens.to(d.device), codes.to(d.device)
        count = all_reduce((codes[:, 1:] != Objective.PADDING).sum().double(), d).item()
        sums = torch.zeros(len(Objective), 2, dtype=torch.float64, device=d.device)
        model.train()
        for m in range(accum):
            rows = slice(m * tcfg.micro_batch, (m + 1) * tcfg.micro_batch)
            x, y, c = tokens[rows, :-1], tokens[rows, 1:], codes[rows, 1:].flatten()
            with _autocast(tcfg, d.device):
                losses = model(x, targets=y, loss_chunk=tcfg.loss_chunk)
            mask = (c != Objective.PADDING).to(losses.dtype)
            # FSDP averages gradients over ranks: scale by world so the step is the global token mean
            ((losses * mask).sum() * (d.world / max(count, 1.0))).backward()
            sums += objective_sums(losses.detach().double(), c)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        # the step's loss sums, each rank's verdict on its gradient shard and whether it received a
        # stop signal, in the one all-reduce the step makes anyway: every rank takes the same decision
        local = grad_norm.to_local() if hasattr(grad_norm, "to_local") else grad_norm
        flags = torch.stack([(~torch.isfinite(local)).double().reshape(()), torch.tensor(float(bool(_received)),
                             dtype=torch.float64, device=d.device)])  # fmt: skip
        reduced = all_reduce(torch.cat([sums.flatten(), flags]), d)
        sums = reduced[:-2].view_as(sums)
        step_loss = sums[TRAINED, 0].sum() / sums[TRAINED, 1].sum().clamp(min=1)
        loss, bad, stop = torch.stack([step_loss, reduced[-2], reduced[-1]]).tolist()  # one host sync
        stop = stop > 0
        verdict = watch.judge(loss, bad > 0)
        lr = lr_at(step, tcfg)
        if verdict.apply:
            for group in optim.param_groups:
                group["lr"] = lr
            optim.step()
            interval += sums
        optim.zero_grad(set_to_none=True)
        if verdict.event:
            metrics.event({**verdict.event, "step": step + 1})
            say(f"step {step + 1}: {verdict.text}")
        rollback = verdict.action == "rollback" and watch.bad_in_row < tcfg.max_bad_steps
        if rollback and (back := checkpoint.newest_whole(state_dir, d, say)) is not None:
            meta, _ = checkpoint.load(back, model, optim, shards, d)  # the streams stay where they are
            event = watch.rolled_back(meta, step + 1, tcfg.global_batch)
            metrics.event(event)
            say(f"rolled back to {back.name}; the data of steps {event['skipped_steps']} is skipped")
            step, tokens_seen = meta["step"], meta["tokens"]
            interval = torch.tensor(meta["interval"], dtype=torch.float64, device=d.device)
            metrics.rewind(step)
            if progress:
                progress[0].update(progress[1], completed=step)
            continue
        step += 1
        tokens_seen += tcfg.global_batch * dcfg.seq_len
        diverged = watch.bad_in_row >= tcfg.max_bad_steps
        last = diverged or step >= tcfg.max_steps or _past(deadline, tcfg, d)
        if step % tcfg.log_every == 0 or last:
            sums, interval = interval, torch.zeros_like(interval)
            now = time.perf_counter()
            rate = (tokens_seen - tokens_last) / (now - t_last) / d.world
            t_last, tokens_last = now, tokens_seen
            norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            trained = sums[TRAINED, 1].sum() > 0  # none when every step since the last record was skipped
            record = {
                "step": step,
                "loss": (sums[TRAINED, 0].sum() / sums[TRAINED, 1].sum()).item() if trained else None,
                **{
                    f"loss_{name}": (sums[c, 0] / sums[c, 1]).item() if sums[c, 1] > 0 else None
                    for c, name in ((o, o.label) for o in Objective if o != Objective.PADDING)
                },
                **{f"tokens_{o.label}": int(sums[o, 1].item()) for o in Objective if o != Objective.PADDING},
                "lr": lr,
                "grad_norm": norm if math.isfinite(norm) else None,
                "skipped_steps": watch.skipped,  # the run's so far: updates not applied (non-finite, spikes)
                "spikes": watch.spikes,
                "tokens": tokens_seen,
                "tokens_per_s_per_device": rate,
                "mfu": rate * fpt / peak if peak else None,
                "padding": 1 - count / (tcfg.global_batch * dcfg.seq_len),
                "data_s": data_s,  # spent waiting for windows since the last record
            }
            data_s = 0.0
            metrics.log(record)
            if progress:
                progress[0].update(progress[1], completed=step, info=_describe(record))
        elif progress:
            progress[0].update(progress[1], completed=step)
        if diverged:
            break
        if step % tcfg.ckpt_every == 0 or last or stop:
            if not checkpoint.finite(model, d):
                raise UserError(
                    f"the weights are not finite after step {step}, whose loss and gradient norm were: the "
                    f"update overflowed them (lower train.lr); no checkpoint was written; {_last_good(state_dir)}"
                )
            data = windows.state_dict()  # what was trained on, not what the workers packed ahead
            meta = {"tokens": tokens_seen, "interval": interval.tolist(), **watch.state()}
            checkpoint.save(state_dir, step, model, optim, data, meta, d, tcfg.keep_last)
        if stop and not last:
            break
    windows.close()
    if progress:
        progress[0].stop()
    metrics.close()
    if stop and not last:
        _stopped(out, step, d)
    if diverged:
        raise UserError(
            f"training stopped at step {step}: {watch.bad_in_row} steps in a row were skipped "
            f"({watch.why()}; train.max_bad_steps {tcfg.max_bad_steps}), their updates not applied; "
            f"{_last_good(state_dir)}: lower train.lr, or restart from an earlier checkpoint, and rerun"
        )
    with writing("the final model", out / "final"):
        return _export(model, out, tokenizer, dcfg, tcfg, d, n_params)


def _last_good(state_dir: Path) -> str:
    last = checkpoint.latest(state_dir)
    return (
        f"the last checkpoint is {last}, whose weights are finite"
        if last
        else "no checkpoint was written yet"
    )


def _say(console, d: Dist):
    """A line for the user, from rank 0 only."""

    def say(text: str) -> None:
        if d.main:
            (console.print if console else print)(text)

    return say


@dataclass
class Verdict:
    apply: bool  # the optimizer steps
    action: str | None = None  # None, "skip" (non-finite), or the spike action
    event: dict | None = None
    text: str = ""


class Watch:
    """Judges each step before its update: a non-finite loss or gradient norm skips it; a loss over
    `spike.factor` x the median of the last `spike.window` applied steps is a spike and gets
    `spike.action`. Its state goes into every checkpoint, so a resumed run judges as the first did."""

    def __init__(self, tcfg: TrainConfig):
        self.window, self.factor, self.action = (tcfg.spike[k] for k in ("window", "factor", "action"))
        self.losses: deque[float] = deque(maxlen=max(self.window, 1))
        self.skipped = self.spikes = self.bad_in_row = self.events = 0
        self.reasons: list[str] = []

    def state(self) -> dict:
        return {"losses": list(self.losses), "skipped": self.skipped, "spikes": self.spikes,
                "bad_in_row": self.bad_in_row, "events": self.events}  # fmt: skip

    def load(self, meta: dict) -> None:
        self.losses.extend(meta.get("losses", []))
        for k in ("skipped", "spikes", "bad_in_row", "events"):
            setattr(self, k, meta.get(k, 0))

    def judge(self, loss: float, grad_nonfinite: bool) -> Verdict:
        if grad_nonfinite or not math.isfinite(loss):
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            return self._bad("skip", f"non-finite {what}", {"event": "nonfinite", "loss": _num(loss)})
        median = statistics.median(self.losses) if self.window and len(self.losses) == self.window else None
        if median is not None and loss > self.factor * median:
            self.spikes += 1
            event = {"event": "spike", "loss": loss, "median": median, "action": self.action}
            text = f"loss spike {loss:.3f} > {self.factor:g} x median {median:.3f} of the last {self.window} steps"
            if self.action != "warn":
                return self._bad(self.action, text, event)
            self.events += 1
            self.losses.append(loss)
            self.bad_in_row = 0
            return Verdict(True, "warn", event, f"{text}: applied (train.spike.action warn)")
        self.losses.append(loss)
        self.bad_in_row = 0
        return Verdict(True)

    def _bad(self, action: str, text: str, event: dict) -> Verdict:
        self.skipped += 1
        self.bad_in_row += 1
        self.events += 1
        self.reasons.append(text)
        return Verdict(False, action, event, f"{text}: {'skipped' if action == 'skip' else action}")

    def rolled_back(self, meta: dict, spike_step: int, windows_per_step: int) -> dict:
        """Back to a checkpoint's judgement (the counts of what happened since are kept)."""
        self.losses.clear()
        self.losses.extend(meta.get("losses", []))
        self.events += 1
        return {"event": "rollback", "step": spike_step, "to_step": meta["step"],
                "skipped_steps": [meta["step"] + 1, spike_step],
                "skipped_windows": (spike_step - meta["step"]) * windows_per_step}  # fmt: skip

    def why(self) -> str:
        recent = self.reasons[-self.bad_in_row :] if self.bad_in_row else []
        return ", ".join(sorted(set(recent))) or "bad steps"


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def _past(deadline: float, tcfg: TrainConfig, d: Dist) -> bool:
    """Whether the wall-clock budget is spent, decided by rank 0 for every rank (clocks differ)."""
    if not tcfg.max_minutes:
        return False
    flag = torch.tensor(float(d.main and time.perf_counter() >= deadline), device=d.device)
    return all_reduce(flag, d).item() > 0


def _describe(r: dict) -> str:
    parts = [f"loss {r['loss']:.3f}" if r["loss"] is not None else "loss -"]
    parts += [f"{k[5:]} {r[k]:.2f}" for k in ("loss_ntp", "loss_fim", "loss_sfim") if r[k] is not None]
    parts.append(f"{r['tokens_per_s_per_device']:,.0f} tok/s")
    if r["skipped_steps"] or r["spikes"]:
        parts.append(f"skipped {r['skipped_steps']} · spikes {r['spikes']}")
    if r["mfu"] is not None:
        parts.append(f"MFU {r['mfu']:.1%}")
    return " · ".join(parts)


def _progress(console, total: int, start: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console,
    )  # fmt: skip
    task = bar.add_task("train", total=total, completed=start, info="")
    bar.start()
    return bar, task


def _export(
    model, out: Path, tokenizer: Path, dcfg: DataConfig, tcfg: TrainConfig, d: Dist, n_params: int
) -> Path:
    """The final model in the HF Llama layout (adapters merged), with its tokenizer and codemill.json."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    final = out / "final"
    if d.main:
        plain = lora.plain(model.cfg, full, _lora(tcfg) if tcfg.lora_rank else None)
        export_hf(plain, final, dtype=torch.float32 if d.device.type == "cpu" else torch.bfloat16)
        src = tokenizer if tokenizer.is_dir() else tokenizer.parent
        for name in TOKENIZER_FILES:
            if (src / name).exists():
                shutil.copy2(src / name, final / name)
        info = {
            "format": dcfg.format,
            "parameters": n_params,
            "data": dcfg.to_dict(),
            "train": tcfg.to_dict(),
        }
        (final / "codemill.json").write_text(json.dumps(info, indent=2) + "\n")
    return final
