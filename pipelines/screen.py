"""`headscreen screen`: spectral fingerprints and selectivity screens in one pass over the checkpoints.

Each checkpoint is read once, oldest first. When probes run on it, it is booted into a fresh
TransformerBridge and its per-head weights are taken from that bridge (equal to the lazy safetensors
read, see tests/test_series.py); otherwise only its attention tensors are read lazily. The head
sketches and the probe tables are written as one atomic record per checkpoint, so an interrupted
screen resumes where it stopped. The series-level tables are then computed from the records alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from headscreen.config import ModelConfig, from_mapping
from headscreen.probes.classify import ScreenThresholds
from headscreen.probes.preid import PreidSettings
from headscreen.probes.screen import screen_checkpoint, summarise_series
from headscreen.probes.suite import ProbeSuite
from headscreen.provenance import provenance
from headscreen.series import LOADING_MODE, HeadWeights, Series
from headscreen.spectral import HeadSketcher, SpectralConfig, fingerprint, onsets
from headscreen.store import RunStore
from pipelines.common import resolve_series
from pipelines.preid import preidentify_run

PROBE_TABLES = ("selectivity", "head_scores", "participation", "copying")


@dataclass(frozen=True)
class OnsetSettings:
    """Spectral onset per head: first window where `metric` (a z-score) exceeds `margin`."""

    metrics: tuple[str, ...] = ("update_norm_z", "ratio_12_z")
    margin: float = 3.0
    consecutive: int = 1


@dataclass(frozen=True)
class ScreenSettings:
    spectral: SpectralConfig = field(default_factory=SpectralConfig)
    thresholds: ScreenThresholds = field(default_factory=ScreenThresholds)
    probes: ProbeSuite = field(default_factory=ProbeSuite)
    onsets: OnsetSettings = field(default_factory=OnsetSettings)
    preid: PreidSettings = field(default_factory=PreidSettings)  # summary only: not in the config hash (preid.json)
    probe_every: int = 1  # run the probes on every k-th checkpoint (and always the last)

    @classmethod
    def from_config(cls, cfg: ModelConfig | None) -> ScreenSettings:
        if cfg is None:
            return cls()
        where = cfg.path.name if cfg.path else cfg.name
        probes = dict(cfg.section("probes") or {})
        text = probes.get("text_file")
        if isinstance(text, str) and cfg.path and not Path(text).is_absolute():
            beside = cfg.path.parent / text  # a relative text_file is relative to the config's folder
            probes["text_file"] = str(beside.resolve()) if beside.exists() else text
        return cls(
            spectral=from_mapping(SpectralConfig, cfg.section("spectral"), f"{where}: spectral"),
            thresholds=from_mapping(ScreenThresholds, cfg.section("thresholds"), f"{where}: thresholds"),
            probes=from_mapping(ProbeSuite, probes, f"{where}: probes"),
            onsets=from_mapping(OnsetSettings, cfg.section("onsets"), f"{where}: onsets"),
            preid=from_mapping(PreidSettings, cfg.section("preid"), f"{where}: preid"),
        )

    def to_dict(self) -> dict:
        return {"spectral": self.spectral.to_dict(), "thresholds": dataclasses.asdict(self.thresholds),
                "probes": self.probes.to_dict(), "onsets": dataclasses.asdict(self.onsets),
                "probe_every": self.probe_every}


def head_weights_from_bridge(bridge) -> HeadWeights:
    """Per-head weights of a booted bridge (raw mode), in the shapes of `HeadWeights`."""
    def bias(name):
        try:
            return getattr(bridge, name).detach()
        except AttributeError:  # bias-free architectures
            return None

    return HeadWeights(W_Q=bridge.W_Q.detach(), W_K=bridge.W_K.detach(), W_V=bridge.W_V.detach(),
                       W_O=bridge.W_O.detach(), b_Q=bias("b_Q"), b_K=bias("b_K"), b_V=bias("b_V"), b_O=bias("b_O"))


def _probe_steps(steps: list[int], every: int) -> set[int]:
    return {s for i, s in enumerate(steps) if i % every == 0} | {steps[-1]}


def screen(
    series: Series | str | Path,
    out: str | Path,
    *,
    config: ModelConfig | None = None,
    settings: ScreenSettings | None = None,
    force: bool = False,
    progress: bool = True,
    device: str = "cpu",
) -> Path:
    """Screen every head of every checkpoint of `series` into the run directory `out`; returns `out`.

    Writes fingerprints.parquet (when the series has >= W+1 checkpoints), onsets.parquet,
    selectivity / head_scores / participation / copying / classes .parquet and circuits.json
    (docs/run-format.md). Memory: one checkpoint (its bridge, or its attention tensors as stored) plus
    the previous checkpoint's head vectors (as stored) and the sketcher's buffers (see HeadSketcher).
    """
    if not isinstance(series, Series):
        series, config_from_spec = resolve_series(series)
        config = config or config_from_spec
    settings = settings or ScreenSettings.from_config(config)
    manifest = {
        "kind": "screen",
        "model": config.name if config else series.name,
        "config": {"model_config": config.to_dict() if config else None, **settings.to_dict()},
        "series": series.describe(),
        "seeds": {"probes": settings.probes.seed, "sketch": settings.spectral.seed,
                  "null_positions": settings.thresholds.null_position_seed,
                  "null_draws": settings.thresholds.null_draw_seed},
        "loading_mode": LOADING_MODE,
        **provenance(),
    }
    with RunStore.open(out, manifest, force=force) as store:
        _record_checkpoints(series, store, settings, progress=progress, device=device)
        _summarise(series, store, settings)
    return Path(out)


def _record_checkpoints(series: Series, store: RunStore, settings: ScreenSettings, *, progress: bool,
                        device: str) -> None:
    probe_steps = _probe_steps(series.steps, settings.probe_every)
    sketcher = HeadSketcher(settings.spectral, keep_history=False)
    batches = None
    previous = None  # the last checkpoint seen, to prime the sketcher when resuming
    primed = False  # whether the sketcher holds θ_{t-1}
    bar = tqdm(series.checkpoints, desc="screen", unit="ckpt", disable=not progress, file=sys.stderr)
    for ckpt in bar:
        done = store.has_record("sketch", ckpt.step) and (
            ckpt.step not in probe_steps or store.has_record("probes", ckpt.step))
        if done:
            previous = ckpt
            continue
        if previous is not None and not primed:  # resuming: the update needs θ_{t-1} and its sketch
            last = store.read_tensors("sketch", previous.step)[0]["sketch"]
            sketcher.prime(series.head_weights(previous, dtype=None), previous.step, sketch=last)
        bar.set_postfix_str(f"step {ckpt.step}")
        if ckpt.step in probe_steps:
            bridge = series.boot(ckpt, device=device)
            weights = head_weights_from_bridge(bridge)
            if batches is None:
                tok = getattr(bridge, "tokenizer", None)
                batches = settings.probes.build(n_ctx=bridge.cfg.n_ctx, d_vocab=bridge.cfg.d_vocab, tokenizer=tok)
            with torch.no_grad():
                tables = screen_checkpoint(bridge, batches, settings.thresholds,
                                           micro_batch=settings.probes.micro_batch, step=ckpt.step,
                                           tokens=ckpt.tokens)
            del bridge
        else:
            weights, tables = series.head_weights(ckpt, dtype=None), None  # as stored: fp16 stays fp16
        rec = sketcher.update(weights, ckpt.step)
        primed = True
        del weights
        # the probe record first: a sketch record marks the checkpoint as done
        if tables is not None:
            store.write_frames("probes", ckpt.step, {k: tables[k] for k in PROBE_TABLES})
        store.write_tensors("sketch", ckpt.step, {"sketch": rec.sketch, "update_norm": rec.update_norm},
                            meta={"tokens": ckpt.tokens})
        previous = ckpt
    if sketcher.projector is not None:  # what the sketch records hold (kind, dtype, running sum)
        store.update_manifest(sketch=sketcher.provenance())
    if batches is not None:
        store.update_manifest(probes={name: {"n": b.n, "seq_len": b.seq_len, "has_bos": b.has_bos, "seed": b.seed,
                                             "meta": b.meta} for name, b in batches.items()})


def _summarise(series: Series, store: RunStore, settings: ScreenSettings) -> None:
    steps = store.recorded_steps("sketch")
    tensors = [store.read_tensors("sketch", s)[0] for s in steps]
    sketches = torch.stack([t["sketch"] for t in tensors])  # [T, layer, head, d]
    norms = torch.stack([t["update_norm"] for t in tensors])  # [T, layer, head]
    need = settings.spectral.window + 1
    onset_table = pd.DataFrame(columns=["layer", "head", "metric", "onset_step"])
    if len(steps) >= need:
        fp = fingerprint(sketches, steps, config=settings.spectral, update_norms=norms)
        store.write_table("fingerprints", fp)
        found = []
        for metric in settings.onsets.metrics:
            try:
                found.append(onsets(fp, metric, settings.onsets.margin, reference="zero",
                                    consecutive=settings.onsets.consecutive, config=settings.spectral))
            except ValueError as e:
                print(f"screen: no onsets for {metric}: {e}", file=sys.stderr)
        if found:
            onset_table = pd.concat(found, ignore_index=True)
        store.write_table("onsets", onset_table)
        store.update_manifest(fingerprints={"status": "done", "windows": int(fp["step"].nunique())})
    else:
        msg = (f"fingerprints need at least W+1 = {need} checkpoints (window W = {settings.spectral.window}); "
               f"this series has {len(steps)}. Add checkpoints or lower spectral.window.")
        print(f"screen: {msg}", file=sys.stderr)
        store.update_manifest(fingerprints={"status": "skipped", "reason": msg})

    frames = store.read_frames("probes")
    if not frames:
        return
    tables = {k: frames[k] for k in PROBE_TABLES if k in frames}
    for name, df in tables.items():
        store.write_table(name, df)
    classes, circuits = summarise_series({**tables, "onsets": onset_table}, settings.thresholds)
    store.write_table("classes", classes)
    store.write_json("circuits", circuits)
    preidentify_run(store.root, settings.preid)  # with the selectivity circuit; `validate` redoes it


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("series", help="a folder of checkpoints, or a model config (name in model_configs/ or YAML path)")
    p.add_argument("--out", required=True, help="run directory (results/<config>/<run>)")
    p.add_argument("--config", help="model config for the settings when SERIES is a folder (e.g. synthetic-tiny)")
    p.add_argument("--force", action="store_true", help="recompute checkpoints already recorded in --out")
    p.add_argument("--probe-every", type=int, default=1, help="run the probes on every k-th checkpoint")
    p.add_argument("--allow-pickle", action="store_true", help="load .bin/.pt checkpoints (weights_only=True)")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    from headscreen.config import load_config

    series, cfg = resolve_series(args.series, allow_pickle=args.allow_pickle)
    if args.config:
        cfg = load_config(args.config)
    settings = dataclasses.replace(ScreenSettings.from_config(cfg), probe_every=args.probe_every)
    out = screen(series, args.out, config=cfg, settings=settings, force=args.force, progress=not args.no_progress)
    print(f"screened {len(series)} checkpoints of {series.name} -> {out}")
    return 0
