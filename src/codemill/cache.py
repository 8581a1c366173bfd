"""The one folder where codemill keeps what it fetched or computed once per machine:
`$CODEMILL_CACHE` (default ~/.cache/codemill), one subfolder per kind."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    return Path(os.environ.get("CODEMILL_CACHE") or Path.home() / ".cache" / "codemill") / kind
