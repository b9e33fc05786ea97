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
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from headscreen.compute.executors import Executor, make_executor
from headscreen.config import ModelConfig, from_mapping
from headscreen.probes.classify import ScreenThresholds
from headscreen.probes.preid import PreidSettings
from headscreen.probes.screen import summarise_series
from headscreen.probes.suite import ProbeSuite
from headscreen.rundir.binding import describe_changes, plan_records
from headscreen.rundir.provenance import provenance
from headscreen.rundir.store import VALIDATION_OUTPUTS, RunStore
from headscreen.series import LOADING_MODE, Series, SeriesError
from headscreen.series.identity import series_identity
from headscreen.series.precision import CHOICES as DTYPE_CHOICES
from headscreen.series.precision import BootSettings, resolve_for_series
from headscreen.spectral import SpectralConfig, fingerprint, onsets
from headscreen.spectral.config import OnsetSettings
from headscreen.spectral.duplicates import drop_duplicates
from pipelines.attention import record_attention
from pipelines.common import (
    add_device_argument,
    add_executor_arguments,
    executor_from_args,
    positive_int,
    require_remote_code_flag,
    resolve_series,
)
from pipelines.preid import preidentify_run
from pipelines.screen_chunks import (
    PROBE_TABLES,
    head_weights_from_bridge,
    record_checkpoints,
    record_duplicates,
    sketches_from_records,
)

__all__ = ["PROBE_TABLES", "SCREEN_OUTPUTS", "ScreenSettings", "head_weights_from_bridge", "screen"]

PREID_OUTPUTS = ("preid.parquet", "preid.json")  # a summary of the tables; absent ones `headscreen report` computes first
#: every result file a screen writes
SCREEN_TABLES = ("fingerprints", "onsets", *PROBE_TABLES, "classes")
SCREEN_OUTPUTS = (*(f"{t}.parquet" for t in SCREEN_TABLES), "circuits.json", *PREID_OUTPUTS)
#: settings that bound memory or time but change no result (left out of the config hash)
NO_RESULT_FIELDS = {"spectral": ("cache_bytes",), "probes": ("micro_batch",)}


@dataclass(frozen=True)
class ScreenSettings:
    spectral: SpectralConfig = field(default_factory=SpectralConfig)
    thresholds: ScreenThresholds = field(default_factory=ScreenThresholds)
    probes: ProbeSuite = field(default_factory=ProbeSuite)
    onsets: OnsetSettings = field(default_factory=OnsetSettings)
    preid: PreidSettings = field(default_factory=PreidSettings)  # summary only: not in the config hash (preid.json)
    probe_every: int = 1  # run the probes on every k-th checkpoint (and always the last)
    boot: BootSettings = field(default_factory=BootSettings)  # the probed checkpoints' precision (--dtype)

    def __post_init__(self):
        if not isinstance(self.probe_every, int) or isinstance(self.probe_every, bool) or self.probe_every < 1:
            raise ValueError(f"probe_every (--probe-every) must be an integer >= 1, got {self.probe_every!r}")

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
            boot=from_mapping(BootSettings, cfg.section("boot"), f"{where}: boot"),
        )

    def to_dict(self) -> dict:
        return {"spectral": self.spectral.to_dict(), "thresholds": dataclasses.asdict(self.thresholds),
                "probes": self.probes.to_dict(), "onsets": dataclasses.asdict(self.onsets),
                "probe_every": self.probe_every, "boot": dataclasses.asdict(self.boot)}

    def results_dict(self) -> dict:
        """The settings that change a screen's results (the run's config hash covers these only):
        `to_dict` less memory and speed knobs (spectral.cache_bytes, probes.micro_batch)."""
        d = self.to_dict()
        d["spectral"] = {k: v for k, v in d["spectral"].items() if k not in NO_RESULT_FIELDS["spectral"]}
        d["probes"] = {k: v for k, v in d["probes"].items() if k not in NO_RESULT_FIELDS["probes"]}
        boot = d.pop("boot")  # the resolved dtype changes results; float32 (every older run's) hashes as before
        if boot["dtype"] != "float32":
            d["boot_dtype"] = boot["dtype"]
        return d


def _last_good(series: Series):
    """The newest checkpoint that passes its checks, or None (the bad ones are named, or skipped, when
    the screen reaches them)."""
    for ckpt in reversed(series.checkpoints):
        try:
            series.check(ckpt)
            return ckpt
        except SeriesError:
            continue
    return None


def fit_probes(series: Series, settings: ScreenSettings) -> tuple[ScreenSettings, dict[str, str]]:
    """`settings` with the "auto" probe fields fixed from the newest checkpoint that passes its checks (its config.json and
    tokenizer), and {field: how it was chosen}. Settings without "auto" fields come back unchanged."""
    if not settings.probes.auto_fields():
        return settings, {}
    from headscreen.series import load_tokenizer

    ckpt = _last_good(series)
    if ckpt is None:  # nothing to fit to: the screen names (or skips) every checkpoint
        return settings, {}
    g = series.geometry(ckpt)
    tok_dir = series.tokenizer_dir()
    probes, chosen = settings.probes.for_model(n_ctx=g.n_ctx, d_vocab=g.vocab_size,
                                               tokenizer=load_tokenizer(tok_dir) if tok_dir else None,
                                               hf_config=series.hf_config(ckpt))
    return dataclasses.replace(settings, probes=probes), chosen


def _probe_steps(steps: list[int], every: int) -> set[int]:
    return {s for i, s in enumerate(steps) if i % every == 0} | {steps[-1]}


def screen(
    series: Series | str | Path,
    out: str | Path,
    *,
    config: ModelConfig | None = None,
    settings: ScreenSettings | None = None,
    force: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
    device: str | None = "cpu",
    executor: Executor | None = None,
    chunks: int | None = None,
) -> Path:
    """Screen every head of every checkpoint of `series` into the run directory `out`; returns `out`.

    Writes fingerprints.parquet (when the series has >= W+1 checkpoints), onsets.parquet,
    selectivity / head_scores / participation / copying / classes .parquet and circuits.json
    (docs/run-format.md). Probe settings left "auto" are fixed from the model first (`fit_probes`); the
    manifest's config holds the values used and `probe_defaults` how each was chosen.
    Memory: one checkpoint (its bridge, or its attention tensors as stored) plus
    the previous checkpoint's head vectors (as stored) and the sketcher's buffers (see HeadSketcher).

    Every checkpoint passes headscreen's checks before any loader touches it (see
    headscreen.series.checks); a bad one raises its `SeriesError` naming it, after every earlier
    record was kept. With `skip_bad`, it is listed in the manifest's `skipped` (step, name, reason,
    identity) instead and the screen goes on: the next checkpoint's update is taken from the last good
    one (it spans the gap). A rerun skips it again without retrying while its identity is unchanged,
    and screens it (recomputing the records after it) once it was repaired.

    `device` ("cpu", "cuda", "auto"; headscreen/compute/device.py): where the probes' forward passes run (float32);
    recorded in the manifest's `device`. The sketches are computed on the CPU either way.
    `executor` (headscreen.compute.executors; default: in this process) runs the per-checkpoint work in
    `chunks` contiguous chunks (default: one per worker); the results do not depend on either
    (pipelines/screen_chunks.py). Only this process writes into `out`.
    """
    from headscreen.compute.device import plan_device

    plan = plan_device(device, mixed_precision=False)  # a missing GPU fails before the run is touched
    if not isinstance(series, Series):
        series, config_from_spec = resolve_series(series)
        config = config or config_from_spec
    identities = series_identity(series)
    settings, chosen = fit_probes(series, settings or ScreenSettings.from_config(config))
    boot, chosen["dtype"] = resolve_for_series(series, settings.boot, plan.device, _last_good(series))  # sets series.boot_dtype
    settings = dataclasses.replace(settings, boot=boot)
    manifest = _manifest(series, config, settings, identities, plan, chosen)
    own = executor is None
    executor = executor or make_executor("local")
    try:
        with RunStore.open(out, manifest, force=force) as store:  # the tables are marked stale from here on
            good, probe_steps = _record_series(store, series, settings, identities, skip_bad=skip_bad, force=force,
                                               progress=progress, device=plan.device, executor=executor,
                                               chunks=chunks)
            _summarise(store, settings, good, sorted(probe_steps & set(good)))
            record_attention(store, series, settings.probes, device=plan.device, progress=progress)  # the report's viewer
    finally:
        if own:
            executor.close()
    return Path(out)


def _manifest(series: Series, config: ModelConfig | None, settings: ScreenSettings, identities: list[dict], plan,
              chosen: dict[str, str]) -> dict:
    """The screen run's manifest (its `results_config` is what the config hash covers)."""
    return {
        "kind": "screen",
        "model": config.name if config else series.name,
        "config": {"model_config": config.to_dict() if config else None, **settings.to_dict()},
        "results_config": settings.results_dict(),
        "config_path": str(config.path) if config and config.path else None,
        "series": series.describe(),
        "checkpoints": identities,
        "tables": {"status": "stale", "reason": "a screen of this run started and has not finished"},
        "seeds": {"probes": settings.probes.seed, "sketch": settings.spectral.seed,
                  "null_positions": settings.thresholds.null_position_seed,
                  "null_draws": settings.thresholds.null_draw_seed},
        "loading_mode": LOADING_MODE,
        "device": {**plan.record(), "param_dtype": settings.boot.dtype},
        "probe_defaults": chosen,
        **provenance(),
    }


def _record_series(store: RunStore, series: Series, settings: ScreenSettings, identities: list[dict], *,
                   skip_bad: bool, force: bool, progress: bool, device: str, executor: Executor,
                   chunks: int | None) -> tuple[list[int], set[int]]:
    """Record every checkpoint that passes its checks -> (the good steps, the probed steps); the records are
    replanned when a newly skipped checkpoint moves another's θ_{t-1}."""
    skipped = _still_bad(store, identities, skip_bad=skip_bad, force=force)
    for _ in range(len(series.checkpoints) + 1):  # again only when a new skip moved a θ_{t-1}
        bad = {s["step"] for s in skipped}
        kept = [i for i, c in enumerate(series.checkpoints) if c.step not in bad]
        probe_steps = _probe_steps(series.steps, settings.probe_every) - bad
        _drop_stale_records(store, [identities[i] for i in kept], probe_steps)
        good, replan = record_checkpoints(series, store, settings, kept, identities, probe_steps,
                                          skip_bad=skip_bad, skipped=skipped, progress=progress,
                                          device=device, executor=executor, n_chunks=chunks)
        if not replan:
            break
    if not good:
        raise SeriesError(f"no checkpoint of series {series.name!r} passed its checks; the reasons are in "
                          f"{store.root}/manifest.json `skipped`")
    return good, probe_steps


def _still_bad(store: RunStore, identities: list[dict], *, skip_bad: bool, force: bool) -> list[dict]:
    """The `skipped` entries of the previous screen whose checkpoint is unchanged (same identity): the
    checks are deterministic, so they would fail again. Without `skip_bad` the first one is an error
    (before any record is touched); with it they are skipped again without a retry."""
    if force:
        return []
    now = {c["step"]: c for c in identities}
    before = (store.previous_manifest or {}).get("skipped") or []
    same = [s for s in before if isinstance(s, dict) and s.get("identity") is not None
            and now.get(s.get("step")) == s["identity"]]
    if same and not skip_bad:
        first = same[0]
        raise SeriesError(f"checkpoint step {first['step']} ({first['name']}) failed its checks in the last screen "
                          f"of {store.root} and is unchanged ({first['reason']}); repair or remove it, or pass "
                          "--skip-bad to skip it again")
    return same


def _drop_stale_records(store: RunStore, identities: list[dict], probed: set[int]) -> None:
    """Delete the records that no longer match the series (headscreen/rundir/binding.py) and, when any record
    is to change, the validation outputs (they were computed on the tables the change invalidates)."""
    sketch_meta = {s: store.read_meta("sketch", s) for s in store.recorded_steps("sketch")}
    probe_meta = {s: store.read_meta("probes", s) for s in store.recorded_steps("probes")}
    plan = plan_records(identities, sketch_meta, probe_meta)
    old = (store.previous_manifest or {}).get("checkpoints")
    if plan.changes_records:
        why = (f"the series changed since {store.root} was recorded ({describe_changes(old, identities) or 'records of other checkpoints'})" if old else
               f"the records of {store.root} name no checkpoint identity (an older headscreen wrote them)")
        print(f"screen: {why}: {len(plan.stale_sketches)} sketch and {len(plan.stale_probes)} probe records are "
              "recomputed or dropped", file=sys.stderr)
    missing_probes = probed - (set(probe_meta) - set(plan.stale_probes))
    if plan.changes_records or plan.first_stale is not None or missing_probes:
        gone = store.remove_outputs(VALIDATION_OUTPUTS)
        if gone:
            print(f"screen: removed {', '.join(gone)}: they validated the tables this screen replaces; "
                  "rerun `headscreen validate` afterwards", file=sys.stderr)
    for s in plan.stale_sketches:
        store.remove_record("sketch", s)
    for s in plan.stale_probes:
        store.remove_record("probes", s)


def _summarise(store: RunStore, settings: ScreenSettings, steps: list[int], probed: list[int]) -> None:
    """The series-level tables from the records of exactly the current series' checkpoints (`steps`:
    all but the skipped ones; `probed`: those of them with probes); files that this series does not
    produce are removed, and the manifest marks the tables current last."""
    tensors = [store.read_tensors("sketch", s)[0] for s in steps]
    sketches = sketches_from_records(tensors)  # [T, layer, head, d]
    norms = torch.stack([t["update_norm"] for t in tensors])  # [T, layer, head]
    duplicates = record_duplicates(store, steps, norms)
    sketches, steps_w, norms = drop_duplicates(sketches, steps, norms, duplicates)  # windows skip zero updates
    need = settings.spectral.window + 1
    onset_table = pd.DataFrame(columns=["layer", "head", "metric", "onset_step"])
    if len(steps_w) >= need:
        fp = fingerprint(sketches, steps_w, config=settings.spectral, update_norms=norms)
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
               f"this series has {len(steps_w)}{' distinct' if duplicates else ''}. Add checkpoints or lower "
               "spectral.window.")
        print(f"screen: {msg}", file=sys.stderr)
        store.remove_outputs(("fingerprints.parquet", "onsets.parquet"))
        store.update_manifest(fingerprints={"status": "skipped", "reason": msg})

    frames = store.read_frames("probes", probed)
    tables = {k: frames[k] for k in PROBE_TABLES if k in frames}
    for name, df in tables.items():
        store.write_table(name, df)
    if tables:
        classes, circuits = summarise_series({**tables, "onsets": onset_table}, settings.thresholds)
        store.write_table("classes", classes)
        store.write_json("circuits", circuits)
    else:
        store.remove_outputs(tuple(f"{t}.parquet" for t in (*PROBE_TABLES, "classes")) + ("circuits.json",))
    store.remove_outputs(PREID_OUTPUTS)  # they summarise the old tables; rewritten below once these are current
    store.update_manifest(tables={"status": "current", "steps": steps, "probe_steps": probed,
                                  "id": uuid.uuid4().hex[:16]})
    if tables:  # read from the current tables (with the selectivity circuit; `validate` redoes it)
        preidentify_run(store.root, settings.preid)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("series", help="a folder of checkpoints, or a model config (name in model_configs/ or YAML path)")
    p.add_argument("--out", required=True, help="run directory (results/<config>/<run>)")
    p.add_argument("--config", help="model config for the settings when SERIES is a folder (e.g. synthetic-tiny)")
    p.add_argument("--force", action="store_true", help="recompute checkpoints already recorded in --out")
    p.add_argument("--probe-every", type=positive_int, default=1, help="run the probes on every k-th checkpoint")
    p.add_argument("--skip-bad", action="store_true",
                   help="record a checkpoint that fails its checks as skipped (manifest `skipped`) and go on")
    p.add_argument("--allow-pickle", action="store_true", help="load .bin/.pt checkpoints (weights_only=True)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers run Python code shipped with the checkpoints (a config cannot grant it)")
    p.add_argument("--no-progress", action="store_true")
    add_device_argument(p, what="the probes' forward passes")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                   help="precision the probed checkpoints are booted in (default: the config's boot.dtype, else "
                        "auto: float32 when it fits the memory budget, else the stored dtype; "
                        "headscreen/series/precision.py)")
    add_executor_arguments(p)


def main(args: argparse.Namespace) -> int:
    from headscreen.config import load_config

    series, cfg = resolve_series(args.series, allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code)
    if args.config:
        cfg = load_config(args.config)
        require_remote_code_flag(cfg, args.trust_remote_code)
    settings = dataclasses.replace(ScreenSettings.from_config(cfg), probe_every=args.probe_every)
    if args.dtype is not None:
        settings = dataclasses.replace(settings, boot=dataclasses.replace(settings.boot, dtype=args.dtype))
    with executor_from_args(args) as executor:
        out = screen(series, args.out, config=cfg, settings=settings, force=args.force, skip_bad=args.skip_bad,
                     progress=not args.no_progress, executor=executor, device=args.device)
    skipped = RunStore.existing(out).manifest().get("skipped") or []
    if skipped:
        print(f"screen: skipped {len(skipped)} bad checkpoint(s): steps {[s['step'] for s in skipped]} "
              "(reasons in manifest.json `skipped`)", file=sys.stderr)
    print(f"screened {len(series) - len(skipped)} of {len(series)} checkpoints of {series.name} -> {out}")
    return 0
