"""Denoising activation patching (docs/methods.md#causal-validation): clean activations into a corrupted run.

The corrupted prompts resample A and B (`probes.prompts.corrupt_retrieval`); every run is scored by
the logit difference of the *clean* target, LD = logit(B) - mean logit, at the query position:

    score = (LD_patch - LD_corr) / (LD_clean - LD_corr)        (batch means of LD)

so 0 = the patch restores nothing and 1 = it restores the clean LD. Patching the whole clean input
(`blocks.0.hook_resid_pre`) scores exactly 1; the empty patch is the corrupted run and scores 0.

Many patch sets run per forward: sets are stacked condition-major along the batch and each hook
replaces, per row, only its set's sites (`hooks.replace_heads` / `replace_rows`). The per-head map
(`head_patching`) is a resample ablation of the corrupted run whose source is the clean run, so it
runs on the ablation machinery (forwards from each layer's block, query rows on the last block);
it is verified against `transformer_lens.patching.get_act_patch_attn_head_out_all_pos` in the tests.
A patch whose clean activation equals the corrupted one raises `InterventionDidNotFire`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from headscreen.causal.ablation import (
    Scoring,
    ablate_head_sets,
    ablation_source,
    check_eval_raw,
    rows_per_forward,
)
from headscreen.causal.hooks import (
    Intervention,
    capture,
    replace_heads,
    replace_rows,
    run_with_interventions,
)
from headscreen.causal.metrics import logit_diff
from headscreen.probes.batch import ProbeBatch


@dataclass(frozen=True)
class PatchSite:
    """One activation to patch: a hook, and a head along dim 2 of [batch, pos, head, d] (None = all of it)."""

    hook_name: str
    head: int | None = None


@dataclass(frozen=True)
class HeadPatching:
    """Per-head denoising patching of hook_z (all positions)."""

    scores: Float[torch.Tensor, "layer head"]
    ld_patch: Float[torch.Tensor, "layer head"]  # batch-mean LD of each patched run
    ld_clean: float
    ld_corr: float
    unchanged: tuple[tuple[int, int], ...]  # heads whose clean and corrupted hook_z coincide: NaN, not 0


def normalised_score(ld_patch, ld_clean: float, ld_corr: float):
    """(LD_patch - LD_corr) / (LD_clean - LD_corr); raises when clean and corrupted LD coincide."""
    gap = ld_clean - ld_corr
    if not abs(gap) > 1e-6 * max(1.0, abs(ld_clean), abs(ld_corr)):
        raise ValueError(
            f"LD_clean={ld_clean:.4g} and LD_corr={ld_corr:.4g} coincide: the corruption does not move the "
            f"logit difference, so patching scores are undefined; use a probe the model solves"
        )
    return (ld_patch - ld_corr) / gap


def run_ld(bridge, tokens: Int[torch.Tensor, "n pos"], scoring: Scoring, *, max_rows: int | None = None) -> torch.Tensor:
    """Per-example LD of the clean target on `tokens` without interventions. -> [n]"""
    max_rows = rows_per_forward(max_rows, tokens.shape[1], bridge.cfg.n_heads)
    parts = []
    for i0 in range(0, tokens.shape[0], max_rows):
        sl = slice(i0, i0 + max_rows)
        logits, _ = run_with_interventions(bridge, tokens[sl], [], query_pos=scoring.query_pos[sl])
        parts.append(logit_diff(logits.float(), scoring.target[sl]))
    return torch.cat(parts)


def _check_pair(clean: Scoring, corrupted_tokens: torch.Tensor) -> None:
    if corrupted_tokens.shape != clean.tokens.shape:
        raise ValueError(
            f"corrupted tokens {tuple(corrupted_tokens.shape)} must match the clean {tuple(clean.tokens.shape)}: "
            f"patching is aligned by example and position"
        )


def patch_ld(
    bridge,
    clean: Scoring,
    corrupted_tokens: Int[torch.Tensor, "n pos"],
    patch_sets: Sequence[Sequence[PatchSite]],
    *,
    max_rows: int | None = None,
    names: Sequence[str] | None = None,
    allow_unchanged: bool = False,
) -> tuple[Float[torch.Tensor, "set n"], torch.Tensor]:
    """Per-example LD of the corrupted run with each set's sites patched from the clean run.

    Returns (ld [set, n], unchanged [set] bool). A set whose patch changed nothing at one of its
    hooks raises `InterventionDidNotFire`, or with `allow_unchanged` is flagged in `unchanged` (its
    LD is then NaN, never a silent zero effect). An empty set is the unpatched corrupted run (it
    shares forwards with the others, so its rows must come out untouched by them). A hook must be
    patched either per head or whole, not both.
    """
    _check_pair(clean, corrupted_tokens)
    per_hook: dict[str, str] = {}
    for s in patch_sets:
        for site in s:
            kind = "whole" if site.head is None else "head"
            if per_hook.setdefault(site.hook_name, kind) != kind:
                raise ValueError(f"{site.hook_name} is patched both per head and whole; split it into two calls")
    clean_acts = capture(bridge, clean.tokens, list(per_hook)) if per_hook else {}
    names = list(names) if names is not None else [f"patch set {i}" for i in range(len(patch_sets))]
    n = clean.n
    max_rows = rows_per_forward(max_rows, clean.tokens.shape[1], bridge.cfg.n_heads)
    e_size = min(n, max_rows)
    c_size = max(1, max_rows // e_size)
    out = torch.empty(len(patch_sets), n)
    unchanged = torch.zeros(len(patch_sets), dtype=torch.bool)
    for i0 in range(0, n, e_size):
        ex = slice(i0, min(i0 + e_size, n))
        e = ex.stop - ex.start
        for c0 in range(0, len(patch_sets), c_size):
            sets = patch_sets[c0:c0 + c_size]
            c = len(sets)
            ivs = []
            for hook_name, kind in per_hook.items():
                src = clean_acts[hook_name][ex]
                uses = torch.tensor([any(site.hook_name == hook_name for site in s) for s in sets])
                if not bool(uses.any()):
                    continue
                if kind == "whole":
                    edit = replace_rows(uses.repeat_interleave(e), src)
                else:
                    mask = torch.zeros(c, src.shape[2], dtype=torch.bool)
                    for j, s in enumerate(sets):
                        for site in s:
                            if site.hook_name == hook_name:
                                mask[j, site.head] = True
                    edit = replace_heads(mask.repeat_interleave(e, dim=0), src)
                ivs.append(Intervention(hook_name, edit, expect=uses))
            logits, report = run_with_interventions(
                bridge, corrupted_tokens[ex].repeat(c, 1), ivs, groups=torch.arange(c).repeat_interleave(e),
                group_names=names[c0:c0 + c_size], query_pos=clean.query_pos[ex].repeat(c),
                allow_unchanged=allow_unchanged,
            )
            out[c0:c0 + c, ex] = logit_diff(logits.float(), clean.target[ex].repeat(c)).view(c, e)
            for bad in report.unchanged.values():
                unchanged[c0:c0 + c] |= bad
    out[unchanged] = float("nan")
    return out, unchanged


def head_patching(bridge, clean: ProbeBatch, corrupted: ProbeBatch, *, max_rows: int | None = None) -> HeadPatching:
    """Denoising patching of every head's hook_z (all positions), clean -> corrupted, as a [layer, head] map.

    A head whose patch changes nothing (a dead head, or identical clean and corrupted activations)
    scores NaN and is listed in `unchanged`.
    """
    check_eval_raw(bridge)
    scoring = Scoring.of(clean)
    _check_pair(scoring, corrupted.tokens)
    cfg = bridge.cfg
    layers = list(range(cfg.n_layers))
    # Patching head h of the corrupted run is a resample ablation of it whose source is the clean run:
    # the ablation machinery runs it (stacked, from the layer's block, query rows on the last block).
    source = ablation_source(bridge, corrupted, layers, "resample", corrupted=clean, max_rows=max_rows)
    on_corrupted = Scoring(corrupted.tokens, scoring.query_pos, scoring.target)
    ld_patch = torch.empty(cfg.n_layers, cfg.n_heads)
    for layer in layers:  # one layer per call, so that its forwards start at the layer's block
        sets = [[(layer, h)] for h in range(cfg.n_heads)]
        ld = ablate_head_sets(bridge, on_corrupted, sets, source, max_rows=max_rows, dedupe=False,
                              names=[f"patch L{layer}H{h}" for h in range(cfg.n_heads)], allow_unchanged=True)
        ld_patch[layer] = ld["logit_diff"].mean(1)
    heads = [(layer, h) for layer in layers for h in range(cfg.n_heads)]
    unchanged = ld_patch.isnan().flatten()
    ld_clean = float(run_ld(bridge, clean.tokens, scoring, max_rows=max_rows).mean())
    ld_corr = float(run_ld(bridge, corrupted.tokens, scoring, max_rows=max_rows).mean())
    dead = tuple(heads[i] for i in unchanged.nonzero()[:, 0].tolist())
    return HeadPatching(normalised_score(ld_patch, ld_clean, ld_corr), ld_patch, ld_clean, ld_corr, dead)
