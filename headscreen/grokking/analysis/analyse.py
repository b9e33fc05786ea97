"""`analyse_run`: a finished grokking run directory in, its analysis tables and grok.json out.

Reads (docs/run-format.md): manifest.json, curves.parquet, defect.parquet, trajectory/ (a LocalSeries
of safetensors snapshots). Writes edge.parquet, portrait.parquet, fourier.parquet, progress.parquet,
pca.parquet and grok.json. Every number comes from one function of headscreen.grokking (detect, edge,
portrait, fourier, progress) or headscreen.spectral (fingerprints, phases, onsets, backbone).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from headscreen.grokking.analysis.detect import (
    curve_events,
    defect_onsets,
    lead_time,
)
from headscreen.grokking.analysis.edge import (
    EdgeResult,
    edge_frame,
    edge_from_sketcher,
    phase_summary,
    transient_windows,
    trunk_vector,
)
from headscreen.grokking.analysis.fourier import embedding_spectrum
from headscreen.grokking.analysis.grok_summary import GrokSummary
from headscreen.grokking.analysis.portrait import commutator_peak, portrait_frame, portrait_point
from headscreen.grokking.analysis.progress import excluded_loss, restricted_loss, weight_norm_sq
from headscreen.grokking.analysis.settings import ONSET_RULES, AnalysisSettings  # noqa: F401 (re-exported)
from headscreen.grokking.training.interventions import intervention_summary
from headscreen.rundir.jsonsafe import json_safe
from headscreen.rundir.store import RunStore
from headscreen.spectral import HeadSketcher, backbone, pc1_rotation

PROGRESS_SIGN = {"add": 1, "sub": -1}  # tasks whose generalising circuit is a function of a ± b


def _read_run(root: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame | None]:
    store = RunStore.existing(root)
    manifest = store.manifest()
    curves = store.read_table("curves")
    if curves is None:
        raise FileNotFoundError(f"{root / 'curves.parquet'} is missing; is {root} a finished `headscreen grok` run?")
    return manifest, curves, store.read_table("defect")


def _combine_tasks(events: dict[str, dict]) -> dict:
    """Top-level fields: a step is the latest over tasks (None if any task never reaches it); final
    accuracies are the worst task's."""
    def latest(key):
        vals = [e[key] for e in events.values()]
        return None if any(v is None for v in vals) else max(vals)

    return {"grok_step": latest("grok_step"), "memorisation_step": latest("memorisation_step"),
            "final_train_acc": min(e["final_train_acc"] for e in events.values()),
            "final_test_acc": min(e["final_test_acc"] for e in events.values())}


def _load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from headscreen.grokking.training.runfiles import read_safetensors, restart_fix

    return read_safetensors(folder / "model.safetensors", restart_fix(folder.parent.parent))


def _p_of(config: dict, hf: dict) -> int:
    p = hf.get("p", config.get("p"))
    if p is None:
        raise ValueError("neither the snapshot config.json nor the manifest config names the modulus p")
    return int(p)


def _full_logits(folder: Path, p: int) -> torch.Tensor:
    """[p, p, p] logits (a, b, class) of a single-task snapshot over the whole table."""
    from headscreen.grokking.models.transformer import load_model

    model = load_model(folder).eval()
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    with torch.no_grad():
        logits = model(torch.stack([a, b, torch.full_like(a, p)], dim=1))  # [p², 1, p]
    return logits[:, 0].reshape(p, p, p)


def _train_mask(config: dict, p: int) -> torch.Tensor:
    from headscreen.grokking.tasks.modular import make_dataset

    data = make_dataset(config["tasks"], p, config["train_frac"], config["seed"])
    mask = torch.zeros(p * p, dtype=torch.bool)
    mask[data.train_idx] = True  # rows a·p + b, as make_dataset orders the table
    return mask.view(p, p)


def _pca(vectors: torch.Tensor, steps: np.ndarray, window: int) -> tuple[pd.DataFrame, dict]:
    bb = backbone(vectors)
    df = pd.DataFrame({"step": steps, "a": bb.a.numpy(), "r": bb.r.numpy(),
                       "displacement_share": bb.displacement_share.numpy(), "rho": np.nan})
    if vectors.shape[0] >= 2 * window + 1:
        rot = pc1_rotation(vectors, window)
        df.loc[rot.end_index.numpy(), "rho"] = rot.rho.numpy()
    rho = df["rho"].dropna()
    return df, {"pc1_share": float(bb.pc1_share), "explained_top5": bb.explained[:5].tolist(),
                "rho_mean": float(rho.mean()) if len(rho) else None}


def _nullable(x) -> int | None:
    """A step for grok.json: an int, or None for None/NaN."""
    x = json_safe(x)
    return None if x is None else int(x)


def analyse_run(run_dir: str | Path, *, settings: AnalysisSettings | None = None, progress: bool = True) -> dict:
    """Write the analysis tables and grok.json of a finished grok run, under its lock; return grok.json's
    dict. grok.json is bound to the trajectory it was computed from (headscreen.grokking.training.lifecycle); an
    unfinished run raises `UnfinishedRun` (its analysis, in memory only, is `compute_analysis`)."""
    from headscreen.grokking.training.lifecycle import UnfinishedRun

    root = Path(run_dir)
    with RunStore.locked(root, "analyse") as store:
        out, tables = compute_analysis(root, settings=settings, progress=progress)
        if not out["trajectory"]["complete"]:
            raise UnfinishedRun(f"run {root} has not finished training (last snapshot at step "
                                f"{out['trajectory']['last_step']}); rerun its `headscreen grok` command to "
                                "finish it, then analyse it")
        write_analysis(root, store, out, tables)
    return out


def write_analysis(root: Path, store: RunStore, out: dict, tables: dict[str, pd.DataFrame]) -> None:
    """Replace the run's analysis (the caller holds `store`'s lock): old grok.json and tables go first,
    so a half-replaced analysis never looks current; grok.json is written last."""
    from headscreen.grokking.training.lifecycle import remove_analysis

    remove_analysis(root)
    for name, df in tables.items():
        store.write_table(name, df)
    store.write_json("grok", out)


def _events(curves: pd.DataFrame, defect: pd.DataFrame | None, settings: AnalysisSettings,
            notes: list[str]) -> tuple[dict, dict, dict, int | None]:
    """(top-level events, per-task events with lead times, defect onsets by rule, the chosen onset)."""
    events = curve_events(curves, grok_threshold=settings.grok_threshold,
                          memorisation_threshold=settings.memorisation_threshold)
    top = _combine_tasks(events)
    onsets = defect_onsets(defect) if defect is not None and len(defect) else {r: None for r in ONSET_RULES}
    if defect is None or not len(defect):
        notes.append("no defect measurements (defect.parquet missing or empty)")
    onset = onsets[settings.onset_rule]
    for e in events.values():
        e["lead_time"] = lead_time(e["grok_step"], onset)
    return top, events, onsets, onset


@dataclass
class _SnapshotPass:
    """What one pass over the snapshots gathers."""

    modular: bool  # the sequence tasks (dyck, scan) have no Fourier/progress analyses
    p: int
    final_spec: object  # the final embedding spectrum (modular runs), else None
    trunk_sk: HeadSketcher
    head_sk: HeadSketcher
    exact: list[torch.Tensor] | None  # the trunk vectors while they fit settings.pca_exact_max
    points: dict = field(default_factory=dict)
    fourier_rows: list = field(default_factory=list)
    progress_rows: list = field(default_factory=list)

    @property
    def keys(self) -> list:
        return self.final_spec.key_frequencies if self.final_spec is not None else []


def _snapshot_pass(root: Path, series, ckpts, config: dict, events: dict, settings: AnalysisSettings,
                   progress: bool) -> _SnapshotPass:
    from tqdm.auto import tqdm

    hf = series.hf_config(ckpts[-1])
    modular = hf.get("p") is not None
    p = _p_of(config, hf) if modular else 0
    final_spec = (embedding_spectrum(_load_tensors(ckpts[-1].path)["embed.W_E"][:p], key_factor=settings.key_factor)
                  if modular else None)
    sp = _SnapshotPass(modular, p, final_spec, HeadSketcher(settings.spectral), HeadSketcher(settings.spectral), [])
    keys = sp.keys
    tasks = list(config.get("tasks") or hf.get("tasks") or events)
    sign = PROGRESS_SIGN.get(tasks[0]) if len(tasks) == 1 else None
    # Nanda's measures project the logits on the embedding's key frequencies: that is the circuit of a
    # 1-layer model; deeper models write other (sum/difference) frequencies into the logits.
    with_progress = settings.progress_measures and sign is not None and bool(keys) and hf.get("n_layers") == 1
    mask = _train_mask(config, p) if with_progress else None
    for ckpt in tqdm(ckpts, desc=f"analyse {root.name}", disable=not progress, leave=False):
        tensors = _load_tensors(ckpt.path)
        vec = trunk_vector(tensors, where=f"snapshot {ckpt.path}")
        sp.trunk_sk.update(vec.view(1, 1, -1), ckpt.step)
        if sp.exact is not None:
            sp.exact.append(vec)
            if len(ckpts) * vec.numel() > settings.pca_exact_max:
                sp.exact = None
        hw = series.head_weights(ckpt)
        sp.head_sk.update(hw, ckpt.step)
        sp.points[ckpt.step] = portrait_point(hw.W_Q[0], hw.W_K[0])
        spec = embedding_spectrum(tensors["embed.W_E"][:p], key_factor=settings.key_factor) if modular else None
        if spec is not None:
            sp.fourier_rows += [{"step": ckpt.step, "frequency": int(f), "norm": float(n), "share": float(s)}
                                for f, n, s in zip(spec.frequencies, spec.norms, spec.share, strict=True)]
        row = {"step": ckpt.step, "gini": spec.gini if spec is not None else np.nan,
               "weight_norm_sq": weight_norm_sq(tensors),
               "restricted_loss": np.nan, "excluded_loss": np.nan}
        if with_progress:
            logits = _full_logits(ckpt.path, p)
            row["restricted_loss"] = restricted_loss(logits, keys, sign=sign)
            row["excluded_loss"] = excluded_loss(logits, keys, mask, sign=sign)
        sp.progress_rows.append(row)
    return sp


def _edge(sp: _SnapshotPass, steps: np.ndarray, mem: int | None, settings: AnalysisSettings,
          tables: dict, notes: list[str]) -> tuple[dict, int | None]:
    """(grok.json's edge entry, the trunk gap-open step); the edge table goes into `tables`."""
    w = settings.spectral.window
    transient = transient_windows(steps, w, mem) if settings.transient == "memorisation" else settings.transient
    edge_json: dict = {"window": w, "transient_windows": transient}
    if len(steps) < w + 1:
        notes.append(f"{len(steps)} snapshots: the spectral edge needs at least {w + 1}")
        return edge_json, None
    trunk: EdgeResult = edge_from_sketcher(sp.trunk_sk, transient=transient, rule=settings.gap)
    heads: EdgeResult = edge_from_sketcher(sp.head_sk, transient=transient, rule=settings.gap)
    tables["edge"] = pd.concat([edge_frame(trunk, "trunk"), edge_frame(heads, "head")], ignore_index=True)
    ts = phase_summary(trunk).iloc[0]
    edge_json.update(peak_step=int(ts["peak_step"]), collapse_step=_nullable(ts["collapse_step"]),
                     heads=json.loads(phase_summary(heads).to_json(orient="records")))
    if trunk.note:
        notes.append("gap-open: " + trunk.note)
    return edge_json, _nullable(trunk.gap_open[0, 0])


def _tables(sp: _SnapshotPass, curves: pd.DataFrame, steps: np.ndarray, settings: AnalysisSettings,
            tables: dict, notes: list[str]) -> dict:
    """The portrait, Fourier, progress and PCA tables into `tables`; returns grok.json's pca entry."""
    pf = portrait_frame(sp.points)
    for task, df in curves.groupby("task"):
        acc = df.sort_values("step")[["step", "test_acc"]].rename(columns={"test_acc": f"test_acc_{task}"})
        pf = pd.merge_asof(pf.sort_values("step"), acc, on="step", direction="backward")
    tables["portrait"] = pf.sort_values(["step", "head"]).reset_index(drop=True)
    if sp.fourier_rows:
        tables["fourier"] = pd.DataFrame(sp.fourier_rows)
    tables["progress"] = pd.DataFrame(sp.progress_rows)
    if len(steps) < 3:
        notes.append("fewer than 3 snapshots: no trajectory PCA")
        return {"pc1_share": None, "basis": None}
    vectors = torch.stack(sp.exact) if sp.exact is not None else sp.trunk_sk.sketches[:, 0, 0]
    tables["pca"], pca_json = _pca(vectors, steps, settings.spectral.window)
    pca_json["basis"] = "exact" if sp.exact is not None else f"sketch (d={vectors.shape[-1]})"
    return pca_json


def compute_analysis(run_dir: str | Path, *, settings: AnalysisSettings | None = None,
                     progress: bool = True) -> tuple[dict, dict[str, pd.DataFrame]]:
    """(grok.json's dict, the analysis tables by name) of a grok run, finished or not; nothing is written."""
    from headscreen.grokking.training.lifecycle import UnfinishedRun, trajectory_state
    from headscreen.series import LocalSeries

    settings = settings or AnalysisSettings()
    root = Path(run_dir)
    state = trajectory_state(root)  # first: what the numbers below are computed from
    if not state["n_snapshots"]:
        raise UnfinishedRun(f"run {root} has no trajectory snapshot yet; rerun its `headscreen grok` command to train it")
    manifest, curves, defect = _read_run(root)
    config = manifest.get("config", {})
    notes: list[str] = []
    top, events, onsets, onset = _events(curves, defect, settings, notes)
    series = LocalSeries(root / "trajectory")
    ckpts = series.checkpoints
    steps = np.asarray([c.step for c in ckpts], dtype=np.int64)
    sp = _snapshot_pass(root, series, ckpts, config, events, settings, progress)
    tables: dict[str, pd.DataFrame] = {}
    edge_json, gap_open = _edge(sp, steps, top["memorisation_step"], settings, tables, notes)
    pca_json = _tables(sp, curves, steps, settings, tables, notes)
    w, window = settings.spectral.window, None
    if settings.window_analyses and sp.modular and len(ckpts) >= w + 1:  # modes and coupling need the p × p grid
        from headscreen.grokking.analysis.edge_windows import window_analyses, window_end_index

        end = window_end_index(steps, edge_json.get("peak_step"), w)
        window = {"end_step": int(steps[end]), "start_step": int(steps[end - w]),
                  **window_analyses([c.path for c in ckpts[end - w : end + 1]], config)}
    summary = GrokSummary(
        **top, defect_onset_step=onset, defect_onset_rule=settings.onset_rule, defect_onsets=onsets,
        lead_time=lead_time(top["grok_step"], onset), gap_open_step=gap_open, key_frequencies=sp.keys,
        fourier_gini=sp.final_spec.gini if sp.final_spec is not None else None,
        commutator_peak_step=commutator_peak(tables["portrait"], after=top["memorisation_step"]), edge=edge_json,
        pca=pca_json, window_analyses=window, tasks=events, n_snapshots=len(ckpts),
        intervention=intervention_summary(root, top["grok_step"]),
        settings={"training": config, "analysis": settings.to_dict(), "device": manifest.get("device")},
        notes=notes, trajectory=state)
    return summary.to_dict(), tables


# --- the analysis a reader (report, sweep summary) may use ---------------------------------------
def load_analysis(run: str | Path, *, progress: bool = False, settings=None, write: bool = True):
    """(grok.json's dict, tables or None, how) for a reader of a grok run, under the run's lock.

    how = "current": grok.json matches the trajectory (tables: None, read them from the run);
    "analysed": the run is finished and was analysed now (and written, unless `write` is False or
    the directory is read-only: then tables are in memory); "unfinished": training has not finished,
    so the analysis is in memory only and nothing is written. A run locked by a running trainer is
    refused (`RunLocked`): it would be read mid-write. With `settings` None, a grok.json of the current
    trajectory is current whatever AnalysisSettings it was computed with (a config's `analysis:` section,
    say): a reader takes the analysis the run was given; a missing or stale one is computed with the
    defaults."""
    from headscreen.grokking.training.lifecycle import UnfinishedRun, current_analysis
    from headscreen.rundir.store import RunLocked, RunWriteError

    run = Path(run)
    try:
        store = RunStore.locked(run, "report")
    except RunLocked as e:
        who = str(e).split(" is in use by ", 1)[-1].split(";")[0]
        raise RunLocked(f"run {run} is in use by {who}; report it after that process finishes or stops "
                        "(its files are being written)") from None
    except RunWriteError:  # a read-only run: nobody trains it, and nothing can be written
        store, write = None, False
    try:
        grok = current_analysis(run, settings, any_settings=settings is None)
        if grok is not None:
            return grok, None, "current"
        manifest = json.loads((run / "manifest.json").read_text())
        if manifest.get("config", {}).get("family") == "li2":
            raise UnfinishedRun(f"Li2 run {run} has no grok.json: its training has not finished; rerun its "
                                "`headscreen grok li2` command to finish it")
        grok, tables = compute_analysis(run, settings=settings, progress=progress)
        if not grok["trajectory"]["complete"]:
            return grok, tables, "unfinished"
        if write:
            write_analysis(run, store, grok, tables)
        return grok, (None if write else tables), "analysed"
    finally:
        if store is not None:
            store.release()
