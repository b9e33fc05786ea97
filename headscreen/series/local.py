"""A series stored locally: one HF-format folder per checkpoint under a root directory.

Steps come from `series.json` (written by `headscreen train`, or by hand) when present, else from
folder names (see naming.py). The tokenizer is taken from the root, else from the checkpoint folders.
No hub call is ever made for a local series.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from headscreen.series.base import Checkpoint, Series, has_tokenizer
from headscreen.series.errors import CheckpointNotFound
from headscreen.series.naming import parse_step, parse_tokens

MANIFEST = "series.json"


def _require_utf8(path: Path, what: str) -> None:
    """One rule for every command: a folder name must be text (UTF-8), or it could not be written into
    a run's manifest and tables; rename it."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raw = bytes(str(path), "utf-8", "surrogateescape")
        raise CheckpointNotFound(f"{what} {raw!r} is not valid UTF-8 text; rename it (headscreen records folder names "
                                 "in the run's manifest and tables)") from None


def _from_manifest(root: Path) -> list[Checkpoint]:
    try:
        data = json.loads((root / MANIFEST).read_text())
        entries = data["checkpoints"]
        if not isinstance(entries, list):
            raise TypeError("'checkpoints' is not a list")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointNotFound(
            f"{root / MANIFEST} is not a valid series manifest ({e}); expected "
            '{"checkpoints": [{"step": 0, "tokens": 0, "path": "step000000"}, ...]}'
        ) from e
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "step" not in e or "path" not in e:
            raise CheckpointNotFound(f"{root / MANIFEST}: checkpoint entry {i} needs 'step' and 'path', got {e!r}")
        for key, kinds in (("step", int), ("tokens", int | float | None)):
            value = e.get(key)
            if not isinstance(value, kinds) or isinstance(value, bool) or (value is not None and value < 0):
                raise CheckpointNotFound(f"{root / MANIFEST}: checkpoint entry {i} has {key} {value!r}; a {key} must "
                                         f"be a non-negative {'integer' if key == 'step' else 'number or null'} "
                                         '(e.g. "step": 100)')
        if not isinstance(e["path"], str):
            raise CheckpointNotFound(f"{root / MANIFEST}: checkpoint entry {i} has path {e['path']!r}; give the "
                                     "folder name as a string")
        if Path(e["path"]).name != e["path"] or e["path"] in ("", ".", ".."):  # the rule of a shard index
            raise CheckpointNotFound(f"{root / MANIFEST}: checkpoint step {e['step']} points outside the series "
                                     f"({e['path']!r}); a checkpoint must be a folder of the series root (it may be a "
                                     "symlink), named without '/' or '..'")
        _require_utf8(root / e["path"], "checkpoint folder")
        path = (root / e["path"]).resolve()
        if not path.is_dir():
            raise CheckpointNotFound(f"{root / MANIFEST}: checkpoint step {e['step']} points to {path}, which does not exist")
        meta = {k: v for k, v in e.items() if k not in ("step", "tokens", "path")}
        out.append(Checkpoint(int(e["step"]), e.get("tokens"), path.name, path, meta))
    return out


def _from_folders(root: Path) -> list[Checkpoint]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.json").exists())
    if not folders:
        if (root / "config.json").exists():  # a single checkpoint given directly
            return [Checkpoint(parse_step(root.name) or 0, parse_tokens(root.name), root.name, root)]
        raise CheckpointNotFound(
            f"{root} holds no checkpoints: expected sub-folders with config.json (step100/, checkpoint-100/, …), "
            f"a {MANIFEST} manifest, or a single HF checkpoint folder"
        )
    out = []
    for f in folders:
        _require_utf8(f, "checkpoint folder")
        step = parse_step(f.name)
        if step is None:
            raise CheckpointNotFound(
                f"cannot read a training step from folder name {f.name!r} in {root}; rename it (step100, "
                f"checkpoint-100, stage1-step100-tokens1B) or list the checkpoints in {root / MANIFEST}"
            )
        out.append(Checkpoint(step, parse_tokens(f.name), f.name, f))
    return out


class LocalSeries(Series):
    source_kind = "local"

    def __init__(self, root: str | Path, *, name: str | None = None, allow_pickle: bool = False,
                 trust_remote_code: bool = False):
        root = Path(root).expanduser()
        if root.is_symlink() and not root.exists():
            raise CheckpointNotFound(f"series path {root} is a symlink that cannot be followed (it points to itself, "
                                     f"into a loop, or to a missing target: {os.readlink(root)!r}); give the folder "
                                     "that holds the checkpoints")
        _require_utf8(root, "series folder")
        if not root.exists():
            raise CheckpointNotFound(f"series path {root} does not exist; give a folder of checkpoints or a model config")
        if not root.is_dir():
            raise CheckpointNotFound(f"series path {root} is a file; give the folder that holds the checkpoints")
        self.root = root.resolve()
        ckpts = _from_manifest(self.root) if (self.root / MANIFEST).exists() else _from_folders(self.root)
        super().__init__(name or self.root.name, ckpts, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)

    def folder(self, ckpt: Checkpoint, purpose: str = "attention") -> Path:
        assert ckpt.path is not None
        if not ckpt.path.is_dir():
            raise CheckpointNotFound(f"checkpoint {ckpt.label()}: folder {ckpt.path} no longer exists")
        return ckpt.path

    def tokenizer_dir(self) -> Path | None:
        if has_tokenizer(self.root):
            return self.root
        for c in reversed(self.checkpoints):
            if c.path is not None and has_tokenizer(c.path):
                return c.path
        return None

    def describe(self) -> dict:
        d = super().describe()
        d["root"] = str(self.root)
        manifest = self.root / MANIFEST
        if manifest.exists():
            data = json.loads(manifest.read_text())  # already parsed once by _from_manifest
            d["manifest"] = {k: v for k, v in data.items() if k != "checkpoints"}
        return d
