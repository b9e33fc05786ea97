"""Replace several result files of a run as one step: write the new ones aside, commit, then swap.

    <run>/.staged/<name>/<file>          the new files, each written atomically (headscreen/rundir/atomic.py)
    <run>/.staged/<name>/COMMIT.json     {"files": [...], "remove": [...]}: written last, once every new file is

A writer (e.g. `validate`) stages every new file first: until COMMIT.json exists the run's published
files are untouched, so a failure (a bad argument found late, a crash, Ctrl-C) loses no finished
result. After the commit the staged files are renamed over the published ones in the order listed and
the files in `remove` are deleted; a process killed in between leaves a committed stage that the next
process taking the run's lock publishes (`finish_staged`), and that readers refuse in the meantime
(`pending_stages`). A stage without COMMIT.json is an unfinished one and is discarded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from headscreen.rundir.atomic import fsync_dir, write_fault, write_json

_rename = os.replace  # a seam for the tests' kill between two renames
STAGED = ".staged"
COMMIT = "COMMIT.json"


class Stage:
    """A set of new files for the run `root`, published together by `commit`."""

    def __init__(self, root: str | Path, name: str):
        self.root = Path(root)
        self.dir = self.root / STAGED / name
        if self.dir.exists():  # an earlier unfinished stage: its files belong to no commit
            _discard(self.dir)

    def path(self, filename: str) -> Path:
        """Where to write the new `filename` (its published name is root/filename)."""
        return self.dir / filename

    def commit(self, files: list[str], remove: tuple[str, ...] = ()) -> None:
        """Mark the staged `files` complete (in publishing order), then publish them and delete `remove`."""
        missing = [f for f in files if not self.path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"staged files {missing} of {self.root} were not written; nothing was published")
        write_json(self.dir / COMMIT, {"files": list(files), "remove": [r for r in remove if r not in files]})
        publish(self.dir, self.root)


def publish(stage: Path, root: Path) -> None:
    """Rename a committed stage's files into `root` (idempotent: an interrupted publish is finished)."""
    doc = json.loads((stage / COMMIT).read_text())
    try:
        for name in doc["files"]:
            if (stage / name).exists():
                _rename(stage / name, root / name)
        for name in doc.get("remove", []):
            (root / name).unlink(missing_ok=True)
        fsync_dir(root)
    except OSError as e:
        raise write_fault(root, e) from e
    _discard(stage)
    with contextlib.suppress(OSError):  # the stage area itself, once no other stage is in it
        stage.parent.rmdir()


def _discard(stage: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(stage)


def finish_staged(root: str | Path) -> list[str]:
    """Publish every committed stage of `root` and discard the uncommitted ones; returns the names
    published. Call with the run's lock held."""
    base = Path(root) / STAGED
    done = []
    if not base.is_dir():
        return done
    for stage in sorted(p for p in base.iterdir() if p.is_dir()):
        if (stage / COMMIT).is_file():
            publish(stage, Path(root))
            done.append(stage.name)
        else:
            _discard(stage)
    with contextlib.suppress(OSError):
        base.rmdir()
    return done


def pending_stages(root: str | Path) -> list[str]:
    """Names of the committed stages of `root` not yet published (a writer was killed while publishing)."""
    base = Path(root) / STAGED
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / COMMIT).is_file())
