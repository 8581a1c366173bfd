"""What a run reports: MFU (torchtitan's FLOP convention), metrics.jsonl and TensorBoard, the plot."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from codemill.errors import UserError, writing
from codemill.model.llama import Llama

# bf16 dense peak FLOP/s per device (vendor data sheets); a CPU has no entry: pass peak_flops
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def flops_per_token(model: Llama, seq_len: int) -> float:
    """6 x (parameters - embedding) + 12 x layers x heads x head_dim x seq_len (no causal discount)."""
    c = model.cfg
    return 6 * model.num_params(embeddings=False) + 12 * c.num_layers * c.num_heads * c.head_dim * seq_len


def peak_flops(device: torch.device, override: float) -> float | None:
    if override:
        return override
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    return None


def loss_token_mix(rows: list[dict]) -> dict[str, float]:
    """Share of the loss tokens per objective over a run's logged records (`tokens_ntp`, ...)."""
    totals = {
        k.removeprefix("tokens_"): sum(r.get(k) or 0 for r in rows)
        for k in ("tokens_sfim", "tokens_fim", "tokens_ntp")
    }
    n = sum(totals.values())
    return {k: v / n for k, v in totals.items()} if n else {}


def mix_text(mix: dict[str, float]) -> str:
    return " / ".join(f"{k.upper()} {v:.0%}" for k, v in mix.items()) if mix else "-"


class Metrics:
    """metrics.jsonl (one record per logged step), events.jsonl (one line per skipped step, spike or
    rollback) and TensorBoard scalars, written by rank 0 only."""

    def __init__(self, run: Path, enabled: bool, resume_step: int, events: int = 0):
        """`events`: how many lines of events.jsonl the checkpoint resumed from had seen."""
        self.enabled = enabled
        self.path = run / "metrics.jsonl"
        self.events = run / "events.jsonl"
        self.tb = None
        if enabled and self.events.exists():  # events after the checkpoint are met again
            lines = self.events.read_text().splitlines()[:events]
            self.events.write_text("".join(line + "\n" for line in lines))
        self.rewind(resume_step)

    def rewind(self, step: int) -> None:
        """Drop what was logged after `step`: a resume or a rollback redoes those steps."""
        if not self.enabled:
            return
        if self.path.exists():  # a line cut short by a full disk or a kill is dropped too
            keep = [line for line in self.path.read_text().splitlines() if _step(line) <= step]
            self.path.write_text("".join(line + "\n" for line in keep))
        from torch.utils.tensorboard import SummaryWriter

        if self.tb is not None:
            self.tb.close()
        self.tb = SummaryWriter(str(self.path.parent / "tensorboard"), purge_step=step + 1)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        _append(self.path, json.dumps(record) + "\n", "the training metrics")
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float):
                self.tb.add_scalar(k, v, record["step"])

    def event(self, record: dict) -> None:
        if self.enabled:
            _append(self.events, json.dumps(record) + "\n", "the training events")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _append(path: Path, line: str, what: str) -> None:
    """Append one whole line: on a full disk the file is cut back to where it was, so no half line stays."""
    size = path.stat().st_size if path.exists() else 0
    try:
        with writing(what, path, len(line)), path.open("a") as f:
            f.write(line)
    except UserError:
        with path.open("r+") as f:
            f.truncate(size)
        raise


def plot(run: Path) -> Path:
    """loss.png: the total loss and the loss per objective against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run / "metrics.jsonl"
    if not path.exists():
        raise UserError(f"{path} does not exist; is {run} a `codemill train` run directory?")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for key, style in (("loss", "-"), ("loss_ntp", "--"), ("loss_fim", "--"), ("loss_sfim", "--")):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=key.replace("loss_", "").replace("loss", "total"))
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(f"training loss: {run.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    out = run / "loss.png"
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
