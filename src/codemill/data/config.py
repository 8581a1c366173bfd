"""Training-stream settings (recipe section `data:`): the paper's rates as defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from codemill.config import Settings, fraction, positive
from codemill.data.objectives import OBJECTIVES, SfimPolicy
from codemill.data.ordering import STRATEGIES
from codemill.errors import UserError
from codemill.formats import DEFAULT_FORMAT


@dataclass
class DataConfig(Settings):
    section = "data"

    format: str = DEFAULT_FORMAT
    seq_len: int = 2048  # windows hold seq_len + 1 tokens
    seed: int = 0
    # Algorithm 1: one strategy per repository
    ordering: dict[str, float] = field(
        default_factory=lambda: {"content": 0.3, "path": 0.3, "dependency": 0.3, "random": 0.1}
    )
    max_clusters: int = positive(20)
    # objectives: paper §III-C. The README says SFIM 70 / NTP 30, issue #17 NTP 40: all settable.
    code_objectives: dict[str, float] = field(default_factory=lambda: {"sfim": 0.7, "fim": 0.15, "ntp": 0.15})
    text_objectives: dict[str, float] = field(default_factory=lambda: {"fim": 0.5, "ntp": 0.5})
    # paper §III-C: "Given a code repository, we choose SFIM with a probability of 70% ...": one draw
    # per repository (`file`, a draw per file, is ours)
    objective_unit: str = "repo"
    fim_spm_rate: float = fraction(0.5)
    sfim_spm_rate: float = fraction(0.7)
    # equations (2) and (3): one layout per document, drawn with the rates above (our reading);
    # `both` trains the same span in both layouts, PSM then SPM (the other reading)
    fim_layouts: str = "drawn"
    # where a FIM / SFIM file meets the end of a window: `context` applies the objective to the piece
    # that fits (cut at a line end; the rest of the file goes on in the next window, objective drawn
    # again for each piece: Bavarian et al.'s context-level FIM), `document` keeps the file whole and
    # spills what does not fit as NTP (document-level)
    fim_level: str = "context"
    sfim_policy: str = "literal"  # the paper's rule; `weighted` is ours (see data/objectives.py)
    sfim_weights: dict[str, float] = field(
        default_factory=lambda: {"statement": 0.5, "block": 0.3, "expression": 0.2}
    )
    sfim_start_at_node: float = fraction(0.5)
    sfim_end_at_node: float = fraction(0.5)
    # `function`: the paper's rule starts from a function; `anywhere` (ours) takes any node of the code
    # where no function has one (module-level code, data tables, pieces cut at context level)
    sfim_scope: str = "function"
    sfim_fallback: str = "fim"  # objective for files SFIM cannot apply to (no grammar, no function)
    repo_metadata: bool = True  # the repository name opens its stream (formats with a repo token)
    # ours: the share of files in a FIM- or SFIM-drawn repository laid out as context for the file
    # after them (`<file_sep>path\n` + code, no end token: Qwen2.5-Coder's repository-level layout,
    # which llama-server's /infill and codemill serve build from an editor's request), trained as NTP;
    # 0: every file of such a repository is a FIM document (the paper's draw, literally)
    repo_context: float = fraction(0.0)
    # repositories kept out of training (a file of names, one per line: `codemill bench build` writes one)
    exclude_repos: str | None = None
    # files kept out of training (repository, a tab, path per line: `bench build --unit file` writes one)
    exclude_files: str | None = None
    # repositories (and text chunks) in a new random order each epoch, so a short run samples the
    # whole corpus; false: corpus order (the paper does not say)
    shuffle_repos: bool = True
    # natural language: .parquet / .jsonl files or directories, and their share of tokens
    text: tuple[str, ...] = ()
    text_column: str = "text"
    text_share: float = 0.0

    def __post_init__(self):
        for name, keys, allowed in (
            ("ordering", self.ordering, STRATEGIES),
            ("code_objectives", self.code_objectives, OBJECTIVES),
            ("text_objectives", self.text_objectives, ("fim", "ntp")),
        ):
            if bad := set(keys) - set(allowed):
                raise UserError(f"data.{name}: unknown {sorted(bad)}; allowed: {', '.join(allowed)}")
            if sum(keys.values()) <= 0 or min(keys.values()) < 0:
                raise UserError(f"data.{name}: rates must be non-negative and not all zero")
        if self.objective_unit not in ("file", "repo"):
            raise UserError("data.objective_unit must be 'file' or 'repo'")
        if self.fim_level not in ("context", "document"):
            raise UserError("data.fim_level must be 'context' or 'document'")
        if self.fim_layouts not in ("drawn", "both"):
            raise UserError("data.fim_layouts must be 'drawn' or 'both'")
        if self.sfim_scope not in ("function", "anywhere"):
            raise UserError("data.sfim_scope must be 'function' or 'anywhere'")
        if self.sfim_policy not in ("weighted", "literal"):
            raise UserError("data.sfim_policy must be 'weighted' or 'literal'")
        if set(self.sfim_weights) - {"statement", "block", "expression"}:
            raise UserError("data.sfim_weights keys are statement, block and expression")
        if self.sfim_fallback not in ("fim", "ntp"):
            raise UserError("data.sfim_fallback must be 'fim' or 'ntp'")
        if not 0 <= self.text_share < 1 or (self.text_share > 0 and not self.text):
            raise UserError("data.text_share must be in [0, 1) and needs data.text files when above 0")
        if self.seq_len < 16:
            raise UserError("data.seq_len must be at least 16")

    @property
    def sfim(self) -> SfimPolicy:
        weights = tuple(self.sfim_weights.items())
        return SfimPolicy(
            self.sfim_policy, weights, self.sfim_start_at_node, self.sfim_end_at_node, self.sfim_scope
        )
