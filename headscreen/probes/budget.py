"""Probe micro-batches sized to a memory budget.

The screen's probe forward keeps only the hooks it reads (`hook_pattern` and `hook_z` of every layer,
headscreen/probes/forward.py), so the memory of one micro-batch of b examples of length T is, per
example (es = bytes per element of the booted weights' dtype):

    cached patterns   L·H·T²·es         every layer's pattern until the micro-batch ends
    upcast pattern    H·T²·4            one layer's float32 copy while its rows are taken
    attention work    3·H·T²·4          scores, softmax (float32) and the pattern of the layer running
    cached z          L·T·H·d_head·es
    logits            T·V·(es + 4)      the unembedding (in the weights' dtype) and its float32 log-softmax
    residual and MLP  T·(4·d + 3·d_ff_active)·es    d_ff_active = intermediate size x experts per token

`fit_micro_batch` caps the configured micro-batch so that b·(per example) fits the budget: by default
half of what the device has available after the boot (MemAvailable on the CPU). `micro_batch` changes
no result (it is outside the config hash), so the cap is free to differ between machines.
"""

from __future__ import annotations

from headscreen.series.precision import memory_budget

BUDGET_FRACTION = 0.5


def per_example_bytes(cfg, seq_len: int, bytes_per_element: int, hf_config: dict | None = None) -> int:
    """The estimate above for a bridge config `cfg` (n_layers, n_heads, d_head, d_model, d_vocab)."""
    L, H, T = int(cfg.n_layers), int(cfg.n_heads), int(seq_len)
    d, dh, V = int(cfg.d_model), int(cfg.d_head), int(cfg.d_vocab)
    es = int(bytes_per_element)
    hf = hf_config or {}
    d_ff = int(hf.get("intermediate_size") or getattr(cfg, "d_mlp", None) or 4 * d)
    d_ff *= int(hf.get("num_experts_per_tok") or 1)
    return (L * H * T * T * es + 4 * H * T * T * 4 + L * T * H * dh * es + T * V * (es + 4)
            + T * (4 * d + 3 * d_ff) * es)


def fit_micro_batch(requested: int, per_example: int, *, device: str = "cpu", budget_bytes: int | None = None) -> int:
    """min(requested, budget // per_example), at least 1 (see the module docstring)."""
    budget = budget_bytes if budget_bytes is not None else int(BUDGET_FRACTION * memory_budget(device))
    return max(1, min(int(requested), int(budget) // max(1, int(per_example))))


def micro_batch_for(bridge, batches: dict, requested: int, *, device: str = "cpu") -> int:
    """The micro-batch for probing `bridge` on `batches` (the longest batch sets it)."""
    p = next(bridge.parameters())
    seq = max(int(b.seq_len) for b in batches.values())
    hf = getattr(getattr(bridge, "original_model", None), "config", None)
    per = per_example_bytes(bridge.cfg, seq, p.element_size(), hf.to_dict() if hf is not None else None)
    return fit_micro_batch(requested, per, device=device)
