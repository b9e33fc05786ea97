"""What a directory is: the kind of run (or series) it holds, and the one-line refusals of a command
given a directory of another kind (docs/run-format.md, "Run kinds").

A run's manifest names its kind (`kind`: `screen` or `grok`; a grok run of the Li₂ family is the kind
`li2`, from its `config.family`). A directory written before its manifest named the kind, or one that
is not a run, is recognised from the files it holds (`directory_kind`). Every command that writes a
run refuses a directory of another kind (`require_kind`, called by `RunStore.open` for every writer,
before `--force` is considered: `--force` recomputes a run of its own kind, never converts one), and
every command that reads one refuses a directory of another kind or one holding the files of two
kinds (an older headscreen let `grok --force` write into a screen run).
"""

from __future__ import annotations

import json
from pathlib import Path

from headscreen.rundir.atomic import StoreError

#: kind -> what the one-line errors call it
KINDS = {
    "screen": "a screen run",
    "grok": "a grok run",
    "li2": "a Li2 grok run",
    "grok-sweep": "a grok sweep",
    "series": "a checkpoint series",
    "grok-trajectory": "the trajectory of a grok run",
    "report": "a report folder",
}
#: run kind -> the command that writes it
WRITERS = {"screen": "`headscreen screen`", "grok": "`headscreen grok`", "li2": "`headscreen grok li2`",
           "grok-sweep": "`headscreen grok sweep`", "series": "`headscreen train`"}
RUN_KINDS = ("screen", "grok", "li2", "grok-sweep")
# files that only one kind of run writes (for runs without a recorded kind, and for mixed directories)
_MARKERS = {
    "screen": ("records", "circuits.json", "classes.parquet", "selectivity.parquet", "validation.json"),
    "grok": ("trajectory", "curves.parquet", "grok.json"),
}


class WrongKind(StoreError):
    """A directory of another kind than the command writes or reads."""


class MixedRun(StoreError):
    """A directory holding the files of two kinds of run."""


def manifest_kind(manifest: dict) -> str | None:
    """The kind a manifest records (None: it records none, as manifests of older versions may)."""
    kind = manifest.get("kind")
    if kind == "grok" and isinstance(manifest.get("config"), dict) and manifest["config"].get("family") == "li2":
        return "li2"
    return kind if kind in KINDS else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _inferred(path: Path) -> str | None:
    """The kind of a directory from the files it holds (no manifest, or one that names no kind)."""
    doc = _read_json(path / "series.json") if (path / "series.json").is_file() else None
    fmt = str(doc.get("format", "")) if isinstance(doc, dict) else ""
    if fmt.startswith("headscreen-grok-trajectory") or (
            path.name == "trajectory" and (path.parent / "manifest.json").is_file()
            and directory_kind(path.parent) in ("grok", "li2")):
        return "grok-trajectory"
    if fmt.startswith("headscreen-series"):  # a trained series (it may hold resume.safetensors)
        return "series"
    has = {name for names in _MARKERS.values() for name in names if (path / name).exists()}
    if has & set(_MARKERS["grok"]):
        return "li2" if (path / "li2.parquet").exists() else "grok"
    if has & set(_MARKERS["screen"]) or (path / "fingerprints.parquet").exists():
        return "screen"
    if (path / "sweep.json").is_file() or ((path / "sweep.parquet").is_file() and (path / "runs").is_dir()):
        return "grok-sweep"
    if doc is not None or any((p / "config.json").is_file() for p in _subdirs(path)):
        return "series"
    if (path / "report.html").is_file() and (path / "report.json").is_file():
        return "report"
    return None


def _subdirs(path: Path, limit: int = 64) -> list[Path]:
    out = []
    try:
        for p in path.iterdir():
            if p.is_dir():
                out.append(p)
                if len(out) >= limit:
                    break
    except OSError:
        return []
    return out


def directory_kind(path: str | Path) -> str | None:
    """The kind of the directory `path` (None: absent, empty, or nothing headscreen wrote)."""
    path = Path(path)
    if not path.is_dir():
        return None
    manifest = _read_json(path / "manifest.json") if (path / "manifest.json").is_file() else None
    recorded = manifest_kind(manifest) if isinstance(manifest, dict) else None
    return recorded or _inferred(path)


def check_not_mixed(path: str | Path, kind: str) -> None:
    """Refuse a run directory of `kind` that also holds the files of another kind of run."""
    path = Path(path)
    family = "grok" if kind in ("grok", "li2") else kind
    for other, markers in _MARKERS.items():
        if other == family or family not in _MARKERS:
            continue
        found = [m for m in markers if (path / m).exists()]
        if found:
            raise MixedRun(f"{path} is {KINDS[kind]} but also holds files of {KINDS[other]} ({', '.join(found)}), "
                           "left by an older headscreen: move one run's files out or start over in a new directory")


def require_kind(path: str | Path, kind: str, command: str, *, reading: bool = False) -> None:
    """Refuse `path` unless it is absent, empty, unrecognised (writers only) or of `kind`.

    `command` names the command in the message (e.g. "`headscreen screen`"). A reader also refuses a
    directory of no recognised kind and a mixed one."""
    path = Path(path)
    found = directory_kind(path)
    if found is None:
        if reading and path.is_dir():
            raise WrongKind(f"{path} is not {KINDS[kind]} (no manifest.json naming its kind); {command} reads "
                            f"{_plural(kind)} written by {WRITERS.get(kind, 'headscreen')}")
        return
    if found != kind:
        if reading:
            raise WrongKind(f"{path} is {KINDS[found]}; {command} reads {_plural(kind)}: give a directory written by "
                            f"{WRITERS.get(kind, 'headscreen')}")
        raise WrongKind(f"{path} is {KINDS[found]}; {command} writes {_plural(kind)}: choose another --out "
                        "(--force never turns one kind of directory into another)")
    check_not_mixed(path, kind)


def refuse_run_as_series(path: str | Path, command: str) -> None:
    """A series argument that is a run directory (or a grok trajectory) is named as what it is."""
    found = directory_kind(path)
    if found in (*RUN_KINDS, "grok-trajectory", "report"):
        hint = {"grok-trajectory": "; a grok run is analysed by `headscreen grok` and rendered by `headscreen report "
                                   f"{Path(path).parent}`",
                "report": ""}.get(found, f"; render it with `headscreen report {path}`")
        raise WrongKind(f"{path} is {KINDS[found]}, not a checkpoint series of a transformer language model, which "
                        f"{command} reads{hint}")


def check_reportable(path: str | Path) -> None:
    """`headscreen report` reads screen runs, grok runs (Li2 ones too) and grok sweeps: any other kind of
    directory, or a run holding the files of two kinds, is refused in one line."""
    found = directory_kind(path)
    if found in ("series", "grok-trajectory", "report"):
        fix = {"series": f"screen it first (`headscreen screen {path} --out <run>`), then report the run",
               "grok-trajectory": f"report the grok run itself (`headscreen report {Path(path).parent}`)",
               "report": "give the run directory it was rendered from"}[found]
        raise WrongKind(f"{path} is {KINDS[found]}, not a run; `headscreen report` reads screen runs, grok runs and "
                        f"grok sweeps: {fix}")
    if found in ("screen", "grok", "li2"):
        check_not_mixed(path, found)


def _plural(kind: str) -> str:
    return {"screen": "screen runs", "grok": "grok runs", "li2": "Li2 grok runs", "grok-sweep": "grok sweeps",
            "series": "checkpoint series"}.get(kind, KINDS[kind])
