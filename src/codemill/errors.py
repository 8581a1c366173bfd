"""The one error type for what a user can fix: a wrong option or setting, a missing or malformed
input, a missing tool, a full disk. `codemill` prints its message and exits with code 2; any other
exception is a bug and keeps its traceback."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

FULL = (errno.ENOSPC, errno.EDQUOT)


class UserError(ValueError):
    """Raised with a message that says what to do next."""


class DiskFull(UserError):
    """A full disk, said once (`disk_full`): callers that wrap failures pass it on as it is."""


def size_text(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} TB"


def disk_full_cause(e: BaseException) -> OSError | None:
    """The ENOSPC / EDQUOT OSError behind `e`, if any: raised directly, chained, or collected by
    torch.distributed.checkpoint (each rank's failure as (exception, trace) in a CheckpointException)."""
    seen: set[int] = set()
    todo = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in FULL:
            return x
        todo += [x.__cause__, x.__context__]
        todo += [f[0] if isinstance(f, tuple) else f for f in getattr(x, "failures", {}).values()]
    return None


def _free(where: Path) -> int:
    return shutil.disk_usage(next((p for p in (where, *where.parents) if p.exists()), Path("/"))).free


def short_of_space(where: str | Path, need: int | None = None) -> bool:
    """Whether the disk of `where` has less room than `need` (or than 1 MB): after a failed write,
    the sign of a full disk when the error itself lost its errno."""
    return _free(Path(where)) < max(need or 0, 1 << 20)


def disk_full(what: str, where: str | Path, need: int | None = None) -> DiskFull:
    """The one message for a full disk: what was being written, where, how much it needed and how
    much is free there, and that a rerun resumes."""
    where = Path(where)
    free = _free(where)
    needed = f"about {size_text(need)} needed, " if need else ""
    return DiskFull(
        f"no space left on the disk while writing {what} to {where} ({needed}{size_text(free)} free there): "
        "free some space and rerun the same command; what was finished before is kept"
    )


@contextlib.contextmanager
def writing(what: str, where: str | Path, need: int | None = None) -> Iterator[None]:
    """Turn a full disk met inside the block into `disk_full`'s one line; other errors pass. Some
    writers lose the errno (torch.save's zip writer raises `RuntimeError: unexpected pos`), so a
    failure with less room left than `need` (or than 1 MB) counts as a full disk too."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # DCP's CheckpointException is a BaseException
        if isinstance(e, DiskFull) or (disk_full_cause(e) is None and not short_of_space(where, need)):
            raise
        raise disk_full(what, where, need) from None


def atomic_write(path: Path, data: bytes | str, what: str) -> None:
    """Write a whole file under a temporary name and rename it into place, so a reader never sees
    half of it; on a full disk the temporary file is removed and `disk_full` raised."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    raw = data.encode() if isinstance(data, str) else data
    try:
        with writing(what, path, len(raw)):
            tmp.write_bytes(raw)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
