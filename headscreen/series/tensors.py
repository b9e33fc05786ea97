"""Lazy tensor access to one HF checkpoint folder: safetensors (single or sharded) or, on opt-in, pickle.

`TensorSource` opens nothing until a tensor is asked for, validates each shard's header with
`safe_open`, reads tensors one at a time with a plain positioned read of their bytes (no memory map:
nothing of the file stays resident, and no page faults per 4 kB page), and records which keys it
read (so tests and users can check that only attention tensors were touched).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from headscreen.series.errors import CorruptCheckpoint, NoWeightsError, PickleRefused

SAFETENSORS_INDEX = "model.safetensors.index.json"
#: safetensors dtype names read with a plain read (others go through safe_open)
_ST_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
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
        self._headers: dict[Path, tuple[dict, int]] = {}  # parsed header and data start, per shard
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
        """An open `safe_open` handle for shard `f`: it validates the header, and reads the rare tensors
        whose dtype the positioned read does not handle (`_ST_DTYPES`)."""
        from safetensors import safe_open

        if f not in self._handles:
            self._handles[f] = safe_open(str(f), framework="pt")
        return self._handles[f]

    def close(self) -> None:
        self._handles.clear()

    def _header(self, f: Path) -> tuple[dict, int]:
        if f not in self._headers:
            self._handle(f)  # safe_open validates the header (and the file length) first
            with open(f, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                self._headers[f] = (json.loads(fh.read(n)), 8 + n)
        return self._headers[f]

    def _read_plain(self, f: Path, key: str) -> torch.Tensor | None:
        """The tensor's bytes read into fresh memory; None for dtypes left to safe_open."""
        header, start = self._header(f)
        info = header[key]
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            return None
        a, b = info["data_offsets"]
        buf = torch.empty(b - a, dtype=torch.uint8)
        with open(f, "rb", buffering=0) as fh:
            fh.seek(start + a)
            got = fh.readinto(buf.numpy()) if b > a else 0
        if got != b - a:
            raise CorruptCheckpoint(f"checkpoint {self.folder}: tensor {key!r} in {f.name} is cut short ({got} of "
                                    f"{b - a} bytes); the file is truncated — re-download or re-save this checkpoint")
        return buf.view(dtype).reshape(info["shape"])

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
            t = self._read_plain(f, key)
            return t if t is not None else self._handle(f).get_tensor(key)
        except CorruptCheckpoint:
            raise
        except FileNotFoundError as e:
            raise CorruptCheckpoint(f"checkpoint {self.folder}: shard {f.name} listed in the index is missing") from e
        except Exception as e:
            raise CorruptCheckpoint(
                f"checkpoint {self.folder}: cannot read tensor {key!r} from {f.name} ({e}); the file may be "
                "truncated — re-download or re-save this checkpoint"
            ) from e
