"""The training stream of one shard: the document builder (data/documents.py: order, objective,
tokens) composed with the packer (data/packer.py: windows, cursor). Deterministic and resumable:
`state_dict` is the packer's cursor (data/cursor.py). The trainer reads the streams of its shards
through a DataLoader (data/loader.py)."""

from __future__ import annotations

from codemill.data.config import DataConfig
from codemill.data.documents import DocumentBuilder
from codemill.data.packer import Packer
from codemill.data.repo import CodeCorpus
from codemill.data.stats import StreamStats


class TrainingStream(Packer):
    """Shard `rank` of `world`: an iterator of windows {"tokens": int32[seq_len+1], "objective":
    uint8[seq_len+1]}. The builder's corpus, settings, unit order and plans are reachable from the
    stream, as `codemill data` and the held-out benchmarks read them."""

    def __init__(
        self,
        corpus: str | CodeCorpus,
        tokenizer,
        cfg: DataConfig,
        *,
        rank: int = 0,
        world: int = 1,
        stats: StreamStats | None = None,
        epochs: int | None = None,
    ):
        super().__init__(
            DocumentBuilder(corpus, tokenizer, cfg, shard=rank, shards=world, stats=stats), epochs
        )
        self.cfg, self.sources, self.excluded = cfg, self.docs.sources, self.docs.excluded
        self.units, self.plan = self.docs.units, self.docs.plan
