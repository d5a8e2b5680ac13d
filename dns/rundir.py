"""Run directories: what a run writes into one, the lock that gives one to a single process, and the rules for
starting in one, so that no run replaces, or mixes with, the results of another.

- A new run starts in a directory that does not exist or is empty; one holding a run is refused (resume=true goes
  on with it, overwrite=true replaces it); a non-empty one holding no run is refused, overwrite=true or not.
- resume=true goes on from checkpoints/latest.pt, or starts over in a directory of a run killed before its first
  checkpoint; a directory of anything else is refused. In a sweep, a job that never started simply starts.
- The process that runs in a directory holds an exclusive lock on its LOCK file (flock: the kernel drops it when
  the process dies, even by SIGKILL); another process is refused while it lives.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

LOCK = ".dns.lock"
# what dns-train and Hydra write into a run directory; overwrite=true removes these and nothing else
RUN_FILES = (".hydra", "train.log", "history.csv", "report.json", "report.md", "plots", "checkpoints", LOCK)
RUN_MARKS = {".hydra", "train.log", "checkpoints", LOCK}  # a directory holding one of these is a run's
WHERE = "hydra.run.dir=DIR, or hydra.sweep.dir=DIR with -m"  # how a command names its run directory


class RunDirError(ValueError):
    """A run directory a run may not start in; the message says why and what to do."""


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the process holding `run_dir`'s lock (0 if it wrote none yet), or None if it is free.
    Reads only: a directory that is checked is left as it was."""
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except OSError:  # no lock file (or none readable): no run holds it
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """The exclusive lock on a run directory (created if missing), held until `release` or the process ends."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.made = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # what release(remove) takes back
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(f"cannot write into the run directory {run_dir} ({e.strerror}): give a writable "
                              f"one ({WHERE})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(busy(run_dir, lock_holder(run_dir))) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd: int | None = fd
        # a forked child (a DataLoader worker) shares the lock; closing its copy lets the lock go with this process
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def release(self, remove: bool = False) -> None:
        """Let the directory go; `remove`: and take back the lock file, and the directory if this lock made it."""
        if self.fd is None:
            return
        if remove:
            (self.run_dir / LOCK).unlink(missing_ok=True)
            for path in self.made:  # the run directory first, then the parents made for it
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
        os.close(self.fd)  # closing drops the flock
        self.fd = None


def busy(run_dir: Path, pid: int | None) -> str:
    return f"{run_dir} is in use by a running dns-train (pid {pid}): wait for it to end, or give another ({WHERE})"


def run_state(run_dir: Path) -> str:
    """How a run directory's run ended, as its report says (completed, failed, interrupted), else 'unfinished'."""
    try:
        return str(json.loads((run_dir / "report.json").read_text())["status"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unfinished"


def check_start(run_dir: Path, resume: bool, overwrite: bool, sweep_dir: Path | None = None) -> None:
    """Raise RunDirError if a run may not start (or, with `resume`, go on) in `run_dir` by the rules above;
    `sweep_dir`: the sweep the run is a job of. Writes nothing. The checkpoint's settings are checked elsewhere."""
    where = "hydra.sweep.dir" if sweep_dir is not None else "hydra.run.dir"
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{where}: {run_dir} is a file, not a directory: give a directory path")
    holder = lock_holder(run_dir)
    if holder is not None:
        raise RunDirError(busy(run_dir, holder))
    names = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    others = [n for n in names if n not in RUN_FILES]
    is_run = bool(RUN_MARKS & set(names))
    if resume:
        if overwrite:
            raise RunDirError("resume=true goes on with a run and overwrite=true replaces it: drop one of them")
        if not run_dir.is_dir():
            if sweep_dir is not None and sweep_dir.is_dir():
                return  # a job of the sweep that never started: it starts now
            raise RunDirError(f"resume=true: there is no {'sweep' if sweep_dir else 'run'} directory "
                              f"{sweep_dir or run_dir}; name the run to go on with ({WHERE})")
        if names and not (run_dir / "checkpoints" / "latest.pt").is_file() and (others or not is_run):
            raise RunDirError(f"resume=true: {run_dir} holds no run of dns-train (no checkpoints/latest.pt; it "
                              f"holds {listing(others or names)}): name the directory of the run to go on with")
        return  # with no checkpoint (killed before its first one), the run starts over in the same directory
    if not names or (overwrite and is_run):
        return
    if is_run:
        raise RunDirError(f"{run_dir} already holds a run ({run_state(run_dir)}): go on with it with resume=true, "
                          f"start afresh in a new {where}, or replace it with overwrite=true")
    raise RunDirError(f"{run_dir} is not empty (it holds {listing(names)}): give a new or empty {where}")


def listing(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def clear_run(run_dir: Path) -> None:
    """Remove what an earlier run wrote into `run_dir` (overwrite=true), keeping the lock and any other file."""
    for name in RUN_FILES:
        path = run_dir / name
        if name == LOCK or not os.path.lexists(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
