"""Extraction benchmark (issue 4): streaming attention-only reads + sketches vs booting a bridge per checkpoint.

Builds a ~100M-parameter GPT-NeoX-shaped series locally (random init + small planted drifts in the
attention weights, saved as fp16 safetensors), then times, each in its own subprocess:
  (a) headscreen: LocalSeries.head_weights(dtype=None) (lazy safetensors, attention only, as stored)
      -> HeadSketcher (Gaussian JL, d = 10W, float32 projection of exact updates), and the same with
      sketch_kind="countsketch" at d = 100 and d = 500;
  (b) the usual way: TransformerBridge.boot_transformers per checkpoint, read W_Q..W_O, keep the
      flattened head vectors;
  (floor) a plain read of every byte of the attention tensors (header parsed, `readinto` one reused
      buffer), nothing else;
  (profile) (a) taken apart per stage and per checkpoint.
and prints wall-time ratios and the peak RSS (above the interpreter's RSS after imports) of each;
(a) is run at N and 2N checkpoints to show that its memory stays flat. The sketch state (Φ cache,
running sums, history) is reported separately from the budget of 2× one checkpoint's attention tensors.

Measured here (1 thread, nice 10, 2-core host shared with another engineer's jobs, load 1.7–3.3):
Gaussian 126–180 ms per checkpoint, CountSketch 98–116 ms, bridge 1.15–2.19 s: 9.1–13.4× and
14–20× in the same runs; floor 4–14 ms per checkpoint (36 MB of fp16). Peak RSS above imports:
Gaussian +177–192 MB, CountSketch +113–121 MB, flat from N = 12 to 24 (0.92–1.07×); bridge +4 GB.
Before this version (float64 θ projection, whole-checkpoint float32 head vectors, mmap reads):
7.45 s for 12 checkpoints (2.2× the bridge), +854 MB.

    nice -n 10 python benchmarks/bench_extraction.py --checkpoints 12 --threads 1 [--root /tmp/hs-bench]
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


def _plain_read(path: Path, keys: list[str], buf: bytearray) -> int:
    """Read the bytes of `keys` from one safetensors file into `buf` (reused); returns bytes read."""
    import struct

    with open(path, "rb", buffering=0) as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
        total = 0
        for k in keys:
            a, b = header[k]["data_offsets"]
            if len(buf) < b - a:
                buf.extend(bytes(b - a - len(buf)))
            fh.seek(8 + n + a)
            got = fh.readinto(memoryview(buf)[: b - a])
            assert got == b - a, (k, got)
            total += got
    return total


def _attention_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as h:
        return [k for k in h.keys() if "attention." in k and "weight" in k]


def worker(mode: str, root: str, n: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from headscreen.series import LocalSeries
    from headscreen.spectral import HeadSketcher, SpectralConfig

    series = LocalSeries(root)
    ckpts = series.checkpoints[:n]
    base_rss = _rss_mb()
    t0 = time.perf_counter()
    nbytes = 0
    extra: dict = {}
    if mode == "floor":
        buf = bytearray()
        for c in ckpts:
            f = c.path / "model.safetensors"
            nbytes += _plain_read(f, _attention_keys(f), buf)
    elif mode.startswith("stream"):  # stream[:kind[:d]]
        parts = mode.split(":")
        kind = parts[1] if len(parts) > 1 else "gaussian"
        dim = int(parts[2]) if len(parts) > 2 else 100
        sk = HeadSketcher(SpectralConfig(window=10, sketch_kind=kind, sketch_dim=dim), keep_history=True)
        for c in ckpts:
            hw = series.head_weights(c, dtype=None)  # as stored (fp16)
            sk.update(hw, c.step)
            nbytes += sum(t.numel() * t.element_size() for t in (hw.W_Q, hw.W_K, hw.W_V, hw.W_O))
            del hw
        history = sum(t.numel() * t.element_size() for t in sk._sketches + sk._norms)
        extra = {"phi_cache_mb": sk.projector.cached_bytes / 2**20, "history_mb": history / 2**20,
                 "running_sum_mb": sk._sum.numel() * 8 / 2**20,
                 "prev_mb": sk._prev.numel() * sk._prev.element_size() / 2**20,
                 "work_buffers_mb": sum(b.numel() * b.element_size() for b in sk._buf) / 2**20}
    elif mode == "profile":
        extra = profile(series, ckpts)
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
            "peak_above_base_mb": peak - base_rss, "attention_mb_per_ckpt": nbytes / max(len(ckpts), 1) / 2**20,
            **extra}


def profile(series, ckpts) -> dict:
    """Per-stage seconds per checkpoint of the streaming path (the HeadSketcher loop taken apart)."""
    import torch

    from headscreen.spectral import SpectralConfig, make_projector
    from headscreen.spectral.fingerprint import SEGMENT, _Checkpoint, _sq_norms

    stages = ("read", "finite", "assemble", "delta", "norm", "project_f32", "store_prev")
    acc = {k: [] for k in stages + ("project_f64", "project_layerwise_f32", "project_countsketch",
                                    "read_f32_and_head_vectors")}
    proj, prev, bufs = None, None, None
    for i, c in enumerate(ckpts):
        t = {k: 0.0 for k in acc}
        t0 = time.perf_counter()
        hw = series.head_weights(c, dtype=None)
        t["read"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ck = _Checkpoint(hw, c.step)
        ck.check_finite()
        t["finite"] = time.perf_counter() - t0
        n_layers, n_heads, p = ck.shape
        rows = n_layers * n_heads
        if proj is None:
            proj = make_projector(SpectralConfig(window=10), p)
            for b in range(proj.n_blocks):
                proj.raw_block(b)  # fill the Φ cache outside the timings
            cs = make_projector(SpectralConfig(window=10, sketch_kind="countsketch"), p)
            for b in range(cs.n_blocks):
                cs.hashes(b)
            prev = torch.empty(rows, p, dtype=ck.dtype)
            bufs = (torch.empty(rows, SEGMENT), torch.empty(rows, SEGMENT))
            whole = torch.empty(n_heads, p)
        for lo, hi in ck.segments():
            t0 = time.perf_counter()
            cur = ck.columns(lo, hi, bufs[0])
            t1 = time.perf_counter()
            delta = bufs[1][:, : hi - lo]
            delta.copy_(prev[:, lo:hi])
            torch.sub(cur, delta, out=delta)
            t2 = time.perf_counter()
            _sq_norms(delta)
            t3 = time.perf_counter()
            proj.project(delta, col_offset=lo)
            t4 = time.perf_counter()
            prev[:, lo:hi] = cur
            t5 = time.perf_counter()
            proj.project(delta, col_offset=lo, dtype=torch.float64)
            t6 = time.perf_counter()
            cs.project(delta, col_offset=lo)
            t7 = time.perf_counter()
            for k, a, b in (("assemble", t0, t1), ("delta", t1, t2), ("norm", t2, t3), ("project_f32", t3, t4),
                            ("store_prev", t4, t5), ("project_f64", t5, t6), ("project_countsketch", t6, t7)):
                t[k] += b - a
        t0 = time.perf_counter()  # the same projection done layer by layer over whole [H, P] rows
        for _layer in range(n_layers):
            proj.project(whole)
        t["project_layerwise_f32"] = time.perf_counter() - t0
        del hw, ck
        t0 = time.perf_counter()  # the previous read path: float32 HeadWeights, whole [L, H, P] head vectors
        series.head_weights(c).head_vectors()
        t["read_f32_and_head_vectors"] = time.perf_counter() - t0
        if i:  # the first checkpoint warms up allocator and caches
            for k in acc:
                acc[k].append(t[k])
    return {"profile_s": {k: (sum(v) / len(v) if v else float("nan")) for k, v in acc.items()},
            "stages": list(stages)}


def run_worker(mode: str, root: Path, n: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--root", str(root), "--checkpoints", str(n),
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
    print(f"threads={a.threads}, nice={os.nice(0)}, load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    res = {}
    for mode, k in (("floor", n), ("stream", n), ("stream", 2 * n), ("stream:countsketch:100", n),
                    ("stream:countsketch:500", n), ("bridge", n), ("profile", n)):
        r = run_worker(mode, root, k, a.threads)
        res[(mode, k)] = r
        if mode == "profile":
            continue
        print(f"  {mode:>22} N={k:>2}: wall {r['wall_s']:7.2f} s ({1e3 * r['wall_s'] / k:6.1f} ms/ckpt)  peak RSS "
              f"{r['peak_rss_mb']:7.0f} MB (+{r['peak_above_base_mb']:.0f} MB above the {r['base_rss_mb']:.0f} MB "
              "after imports)", flush=True)
    fl, st, st2, br = res[("floor", n)], res[("stream", n)], res[("stream", 2 * n)], res[("bridge", n)]
    pr = res[("profile", n)]["profile_s"]
    print("\nper-checkpoint stages of the streaming path (mean over checkpoints 2..N, ms):")
    stages = res[("profile", n)]["stages"]
    print("  " + "  ".join(f"{k} {1e3 * pr[k]:.1f}" for k in stages) + f"  | sum {1e3 * sum(pr[k] for k in stages):.1f}")
    print(f"  for comparison: projection in float64 {1e3 * pr['project_f64']:.1f} ms "
          f"({pr['project_f64'] / pr['project_f32']:.2f}x the float32 one); float32 projection layer by layer "
          f"(Φ read once per layer) {1e3 * pr['project_layerwise_f32']:.1f} ms "
          f"({pr['project_layerwise_f32'] / pr['project_f32']:.2f}x); the previous read path "
          f"(float32 HeadWeights + whole head_vectors) {1e3 * pr['read_f32_and_head_vectors']:.1f} ms; "
          f"CountSketch projection {1e3 * pr['project_countsketch']:.1f} ms "
          f"({pr['project_countsketch'] / pr['project_f32']:.2f}x the Gaussian float32 one)")
    att16 = st["attention_mb_per_ckpt"]
    print(f"\nattention tensors of one checkpoint: {att16:.1f} MB as stored (fp16), {2 * att16:.1f} MB as float32")
    cs, cs5 = res[("stream:countsketch:100", n)], res[("stream:countsketch:500", n)]
    print(f"speed-up of streaming+sketch over bridge-per-checkpoint: {br['wall_s'] / st['wall_s']:.1f}x  (target >= 20x); "
          f"sketch_kind='countsketch': {br['wall_s'] / cs['wall_s']:.1f}x; countsketch d=500: "
          f"{br['wall_s'] / cs5['wall_s']:.1f}x")
    print(f"streaming+sketch vs the plain attention read (floor):   {st['wall_s'] / fl['wall_s']:.2f}x the floor "
          f"(target <= 2x; floor {fl['wall_s'] / n * 1e3:.1f} ms/ckpt = "
          f"{fl['attention_mb_per_ckpt'] * n / fl['wall_s'] / 1024:.2f} GB/s); countsketch: "
          f"{cs['wall_s'] / fl['wall_s']:.2f}x")
    for r, k, kind in ((st, n, "gaussian"), (st2, 2 * n, "gaussian"), (cs, n, "countsketch"),
                       (cs5, n, "countsketch d=500")):
        sketch_state = r["phi_cache_mb"] + r["running_sum_mb"] + r["history_mb"]
        data = att16 + r["prev_mb"] + r["work_buffers_mb"] + sketch_state  # current θ (as read) + sketcher
        print(f"streaming {kind} N={k}: peak +{r['peak_above_base_mb']:.0f} MB = current checkpoint {att16:.0f} + "
              f"previous θ {r['prev_mb']:.0f} + work buffers {r['work_buffers_mb']:.0f} + sketch state "
              f"{sketch_state:.1f} (Φ/hash cache {r['phi_cache_mb']:.1f}, running sum {r['running_sum_mb']:.2f}, "
              f"history {r['history_mb']:.2f}) + {r['peak_above_base_mb'] - data:.0f} other; budget 2x attention + "
              f"sketch state = {2 * att16 + sketch_state:.0f} MB (fp16) / {4 * att16 + sketch_state:.0f} MB (fp32)")
    print(f"peak growth N={n} -> {2 * n}: {st2['peak_above_base_mb'] / max(st['peak_above_base_mb'], 1):.2f}x; "
          f"bridge N={n}: +{br['peak_above_base_mb']:.0f} MB")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

if __name__ == "__main__":
    main()
