"""datatrove's Slurm executor as `codemill curate --executor slurm` submits each stage (a module of
its own: the jobs unpickle the executor by this class's name, and only Slurm runs import datatrove's)."""

from __future__ import annotations

from datatrove.executor import SlurmPipelineExecutor


class Slurm(SlurmPipelineExecutor):
    """Options left unset are left out of the script (datatrove would write `--partition=None`), and
    no merge_stats job follows each stage: codemill reads the tasks' outputs, not stats.json.
    SIGUSR1 (`--signal=USR1@60`: before the time limit or a preemption) runs datatrove's handler,
    which requeues the unfinished task: datatrove installs it but asks Slurm for no signal."""

    def get_sbatch_args(self, max_array: int = 1) -> dict:
        return {k: v for k, v in super().get_sbatch_args(max_array).items() if v is not None}

    def launch_merge_stats(self) -> None:
        pass
