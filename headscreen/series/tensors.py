"""Lazy tensor access to one HF checkpoint folder: safetensors (single or sharded) or, on opt-in, pickle.

`TensorSource` opens nothing until a tensor is asked for, reads tensors one at a time with
`safe_open`, and records which keys it read (so tests and users can check that only attention
tensors were touched).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from headscreen.series.errors import CorruptCheckpoint, NoWeightsError, PickleRefused

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


class TensorSource:
    """Key → tensor access for one checkpoint folder. Memory: one tensor at a time (plus a pickle
    state dict when `allow_pickle` is used, since pickles cannot be read lazily)."""

    def __init__(self, folder: str | Path, *, allow_pickle: bool = False):
        self.folder = Path(folder)
        self.allow_pickle = allow_pickle
        self.keys_read: list[str] = []
        self._key_to_file: dict[str, Path] | None = None
        self._pickle_sd: dict[str, torch.Tensor] | None = None
        self._handles: dict[Path, object] = {}  # open safe_open handles, one per shard file
        self.format = self._detect_format()

    # --- discovery -------------------------------------------------------------------------
    def _detect_format(self) -> str:
        if not self.folder.is_dir():
            raise NoWeightsError(f"checkpoint folder {self.folder} does not exist or is not a directory")
        if (self.folder / SAFETENSORS_INDEX).exists() or list(self.folder.glob("*.safetensors")):
            return "safetensors"
        pickles = [p for pat in PICKLE_PATTERNS for p in self.folder.glob(pat)]
        if pickles:
            if not self.allow_pickle:
                raise PickleRefused(
                    f"checkpoint {self.folder} holds only pickle weights ({pickles[0].name}); pickle can run "
                    "arbitrary code, so it is refused. Convert it to safetensors, or pass --allow-pickle "
                    "(allow_pickle=True) to load it with torch.load(weights_only=True)."
                )
            return "pickle"
        raise NoWeightsError(
            f"checkpoint {self.folder} has no weights: expected model.safetensors, sharded *.safetensors with "
            f"{SAFETENSORS_INDEX}, or (with --allow-pickle) pytorch_model.bin"
        )

    def _index(self) -> dict[str, Path]:
        if self._key_to_file is not None:
            return self._key_to_file
        index_path = self.folder / SAFETENSORS_INDEX
        if index_path.exists():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CorruptCheckpoint(f"checkpoint {self.folder}: unreadable {SAFETENSORS_INDEX} ({e})") from e
            mapping = {k: self.folder / f for k, f in weight_map.items()}
        else:
            from safetensors import safe_open

            mapping = {}
            for f in sorted(self.folder.glob("*.safetensors")):
                try:
                    with safe_open(str(f), framework="pt") as h:
                        mapping.update({k: f for k in h.keys()})
                except Exception as e:  # safetensors raises its own SafetensorError on bad headers
                    raise CorruptCheckpoint(
                        f"checkpoint {self.folder}: {f.name} is not a readable safetensors file ({e}); "
                        "it may be truncated — re-download or re-save this checkpoint"
                    ) from e
        self._key_to_file = mapping
        return mapping

    def keys(self) -> list[str]:
        if self.format == "pickle":
            return list(self._load_pickle())
        return list(self._index())

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    # --- reading ---------------------------------------------------------------------------
    def _handle(self, f: Path):
        """An open safetensors handle for shard `f` (memory-mapped; tensors are copied out on read)."""
        from safetensors import safe_open

        if f not in self._handles:
            self._handles[f] = safe_open(str(f), framework="pt")
        return self._handles[f]

    def close(self) -> None:
        self._handles.clear()

    def _load_pickle(self) -> dict[str, torch.Tensor]:
        if self._pickle_sd is None:
            sd: dict[str, torch.Tensor] = {}
            for pat in PICKLE_PATTERNS:
                for p in sorted(self.folder.glob(pat)):
                    try:
                        loaded = torch.load(p, map_location="cpu", weights_only=True)
                    except Exception as e:
                        raise CorruptCheckpoint(f"checkpoint {self.folder}: cannot load {p.name} ({e})") from e
                    sd.update(loaded.get("state_dict", loaded) if isinstance(loaded, dict) else {})
            self._pickle_sd = sd
        return self._pickle_sd

    def read(self, key: str) -> torch.Tensor:
        """Read one tensor (as stored dtype)."""
        self.keys_read.append(key)
        if self.format == "pickle":
            sd = self._load_pickle()
            if key not in sd:
                raise CorruptCheckpoint(f"checkpoint {self.folder}: tensor {key!r} missing")
            return sd[key]
        index = self._index()
        if key not in index:
            raise CorruptCheckpoint(
                f"checkpoint {self.folder}: tensor {key!r} missing (the folder has {len(index)} tensors); "
                "is config.json for a different architecture than the weights?"
            )
        f = index[key]
        try:
            return self._handle(f).get_tensor(key)
        except FileNotFoundError as e:
            raise CorruptCheckpoint(f"checkpoint {self.folder}: shard {f.name} listed in the index is missing") from e
        except Exception as e:
            raise CorruptCheckpoint(
                f"checkpoint {self.folder}: cannot read tensor {key!r} from {f.name} ({e}); the file may be "
                "truncated — re-download or re-save this checkpoint"
            ) from e
