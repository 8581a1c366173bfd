"""An output checked before the work, not after it."""

from __future__ import annotations

import tempfile
from pathlib import Path

from codemill.errors import UserError


def writable(path: Path | None, directory: bool = True) -> None:
    """Fail before the work, not after it, on an output that cannot be written (a file where a
    folder is needed, a folder where a file is, a read-only place or /proc)."""
    if path is None:
        return
    if directory and path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file; give a directory for this output (a new path is fine)")
    if not directory and path.is_dir():
        raise UserError(f"{path} is a directory; give a file name for this output")
    folder = path if directory else path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(
            f"cannot write {path}: {folder} takes no new files ({e.strerror}); choose another place"
        ) from None
