"""The precision a checkpoint is booted in for the probes and `validate`: `--dtype auto|float32|bfloat16|float16`.

Rule for `auto` (stated in the manifest's `probe_defaults.dtype`):

    float32 when the model's parameters in float32 (4 bytes x n_params, counted from the safetensors
    headers, no data read) fit in FIT_FRACTION (0.6) of the memory budget; otherwise the dtype the
    checkpoint is stored in (config.json `torch_dtype`/`dtype`, else the headers' floating dtype).

The memory budget is `budget_bytes` when given, else the device's: MemAvailable of /proc/meminfo on
the CPU (what can be allocated now without swapping, shared machines included), the free memory of
the GPU on CUDA. The 0.4 left over is for the probe activations, the tokenizer, the sketcher's
buffers and the loader's transient tensors. E.g. Pythia-1B (1.01e9 params: 4.0 GB in float32) boots
in float32 on a 24 GB machine; OLMoE-1B-7B (6.9e9: 27.7 GB) boots in its stored bfloat16 (13.8 GB).

Whatever the weights' dtype, everything the probes compute from the patterns is float32: the
patterns are taken from the model (its softmax runs in float32 in the eager attention of these
architectures and is handed over in the weights' dtype) and upcast to float32 at the hook, and all
selectivity, participation and copying arithmetic runs in float32 (headscreen/probes/forward.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHOICES = ("auto", *DTYPES)
FIT_FRACTION = 0.6
_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_ST_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


class PrecisionError(ValueError):
    """A --dtype that is not one of CHOICES."""


def check_choice(requested: str) -> str:
    if requested not in CHOICES:
        raise PrecisionError(f"--dtype {requested!r} is not a boot precision; use one of {', '.join(CHOICES)}")
    return requested


@dataclass(frozen=True)
class BootSettings:
    """Config section `boot`: the precision probed checkpoints are booted in (module docstring).

    dtype:      auto | float32 | bfloat16 | float16 (--dtype).
    budget_gb:  the memory budget of the `auto` rule in GB; None: what the device has available now."""

    dtype: str = "auto"
    budget_gb: float | None = None

    def __post_init__(self):
        check_choice(self.dtype)
        if self.budget_gb is not None and not self.budget_gb > 0:
            raise ValueError(f"boot.budget_gb={self.budget_gb!r} must be > 0 (GB), or left out")


def stored_layout(folder: str | Path) -> tuple[int, str | None]:
    """(number of parameters, stored floating dtype name) of the safetensors checkpoint in `folder`, from
    its headers alone; when its index lists shards that are not in the folder (a hub snapshot of the
    attention shards only), the count comes from the index's `metadata.total_size` instead. (0, None)
    for other formats."""
    n, names, present = 0, {}, set()
    folder = Path(folder)
    for f in sorted(folder.glob("*.safetensors")):
        present.add(f.name)
        with open(f, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        for k, v in header.items():
            if k == "__metadata__":
                continue
            count = 1
            for s in v["shape"]:
                count *= int(s)
            n += count
            if v["dtype"] in _ST_NAMES:
                names[_ST_NAMES[v["dtype"]]] = names.get(_ST_NAMES[v["dtype"]], 0) + count
    stored = max(names, key=names.get) if names else None
    index = folder / "model.safetensors.index.json"
    if index.exists() and stored is not None:
        data = json.loads(index.read_text())
        total = (data.get("metadata") or {}).get("total_size")
        if set((data.get("weight_map") or {}).values()) - present and isinstance(total, int | float):
            n = int(total) // (4 if stored == "float32" else 2)
    return n, stored


def config_dtype(hf_config: dict) -> str | None:
    value = hf_config.get("torch_dtype") or hf_config.get("dtype")
    return value if value in DTYPES else None


def memory_budget(device: str = "cpu") -> int:
    """Bytes that can be allocated now on `device` (see the module docstring)."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def choose_dtype(requested: str, folder: str | Path, hf_config: dict, *, device: str = "cpu",
                 budget_bytes: int | None = None) -> tuple[str, str]:
    """(dtype name, how it was chosen) for booting the checkpoint in `folder` (module docstring)."""
    check_choice(requested)
    if requested != "auto":
        return requested, "given"
    n_params, stored_name = stored_layout(folder)
    stored = config_dtype(hf_config) or stored_name or "float32"
    budget = int(budget_bytes) if budget_bytes is not None else memory_budget(device)
    need = 4 * n_params
    if need <= FIT_FRACTION * budget:
        return "float32", (f"auto: float32 weights ({need / 1e9:.2f} GB, {n_params} params) fit in {FIT_FRACTION} x "
                           f"the memory budget ({budget / 1e9:.2f} GB on {device})")
    if stored == "float32":  # stored in float32 and too large for it: the half precision with float32's range
        stored = "bfloat16"
    return stored, (f"auto: float32 weights ({need / 1e9:.2f} GB, {n_params} params) exceed {FIT_FRACTION} x the "
                    f"memory budget ({budget / 1e9:.2f} GB on {device}): the stored dtype {stored}")


def torch_dtype(name: str) -> torch.dtype:
    if name == "auto":
        raise PrecisionError("the boot dtype 'auto' must be resolved first (choose_dtype)")
    return DTYPES[check_choice(name)]


def resolve_for_series(series, boot: BootSettings, device: str = "cpu", ckpt=None) -> tuple[BootSettings, str]:
    """`boot` with `dtype` fixed for `series` (from the headers and config.json of `ckpt`, a checkpoint that
    passes its checks, no weight data read; None: there is none, and float32 is recorded as such), and
    how it was chosen. Sets `series.boot_dtype`, which `Series.boot` uses."""
    if boot.dtype == "auto" and ckpt is None:
        name, how = "float32", "auto: float32 (no checkpoint passes its checks to size the model from)"
    elif boot.dtype == "auto":
        name, how = choose_dtype("auto", series.folder(ckpt, "attention"), series.hf_config(ckpt), device=device,
                                 budget_bytes=None if boot.budget_gb is None else int(boot.budget_gb * 1e9))
    else:
        name, how = boot.dtype, "given"
    series.boot_dtype = DTYPES[name]
    return BootSettings(dtype=name, budget_gb=boot.budget_gb), how


def boot_dtype_for_validate(series, manifest: dict, requested: str | None, device: str, step: int) -> str:
    """The dtype `validate` boots in (and sets as `series.boot_dtype`): `requested` (auto resolved for the
    validated checkpoint), else the screen's (manifest `device.param_dtype`), else float32."""
    if requested is None:
        name = (manifest.get("device") or {}).get("param_dtype") or "float32"
        name = name if name in DTYPES else "float32"
        series.boot_dtype = DTYPES[name]
        return name
    boot, _ = resolve_for_series(series, BootSettings(dtype=requested), device, series.checkpoint(step))
    return boot.dtype
