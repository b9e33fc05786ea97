"""A boot holds one copy of the weights: the peak resident memory of a boot stays near the booted weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from headscreen.probes.budget import fit_micro_batch, per_example_bytes

PROBE = r"""
import json, resource, sys, torch
torch.set_num_threads(1)
import transformers, transformer_lens.model_bridge  # imported before the baseline
from headscreen.series.boot import boot_bridge
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
before = rss()
b = boot_bridge(sys.argv[1], None, dtype=getattr(torch, sys.argv[2]))
touched = [float(p.max()) for p in b.parameters()]  # every page of every weight resident
weights = sum(p.numel() * p.element_size() for p in b.parameters())
print(json.dumps({"before": before, "peak": hwm(), "weights": weights}))
"""


@pytest.fixture(scope="module")
def mid_model(tmp_path_factory):
    from headscreen.testing import build_tiny_model

    d = tmp_path_factory.mktemp("mid") / "m"
    m = build_tiny_model("gpt_neox", n_layers=6, d_model=768, n_heads=8, vocab=8192, n_ctx=128).to(torch.bfloat16)
    m.save_pretrained(d, safe_serialization=True, max_shard_size="60MB")  # sharded bf16, as on the hub
    return d


@pytest.mark.slow  # ~40 s under load: a 55M-parameter model, booted in two fresh interpreters
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_boot_peak_is_one_copy(mid_model, dtype):
    out = subprocess.run([sys.executable, "-c", PROBE, str(mid_model), dtype], capture_output=True, text=True,
                         check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    grew = r["peak"] - r["before"]
    # measured on a 1B-like d1024 NeoX: 1.21x (float32 from bf16 files) and 1.24-1.31x (bfloat16; the bridge adds
    # split q/k/v; the allocator's slack varies from run to run); two copies would be >= 2x, so 1.5x separates them
    assert r["weights"] > 100e6 if dtype == "float32" else r["weights"] > 50e6
    assert grew <= 1.5 * r["weights"], (grew / r["weights"], r)


def test_micro_batch_fits_the_budget():
    class Cfg:  # Pythia-1B
        n_layers, n_heads, d_head, d_model, d_vocab, d_mlp = 16, 8, 256, 2048, 50304, 8192

    per = per_example_bytes(Cfg, 256, 4)
    assert 150e6 < per < 250e6  # patterns 67 MB + logits 103 MB + the rest
    assert fit_micro_batch(32, per, budget_bytes=10 * per + 1) == 10
    assert fit_micro_batch(32, per, budget_bytes=100 * per) == 32
    assert fit_micro_batch(32, per, budget_bytes=1) == 1
