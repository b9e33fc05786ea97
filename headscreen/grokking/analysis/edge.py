"""The rolling update-Gram spectral edge of a grokking trajectory, through headscreen.spectral.

No Gram code lives here: the whole trunk and every attention head are streamed through the same
`HeadSketcher` → `compute_fingerprint` path that screens pretraining checkpoint series, so a grokking
trajectory gets exactly the statistics a checkpoint series gets (σ_1..σ_W, r_12, r_23, k*, weighted
k*, gap_norm, g_23, ‖δ‖, their z-scores), phases come from `edge_phases`, and the gap-open step from
`onsets`. Definitions (docs/methods.md, "Spectral edge of a grokking run"):

* transient: the windows that begin before the memorisation step (train accuracy ≥ 0.99) are the
  early-training transient; when the run never memorises (or the step is unknown) the first W windows
  are, as for checkpoint series.
* the gap opens at the first window after the transient whose σ_2/σ_3 (`rule.metric`) exceeds
  `rule.factor` × the median of the first `rule.baseline_windows` post-transient windows, for
  `rule.consecutive` windows in a row (default 1.5×, 3 baseline windows, 2 in a row). Since
  σ_2/σ_3 ≥ 1, a gap that opens is always above the collapse bar 1.20 of the phase definition.
* phases: rise / plateau / collapse of σ_2/σ_3 (`edge_phases`, collapse bar `SpectralConfig.collapse_threshold`, 1.20), transient skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from headscreen.spectral import (
    PHASE_NAMES,
    EdgePhases,
    Fingerprint,
    HeadSketcher,
    SpectralConfig,
    compute_fingerprint,
    edge_phases,
    onsets,
)
from headscreen.spectral.paramspace import flatten

# cross_attn: SCAN decoder; layers.*: the published encoder (torch layout: packed in-projection, linear1/2)
TRUNK_PATTERN = re.compile(r"^(blocks\.\d+\.(attn|cross_attn|mlp)\.W_[A-Za-z_]+"
                           r"|layers\.\d+\.(self_attn\.in_proj_weight|self_attn\.out_proj\.weight|linear[12]\.weight))$")


@dataclass(frozen=True)
class GapRule:
    """When the gap 'opens' (see the module docstring); every field configurable."""

    metric: str = "ratio_23"
    factor: float = 1.5
    baseline_windows: int = 3
    consecutive: int = 2

    def __post_init__(self) -> None:
        if not self.factor > 1.0:
            raise ValueError(f"GapRule.factor={self.factor!r} must be > 1 (a gap opens when the metric grows); use 1.5")
        if self.baseline_windows < 1 or self.consecutive < 1:
            raise ValueError(f"GapRule.baseline_windows={self.baseline_windows} and consecutive={self.consecutive} "
                             "must be >= 1; use 3 and 2")


def trunk_names(names: Iterable[str]) -> list[str]:
    """The trunk tensors (attention and MLP weight matrices; no embeddings, norms, biases), sorted."""
    return sorted(n for n in names if TRUNK_PATTERN.match(n))


def trunk_vector(tensors: Mapping[str, Tensor], where: str = "the snapshot") -> Float[Tensor, " P"]:
    """The flattened trunk of one snapshot (float32, tensors in sorted-name order). A NaN/Inf is named by
    its tensor (`where`: the snapshot, for the message), not by the pseudo-head the trunk becomes."""
    names = trunk_names(tensors)
    if not names:
        raise ValueError("no trunk tensor (blocks.<l>.attn.W_* / blocks.<l>.mlp.W_*) in the snapshot; "
                         f"got names like {sorted(tensors)[:4]}")
    vec = flatten((tensors[n] for n in names), torch.float32)
    if not bool(torch.isfinite(vec).all()):
        for n in names:
            bad = int((~torch.isfinite(tensors[n].detach())).sum())
            if bad:
                raise ValueError(f"{where}: tensor {n} has {bad} NaN/Inf value(s); the run diverged or the file "
                                 "is corrupt — retrain from an earlier snapshot or drop this one")
    return vec


def transient_windows(checkpoint_steps: Iterable[int], window: int, memorisation_step: int | None) -> int:
    """Windows that begin (their first checkpoint) before the memorisation step; W when it is None."""
    steps = np.asarray(list(checkpoint_steps))
    n_win = max(steps.size - window, 0)
    if memorisation_step is None:
        return window
    return int((steps[:n_win] < memorisation_step).sum())


@dataclass(frozen=True)
class EdgeResult:
    """Edge statistics of one trajectory (the trunk as one pseudo-head, or every attention head)."""

    fingerprint: Fingerprint  # arrays [metric, window, layer, head]
    phases: EdgePhases  # fields [layer, head] / [window, layer, head]
    transient: int  # windows skipped
    gap_open: np.ndarray  # [layer, head] step where the gap opens (NaN: never / undecidable)
    note: str | None = None  # why gap_open is undecidable, if it is

    @property
    def steps(self) -> np.ndarray:
        return self.fingerprint.steps


def edge_from_sketcher(sketcher: HeadSketcher, *, transient: int, rule: GapRule | None = None) -> EdgeResult:
    """Fingerprint, phases and gap-open step of everything fed to `sketcher` (needs W + 1 snapshots)."""
    rule = rule or GapRule()
    config = replace(sketcher.config, transient_windows=transient)
    fp = compute_fingerprint(sketcher.sketches, sketcher.steps, config=config, update_norms=sketcher.update_norms)
    r23 = torch.from_numpy(fp.metric("ratio_23"))
    n_win, n_layers, n_heads = r23.shape
    skip = min(transient, n_win - 1)
    phases = edge_phases(r23, config.collapse_threshold, skip=skip)
    gap = np.full((n_layers, n_heads), np.nan)
    note = None
    need = transient + rule.baseline_windows + rule.consecutive
    if n_win < need:
        note = (f"{n_win} windows; the gap-open rule needs {need} (transient {transient} + baseline "
                f"{rule.baseline_windows} + {rule.consecutive} in a row): snapshot more often")
    else:
        frame = fp.to_frame()
        on = onsets(frame, rule.metric, rule.factor - 1.0, relative=True, transient_windows=transient,
                    baseline_windows=rule.baseline_windows, consecutive=rule.consecutive, config=config)
        gap[on["layer"].to_numpy(), on["head"].to_numpy()] = on["onset_step"].to_numpy()
    return EdgeResult(fingerprint=fp, phases=phases, transient=transient, gap_open=gap, note=note)


def trunk_sketcher(snapshots: Iterable[tuple[int, Tensor]], config: SpectralConfig | None = None) -> HeadSketcher:
    """Feed (step, flattened trunk vector) pairs, oldest first, to a HeadSketcher as one [1, 1, P] 'head'."""
    sk = HeadSketcher(config or SpectralConfig())
    for step, vec in snapshots:
        sk.update(vec.reshape(1, 1, -1), int(step))
    return sk


def edge_frame(result: EdgeResult, scope: str) -> pd.DataFrame:
    """Long table: scope, step, layer, head, metric, value (fingerprint metrics + 'phase' codes).

    The trunk (scope 'trunk', layer = head = −1) has no `_rel` metrics (there is nothing to compare with).
    """
    df = result.fingerprint.to_frame()
    labels = result.phases.labels.numpy()  # [n_win, L, H]
    n_win, n_layers, n_heads = labels.shape
    idx = np.indices((n_win, n_layers, n_heads)).reshape(3, -1)
    phase = pd.DataFrame({"step": result.steps[idx[0]].astype(np.int64), "layer": idx[1], "head": idx[2],
                          "metric": "phase", "value": labels.reshape(-1).astype(np.float64)})
    df = pd.concat([df, phase], ignore_index=True)
    if scope == "trunk":
        df = df[~df["metric"].str.endswith("_rel")].copy()
        df["layer"], df["head"] = -1, -1
    df.insert(0, "scope", scope)
    return df.reset_index(drop=True)


def phase_summary(result: EdgeResult) -> pd.DataFrame:
    """Per (layer, head): peak_step, collapse_step (NaN: never), gap_open_step, transient windows."""
    steps = result.steps
    peak = result.phases.peak.numpy()
    col = result.phases.collapse.numpy()
    n_layers, n_heads = peak.shape
    ll, hh = np.indices((n_layers, n_heads)).reshape(2, -1)
    return pd.DataFrame({
        "layer": ll, "head": hh,
        "peak_step": steps[peak.reshape(-1)].astype(np.int64),
        "collapse_step": np.where(col.reshape(-1) >= 0, steps[np.clip(col.reshape(-1), 0, None)], np.nan),
        "gap_open_step": result.gap_open.reshape(-1),
        "transient_windows": result.transient,
    })


__all__ = ["PHASE_NAMES", "EdgeResult", "GapRule", "edge_frame", "edge_from_sketcher", "phase_summary",
           "transient_windows", "trunk_names", "trunk_sketcher", "trunk_vector"]
