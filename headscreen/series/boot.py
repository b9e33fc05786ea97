"""Boot one local checkpoint folder into a fresh `TransformerBridge`, in raw mode, without the hub.

A fresh bridge per checkpoint (never `load_state_dict` into an old one: on GPT-NeoX that leaves the
split q/k/v stale). Raw mode = `enable_compatibility_mode` is never called, so `hook_z` ablations
equal zeroing the o_proj input slice (value biases stay where the checkpoint has them).

The model and the tokenizer are loaded here from local folders with `local_files_only=True` and handed to
TransformerLens, so neither library looks anything up on the hub (without a tokenizer, TransformerLens
would ask the hub for one by the folder's name and retry for ~46 s). Offline mode is never forced.
"""

from __future__ import annotations

from pathlib import Path

import torch

from headscreen.series.checks import check_checkpoint
from headscreen.series.errors import CorruptCheckpoint

LOADING_MODE = "raw"


def load_tokenizer(directory: str | Path):
    """An HF tokenizer from a local directory; refuses the silently-empty tokenizer that a folder without
    tokenizer files yields for some architectures."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    try:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:
        raise CorruptCheckpoint(f"cannot load a tokenizer from {directory} ({e})") from e
    if len(tok) <= 1:
        raise CorruptCheckpoint(
            f"the tokenizer in {directory} is empty (len {len(tok)}); copy tokenizer.json into the series root"
        )
    return tok


def boot_bridge(folder: str | Path, tokenizer_dir: str | Path | None = None, *, device: str = "cpu",
                dtype: torch.dtype = torch.float32, trust_remote_code: bool = False, allow_pickle: bool = False,
                checked: bool = False):
    """A fresh, eval-mode `TransformerBridge` of the checkpoint in `folder`.

    With `tokenizer_dir=None` the bridge has no tokenizer (`bridge.tokenizer is None`): feed token ids.
    `bridge.cfg` gains no compatibility processing; `LOADING_MODE` ("raw") is what to record.
    The folder passes `check_checkpoint` first (skipped when the caller already ran it: `checked`);
    anything transformers then raises while loading becomes a `CorruptCheckpoint` naming the folder.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per checkpoint drowns the screen's own bar
    folder = Path(folder)
    if not checked:
        check_checkpoint(folder, allow_pickle=allow_pickle)
    tok = load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
    try:
        bridge = _boot(folder, tok, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers' own errors (size mismatch, unpickling, ...) name no checkpoint
        raise CorruptCheckpoint(f"checkpoint {folder}: transformers could not load it ({type(e).__name__}: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); re-save this "
                                "checkpoint or drop it from the series") from e
    if dtype != torch.float32:
        _rotary_in_weight_dtype(bridge, dtype)
    return bridge.eval()


def _rotary_in_weight_dtype(bridge, dtype: torch.dtype) -> None:
    """Cast the rotated q/k back to the weights' dtype, as HF's own OLMo/OLMoE/Llama attention does.

    TransformerLens 4.3 rotates q/k with float32 cos/sin and keeps the float32 result for OLMo-family
    models, so a half-precision boot fails (`matmul` of a float32 pattern with half-precision values).
    A permanent hook on `hook_rot_q`/`hook_rot_k` restores HF's order of operations: the bridge's logits
    then equal HF eager's in bfloat16 exactly on the tiny models of each architecture (tests/test_precision.py)."""
    def cast(t, hook):
        return t.to(dtype)

    for name in bridge.hook_dict:
        if name.endswith(("attn.hook_rot_q", "attn.hook_rot_k")):
            bridge.add_hook(name, cast, is_permanent=True)


def _boot(folder: Path, tok, *, device: str, dtype: torch.dtype, trust_remote_code: bool):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(
        str(folder), local_files_only=True, torch_dtype=dtype, attn_implementation="eager",
        trust_remote_code=trust_remote_code,
    ).to(device).eval()
    if tok is not None:  # the pre-loaded model's config is reused: no lookup by name
        return TransformerBridge.boot_transformers(str(folder), hf_model=hf, tokenizer=tok, device=device,
                                                   dtype=dtype, trust_remote_code=trust_remote_code)
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    arch_class = (hf.config.architectures or [type(hf).__name__])[0]
    return build_bridge_from_module(hf, arch_class, hf_config=hf.config, device=device, dtype=dtype)
