"""Benchmark: 100 matched-random null draws, vectorised vs a Python loop of single ablations.

    python benchmarks/bench_nulls.py [MODEL_DIR] [--draws 100] [--n 32] [--seq-len 32] [--circuit 0.1,1.2]

MODEL_DIR is an HF-format checkpoint folder (its tokenizer may sit in the folder or its parent, as
in a `headscreen train` series); without it a tiny GPT-NeoX model is built with headscreen.testing.
Three ways to get the same numbers:

- loop: one whole forward of the n probe prompts per draw (`ablate_head_sets_loop`);
- stacked: the draws stacked along the batch, forwards of <= --max-rows rows, whole forwards,
  no de-duplication;
- vectorised: stacked, the blocks below the lowest ablated layer run once per example chunk
  (forwards start at that block), and each distinct head set run once (`ablate_head_sets`'
  defaults). When every set lies in the last block, that block runs on the query rows only (its
  attention is clean for every set; what follows hook_z is position-wise). Matched-random draws
  are distinct sets whenever enough exist, so de-duplication only matters for tiny layers.

Prints the max |difference| against the loop over every metric and example (must be ~0) and the
speed ratios (best of --repeats timings each, 1 thread by default).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def _boot(model_dir: Path):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    tok_dir = model_dir if (model_dir / "tokenizer.json").exists() else model_dir.parent
    if not (tok_dir / "tokenizer.json").exists():
        sys.exit(f"no tokenizer.json in {model_dir} or its parent; save one there (headscreen.testing.save_word_tokenizer)")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    return TransformerBridge.boot_transformers(str(model_dir), device="cpu", tokenizer=tok).eval()


def _best(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", nargs="?", help="HF checkpoint folder (default: a tiny model from headscreen.testing)")
    ap.add_argument("--arch", default="gpt_neox", help="tiny-model architecture when no MODEL_DIR is given")
    ap.add_argument("--tiny", default="2,4,64", help="tiny model 'layers,heads,d_model' when no MODEL_DIR is given")
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--n", type=int, default=32, help="probe prompts")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--circuit", default=None, help="'L.H,L.H' (default: head 0 of the first and the last layer)")
    ap.add_argument("--kind", default="zero", choices=("zero", "mean", "resample"))
    ap.add_argument("--max-rows", type=int, default=None, help="rows per forward (default 8192 tokens / seq-len)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--no-tune-allocator", action="store_true",
                    help="leave glibc's allocator as it is (to measure what headscreen.compute.runtime.tune_allocator buys)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from headscreen.compute.runtime import tune_allocator

    tuned = False if args.no_tune_allocator else tune_allocator()  # as the CLI does; all variants share it
    from headscreen.causal.ablation import (
        Scoring,
        ablate_head_sets,
        ablate_head_sets_loop,
        ablation_source,
        rows_per_forward,
    )
    from headscreen.causal.conditions import matched_random_draws, normalize_circuit
    from headscreen.causal.metrics import METRICS
    from headscreen.probes.prompts import corrupt_retrieval, retrieval_probe

    with tempfile.TemporaryDirectory() as tmp:
        if args.model_dir is None:
            from headscreen.testing import save_tiny_model

            n_layers, n_heads, d_model = (int(x) for x in args.tiny.split(","))
            model_dir = save_tiny_model(Path(tmp) / args.arch, args.arch, n_layers=n_layers, n_heads=n_heads,
                                        d_model=d_model)
        else:
            model_dir = Path(args.model_dir)
        bridge = _boot(model_dir)
    cfg = bridge.cfg
    if args.circuit:
        circuit = [tuple(int(x) for x in lh.split(".")) for lh in args.circuit.split(",")]
    else:
        circuit = [(0, 0), (cfg.n_layers - 1, 0)]
    circuit = normalize_circuit(circuit, cfg.n_layers, cfg.n_heads)
    probe = retrieval_probe(args.n, args.seq_len, token_range=(2, cfg.d_vocab), seed=0,
                            pair_range=(1, max(2, args.seq_len - 8)))
    scoring = Scoring.of(probe)
    draws = matched_random_draws(circuit, cfg.n_heads, args.draws, args.seed)
    layers = sorted({layer for layer, _ in circuit})
    source = ablation_source(bridge, probe, layers, args.kind, corrupted=corrupt_retrieval(probe, 1))

    t_loop, ref = _best(lambda: ablate_head_sets_loop(bridge, scoring, draws, source), args.repeats)
    t_stack, stacked = _best(
        lambda: ablate_head_sets(bridge, scoring, draws, source, max_rows=args.max_rows, dedupe=False,
                                 skip_prefix=False), args.repeats
    )
    t_vec, vec = _best(lambda: ablate_head_sets(bridge, scoring, draws, source, max_rows=args.max_rows), args.repeats)
    diff_stack = max(float((stacked[m] - ref[m]).abs().max()) for m in METRICS)
    diff_vec = max(float((vec[m] - ref[m]).abs().max()) for m in METRICS)

    print(f"model: {model_dir if args.model_dir else f'tiny {args.arch} (headscreen.testing)'}: "
          f"{cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, vocab {cfg.d_vocab}")
    kind = "the exact null: every matched set" if len(draws) < args.draws else "distinct draws"
    print(f"circuit {list(circuit)}, {len(draws)} matched-random sets for {args.draws} requested ({kind}), "
          f"{args.kind} ablation, {args.n} prompts x {args.seq_len} tokens, "
          f"{rows_per_forward(args.max_rows, args.seq_len, cfg.n_heads)} rows per stacked forward, "
          f"{args.threads} thread(s), best of {args.repeats}, glibc allocator tuned: {tuned}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"loop of single ablations: {t_loop * 1e3:9.1f} ms  ({len(draws)} forwards)")
    lowest = min(layer for layer, _ in circuit)
    how = "query rows of the last block" if lowest == cfg.n_layers - 1 else f"start at block {lowest}"
    print(f"stacked, whole forwards:  {t_stack * 1e3:9.1f} ms  speed ratio {t_loop / t_stack:5.2f}x  "
          f"max abs diff {diff_stack:.3g}")
    print(f"vectorised ({how}, dedupe): {t_vec * 1e3:9.1f} ms  speed ratio {t_loop / t_vec:5.2f}x  "
          f"max abs diff {diff_vec:.3g}")
    top1_equal = torch.equal(vec["top1"], ref["top1"]) and torch.equal(stacked["top1"], ref["top1"])
    print(f"top-1 per example and set identical to the loop: {top1_equal}")


if __name__ == "__main__":
    main()
