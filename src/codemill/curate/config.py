"""Curation settings: the paper's values as defaults, every one overridable from a recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

from codemill.config import Settings, at_least, fraction, positive
from codemill.curate.syntax import MAX_ERROR_SHARE

# where and how fast a run executes, not what it produces: a run resumes under other values
EXECUTION = (
    "workers",
    "slurm_partition",
    "slurm_time",
    "slurm_cpus_per_task",
    "slurm_mem_per_cpu_gb",
    "slurm_qos",
)


@dataclass
class CurateConfig(Settings):
    section = "curate"
    # execution
    tasks: int = positive(4)
    workers: int = positive(2)  # processes on this machine (local), tasks at a time (ray, slurm)
    # Slurm (`--executor slurm`): each stage an array job of its tasks, `workers` of them at a time
    slurm_partition: str | None = None  # None: the cluster's default partition
    slurm_time: str = "24:00:00"  # the limit of one task
    slurm_cpus_per_task: int = positive(1)
    slurm_mem_per_cpu_gb: int = positive(2)
    slurm_qos: str | None = None
    # per-task working sets; task counts follow the input's size so these stay fixed as it grows
    bucket_mb: int = 64  # tables: uncompressed MB per shuffle bucket (a scan task holds one)
    buffer_mb: int = 128  # rows a shuffle or scan task buffers before writing its partitions
    part_files: int = positive(1_000_000)  # files per dedup part (exact and verify tasks; bucket ranges)
    dedup_tasks: int = at_least(0, 0)  # 0: max(tasks, files in the tables / part_files)
    # sources: column names of The Stack-style tables
    columns: dict[str, str] = field(
        default_factory=lambda: {
            "content": "content",
            "path": "path",
            "repo": "repo",
            "license": "license",
            "stars": "stars",
        }
    )
    # languages
    keep_kinds: tuple[str, ...] = ("code",)  # add "markup", "data", "prose" to keep those
    # licenses
    blueoak_tiers: tuple[str, ...] = ("Model", "Gold", "Silver", "Bronze")
    stack_list: bool = True  # The Stack v1.1's list (weak copyleft already removed)
    drop_unknown_license: bool = True
    # repository score: weights on log1p(stars), log1p(commits), log1p(test files)
    score_weights: dict[str, float] = field(
        default_factory=lambda: {"stars": 1.0, "commits": 0.5, "tests": 1.0}
    )
    drop_lowest_fraction: float = fraction(0.10)
    # file rules
    max_bytes: int = 1_000_000
    max_lines: int = 10_000
    max_line_length: int = 1_000
    min_alnum_fraction: float = 0.25
    max_encoded_fraction: float = 0.5
    max_encoded_run: int = 1024
    # near dedup
    num_perm: int = 256
    bands: int = 21
    rows: int = 12
    ngram: int = 5
    threshold: float = fraction(0.85)
    max_bucket_pairs: int = 64  # a bucket larger than this links members to a few heads only
    # syntax
    parse_timeout_s: float = 2.0
    # C/C++: the share of a file's bytes under ERROR nodes above which it fails (macros make a few);
    # None reads "fails to parse" literally, as for the other languages (syntax.py, docs/design.md)
    syntax_max_error_share: float | None = MAX_ERROR_SHARE
    # static analysis
    static_analysis: bool = True
    drop_severities: tuple[str, ...] = ("blocker", "critical")
    # sensitive words and PII
    sensitive_words: tuple[str, ...] = (
        "CONFIDENTIAL AND PROPRIETARY",
        "PROPRIETARY AND CONFIDENTIAL",
        "STRICTLY CONFIDENTIAL",
        "COMPANY CONFIDENTIAL",
        "CONTAINS TRADE SECRETS",
    )
    sensitive_words_file: str | None = None
    pii: bool = True
    # decontamination
    decontam_humaneval: bool = True
    decontam_shipped: bool = True  # the benchmark data codemill ships: MBPP, MultiPL-E, HumanEval-infilling
    decontam_files: tuple[str, ...] = ()
    decontam_ngram: int = 13
    seed: int = 0

    def identity(self) -> dict:
        """The settings that decide the corpus (EXECUTION left out), as a resumed run must match them."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION}
