"""Training settings (recipe section `train:`): Table I of the paper as defaults where it applies;
`positive` and `at_least` name the bounds `Settings.from_dict` checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from codemill.config import Settings, at_least, fraction, positive
from codemill.errors import UserError

# the linear layers of a block (model/llama.py) that adapters may sit beside; the head is applied by the
# chunked loss through its weight, not called as a module, so an adapter there would never run
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SPIKE = {"window": 64, "factor": 3.0, "action": "warn"}
SPIKE_ACTIONS = ("warn", "skip", "rollback")


@dataclass
class TrainConfig(Settings):
    section = "train"

    preset: str = "demo"  # model/llama.py PRESETS; ignored with init_from
    model: dict = field(default_factory=dict)  # overrides of the preset, e.g. {num_layers: 2}
    init_from: str | None = None  # a Hugging Face checkpoint directory to continue from
    # LoRA on init_from (model/lora.py): rank 0 trains every weight; a rank from 1 to the hidden size
    # trains only adapters of that rank on lora_targets (alpha / rank scales them), the base frozen
    lora_rank: int = at_least(0, 0)
    lora_alpha: float = positive(32.0)
    lora_dropout: float = fraction(0.05)
    lora_targets: tuple[str, ...] = LORA_TARGETS
    # optimisation (Table I: AdamW 0.9 / 0.98, weight decay 0.01, cosine 1e-5 -> 1e-6, clip 1.0)
    lr: float = positive(3e-4)  # Table I's 1e-5 is for continued pretraining of a 7B; small models want more
    min_lr: float = at_least(0, 3e-5)
    warmup_steps: int = at_least(0, 100)
    max_steps: int = positive(1000)
    # a wall-clock budget (0: none): the first step that ends past it is the last, and logs, checkpoints
    # and exports as max_steps would (the schedule is still the one of max_steps)
    max_minutes: float = at_least(0, 0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = at_least(0, 0.01)
    grad_clip: float = positive(1.0)
    # batch: global_batch sequences per step = micro_batch x accumulation x world
    global_batch: int = positive(8)
    micro_batch: int = positive(4)
    # streams the global batch is drawn from; 0 = world size. Fix it to make a run's data independent
    # of the world size (resume on another world size)
    data_shards: int = at_least(0, 0)
    # DataLoader processes that pack this rank's windows ahead of the step, each streaming whole
    # shards (so a divisor of the rank's shard count is used); 0: packed in the training process.
    # The batches are the same either way. 0 by measurement: on CPU the workers take cores from the
    # step (the demo on 2 loaded cores, medians of 3 alternated runs: 1 worker 319 tokens/s, 2 workers 330,
    # in-process 506; benchmarks/bench_loader.py);
    # a GPU run, whose step leaves the CPU idle, can give 1 to overlap packing with the step
    loader_workers: int = at_least(0, 0)
    # numerics and memory
    dtype: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU; or fp32 / bf16
    compile: bool = False
    activation_checkpointing: bool = False
    loss_chunk: int = positive(4096)  # tokens per chunk of the output head + cross-entropy
    # faults (docs/reliability.md): a step whose loss or gradient norm is not finite is skipped (no
    # optimizer update; the step, its data and its learning-rate slot still count); max_bad_steps
    # skipped in a row stop the run. `spike`: a step whose loss is over `factor` x the median of the
    # last `window` applied steps is a spike; `action` warn applies it and says so, skip skips it as
    # a non-finite step is, rollback restores the last checkpoint and goes on from the data after the
    # spike (the windows in between are skipped and recorded in events.jsonl); window 0: no watch
    max_bad_steps: int = positive(10)
    spike: dict = field(default_factory=lambda: dict(SPIKE))
    # checkpoints and logs
    ckpt_every: int = positive(200)
    keep_last: int = positive(2)
    log_every: int = positive(10)
    peak_flops: float = at_least(0, 0.0)  # per device; 0 = from the device table (none for CPUs: no MFU)
    seed: int = 0
    threads: int = at_least(0, 0)  # torch CPU threads; 0 = torch's default

    def check(self) -> None:
        super().check()
        if not isinstance(self.spike, dict) or set(self.spike) - set(SPIKE):
            raise UserError(f"train.spike takes window, factor and action, e.g. {SPIKE}; not {self.spike!r}")
        self.spike = {**SPIKE, **self.spike}
        w, f, a = (self.spike[k] for k in ("window", "factor", "action"))
        if type(w) is not int or w < 0 or isinstance(f, bool) or not isinstance(f, int | float) or f <= 1:
            raise UserError(
                f"train.spike: window is a whole number >= 0 and factor a number > 1, not {w!r}, {f!r}"
            )
        if a not in SPIKE_ACTIONS:
            raise UserError(f"train.spike.action is one of {', '.join(SPIKE_ACTIONS)}, not {a!r}")
        if self.lora_rank and (not self.lora_targets or set(self.lora_targets) - set(LORA_TARGETS)):
            unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
            raise UserError(
                f"train.lora_targets {list(self.lora_targets)}: name one or more of {', '.join(LORA_TARGETS)}"
                + (f" (not {', '.join(unknown)})" if unknown else "")
            )
