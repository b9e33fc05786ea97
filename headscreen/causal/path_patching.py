"""Path patching of the K composition sender heads -> receiver heads (previous-token -> induction).

Question: how much of the task runs through the receivers' *keys* reading the senders' output?

Construction (two forwards on the *base* tokens; `source` is the other run of the clean/corrupted
pair; layers s0 = first sender layer, r1 = last receiver layer):

1. Run A, base tokens, layers 0..r1 only:
   - hook_z of every layer in [s0, r1): sender heads <- their source-run activation, every other
     head <- its own base-run activation (frozen);
   - hook_mlp_out of every layer in [s0, r1) <- its base-run activation (frozen);
   - hook_k of each receiver layer is recorded.
   Everything the receivers' layers read is then the base residual except the senders' writes:
   resid_pre[r] = base + sum over senders of (z_source - z_base) W_O (through the layer's
   post-attention norm on OLMo2), i.e. the residual "in which only the senders' contribution is
   swapped". The recorded K = W_K norm(resid_pre[r]) (+ b_K) is the receivers' K input computed
   from it.
2. Run B, base tokens, full model: hook_k[:, :, kv(h)] of each receiver (l, h) <- run A's K. Nothing
   else is touched, so the swap reaches the logits only through the receivers' keys (Q, V and
   every other reader see the base senders).

Directions: `noising` (base = clean, source = corrupted) asks what is lost when the receivers' keys
see corrupted senders: score = (LD_clean - LD_patch) / (LD_clean - LD_corr) (1 = the whole effect).
`denoising` (base = corrupted, source = clean): score = (LD_patch - LD_corr) / (LD_clean - LD_corr).

For a single sender and receiver the denoising LD equals
`transformer_lens.patching.get_act_patch_direct_path(component="k")` (which adds the sender's
clean-minus-corrupted write to the receiver's pre-norm K fork); the tests check this, and a
hand-built induction model where the answer is known (prev-token sender -> ~1, a distractor -> ~0).

GQA: K exists per key-value head, so the patch applies to kv head h // (n_heads / n_kv) and reaches
every query head sharing it; `affected_heads` lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from headscreen.causal.ablation import Scoring, check_eval_raw, rows_per_forward
from headscreen.causal.conditions import Head
from headscreen.causal.hooks import (
    Intervention,
    can_start_at_block,
    capture,
    k_name,
    replace_heads,
    run_with_interventions,
    z_name,
)
from headscreen.causal.metrics import logit_diff
from headscreen.causal.patching import normalised_score, run_ld
from headscreen.heads import kv_head

DIRECTIONS = ("noising", "denoising")


@dataclass(frozen=True)
class PathPatchResult:
    senders: tuple[Head, ...]
    receivers: tuple[Head, ...]
    direction: str
    score: float
    ld_patch: float
    ld_clean: float
    ld_corr: float
    kv_heads: tuple[Head, ...]  # (layer, kv head) whose K was replaced
    affected_heads: tuple[Head, ...]  # query heads reading those K (receivers, plus GQA group mates)

    def to_json(self) -> dict:
        return {
            "senders": [list(h) for h in self.senders], "receivers": [list(h) for h in self.receivers],
            "direction": self.direction, "score": self.score, "ld_patch": self.ld_patch,
            "ld_clean": self.ld_clean, "ld_corr": self.ld_corr,
            "kv_heads": [list(h) for h in self.kv_heads], "affected_heads": [list(h) for h in self.affected_heads],
        }


def _n_kv_heads(bridge) -> int:
    cfg = bridge.cfg
    return getattr(cfg, "n_key_value_heads", None) or cfg.n_heads


def _receiver_k_inputs(
    bridge, base: torch.Tensor, source: torch.Tensor, senders: Sequence[Head], receiver_layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Run A: hook_k of `receiver_layers` on `base` with only the senders' hook_z from `source`."""
    cfg = bridge.cfg
    s0, s1 = min(layer for layer, _ in senders), max(layer for layer, _ in senders)
    r1 = max(receiver_layers)
    if s1 >= min(receiver_layers):
        raise ValueError(f"a sender is at layer {s1} and a receiver at layer {min(receiver_layers)}; "
                         f"senders must sit in earlier layers than every receiver")
    mid = range(s0, r1)
    mlp = [f"blocks.{layer}.hook_mlp_out" for layer in mid]
    has_mlp = [name in bridge.hook_dict for name in mlp]
    if not all(has_mlp) and not getattr(cfg, "attn_only", False):
        raise ValueError(f"cannot freeze the MLPs of layers {list(mid)}: no hook_mlp_out on this model")
    frozen = capture(bridge, base, [z_name(layer) for layer in mid] + [m for m, ok in zip(mlp, has_mlp, strict=True) if ok],
                     stop_at_layer=r1)
    swapped = capture(bridge, source, sorted({z_name(layer) for layer, _ in senders}), stop_at_layer=s1 + 1)
    n = base.shape[0]
    one, never = torch.ones(1, dtype=torch.bool), torch.zeros(1, dtype=torch.bool)
    ivs = []
    for layer in mid:
        heads = [h for sl, h in senders if sl == layer]
        z_base = frozen[z_name(layer)]
        if heads:
            mask = torch.zeros(cfg.n_heads, dtype=torch.bool)
            mask[heads] = True
            src = torch.where(mask[None, None, :, None], swapped[z_name(layer)], z_base)
        else:
            src = z_base
        ivs.append(Intervention(z_name(layer), replace_heads(torch.ones(n, cfg.n_heads, dtype=torch.bool), src),
                                expect=one if heads else never))
    ivs += [Intervention(m, lambda act, m=m: frozen[m], expect=never) for m, ok in zip(mlp, has_mlp, strict=True) if ok]
    k_store: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def edit(act: torch.Tensor) -> torch.Tensor:
            k_store[layer] = act.detach().clone()
            return act

        return edit

    ivs += [Intervention(k_name(layer), keep(layer), expect=never) for layer in sorted(set(receiver_layers))]
    stop = r1 + 1 if r1 + 1 < cfg.n_layers else None
    run_with_interventions(bridge, base, ivs, stop_at_layer=stop)
    return k_store


def path_patch_k(
    bridge,
    clean: Scoring,
    corrupted_tokens: torch.Tensor,
    senders: Sequence[Head],
    receiver_sets: Sequence[Sequence[Head]],
    *,
    direction: str = "noising",
    max_rows: int | None = None,
    ld_reference: tuple[float, float] | None = None,
) -> list[PathPatchResult]:
    """Path-patch senders -> each receiver set's K (see the module docstring); one result per receiver
    set. Run B stacks the receiver sets along the batch, in micro-batches whose attention patterns
    stay under glibc's mmap ceiling, and starts at the first receiver block (the blocks below it
    are the base run's, shared by every set). `ld_reference` = (LD_clean, LD_corr) batch means when
    the caller already has them (e.g. from `head_patching`); else they are computed here."""
    check_eval_raw(bridge)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} must be one of {DIRECTIONS}")
    if not senders or not receiver_sets or any(not r for r in receiver_sets):
        raise ValueError("path patching needs at least one sender and non-empty receiver sets")
    cfg = bridge.cfg
    n_kv = _n_kv_heads(bridge)
    base, source = (clean.tokens, corrupted_tokens) if direction == "noising" else (corrupted_tokens, clean.tokens)
    r_layers = sorted({layer for rs in receiver_sets for layer, _ in rs})
    n, c = clean.n, len(receiver_sets)
    rows = rows_per_forward(max_rows, base.shape[1], cfg.n_heads)  # micro-batches: patterns under the mmap ceiling
    e_size = min(n, rows)
    c_size = max(1, rows // e_size)
    masks = torch.zeros(c, cfg.n_layers, n_kv, dtype=torch.bool)
    for j, rs in enumerate(receiver_sets):
        for layer, h in rs:
            masks[j, layer, kv_head(h, cfg.n_heads, n_kv)] = True
    names = [f"receivers {list(rs)} <- senders {list(senders)} ({direction})" for rs in receiver_sets]
    start = r_layers[0] if can_start_at_block(bridge) else 0  # blocks below the receivers: the base run
    ld = torch.empty(c, n)
    for i0 in range(0, n, e_size):
        ex = slice(i0, min(i0 + e_size, n))
        e = ex.stop - ex.start
        k_in = _receiver_k_inputs(bridge, base[ex], source[ex], senders, r_layers)
        inputs = base[ex]
        if start:
            with torch.no_grad():
                inputs = bridge(base[ex], stop_at_layer=start)  # [e, pos, d_model] entering block `start`
        for c0 in range(0, c, c_size):
            cs = slice(c0, min(c0 + c_size, c))
            cc = cs.stop - cs.start
            ivs = [
                Intervention(k_name(layer), replace_heads(masks[cs, layer].repeat_interleave(e, dim=0), k_in[layer]),
                             expect=masks[cs, layer].any(1))
                for layer in r_layers
            ]
            reps = (cc, 1, 1) if start else (cc, 1)
            logits, _ = run_with_interventions(
                bridge, inputs.repeat(*reps), ivs, groups=torch.arange(cc).repeat_interleave(e),
                group_names=names[cs], query_pos=clean.query_pos[ex].repeat(cc), start_at_layer=start or None,
            )
            ld[cs, ex] = logit_diff(logits.float(), clean.target[ex].repeat(cc)).view(cc, e)
    ld_patch = ld.mean(1)
    if ld_reference is None:
        ld_reference = (float(run_ld(bridge, clean.tokens, clean).mean()),
                        float(run_ld(bridge, corrupted_tokens, clean).mean()))
    ld_clean, ld_corr = ld_reference
    results = []
    for j, rs in enumerate(receiver_sets):
        denoise = float(normalised_score(float(ld_patch[j]), ld_clean, ld_corr))
        score = 1.0 - denoise if direction == "noising" else denoise
        kv = tuple((layer, int(k)) for layer in range(cfg.n_layers) for k in masks[j, layer].nonzero()[:, 0])
        affected = tuple((layer, h) for layer, k in kv for h in range(cfg.n_heads) if kv_head(h, cfg.n_heads, n_kv) == k)
        results.append(PathPatchResult(
            senders=tuple(senders), receivers=tuple(rs), direction=direction, score=score,
            ld_patch=float(ld_patch[j]), ld_clean=ld_clean, ld_corr=ld_corr, kv_heads=kv, affected_heads=affected,
        ))
    return results
