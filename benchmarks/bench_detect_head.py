"""Our batched detect_head-style scores vs TransformerLens 4's `head_detector.detect_head`.

Same prompts (Olsson repeated random tokens, as strings for detect_head, re-encoded by the bridge's
own `to_tokens` for ours), same definition (score = Σ(A ⊙ P) / ΣA, mean over prompts), for the
induction and previous-token patterns. Prints the max abs difference (must be <= 1e-5) and the speed
ratio TL / ours (target >= 5x).

    python benchmarks/bench_detect_head.py [MODEL_DIR] [--prompts 32] [--span 20] [--threads 1]

Without MODEL_DIR a tiny GPT-2 is built with headscreen.testing in a temporary directory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch  # noqa: E402


def _boot(model_dir: str):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return TransformerBridge.boot_transformers(model_dir, device="cpu", tokenizer=tok).eval()


def _prompts(bridge, n: int, span: int, seed: int) -> tuple[list[str], list[torch.Tensor]]:
    """Repeated-token prompts as strings, and the ids detect_head will see for each (via to_tokens)."""
    from headscreen.probes.prompts import repeated_tokens_probe

    tok = bridge.tokenizer
    special = set(tok.all_special_ids)
    lo = max(special) + 1 if special else 0
    hi = min(len(tok), int(bridge.cfg.d_vocab))
    batch = repeated_tokens_probe(n, span, token_range=(lo, hi), seed=seed)
    texts = [tok.decode(row.tolist()) for row in batch.tokens]
    ids = [bridge.to_tokens(t)[0].cpu() for t in texts]
    return texts, ids


def _ours(bridge, ids: list[torch.Tensor], micro_batch: int) -> dict[str, torch.Tensor]:
    """One batched forward per distinct prompt length; the mean over prompts of the per-prompt score."""
    from headscreen.probes.batch import ProbeBatch
    from headscreen.probes.forward import run_probe
    from headscreen.probes.screen import _Detect

    det = _Detect()
    reducers = {k: det.reducer(k) for k in ("induction", "previous")}
    sums = {k: 0.0 for k in reducers}
    by_len: dict[int, list[torch.Tensor]] = {}
    for t in ids:
        by_len.setdefault(t.numel(), []).append(t)
    for T, group in by_len.items():
        toks = torch.stack(group)
        pb = ProbeBatch("bench", toks, has_bos=False, seed=0, query_pos=torch.full((len(group),), T - 1))
        fwd = run_probe(bridge, pb, micro_batch=micro_batch, want_z=False, reducers=reducers)
        for k in reducers:
            sums[k] = sums[k] + fwd.reduced[k].sum(0)  # [layer, head]
    return {k: v / len(ids) for k, v in sums.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "model_dir", nargs="?", help="HF model directory with tokenizer files (default: tiny GPT-2)"
    )
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--span", type=int, default=20)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="best-of timing repeats")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformer_lens.head_detector import detect_head

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from headscreen.testing import save_tiny_model

            model_dir = str(save_tiny_model(Path(tmp) / "gpt2", "gpt2"))
        bridge = _boot(model_dir)
        cfg = bridge.cfg
        texts, ids = _prompts(bridge, args.prompts, args.span, args.seed)
        T = max(t.numel() for t in ids)
        if T >= cfg.n_ctx:
            print(
                f"prompts of {T} tokens do not fit n_ctx={cfg.n_ctx} (detect_head needs < n_ctx); lower --span"
            )
            return 2

        def run_tl():
            return {
                k: detect_head(bridge, texts, f"{k}_head" if k == "induction" else "previous_token_head")
                for k in ("induction", "previous")
            }

        def run_ours():
            return _ours(bridge, ids, args.micro_batch)

        tl, ours = run_tl(), run_ours()  # warm-up, and the values compared
        t_tl = min(_timed(run_tl) for _ in range(args.repeats))
        t_ours = min(_timed(run_ours) for _ in range(args.repeats))

    diffs = {k: float((tl[k].double() - ours[k].double()).abs().max()) for k in tl}
    worst = max(diffs.values())
    print(
        f"model: {args.model_dir or 'tiny gpt2 (headscreen.testing)'}  layers={cfg.n_layers} heads={cfg.n_heads}"
    )
    print(
        f"prompts: {len(ids)} repeated-token prompts of {T} tokens (span {args.span}), threads={args.threads}"
    )
    for k in tl:
        top = ours[k].flatten().argmax()
        print(
            f"  {k:9s} max|TL - ours| = {diffs[k]:.2e}   best head L{int(top) // cfg.n_heads}H{int(top) % cfg.n_heads} "
            f"score {float(ours[k].flatten()[top]):.4f}"
        )
    print(f"max abs difference: {worst:.2e}  ({'OK' if worst <= 1e-5 else 'FAIL'}: must be <= 1e-5)")
    print(
        f"time: detect_head {t_tl * 1e3:.1f} ms (both patterns), ours {t_ours * 1e3:.1f} ms "
        f"-> speed ratio {t_tl / t_ours:.1f}x (target >= 5x)"
    )
    return 0 if worst <= 1e-5 else 1


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
