"""Causal validation of one checkpoint: the rows of validation.parquet / patching.parquet and their summaries.

`validate_checkpoint` ablates the circuit, the matched-random draws (null), the upper bound and each
circuit head alone on every probe, and tests every metric against the null (effect ratio, empirical
p-value). `patch_checkpoint` runs denoising activation patching per head and path patching of the
previous-token -> induction K composition. Both return (JSON-able summary, long DataFrame); the
caller (the CLI pipeline) writes them (docs/run-format.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from headscreen.causal.ablation import (
    AblationConfig,
    FiringLog,
    Scoring,
    ablate_head_sets,
    ablation_source,
    check_eval_raw,
    clean_metrics,
)
from headscreen.causal.conditions import (
    Head,
    matched_set_count,
    normalize_circuit,
    null_conditions,
    standard_conditions,
    upper_bound,
)
from headscreen.causal.metrics import METRICS, metric_drop
from headscreen.causal.patching import head_patching
from headscreen.causal.path_patching import DIRECTIONS, path_patch_k
from headscreen.causal.stats import null_test
from headscreen.heads import heads_label
from headscreen.probes.batch import ProbeBatch
from headscreen.rundir.jsonsafe import json_safe

VALIDATION_COLUMNS = ["step", "probe", "condition", "draw", "metric", "value"]
PATCHING_COLUMNS = ["step", "kind", "layer", "head", "score", "senders", "receivers"]


def _corrupted_for(name: str, batch: ProbeBatch, corrupted: Mapping[str, ProbeBatch], seed: int) -> ProbeBatch:
    if name in corrupted:
        return corrupted[name]
    if batch.a_pos is not None and batch.target_token is not None and "token_range" in batch.meta:
        from headscreen.probes.prompts import corrupt_retrieval

        return corrupt_retrieval(batch, seed)
    raise ValueError(
        f"resample ablation of probe {name!r} needs a corrupted batch: pass corrupted={{{name!r}: ...}} "
        f"(retrieval probes are corrupted automatically with corrupt_retrieval)"
    )


#: head sets (conditions) per ablate_head_sets call. The conditions are always computed in these fixed
#: blocks, in order, so that a null split across workers (whole blocks each) gives the same numbers.
SET_BLOCK = 50


def probe_source(bridge, name: str, batch: ProbeBatch, ablation: str, layers: Sequence[int], *, seed: int,
                 reference: Mapping[str, ProbeBatch] | None = None, corrupted: Mapping[str, ProbeBatch] | None = None,
                 max_rows: int | None = None):
    """The ablation source (zero, mean, or resample) of probe `name` as validate_checkpoint builds it."""
    reference, corrupted = dict(reference or {}), dict(corrupted or {})
    corr = _corrupted_for(name, batch, corrupted, seed) if ablation == "resample" else None
    return ablation_source(bridge, batch, layers, ablation, reference=reference.get(name), corrupted=corr,
                           max_rows=max_rows)


def ablate_blocks(bridge, scoring, source, blocks: list[list], labels: list[list[str]], *,
                  max_rows: int | None) -> tuple[list[dict], tuple[dict, dict]]:
    """ablate_head_sets on each block of head sets -> ([{metric: [set, n]} per block], (min, max) firing
    deltas per hook); the unit of work of a validation null, wherever it runs."""
    log = FiringLog()
    out = [ablate_head_sets(bridge, scoring, block, source, max_rows=max_rows, names=names, log=log)
           for block, names in zip(blocks, labels, strict=True)]
    return out, (dict(log.min_delta), dict(log.max_delta))


def _heads_json(heads: Sequence[Head]) -> list[list[int]]:
    return [[int(layer), int(h)] for layer, h in heads]


def validate_checkpoint(
    bridge,
    circuit: Sequence[Sequence[int]],
    probes: Mapping[str, ProbeBatch],
    *,
    n_null: int = 100,
    seed: int = 123,
    ablation: str = "zero",
    corrupted: Mapping[str, ProbeBatch] | None = None,
    reference: Mapping[str, ProbeBatch] | None = None,
    max_rows: int | None = None,
    step: int | None = None,
    block_runner=None,
) -> tuple[dict, pd.DataFrame]:
    """Ablation validation of `circuit` on every probe. -> (summary, rows step/probe/condition/draw/metric/value).

    Conditions: clean, circuit, upper_bound, head_L{l}H{h} (draw 0) and matched_random (draws
    0..n_null-1, seeded by `seed`). `ablation` is zero, mean (over `reference[probe]`, default the
    probe itself) or resample (from `corrupted[probe]`, default `corrupt_retrieval(probe, seed)` for
    retrieval probes). The summary holds, per probe and metric, the circuit's drop, the null's
    distribution, the effect ratio and the p-value, plus the smallest per-condition max |delta| per
    hook (proof that every ablation fired). Same seed and inputs => same numbers.

    The conditions are ablated in fixed blocks of `SET_BLOCK` head sets (`ablate_blocks`).
    `block_runner(probe_name, blocks, labels)`, when given, computes them elsewhere (workers that
    boot the same checkpoint and call `probe_source` and `ablate_blocks`) and returns a list of
    `ablate_blocks` results covering the blocks in order: the numbers are the same.

    When a circuit layer leaves too few other heads for a matched-random control (e.g. 3 of 4
    heads), the other conditions still run, `summary["null_skipped"]` says why and `tests` is None.
    """
    check_eval_raw(bridge)
    cfg = AblationConfig(kind=ablation, n_null=n_null, seed=seed, max_rows=max_rows)  # validates the settings
    n_null, seed, max_rows = cfg.n_null, cfg.seed, cfg.max_rows
    if not probes:
        raise ValueError("probes is empty; pass at least one ProbeBatch, e.g. {'retrieval': retrieval_probe(...)}")
    corrupted, reference = dict(corrupted or {}), dict(reference or {})
    heads = normalize_circuit(circuit, bridge.cfg.n_layers, bridge.cfg.n_heads)
    conditions, n_std, null_skipped = _conditions(heads, bridge.cfg.n_heads, n_null, seed)
    summary = _summary_header(heads, bridge.cfg.n_heads, conditions, n_std, null_skipped, step=step,
                              ablation=ablation, seed=seed, n_null=n_null)
    layers = sorted({layer for layer, _ in heads})
    rows: list[tuple] = []
    for name, batch in probes.items():
        probe_info: dict = {"n_examples": batch.n, "seq_len": batch.seq_len, "probe_seed": batch.seed,
                            "has_bos": batch.has_bos}
        if ablation == "resample":
            probe_info["corrupted_seed"] = corrupted[name].seed if name in corrupted else seed
        source = probe_source(bridge, name, batch, ablation, layers, seed=seed, reference=reference,
                              corrupted=corrupted, max_rows=max_rows)
        if ablation == "mean":
            probe_info["mean_reference"] = reference[name].name if name in reference else name
        scoring = Scoring.of(batch)
        clean = {m: float(v.mean()) for m, v in clean_metrics(bridge, scoring, max_rows=max_rows).items()}
        means, log = _ablate_conditions(bridge, scoring, source, name, conditions, max_rows=max_rows,
                                        block_runner=block_runner)
        rows += [(step, name, "clean", 0, m, clean[m]) for m in METRICS]
        for i, c in enumerate(conditions):
            rows += [(step, name, c.name, c.draw, m, float(means[m][i])) for m in METRICS]
        probe_info.update(_probe_tests(clean, means, conditions, n_std, null_skipped))
        probe_info["fired"] = log.to_json()
        summary["probes"][name] = probe_info
    df = pd.DataFrame(rows, columns=VALIDATION_COLUMNS)
    df["step"] = df["step"].astype("Int64")
    df["draw"] = df["draw"].astype("int64")
    return json_safe(summary), df


def _conditions(heads: Sequence[Head], n_heads: int, n_null: int, seed: int) -> tuple[list, int, str | None]:
    """(the standard conditions then the matched-random draws, how many are standard, why the null was
    skipped or None)."""
    conditions = standard_conditions(heads, n_heads)
    n_std = len(conditions)
    try:
        conditions += null_conditions(heads, n_heads, n_null, seed)
        null_skipped = None
    except ValueError as err:  # a layer has no room for a matched-random control
        null_skipped = f"no matched-random null: {err}"
    return conditions, n_std, null_skipped


def _summary_header(heads: Sequence[Head], n_heads: int, conditions: list, n_std: int, null_skipped: str | None, *,
                    step: int | None, ablation: str, seed: int, n_null: int) -> dict:
    """validation.json's settings and circuit; `probes` is filled per probe."""
    layers = sorted({layer for layer, _ in heads})
    return {
        "format": "headscreen-validation/1",
        "step": step,
        "loading_mode": "raw",
        "ablation": ablation,
        "seed": seed,
        "n_null": len(conditions) - n_std,
        "n_null_requested": n_null,
        "n_matched_sets": matched_set_count(heads, n_heads),
        "null_kind": ("skipped" if null_skipped else
                      "exact: every matched set once" if len(conditions) - n_std < n_null else
                      "distinct seeded draws without replacement"),
        "circuit": _heads_json(heads),
        "upper_bound": _heads_json(upper_bound(heads, n_heads)),
        "layer_counts": {str(layer): sum(1 for lh in heads if lh[0] == layer) for layer in layers},
        "n_distinct_null_draws": len({c.heads for c in conditions[n_std:]}),
        "null_skipped": null_skipped,
        "metrics": list(METRICS),
        "drop_sign": "positive = worse: ablated - clean for cross_entropy, clean - ablated otherwise",
        "p_value": "(1 + #{null drop >= circuit drop}) / (1 + n_null) over distinct head sets",
        "probes": {},
    }


def _ablate_conditions(bridge, scoring, source, name: str, conditions: list, *, max_rows: int | None,
                       block_runner) -> tuple[dict[str, torch.Tensor], FiringLog]:
    """Every condition's mean metric over the probe's examples ({metric: [condition]}) and the firing log,
    in blocks of `SET_BLOCK` here or through `block_runner` (the same numbers)."""
    sets = [c.heads for c in conditions]
    labels = [f"probe {name!r}, condition {c.name} draw {c.draw}" for c in conditions]
    blocks = [range(lo, min(lo + SET_BLOCK, len(sets))) for lo in range(0, len(sets), SET_BLOCK)]
    if block_runner is None:
        done = [ablate_blocks(bridge, scoring, source, [[sets[i] for i in b] for b in blocks],
                              [[labels[i] for i in b] for b in blocks], max_rows=max_rows)]
    else:  # e.g. workers of headscreen.compute.executors, each computing whole blocks exactly as above
        done = block_runner(name, [[sets[i] for i in b] for b in blocks], [[labels[i] for i in b] for b in blocks])
    per_ex = {m: torch.cat([blk[m] for part in done for blk in part[0]]) for m in METRICS}
    log = FiringLog()
    for _, (lo_d, hi_d) in done:
        for hook, v in lo_d.items():
            log.add(hook, torch.tensor([v], dtype=torch.float64))
        for hook, v in hi_d.items():
            log.add(hook, torch.tensor([v], dtype=torch.float64))
    return {m: per_ex[m].mean(1) for m in METRICS}, log  # [condition]


def _probe_tests(clean: dict[str, float], means: dict[str, torch.Tensor], conditions: list, n_std: int,
                 null_skipped: str | None) -> dict:
    """A probe's clean metrics, standard conditions, circuit drop and (unless skipped) the null tests."""
    out: dict = {"clean": clean,
                 "conditions": {c.name: {m: float(means[m][i]) for m in METRICS}
                                for i, c in enumerate(conditions[:n_std])},
                 "circuit_drop": {m: metric_drop(m, clean[m], float(means[m][0])) for m in METRICS}}
    if null_skipped is None:
        out["matched_random_mean"] = {m: float(means[m][n_std:].mean()) for m in METRICS}
        out["tests"] = {m: null_test(m, out["circuit_drop"][m],
                                     metric_drop(m, clean[m], means[m][n_std:].double()).numpy()).to_json()
                        for m in METRICS}
    else:
        out["matched_random_mean"] = None
        out["tests"] = None
    return out


def _label(heads: Sequence[Head]) -> str:
    return heads_label(heads, sep=",", empty="")


def patch_checkpoint(
    bridge,
    clean: ProbeBatch,
    corrupted: ProbeBatch,
    *,
    previous_heads: Sequence[Sequence[int]] = (),
    induction_heads: Sequence[Sequence[int]] = (),
    max_rows: int | None = None,
    step: int | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Denoising head patching map + path patching previous-token -> induction (K). -> (summary, rows).

    Rows: kind "activation" per (layer, head) with its score (NaN for a head whose patch changed
    nothing); kinds "path_k_noising" / "path_k_denoising" per induction head (layer, head = that
    receiver) and for all induction heads jointly (layer = head = -1); `senders` / `receivers` name
    the heads ("L0H1,L0H3"). Previous-token heads in or above the first induction layer cannot feed
    the induction heads' keys: they are left out of the senders and listed in the summary
    (`path_patching_excluded_senders`). Path patching is skipped, with the reason in the summary,
    when no sender or no induction head remains.
    """
    check_eval_raw(bridge)
    hp = head_patching(bridge, clean, corrupted, max_rows=max_rows)
    cfg = bridge.cfg
    rows = [(step, "activation", layer, h, float(hp.scores[layer, h]), "", "")
            for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
    summary: dict = {
        "format": "headscreen-patching/1", "step": step, "loading_mode": "raw",
        "ld_clean": hp.ld_clean, "ld_corr": hp.ld_corr, "corrupted_seed": corrupted.seed,
        "unchanged_heads": _heads_json(hp.unchanged),
        "score": "(LD_patch - LD_corr) / (LD_clean - LD_corr), LD = logit(target) - mean logit",
    }
    senders = normalize_circuit(previous_heads, cfg.n_layers, cfg.n_heads) if previous_heads else ()
    receivers = normalize_circuit(induction_heads, cfg.n_layers, cfg.n_heads) if induction_heads else ()
    late = ()
    if senders and receivers:  # a previous-token head can only feed the keys of later layers
        first = min(layer for layer, _ in receivers)
        late = tuple(lh for lh in senders if lh[0] >= first)
        senders = tuple(lh for lh in senders if lh[0] < first)
        if late and senders:
            summary["path_patching_excluded_senders"] = {
                "heads": _heads_json(late),
                "why": f"not in a layer below the first induction layer {first}, so they cannot feed its keys",
            }
    if not senders or not receivers:
        summary["path_patching"] = {"skipped": (
            f"previous-token heads {_label(late)} are not in layers below the induction heads {_label(receivers)}"
            if late else "no previous-token or no induction heads given")}
    else:
        sets = [[r] for r in receivers] + ([list(receivers)] if len(receivers) > 1 else [])
        results = []
        for direction in DIRECTIONS:
            out = path_patch_k(bridge, Scoring.of(clean), corrupted.tokens, senders, sets, direction=direction,
                               max_rows=max_rows, ld_reference=(hp.ld_clean, hp.ld_corr))
            results += out
            for res in out:
                layer, h = res.receivers[0] if len(res.receivers) == 1 else (-1, -1)
                rows.append((step, f"path_k_{direction}", layer, h, res.score, _label(senders), _label(res.receivers)))
        summary["path_patching"] = {"component": "k", "results": [r.to_json() for r in results]}
    df = pd.DataFrame(rows, columns=PATCHING_COLUMNS)
    df["step"] = df["step"].astype("Int64")
    return json_safe(summary), df


