"""Does a spectral signal pick out the circuit before it becomes selective? (docs/methods.md, "Pre-identification")

For each spectral metric, in two scopes (`raw`: the value; `layer_z`: the value as a z-score among the
heads of its layer at the same step, which removes a network-wide phase change), and each checkpoint:

* rank all heads by the metric (in the metric's circuit direction: lower for k*, higher for the rest);
* precision@k (k = circuit size) and the ROC AUC of circuit heads against every other head;
* p: the share of within-layer relabellings (layer_permutations: each layer keeps its number of circuit
  heads, no head moves across layers) whose AUC is at least the observed one.

A metric *separates* the circuit at a checkpoint before emergence when AUC >= `auc_bar` and p < `alpha`;
its earliest separating step is the first such checkpoint that stays separating for `persist`
checkpoints in a row (fewer when emergence comes first), and its lead = emergence step − that step (in
steps and tokens). Emergence is the first checkpoint at which any circuit head reaches the induction
circuit threshold on the probe (`in_induction_circuit` of classes.parquet): the strict reading, before
any circuit head is selective even once.

Metrics (each from the table that holds it; absent tables leave their metrics out):
`pr` (participation.parquet, the probe), `pr_integral` (the PR integral over the checkpoints up to the
step, probes.participation.pr_integral), `update_norm`, `update_norm_z`, `ratio_12`, `ratio_23`,
`gap_norm`, `kstar` (fingerprints.parquet), `onset_<metric>` (onsets.parquet: steps since the head's
spectral onset, heads without one yet rank lowest).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from headscreen.probes.participation import pr_integral
from headscreen.probes.separation import (
    auc_from_ranks,
    average_ranks,
    layer_permutations,
    n_labelings,
    permutation_p,
    precision_at_k,
)

FINGERPRINT_METRICS = ("update_norm", "update_norm_z", "ratio_12", "ratio_23", "gap_norm", "kstar")
LOWER_IS_CIRCUIT = frozenset({"kstar"})  # a coherent low-rank update has its edge early
SCOPES = ("raw", "layer_z")
COLUMNS = ["metric", "scope", "direction", "step", "tokens", "before_emergence", "n_heads", "n_circuit", "auc",
           "precision_at_k", "best_circuit_rank", "worst_circuit_rank", "null_mean_auc", "p_value", "separates"]


@dataclass(frozen=True)
class PreidSettings:
    """Bars and the null of the pre-identification analysis."""

    auc_bar: float = 0.9  # AUC a metric must reach to separate the circuit
    alpha: float = 0.05  # and its within-layer permutation p must be below this
    persist: int = 2  # consecutive pre-emergence checkpoints it must hold for
    n_perm: int = 1000  # relabellings drawn (all of them when there are fewer)
    seed: int = 0  # of the drawn relabellings
    pr_rule: str = "right"  # PR integral rule, as ScreenThresholds.pr_rule

    def __post_init__(self) -> None:
        if not 0.5 < self.auc_bar <= 1:
            raise ValueError(f"PreidSettings.auc_bar={self.auc_bar} must be in (0.5, 1]; 0.5 is chance")
        if not 0 < self.alpha < 1:
            raise ValueError(f"PreidSettings.alpha={self.alpha} must be in (0, 1), e.g. 0.05")
        if self.persist < 1:
            raise ValueError(f"PreidSettings.persist={self.persist} must be >= 1 checkpoint")
        if self.n_perm < 10:
            raise ValueError(f"PreidSettings.n_perm={self.n_perm} must be >= 10; use 1000 for p down to 0.001")
        if self.pr_rule not in ("right", "trapezoid"):
            raise ValueError(f"PreidSettings.pr_rule={self.pr_rule!r} must be 'right' or 'trapezoid'")

    def to_dict(self) -> dict:
        return asdict(self)


def _wide(df: pd.DataFrame, value: str, heads: pd.MultiIndex) -> pd.DataFrame:
    """Long rows -> [step, (layer, head)], every head of `heads` a column (NaN where absent)."""
    w = df.pivot_table(index="step", columns=["layer", "head"], values=value, aggfunc="first", dropna=False)
    return w.reindex(columns=heads).sort_index()


def metric_panels(heads: pd.MultiIndex, *, fingerprints: pd.DataFrame | None = None,
                  participation: pd.DataFrame | None = None, onsets: pd.DataFrame | None = None,
                  probe: str | None = None, pr_rule: str = "right") -> dict[str, pd.DataFrame]:
    """metric -> wide [step, (layer, head)] scores (not yet oriented), from whichever tables are given."""
    panels: dict[str, pd.DataFrame] = {}
    if participation is not None and len(participation):
        part = participation
        if probe is not None and "probe" in part:
            part = part[part["probe"].astype(str) == probe]
        if len(part):
            panels["pr"] = _wide(part, "pr", heads)
            steps = sorted(int(s) for s in part["step"].unique())
            rows = [pr_integral(part[part["step"] <= s], rule=pr_rule).assign(step=s) for s in steps[1:]]
            if rows:
                panels["pr_integral"] = _wide(pd.concat(rows, ignore_index=True), "integral", heads)
    if fingerprints is not None and len(fingerprints):
        for metric in FINGERPRINT_METRICS:
            sub = fingerprints[fingerprints["metric"] == metric]
            if len(sub):
                panels[metric] = _wide(sub, "value", heads)
    if onsets is not None and len(onsets):
        steps = sorted(set().union(*(p.index for p in panels.values()))) if panels else []
        for metric, g in onsets.groupby("metric", sort=True):
            onset = g.set_index(["layer", "head"])["onset_step"].reindex(heads).to_numpy(float)
            since = np.array(steps, dtype=float)[:, None] - onset[None, :]
            panels[f"onset_{metric}"] = pd.DataFrame(np.where(since >= 0, since, np.nan), index=steps, columns=heads)
    return panels


def within_layer_z(wide: pd.DataFrame) -> pd.DataFrame:
    """Each value as (x − layer mean) / layer sd over the finite values of its layer at that step (NaN if sd = 0)."""
    out = wide.copy()
    for layer in wide.columns.get_level_values("layer").unique():
        cols = [c for c in wide.columns if c[0] == layer]
        x = wide[cols].to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            finite = np.isfinite(x)
            n = finite.sum(1, keepdims=True)
            mean = np.where(finite, x, 0).sum(1, keepdims=True) / np.maximum(n, 1)
            sd = np.sqrt(np.where(finite, (x - mean) ** 2, 0).sum(1, keepdims=True) / np.maximum(n, 1))
            out[cols] = np.where(sd > 0, (x - mean) / np.where(sd > 0, sd, 1), np.nan)
    return out


def emergence_of(classes: pd.DataFrame | None, circuit: list, probe: str | None) -> float | None:
    """The first step at which any circuit head is in the induction circuit on `probe` (None if never)."""
    if classes is None or not len(classes) or not circuit:
        return None
    c = classes if probe is None or "probe" not in classes else classes[classes["probe"].astype(str) == probe]
    want = {(int(a), int(b)) for a, b in circuit}
    hit = c[[(int(a), int(b)) in want for a, b in zip(c["layer"], c["head"], strict=True)]]
    hit = hit[hit["in_induction_circuit"].fillna(False).astype(bool)]
    return float(hit["step"].min()) if len(hit) else None


def _earliest(steps: np.ndarray, sep: np.ndarray, before: np.ndarray, persist: int) -> np.ndarray:
    """sep [P, S] -> [P] the first pre-emergence step that separates at it and at the next persist − 1
    pre-emergence steps (fewer where emergence comes first); NaN where there is none."""
    idx = np.flatnonzero(before)
    out = np.full(sep.shape[0], np.nan)
    for j in range(idx.size - 1, -1, -1):  # backwards, so the earliest qualifying step is written last
        ok = sep[:, idx[j: j + persist]].all(1)
        out[ok] = steps[idx[j]]
    return out


def _null_p(null_auc: np.ndarray, exact: bool) -> np.ndarray:
    """[P, S] -> [P, S]: each relabelling's own p-value, read against all the relabellings (as for the observed)."""
    tol = 1e-12
    desc = -np.sort(-null_auc, axis=0)  # per column, descending
    hits = np.stack([np.searchsorted(-desc[:, s], -(null_auc[:, s] - tol), side="right")
                     for s in range(null_auc.shape[1])], axis=1)
    return hits / null_auc.shape[0] if exact else (1 + hits) / (1 + null_auc.shape[0])


def preidentify(circuit: list, heads: pd.MultiIndex, panels: dict[str, pd.DataFrame], *,
                emergence_step: float | None, tokens: dict[int, float] | None = None,
                settings: PreidSettings | None = None) -> tuple[pd.DataFrame, list[dict], dict]:
    """The per-(metric, scope, step) table (COLUMNS), one summary record per (metric, scope), and the null.

    `heads`: every head of the model as a (layer, head) MultiIndex; `circuit`: [[layer, head], ...] (at
    least one head, not all); `panels`: metric_panels(...). Steps at or after `emergence_step` are scored
    too (before_emergence False) but never count as separating.
    """
    settings = settings or PreidSettings()
    tokens = tokens or {}
    want = {(int(a), int(b)) for a, b in circuit}
    labels = np.array([h in want for h in heads], dtype=bool)
    layers = heads.get_level_values("layer").to_numpy()
    if not 0 < labels.sum() < labels.size or labels.sum() != len(want):
        raise ValueError(f"circuit {sorted(want)} must be a non-empty proper subset of the {labels.size} heads")
    perms, exact = layer_permutations(layers, labels, settings.n_perm, settings.seed)
    null = {"kind": "exact: every within-layer relabelling" if exact else "seeded within-layer relabellings",
            "n_labelings": n_labelings(layers, labels), "n_perm": int(perms.shape[0]), "seed": settings.seed,
            "p_floor": 1 / perms.shape[0] if exact else 1 / (1 + perms.shape[0])}
    frames, summary, null_first = [], [], []
    for metric, wide in panels.items():
        sign = -1.0 if metric in LOWER_IS_CIRCUIT else 1.0
        for scope in SCOPES:
            x = sign * (wide if scope == "raw" else within_layer_z(wide)).to_numpy(float)  # [S, N]
            steps = wide.index.to_numpy(dtype=np.int64)
            ranks = average_ranks(x)
            auc = auc_from_ranks(ranks, labels)[0]
            null_auc = auc_from_ranks(ranks, perms)  # [P, S]
            p = permutation_p(auc, null_auc, exact)
            before = steps < emergence_step if emergence_step is not None else np.ones(steps.size, bool)
            sep = before & (auc >= settings.auc_bar) & (p < settings.alpha)
            # the same rule applied to every relabelling: how early does chance separate?
            null_sep = before & (null_auc >= settings.auc_bar) & (_null_p(null_auc, exact) < settings.alpha)
            null_first.append(_earliest(steps, null_sep, before, settings.persist))
            circ_ranks = labels.size + 1 - ranks[:, labels]  # 1 = top
            frames.append(pd.DataFrame({
                "metric": metric, "scope": scope, "direction": "lower" if sign < 0 else "higher", "step": steps,
                "tokens": [tokens.get(int(s), np.nan) for s in steps], "before_emergence": before,
                "n_heads": labels.size, "n_circuit": int(labels.sum()), "auc": auc,
                "precision_at_k": precision_at_k(x, labels), "best_circuit_rank": circ_ranks.min(1),
                "worst_circuit_rank": circ_ranks.max(1), "null_mean_auc": null_auc.mean(0), "p_value": p,
                "separates": sep}))
            first = _earliest(steps, sep[None, :], before, settings.persist)[0]
            summary.append(_summary(metric, scope, steps, auc, p, before, first, emergence_step, tokens))
    table = pd.concat(frames, ignore_index=True)[COLUMNS] if frames else pd.DataFrame(columns=COLUMNS)
    stacked = np.stack(null_first) if null_first else np.full((1, perms.shape[0]), np.nan)
    chance = np.where(np.isfinite(stacked).any(0), np.nanmin(np.where(np.isfinite(stacked), stacked, np.inf), 0),
                      np.nan)  # [P]: the earliest step any metric separates each relabelled "circuit"
    for rec in summary:
        s = rec["earliest_separating_step"]
        hits = int((chance <= s).sum()) if s is not None else 0
        rec["p_family"] = None if s is None else (hits / chance.size if exact else (1 + hits) / (1 + chance.size))
    null["share_separating_by_chance"] = float(np.isfinite(chance).mean()) if chance.size else None
    return table, summary, null


def _summary(metric, scope, steps, auc, p, before, first, emergence_step, tokens) -> dict:
    first = None if np.isnan(first) else int(first)
    pre = np.flatnonzero(before & ~np.isnan(auc))
    best = int(pre[np.argmax(auc[pre])]) if pre.size else None
    lead_steps = None if first is None or emergence_step is None else float(emergence_step - first)
    t_first, t_em = tokens.get(first), tokens.get(None if emergence_step is None else int(emergence_step))
    return {"metric": metric, "scope": scope, "n_steps_before": int(before.sum()),
            "earliest_separating_step": first, "lead_steps": lead_steps,
            "lead_tokens": None if lead_steps is None or t_first is None or t_em is None else float(t_em - t_first),
            "max_auc_before": None if best is None else float(auc[best]),
            "step_of_max_auc": None if best is None else int(steps[best]),
            "p_at_max_auc": None if best is None else float(p[best])}


def earliest_overall(summary: list[dict]) -> dict | None:
    """The (metric, scope) record that separates first (ties: raw before layer_z, then metric order)."""
    found = [r for r in summary if r["earliest_separating_step"] is not None]
    return min(found, key=lambda r: r["earliest_separating_step"]) if found else None


def choose_circuit(validation: dict | list | None, classes: pd.DataFrame | None,
                   probe: str | None) -> tuple[list[list[int]], str, str, str | None]:
    """(circuit, source, note, probe): validation.json's circuit when it validated one ("validated"), else
    the selectivity induction circuit at the last screened checkpoint on `probe` ("selectivity")."""
    if isinstance(validation, dict) and validation.get("status") == "done" and validation.get("circuit"):
        vprobe = validation.get("probe") or probe
        note = f"validation.json, step {validation.get('step')}"
        for kind, s in (validation.get("ablations") or {}).items():
            test = (((s.get("probes") or {}).get(vprobe) or {}).get("tests") or {}).get("top1") or {}
            if test.get("p_value") is not None:
                note += f"; {kind} ablation top-1 p = {test['p_value']:.3g}"
        return [[int(a), int(b)] for a, b in validation["circuit"]], "validated", note, vprobe
    if classes is None or not len(classes):
        return [], "selectivity", "no classes.parquet", probe
    c = classes if probe is None or "probe" not in classes else classes[classes["probe"].astype(str) == probe]
    last = c[c["step"] == c["step"].max()]
    heads = last[last["in_induction_circuit"].fillna(False).astype(bool)].sort_values(["layer", "head"])
    step = int(c["step"].max()) if len(c) else None
    return ([[int(a), int(b)] for a, b in zip(heads["layer"], heads["head"], strict=True)], "selectivity",
            f"induction circuit of classes.parquet at step {step} (no causally validated circuit)", probe)


def preid_from_tables(*, classes: pd.DataFrame | None, fingerprints: pd.DataFrame | None = None,
                participation: pd.DataFrame | None = None, onsets: pd.DataFrame | None = None,
                validation: dict | list | None = None, probe: str | None = "retrieval",
                tokens: dict[int, float] | None = None,
                settings: PreidSettings | None = None) -> tuple[pd.DataFrame, dict]:
    """preid.parquet's table and preid.json's document from a run's stored tables (docs/run-format.md)."""
    settings = settings or PreidSettings()
    circuit, source, note, probe = choose_circuit(validation, classes, probe)
    doc = {"format": "headscreen-preid/1", "probe": probe, "circuit": circuit, "circuit_source": source,
           "circuit_note": note, "settings": settings.to_dict()}
    tables = [t for t in (classes, fingerprints, participation) if t is not None and len(t)]
    heads = (pd.MultiIndex.from_frame(pd.concat([t[["layer", "head"]] for t in tables]).drop_duplicates()
                                      .astype(int).sort_values(["layer", "head"]))
             if tables else pd.MultiIndex.from_tuples([], names=["layer", "head"]))
    if not circuit or len(circuit) >= len(heads):
        doc.update(status="no circuit", reason="no circuit to pre-identify (none validated, none >= the induction "
                   "threshold at the last checkpoint)" if not circuit else "the circuit holds every head")
        return pd.DataFrame(columns=COLUMNS), doc
    panels = metric_panels(heads, fingerprints=fingerprints, participation=participation, onsets=onsets,
                           probe=probe, pr_rule=settings.pr_rule)
    if not panels:
        doc.update(status="no metrics", reason="no fingerprints.parquet, participation.parquet or onsets.parquet")
        return pd.DataFrame(columns=COLUMNS), doc
    emergence = emergence_of(classes, circuit, probe)
    tokens = tokens or {}
    table, summary, null = preidentify(circuit, heads, panels, emergence_step=emergence, tokens=tokens,
                                       settings=settings)
    doc.update(status="done", emergence_step=emergence,
               emergence_tokens=None if emergence is None else tokens.get(int(emergence)), null=null,
               metrics=summary, earliest=earliest_overall(summary),
               earliest_raw=earliest_overall([r for r in summary if r["scope"] == "raw"]),
               earliest_layer_z=earliest_overall([r for r in summary if r["scope"] == "layer_z"]))
    return table, doc
