"""Extraction benchmark (issue 4): streaming attention-only reads + sketches vs booting a bridge per checkpoint.

Builds a ~100M-parameter GPT-NeoX-shaped series locally (random init + small planted drifts in the
attention weights, saved as fp16 safetensors), then times, each in its own subprocess:
  (a) headscreen: LocalSeries.head_weights (lazy safetensors, attention only) -> HeadSketcher (JL, d = 10W);
  (b) the usual way: TransformerBridge.boot_transformers per checkpoint, read W_Q..W_O, keep the
      flattened head vectors;
  (floor) a plain safetensors read of the attention tensors' bytes, nothing else.
and prints wall-time ratios and the peak RSS (above the interpreter's RSS after imports) of each;
(a) is run at N and 2N checkpoints to show that its memory stays flat.

    python benchmarks/bench_extraction.py --checkpoints 12 --threads 1 [--root /tmp/hs-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

D_MODEL, N_LAYERS, N_HEADS, VOCAB = 768, 8, 12, 32000


def build_series(root: Path, n: int) -> Path:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from headscreen.testing import save_word_tokenizer

    if (root / "series.json").exists() and len(json.loads((root / "series.json").read_text())["checkpoints"]) >= n:
        return root
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(hidden_size=D_MODEL, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
                        intermediate_size=4 * D_MODEL, vocab_size=VOCAB, max_position_embeddings=512,
                        bos_token_id=0, eos_token_id=1, architectures=["GPTNeoXForCausalLM"])
    model = GPTNeoXForCausalLM(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"building {n} checkpoints of a {n_params / 1e6:.0f}M-parameter GPT-NeoX in {root}", flush=True)
    g = torch.Generator().manual_seed(1)
    entries = []
    for t in range(n):
        if t:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "attention" in name:
                        p.add_(1e-3 * torch.randn(p.shape, generator=g))
        folder = root / f"step{t * 100:06d}"
        model.half().save_pretrained(folder, safe_serialization=True)
        model.float()
        entries.append({"step": t * 100, "tokens": None, "path": folder.name})
    save_word_tokenizer(root, VOCAB)
    (root / "series.json").write_text(json.dumps({"checkpoints": entries}))
    return root


# --- the three workers (run in subprocesses) -------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(mode: str, root: str, n: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from safetensors import safe_open

    from headscreen.series import LocalSeries
    from headscreen.spectral import HeadSketcher, SpectralConfig

    series = LocalSeries(root)
    ckpts = series.checkpoints[:n]
    base_rss = _rss_mb()
    t0 = time.perf_counter()
    nbytes = 0
    if mode == "floor":
        for c in ckpts:
            for f in sorted(c.path.glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as h:
                    for k in h.keys():
                        if "attention." in k and "weight" in k:
                            t = h.get_tensor(k)
                            nbytes += t.numel() * 2
                            float(t[-1, -1])  # touch the data
    elif mode == "stream":
        sk = HeadSketcher(SpectralConfig(window=10), keep_history=True)
        for c in ckpts:
            hw = series.head_weights(c)
            sk.update(hw, c.step)
            nbytes += sum(t.numel() * 2 for t in (hw.W_Q, hw.W_K, hw.W_V, hw.W_O))
            del hw
    elif mode == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        from headscreen.series import load_tokenizer

        tok = load_tokenizer(root)
        kept = []
        for c in ckpts:
            b = TransformerBridge.boot_transformers(str(c.path), device="cpu", tokenizer=tok)
            L, H = b.cfg.n_layers, b.cfg.n_heads
            vec = torch.cat([w.detach().reshape(L, H, -1) for w in (b.W_Q, b.W_K, b.W_V, b.W_O)], dim=-1)
            kept.append(vec.clone())
            del b
    else:
        raise ValueError(mode)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "n": n, "wall_s": wall, "peak_rss_mb": peak, "base_rss_mb": base_rss,
            "peak_above_base_mb": peak - base_rss, "attention_mb_per_ckpt": nbytes / max(len(ckpts), 1) / 2**20}


def run_worker(mode: str, root: Path, n: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", mode, "--root", str(root), "--checkpoints", str(n),
                          "--threads", str(threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", default="/tmp/headscreen-bench-extraction")
    p.add_argument("--checkpoints", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker")
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.root, a.checkpoints, a.threads)))
        return
    n = a.checkpoints
    root = build_series(Path(a.root), 2 * n)
    print(f"threads={a.threads}, load average before: {os.getloadavg()[0]:.2f}")
    res = {}
    for mode, k in (("floor", n), ("stream", n), ("stream", 2 * n), ("bridge", n)):
        r = run_worker(mode, root, k, a.threads)
        res[(mode, k)] = r
        print(f"  {mode:>6} N={k:>2}: wall {r['wall_s']:7.2f} s  peak RSS {r['peak_rss_mb']:7.0f} MB "
              f"(+{r['peak_above_base_mb']:.0f} MB above the {r['base_rss_mb']:.0f} MB after imports)", flush=True)
    fl, st, st2, br = res[("floor", n)], res[("stream", n)], res[("stream", 2 * n)], res[("bridge", n)]
    att = st["attention_mb_per_ckpt"] * 2  # fp32 in memory
    print(f"\nattention tensors of one checkpoint: {st['attention_mb_per_ckpt']:.1f} MB fp16, {att:.1f} MB fp32")
    print(f"speed-up of streaming+sketch over bridge-per-checkpoint: {br['wall_s'] / st['wall_s']:.1f}x  (target >= 20x)")
    print(f"streaming+sketch vs the plain attention read (floor):   {st['wall_s'] / fl['wall_s']:.2f}x the floor (target <= 2x)")
    print(f"peak memory above imports, streaming N={n}: {st['peak_above_base_mb']:.0f} MB; N={2 * n}: "
          f"{st2['peak_above_base_mb']:.0f} MB (ratio {st2['peak_above_base_mb'] / max(st['peak_above_base_mb'], 1):.2f}); "
          f"bridge N={n}: {br['peak_above_base_mb']:.0f} MB")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
