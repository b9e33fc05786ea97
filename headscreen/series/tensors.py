"""Lazy tensor access to one HF checkpoint folder: safetensors (single or sharded) or, on opt-in, pickle.

`TensorSource` opens nothing until a tensor is asked for, validates each shard's header itself
(`validate`: every tensor's byte range lies inside the file, matches its claimed shape and dtype,
and overlaps no other), and records which keys it read (so tests and users can check that only
attention tensors were touched). Two ways to get a tensor:

* `read`: plain positioned reads of its bytes into memory of its own (fresh, or a buffer handed in);
* `view`: no read at all: a tensor over a private memory map of its shard, whose pages are the page
  cache's own (the weights pass reads each checkpoint's attention tensors once, in the fused sketch
  loop, instead of copying them first: benchmarks/bench_extraction.py). The map lives as long as a
  tensor made from it. A shard must not be truncated or rewritten in place while its views are in
  use (a read past the end of a mapped file ends the process with SIGBUS); the hub cache and our own
  writers replace files by renaming, which leaves a live map intact.

A read is issued in a loop: Linux returns at most 0x7ffff000 bytes per read(), so a tensor over
2 GiB arrives in several pieces.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import torch

from headscreen.series.errors import CorruptCheckpoint, NoWeightsError, PickleRefused

SAFETENSORS_INDEX = "model.safetensors.index.json"
#: safetensors dtype names read with a plain read (others go through safe_open)
_ST_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
_open = open  # the file opener of the reader (tests replace it to simulate short reads)


def read_exact(fh, view: memoryview) -> int:
    """Fill `view` from `fh` with as many read calls as it takes; returns the bytes read (less only at EOF)."""
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _shard_header(path: Path, where: str) -> tuple[dict, int]:
    """The parsed and checked header of one safetensors file, and where its data starts.

    Checks, before any tensor is allocated: the header length fits the file, the header is a JSON
    object, every tensor's dtype is known, its shape is a list of non-negative ints, its byte range
    [begin, end) equals shape x itemsize, lies inside the file, and overlaps no other tensor's.
    """
    def bad(what: str) -> CorruptCheckpoint:
        return CorruptCheckpoint(f"checkpoint {where}: {path.name} {what}; re-download or re-save this checkpoint")

    size = path.stat().st_size
    with _open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise bad(f"is {size} bytes long, too short for a safetensors header (truncated)")
        n = struct.unpack("<Q", head)[0]
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise bad(f"claims a {n}-byte header but the file holds {size - 8} bytes after the length (truncated "
                      "or not a safetensors file)")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"has a header that is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise bad("has a header that is not a JSON object")
    data = size - 8 - n
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise bad(f"describes tensor {key!r} without dtype, shape and data_offsets")
        shape, offsets, dtype = info["shape"], info["data_offsets"], info["dtype"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                for d in shape)):
            raise bad(f"gives tensor {key!r} the invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise bad(f"gives tensor {key!r} the invalid data_offsets {offsets!r}")
        if dtype not in _ITEMSIZE:
            raise bad(f"gives tensor {key!r} the unknown dtype {dtype!r}")
        numel = 1
        for d in shape:
            numel *= d
        begin, end = offsets
        if end - begin != numel * _ITEMSIZE[dtype]:
            raise bad(f"claims shape {shape} ({dtype}) for tensor {key!r}, which needs {numel * _ITEMSIZE[dtype]} "
                      f"bytes, but gives it {end - begin}")
        if end > data:
            raise bad(f"is cut short: tensor {key!r} ends at byte {end} of the data but the file holds {data} "
                      "(truncated)")
        spans.append((begin, end, key))
    spans.sort()
    for (_, e1, k1), (b2, _, k2) in zip(spans, spans[1:], strict=False):
        if b2 < e1:
            raise bad(f"lets tensors {k1!r} and {k2!r} overlap (a crafted or damaged header)")
    return header, 8 + n


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
        self._maps: dict[Path, mmap.mmap] = {}  # private read maps of shard files (`view`)
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
                if not (isinstance(weight_map, dict) and all(isinstance(f, str) for f in weight_map.values())):
                    raise TypeError("weight_map is not a mapping of tensor names to file names")
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                raise CorruptCheckpoint(f"checkpoint {self.folder}: unreadable {SAFETENSORS_INDEX} ({e}); "
                                        "re-download or re-save this checkpoint") from e
            mapping = {k: self.folder / f for k, f in weight_map.items()}
            # a plain file name (shards may be symlinks, as in the hub cache: their targets are not checked)
            outside = sorted({f for f in weight_map.values() if Path(f).name != f or f in ("", ".", "..")})
            if outside:
                raise CorruptCheckpoint(f"checkpoint {self.folder}: {SAFETENSORS_INDEX} points outside the folder "
                                        f"({outside[0]!r}); a shard must be a file of the checkpoint folder")
        else:
            mapping = {}
            for f in sorted(self.folder.glob("*.safetensors")):
                header, _ = self._header(f)  # our own checks, before safetensors parses anything
                mapping.update({k: f for k in header if k != "__metadata__"})
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
        """A safetensors handle for shard `f`: the fallback for tensors `_read_plain` cannot read with a
        positioned read (safetensors memory-maps the file; tensors are copied out on read)."""
        from safetensors import safe_open

        if f not in self._handles:
            self._handles[f] = safe_open(str(f), framework="pt")
        return self._handles[f]

    def close(self) -> None:
        """Drop the shard handles and maps (a map stays alive while a view made from it does)."""
        self._handles.clear()
        self._maps.clear()

    def _header(self, f: Path) -> tuple[dict, int]:
        if f not in self._headers:
            self._headers[f] = _shard_header(f, str(self.folder))
        return self._headers[f]

    def shards(self) -> list[Path]:
        """The safetensors files of this checkpoint that exist here (hub folders may hold a subset)."""
        return sorted({f for f in self._index().values() if f.exists()})

    def missing_shards(self) -> list[str]:
        """Shard files the safetensors index names that are not in the folder."""
        if self.format != "safetensors":
            return []
        return sorted({f.name for f in self._index().values() if not f.exists()})

    def validate(self) -> dict[str, tuple[int, ...]]:
        """Check every shard's header (or load the pickle with weights_only); key -> claimed shape.

        Reads no tensor data of safetensors files: shapes come from the checked headers.
        """
        if self.format == "pickle":
            return {k: tuple(v.shape) for k, v in self._load_pickle().items() if isinstance(v, torch.Tensor)}
        shapes: dict[str, tuple[int, ...]] = {}
        for f in self.shards():
            header, _ = self._header(f)
            shapes.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
        listed = [k for k, f in self._index().items() if f.exists() and k not in shapes]
        if listed:
            raise CorruptCheckpoint(f"checkpoint {self.folder}: {SAFETENSORS_INDEX} lists {listed[0]!r} in "
                                    f"{self._index()[listed[0]].name}, which does not hold it")
        return shapes

    def stored(self, key: str) -> tuple[torch.dtype, tuple[int, ...]] | None:
        """(dtype, shape) of a safetensors tensor that `read` reads with a plain read, from the checked
        header (no data read); None for other tensors and formats."""
        if self.format != "safetensors" or key not in self._index():
            return None
        info = self._header(self._index()[key])[0][key]
        dtype = _ST_DTYPES.get(info["dtype"])
        return None if dtype is None else (dtype, tuple(info["shape"]))

    def _read_plain(self, f: Path, key: str, out: torch.Tensor | None = None) -> torch.Tensor | None:
        """The tensor's bytes read into fresh memory (or into `out`, a contiguous tensor of its dtype and
        shape); None for dtypes left to safe_open."""
        header, start = self._header(f)
        info = header[key]
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            return None
        a, b = info["data_offsets"]  # checked against the shape and the file size by _shard_header
        if out is None:
            out = torch.empty(info["shape"], dtype=dtype)
        buf = out.view(-1).view(torch.uint8)
        with _open(f, "rb", buffering=0) as fh:
            fh.seek(start + a)
            got = read_exact(fh, memoryview(buf.numpy())) if b > a else 0
        if got != b - a:
            raise CorruptCheckpoint(f"checkpoint {self.folder}: tensor {key!r} in {f.name} is cut short ({got} of "
                                    f"{b - a} bytes); the file is truncated — re-download or re-save this checkpoint")
        return out

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

    def view(self, key: str) -> torch.Tensor | None:
        """The tensor as stored, over a private memory map of its shard (nothing is read or copied; see
        the module docstring); None where only `read` can give it (pickle, a dtype left to safe_open,
        an empty tensor, or data not aligned to its element size)."""
        if self.format != "safetensors" or key not in self._index():
            return None
        f = self._index()[key]
        header, start = self._header(f)
        info = header[key]
        dtype = _ST_DTYPES.get(info["dtype"])
        a, b = info["data_offsets"]  # checked against the shape and the file size by _shard_header
        if dtype is None or b == a or (start + a) % _ITEMSIZE[info["dtype"]]:
            return None
        if f not in self._maps:
            with _open(f, "rb") as fh:  # ACCESS_COPY: a writable buffer for torch; writes would stay private
                self._maps[f] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        self.keys_read.append(key)
        flat = torch.frombuffer(self._maps[f], dtype=dtype, count=(b - a) // _ITEMSIZE[info["dtype"]],
                                offset=start + a)
        return flat.view(info["shape"])

    def read(self, key: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Read one tensor (as stored dtype); into `out` (contiguous, the stored dtype and shape, as
        `stored(key)` gives them) when given, which is then returned."""
        self.keys_read.append(key)
        if self.format == "pickle":
            sd = self._load_pickle()
            if key not in sd:
                raise CorruptCheckpoint(f"checkpoint {self.folder}: tensor {key!r} missing")
            return sd[key] if out is None else out.copy_(sd[key])
        index = self._index()
        if key not in index:
            raise CorruptCheckpoint(
                f"checkpoint {self.folder}: tensor {key!r} missing (the folder has {len(index)} tensors); "
                "is config.json for a different architecture than the weights?"
            )
        f = index[key]
        try:
            t = self._read_plain(f, key, out)
            if t is None:
                t = self._handle(f).get_tensor(key)
                return t if out is None else out.copy_(t)
            return t
        except CorruptCheckpoint:
            raise
        except FileNotFoundError as e:
            raise CorruptCheckpoint(f"checkpoint {self.folder}: shard {f.name} listed in the index is missing") from e
        except Exception as e:
            raise CorruptCheckpoint(
                f"checkpoint {self.folder}: cannot read tensor {key!r} from {f.name} ({e}); the file may be "
                "truncated — re-download or re-save this checkpoint"
            ) from e
