"""Atomic file writes: every file of a run (and of a synthetic series) goes through `atomic_write`.

The file is written to a hidden temporary name in the same directory, fsynced, then renamed, so a
file that exists under its final name is complete; a failed write leaves nothing partial and raises
`RunWriteError` with a one-line message naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path


class StoreError(Exception):
    pass


class RunWriteError(StoreError):
    """A file of the run could not be written (disk full, read-only, permissions); nothing partial is left."""


def write_fault(path: Path, e: OSError) -> RunWriteError:
    """The one-line error for an OSError while writing `path`: what failed and what to do."""
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        fix = "free some space (or use another --out) and rerun the same command: finished checkpoints are kept"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "the run directory is not writable: fix its permissions or choose another --out"
    else:
        fix = "check the run directory's file system, then rerun the same command"
    err = RunWriteError(f"cannot write {path}: {e.strerror or e}; {fix}")
    err.errno, err.filename = e.errno, str(path)
    return err


_KILL_COUNT = 0


def _fault_point(where: str) -> None:
    """Fault-injection hook of tests/test_faults.py: with HEADSCREEN_KILL_AT="<where>:<n>", the process
    SIGKILLs itself at the n-th time it reaches `where` ("write": before a rename, "renamed": after)."""
    global _KILL_COUNT
    spec = os.environ.get("HEADSCREEN_KILL_AT")
    if not spec or spec.split(":")[0] != where:
        return
    _KILL_COUNT += 1
    if _KILL_COUNT == int(spec.split(":")[1]):
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_tree(path: Path) -> None:
    """fsync every file under `path` (a file or a folder) and every folder, so that a rename that
    publishes it cannot outlive its contents in a crash."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if path.is_dir():
        for d in [path, *sorted(p for p in path.rglob("*") if p.is_dir())]:
            fsync_dir(d)


def fsync_dir(path: Path) -> None:
    """fsync a directory (makes a rename into it durable). Where a platform or filesystem cannot open or
    fsync a directory (EACCES, EINVAL, ENOTSUP, EISDIR), nothing is done; any other error is raised."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        if e.errno in _DIR_SYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _DIR_SYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


_DIR_SYNC_UNSUPPORTED = {errno.EACCES, errno.EINVAL, errno.ENOTSUP, errno.EISDIR, errno.EBADF}


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` then rename tmp → path (same directory, so the rename is atomic)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _fault_point("write")
        os.replace(tmp, path)
        fsync_dir(path.parent)
        _fault_point("renamed")
    except OSError as e:
        if isinstance(e, RunWriteError):
            raise
        raise write_fault(path, e) from e
    finally:
        with contextlib.suppress(OSError):  # a read-only directory may refuse even this
            tmp.unlink(missing_ok=True)
    return path


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: Path, obj) -> Path:
    text = json.dumps(obj, indent=2, default=_json_default, sort_keys=False)
    return atomic_write(path, lambda p: p.write_text(text))
