"""CPU seconds per token of a Pythia-1B-width forward (HF GPT-NeoX, float32 and bfloat16, one thread).

Builds the model with 2 and 4 layers (meta device, then uninitialised memory filled with
U(-0.02, 0.02): no 4 GB model is materialised) and extrapolates per layer to 16. CPU seconds
(process_time) depend far less on the host's load than wall seconds. Used by the scaling plan
(README, "Scale, measured").

    PYTHONPATH=$PWD python benchmarks/bench_forward_cost.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import transformers as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_geometry import GEOMETRIES  # noqa: E402


def cpu_seconds(dtype: torch.dtype, n_layers: int, tokens: torch.Tensor) -> float:
    cfg0 = {k: v for k, v in GEOMETRIES["pythia-1b"].items() if k != "model_type"}
    cfg = tf.GPTNeoXConfig(**{**cfg0, "num_hidden_layers": n_layers})
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        m = tf.GPTNeoXForCausalLM(cfg)
    m = m.to_empty(device="cpu").to(dtype).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.02, 0.02)
        m(tokens[:1, :8])  # warm-up
        c = time.process_time()
        m(tokens)
        return time.process_time() - c


def main() -> None:
    torch.set_num_threads(1)
    tokens = torch.randint(0, 50000, (4, 64))
    for dtype in (torch.float32, torch.bfloat16):
        c2, c4 = cpu_seconds(dtype, 2, tokens), cpu_seconds(dtype, 4, tokens)
        full = c2 + 14 * (c4 - c2) / 2
        print(f"{dtype}: {tokens.numel()} tokens, CPU s with 2 / 4 layers {c2:.2f} / {c4:.2f} -> 16 layers {full:.2f}: "
              f"{full / tokens.numel():.4f} CPU-s per token; load {open('/proc/loadavg').read().split()[:3]}", flush=True)


if __name__ == "__main__":
    main()
