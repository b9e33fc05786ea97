"""Run directories: per-checkpoint records, resume, Parquet/JSON tables.

Layout (docs/run-format.md):
    <run>/manifest.json                       provenance: config, versions, git commit, seeds, loading mode
    <run>/.lock                               held by the one process working on the run
    <run>/records/<kind>/step_<N:09d>.<ext>   one record per checkpoint and kind
    <run>/<table>.parquet, <name>.json        results

Every file is written atomically (headscreen/rundir/atomic.py): a record half-written by a killed process is
never read (its temporary is ignored and cleaned up on the next open).

Every process that writes into a run holds its lock (`open` for a screen, `locked` for a validate).
A run is bound to its series: `open` refuses a manifest whose series differs from the recorded one
(headscreen/rundir/binding.py decides what "differs" means). The manifest's `tables` field says whether the
result tables are current; a writer marks them stale before it changes any record.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

from headscreen.rundir.atomic import (  # noqa: F401 (re-exported: the run store's errors and writes)
    RunWriteError,
    StoreError,
    _json_default,
    atomic_write,
    write_fault,
    write_json,
)

MANIFEST = "manifest.json"
LOCK = ".lock"
RECORDS = "records"


class NotARun(StoreError):
    pass


class RunLocked(StoreError):
    pass


class ConfigChanged(StoreError):
    pass


class SeriesChanged(StoreError):
    """A run is reopened on another series (headscreen/rundir/binding.py)."""


class StaleTables(StoreError):
    """The run's tables are older than its records (a screen changed records and did not finish)."""


#: outputs derived from the screen's tables; a re-screen that changes records removes them
VALIDATION_OUTPUTS = ("validation.json", "validation.parquet", "patching.parquet")
def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=_json_default).encode()).hexdigest()[:16]


def _flatten(d, prefix: str = "") -> dict[str, object]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _with_defaults(config: dict, defaults: dict) -> dict:
    """`config` with every field it lacks taken from `defaults` (nested dicts filled field by field)."""
    out = dict(config)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _with_defaults(out[key], value)
    return out


def config_differences(old: dict, new: dict, limit: int = 8) -> str:
    """'field: old -> new' for each leaf that differs (JSON-normalised), at most `limit` of them."""
    a, b = (_flatten(json.loads(json.dumps(x, default=_json_default))) for x in (old, new))
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    shown = [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys[:limit]]
    more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
    return "; ".join(shown) + more


class RunStore:
    """One run directory. Use `with RunStore.open(path, manifest) as store:` to hold its lock."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock_fd: int | None = None
        self.previous_manifest: dict | None = None  # the manifest `open` replaced, if any

    # --- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, manifest: dict, *, force: bool = False, defaults: dict | None = None) -> RunStore:
        """Create or reopen a run for writing, and take its lock.

        `defaults`: values of config fields added after a run may have been written, whose absence means
        exactly that value (e.g. an intervention block whose default is "none"); a run written before the
        field existed then reopens as the same config. Only absent fields are filled, never changed ones.

        The config hash covers `manifest["results_config"]` (the settings that change results; else
        `manifest["config"]`). Reopening with a different one raises `ConfigChanged` naming the fields
        that differ, and reopening with a different series (`manifest["series"]` and
        `manifest["checkpoints"]`, see headscreen/rundir/binding.py) raises `SeriesChanged`, unless `force`,
        which clears the old records. The new manifest's fields replace the old ones (fields it lacks
        are kept unless `force`), in one atomic write before any record is touched: a manifest with
        `tables: {"status": "stale"}` marks the tables stale before the records change.
        """
        from headscreen.rundir.binding import series_refusal
        from headscreen.rundir.kind import WRITERS, manifest_kind, require_kind

        store = cls(root)
        if store.root.exists() and not store.root.is_dir():
            raise NotARun(f"--out {store.root} is an existing file, not a run directory; give a new or existing "
                          "directory instead")
        kind = manifest_kind(manifest)
        if kind is not None:  # before --force is considered: force never turns one kind into another
            require_kind(store.root, kind, WRITERS.get(kind, "this command"))
        try:
            store.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_fault(store.root, e) from e
        store.acquire(manifest.get("kind", "write"))
        try:
            store._clean_temporaries()
            store.finish_staged()
            hashed = manifest.get("results_config", manifest.get("config", {}))
            new_hash = config_hash(hashed)
            old = store.manifest() if (store.root / MANIFEST).exists() else None
            if old is not None and not force:
                old_hashed = old.get("results_config")
                if old_hashed is None:  # written before results_config existed: the whole config was hashed
                    old_hashed, same = old.get("config", {}), old.get("config_hash") in (
                        new_hash, config_hash(manifest.get("config", {})))
                else:
                    same = old.get("config_hash") == new_hash
                if not same and defaults:
                    same = config_hash(_with_defaults(old_hashed, defaults)) == config_hash(_with_defaults(hashed, defaults))
                if not same:
                    raise ConfigChanged(
                        f"run {store.root} was computed with different settings ({config_differences(old_hashed, hashed)}); "
                        "use another --out, or pass --force to recompute it"
                    )
                refusal = series_refusal(store.root, old, manifest)
                if refusal:
                    raise SeriesChanged(refusal)
            if force:
                store.clear_records()
            store.previous_manifest = old
            kept = {} if force or old is None else old  # e.g. `sketch`, `probes` of records kept for resume
            write_json(store.root / MANIFEST, {**kept, **manifest, "config_hash": new_hash})
        except BaseException:
            store.release()
            raise
        return store

    @classmethod
    def locked(cls, root: str | Path, purpose: str, *, kind: str | None = None,
               command: str | None = None) -> RunStore:
        """An existing run, with its lock held (for a writer that adds to a finished run, e.g. validate).
        Outputs of an earlier writer that were staged and committed but not all published are
        published first (`finish_staged`)."""
        store = cls.existing(root, kind=kind, command=command)
        store.acquire(purpose)
        try:
            store.finish_staged()
        except BaseException:
            store.release()
            raise
        return store

    @classmethod
    def existing(cls, root: str | Path, *, kind: str | None = None, command: str | None = None) -> RunStore:
        """A finished or running run, for reading (no lock). With `kind`, a directory of another kind
        (or one holding the files of two kinds) is refused in one line naming what it is."""
        from headscreen.rundir.kind import require_kind

        store = cls(root)
        if kind is not None and store.root.is_dir():
            require_kind(store.root, kind, command or "this command", reading=True)
        if not (store.root / MANIFEST).exists():
            raise NotARun(
                f"{store.root} is not a headscreen run (no {MANIFEST}); give a directory written by "
                "`headscreen screen` or `headscreen demo`"
            )
        return store

    def acquire(self, purpose: str = "write") -> None:
        """Take the run's lock (non-blocking); the lock file names the holder's pid and purpose."""
        try:
            fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_fault(self.root / LOCK, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").split()
            who = f"process {holder[0]}" + (f" ({holder[1]})" if len(holder) > 1 else "") if holder else "another process"
            os.close(fd)
            raise RunLocked(
                f"run {self.root} is in use by {who}; wait for it to finish (a screen can also use another --out)"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {purpose}".encode())
        except OSError as e:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise write_fault(self.root / LOCK, e) from e
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def finish_staged(self) -> list[str]:
        """Publish the committed, unpublished outputs of an earlier writer (headscreen/rundir/staged.py)."""
        from headscreen.rundir.staged import finish_staged

        return finish_staged(self.root)

    def _clean_temporaries(self) -> None:
        for tmp in self.root.rglob(".*.tmp-*"):
            with contextlib.suppress(OSError):
                tmp.unlink()

    # --- manifest ------------------------------------------------------------------------
    def manifest(self) -> dict:
        return json.loads((self.root / MANIFEST).read_text())

    def update_manifest(self, **fields) -> None:
        write_json(self.root / MANIFEST, {**self.manifest(), **fields})

    def tables_status(self) -> dict | None:
        """The manifest's `tables` field: {"status": "current" | "stale", ...}; None for runs written
        before it existed (their staleness is unknown)."""
        return self.manifest().get("tables")

    def check_tables_current(self, action: str) -> None:
        """Raise `StaleTables` if a screen changed records and has not rewritten the tables since."""
        status = self.tables_status()
        if status is not None and status.get("status") != "current":
            raise StaleTables(
                f"run {self.root}: its tables are stale ({status.get('reason', 'a screen did not finish')}), so "
                f"{action} would use results that no longer match its records; rerun the screen "
                f"(`headscreen screen ... --out {self.root}`) to bring them up to date"
            )

    def remove_outputs(self, names: tuple[str, ...]) -> list[str]:
        """Delete the named result files that exist; returns their names."""
        gone = []
        for name in names:
            path = self.root / name
            if path.exists():
                try:
                    path.unlink()
                except OSError as e:
                    raise write_fault(path, e) from e
                gone.append(name)
        return gone

    # --- per-checkpoint records ----------------------------------------------------------
    def record_path(self, kind: str, step: int, ext: str) -> Path:
        return self.root / RECORDS / kind / f"step_{step:09d}.{ext}"

    def recorded_steps(self, kind: str) -> list[int]:
        d = self.root / RECORDS / kind
        if not d.exists():
            return []
        return sorted(int(p.stem.split("_")[1]) for p in d.iterdir() if p.name.startswith("step_"))

    def has_record(self, kind: str, step: int) -> bool:
        return step in self.recorded_steps(kind)

    def write_tensors(self, kind: str, step: int, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> Path:
        """A safetensors record (never pickle); `meta` values are stored as strings (JSON)."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        metadata = {"json": json.dumps(meta or {}, default=_json_default)}
        return atomic_write(self.record_path(kind, step, "safetensors"), lambda p: save_file(tensors, str(p), metadata))

    def read_tensors(self, kind: str, step: int) -> tuple[dict[str, torch.Tensor], dict]:
        from safetensors import safe_open

        path = self.record_path(kind, step, "safetensors")
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads((f.metadata() or {}).get("json", "{}"))
        return tensors, meta

    def write_frames(self, kind: str, step: int, frames: dict[str, pd.DataFrame], meta: dict | None = None) -> Path:
        """Several named tables for one checkpoint, stored as one Parquet file (so the record is atomic)
        with a `table` column; each table's own columns and dtypes are kept in the file's schema
        metadata (stacking tables turns an int column that another table lacks into float), and so is
        `meta` (JSON)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {name: list(df.columns) for name, df in frames.items()}
        parts = [df.assign(table=name) for name, df in frames.items() if len(df)]
        combined = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"table": pd.Series([], dtype=str)})
        table = pa.Table.from_pandas(combined, preserve_index=False)
        dtypes = {name: {c: str(t) for c, t in df.dtypes.items()} for name, df in frames.items()}
        meta = {**(table.schema.metadata or {}), b"headscreen_columns": json.dumps(columns).encode(),
                b"headscreen_dtypes": json.dumps(dtypes).encode(),
                b"headscreen_meta": json.dumps(meta or {}, default=_json_default).encode()}
        table = table.replace_schema_metadata(meta)
        return atomic_write(self.record_path(kind, step, "parquet"), lambda p: pq.write_table(table, p))

    def read_meta(self, kind: str, step: int) -> dict:
        """The `meta` of one record, reading only its header (safetensors) or footer (Parquet)."""
        st = self.record_path(kind, step, "safetensors")
        if st.exists():
            from safetensors import safe_open

            with safe_open(str(st), framework="pt") as f:
                return json.loads((f.metadata() or {}).get("json", "{}"))
        import pyarrow.parquet as pq

        schema_meta = pq.read_schema(self.record_path(kind, step, "parquet")).metadata or {}
        return json.loads(schema_meta.get(b"headscreen_meta", b"{}"))

    def remove_record(self, kind: str, step: int) -> None:
        for ext in ("safetensors", "parquet"):
            path = self.record_path(kind, step, ext)
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                raise write_fault(path, e) from e

    def read_frames(self, kind: str, steps: list[int] | None = None) -> dict[str, pd.DataFrame]:
        """All records of a kind, concatenated per table name, each with exactly its own columns."""
        import pyarrow.parquet as pq

        steps = self.recorded_steps(kind) if steps is None else steps
        out: dict[str, list[pd.DataFrame]] = {}
        for s in steps:
            table = pq.read_table(self.record_path(kind, s, "parquet"))
            columns = json.loads(table.schema.metadata[b"headscreen_columns"])
            dtypes = json.loads(table.schema.metadata.get(b"headscreen_dtypes", b"{}"))
            df = table.to_pandas()
            for name, cols in columns.items():
                part = df.loc[df["table"] == name, cols]
                ints = {c: t for c, t in (dtypes.get(name) or {}).items() if t.startswith(("int", "uint"))}
                out.setdefault(name, []).append(part.astype(ints) if ints else part)
        return {name: pd.concat(parts, ignore_index=True) for name, parts in out.items()}

    def clear_records(self, kind: str | None = None) -> None:
        base = self.root / RECORDS if kind is None else self.root / RECORDS / kind
        if base.exists():
            for p in sorted(base.rglob("*"), reverse=True):
                try:
                    p.unlink() if p.is_file() else p.rmdir()
                except OSError as e:
                    raise write_fault(p, e) from e

    # --- result tables -------------------------------------------------------------------
    def write_table(self, name: str, df: pd.DataFrame) -> Path:
        return atomic_write(self.root / f"{name}.parquet", lambda p: df.to_parquet(p, index=False))

    def read_table(self, name: str) -> pd.DataFrame | None:
        path = self.root / f"{name}.parquet"
        return pd.read_parquet(path) if path.exists() else None

    def write_json(self, name: str, obj) -> Path:
        return write_json(self.root / f"{name}.json", obj)

    def read_json(self, name: str):
        path = self.root / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def files(self) -> Iterator[Path]:
        return (p for p in self.root.iterdir() if not p.name.startswith("."))
