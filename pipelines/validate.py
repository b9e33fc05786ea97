"""`headscreen validate`: causal validation of a screened run's circuits at a checkpoint.

Reads the run's circuits.json, boots the checkpoint, ablates the induction circuit (zero, mean and
resample) against matched-random nulls on the run's own probes, patches every head (denoising) and
path-patches previous-token -> induction K composition. Every intervention checks that it fired.
Writes validation.json, validation.parquet and patching.parquet into the run directory, under its lock.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from headscreen.causal import patch_checkpoint, validate_checkpoint
from headscreen.causal.ablation import Scoring
from headscreen.causal.settings import ValidationSettings
from headscreen.causal.validate import ablate_blocks, probe_source
from headscreen.compute.executors import TaskFailed, WorkerDied, chunks
from headscreen.config import CONFIG_DIR, ConfigError, config_series, from_mapping, load_config
from headscreen.heads import parse_head_label
from headscreen.probes.prompts import corrupt_retrieval
from headscreen.probes.suite import ProbeSuite
from headscreen.rundir.binding import checkpoint_refusal
from headscreen.rundir.staged import Stage
from headscreen.rundir.store import VALIDATION_OUTPUTS, RunStore, SeriesChanged, atomic_write, write_json
from headscreen.series import HubSeries, LocalSeries
from headscreen.series.identity import checkpoint_identity
from headscreen.series.precision import CHOICES as DTYPE_CHOICES
from headscreen.series.precision import boot_dtype_for_validate
from pipelines.common import add_device_argument, add_executor_arguments, executor_from_args
from pipelines.preid import preid_tables, write_preid

__all__ = ["ValidationSettings", "validate"]


def _settings_source(manifest: dict, config: str | Path | None) -> tuple[ValidationSettings, str]:
    """The `validation:` section read fresh from the model config (it changes no screen result, so the
    run's config hash leaves it out): `config` if given, else the file the run was screened with, else
    the config of that name in model_configs/, else the copy in the manifest, else the defaults."""
    model_cfg = (manifest.get("config") or {}).get("model_config") or {}
    recorded, name = manifest.get("config_path"), model_cfg.get("name")
    if config is None and recorded and Path(recorded).is_file():
        config = recorded
    elif config is None and name and (CONFIG_DIR / f"{name}.yaml").is_file():
        config = name
    if config is not None:
        cfg = load_config(config)
        return from_mapping(ValidationSettings, cfg.section("validation"), f"{cfg.path}: validation"), str(cfg.path)
    if model_cfg.get("validation") is not None:
        return ValidationSettings.of_manifest(manifest), "the run manifest's copy (its model config file was not found)"
    return ValidationSettings(), "defaults (the run has no model config)"


def _series_of(manifest: dict, *, trust_remote_code: bool = False):
    """The run's series. Remote code is granted by `trust_remote_code` alone, never by the manifest."""
    desc = manifest.get("series") or {}
    if desc.get("trust_remote_code") and not trust_remote_code:
        raise ConfigError("this run was screened with trust_remote_code; the manifest cannot grant it again: pass "
                          "--trust-remote-code (trust_remote_code=True) if you trust the checkpoints' code")
    if desc.get("source") == "local":
        return LocalSeries(desc["root"], allow_pickle=desc.get("allow_pickle", False),
                           trust_remote_code=trust_remote_code)
    if desc.get("source") == "hub" and desc.get("repo") and desc.get("revisions"):
        return HubSeries.from_description(desc, trust_remote_code=trust_remote_code)
    model_cfg = (manifest.get("config") or {}).get("model_config")
    if model_cfg and model_cfg.get("name"):
        return config_series(load_config(model_cfg["name"]), trust_remote_code=trust_remote_code)
    raise ConfigError("the run's manifest does not say where its checkpoints are; re-screen it with this version")


def _circuit_at(circuits: dict, step: int, probe: str) -> dict:
    per = (circuits.get("steps") or {}).get(str(step)) or {}
    return per.get(probe) or {"induction": [], "previous": [], "bos": []}


def _previous_senders(run: RunStore, step: int, probe: str, found: list) -> tuple[list, str]:
    """Previous-token heads for path patching: the >= 100x circuit, else heads best-classified previous."""
    if found:
        return found, "previous-token circuit (best class previous, >= previous_circuit threshold)"
    classes = run.read_table("classes")
    if classes is None:
        return [], "no classes table"
    c = classes[(classes["step"] == step) & (classes["probe"] == probe) & (classes["best_class"] == "previous")]
    return [[int(r.layer), int(r.head)] for r in c.itertuples()], "best class previous (>= class_min), no head >= 100x"


def validate(run_dir: str | Path, *, checkpoint: int | None = None, circuit: list[list[int]] | None = None,
             probe: str = "retrieval", ablations: tuple[str, ...] | None = None, n_null: int | None = None,
             seed: int | None = None, config: str | Path | None = None, progress: bool = True,
             trust_remote_code: bool = False, executor=None, device: str | None = "cpu",
             dtype: str | None = None) -> Path:
    """Validate the induction circuit of a screened run (default: at its last screened checkpoint).

    `circuit` overrides the screened circuit. `ablations`, `n_null` and `seed` default to the
    `validation:` section of the model config, read fresh (`config`, else the run's config file; see
    _settings_source), else ValidationSettings(). Holds the run's lock throughout (a second validate,
    or a screen, is refused meanwhile) and refuses a run whose tables are stale. The previous
    validation outputs are removed first and validation.json is written last, so a validation.json
    always belongs with the parquet files beside it. Returns the path of validation.json. A run whose
    circuit is empty at that checkpoint gets a validation.json that says so (and nothing is ablated).
    `executor` (headscreen.compute.executors; default: this process) splits the ablated head sets (the
    matched-random null) across its workers in whole blocks: the numbers do not change.
    `device` ("cpu", "cuda", "auto"; headscreen/compute/device.py): where the checkpoint runs (float32); recorded
    in validation.json's `device`. `dtype` (auto|float32|bfloat16|float16): the precision the checkpoint
    is booted in; None: the screen's (the manifest's `device.param_dtype`), recorded in `device.param_dtype`.
    """
    from headscreen.compute.device import plan_device

    plan = plan_device(device, mixed_precision=False)  # a missing GPU fails before the run is touched
    _check_arguments(circuit, ablations, n_null)
    with RunStore.locked(run_dir, "validate", kind="screen", command="`headscreen validate`") as run:
        run.check_tables_current("validate")
        return _validate_locked(run, checkpoint=checkpoint, circuit=circuit, probe=probe, ablations=ablations,
                                n_null=n_null, seed=seed, config=config, progress=progress,
                                trust_remote_code=trust_remote_code, executor=executor, plan=plan, dtype=dtype)


def _validate_locked(run: RunStore, *, checkpoint, circuit, probe, ablations, n_null, seed, config,
                     progress, trust_remote_code: bool = False, executor=None, plan=None, dtype=None) -> Path:
    from headscreen.compute.device import plan_device

    plan = plan or plan_device("cpu")
    manifest = run.manifest()
    given, source = _settings_source(manifest, config)
    settings = ValidationSettings(ablations=given.ablations if ablations is None else tuple(ablations),
                                  n_null=given.n_null if n_null is None else n_null,
                                  seed=given.seed if seed is None else seed)
    ablations, n_null, seed = settings.ablations, settings.n_null, settings.seed
    circuits = run.read_json("circuits")
    if circuits is None:
        raise ConfigError(f"{run.root} has no circuits.json: screen it first (`headscreen screen ... --out {run.root}`)")
    steps = sorted(int(s) for s in circuits["steps"])
    step = steps[-1] if checkpoint is None else int(checkpoint)
    if step not in steps:
        raise ConfigError(f"checkpoint {step} was not screened in {run.root}; screened: {steps}")
    screened = sorted((circuits["steps"].get(str(step)) or {}).keys())
    if screened and probe not in screened:
        raise ConfigError(f"probe {probe!r} was not screened in {run.root}; screened probes: {screened}")
    found = _circuit_at(circuits, step, probe)
    heads = [list(map(int, h)) for h in (circuit if circuit is not None else found["induction"])]
    _check_heads_in_run(run, heads)
    summary: dict = {"format": "headscreen-validation-run/1", "step": step, "probe": probe,
                     "circuit": heads, "circuit_source": "given" if circuit is not None else "screened induction circuit",
                     "n_null": n_null, "seed": seed, "ablations": {},
                     "settings": {"ablations": list(ablations), "n_null": n_null, "seed": seed,
                                  "validation_section": source},
                     "tables_id": (manifest.get("tables") or {}).get("id"), "device": plan.record()}
    if not heads:
        summary["status"] = "no circuit"
        summary["reason"] = (f"no head reaches the induction-circuit threshold at step {step} on the {probe} probe; "
                             "nothing to validate")
        print(f"validate: {summary['reason']}", file=sys.stderr)
        stage = Stage(run.root, "validate")
        write_json(stage.path("validation.json"), summary)
        stage.commit(["validation.json"], remove=VALIDATION_OUTPUTS)
        return run.root / "validation.json"

    recorded = (manifest.get("config") or {}).get("probes") or {}  # the run's probes, as screened
    suite = ProbeSuite(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})
    series = _series_of(manifest, trust_remote_code=trust_remote_code)
    summary["device"]["param_dtype"] = boot_dtype_for_validate(series, manifest, dtype, plan.device, step)
    ckpt = series.checkpoint(step)
    bridge = series.boot(ckpt, device=plan.device)  # its checks first: a corrupt checkpoint is named as such
    refusal = checkpoint_refusal(run.root, manifest, checkpoint_identity(series, ckpt))
    if refusal:
        raise SeriesChanged(refusal)
    batches = suite.build(n_ctx=bridge.cfg.n_ctx, d_vocab=bridge.cfg.d_vocab, tokenizer=bridge.tokenizer)
    probes = {probe: batches[probe]}
    rows = []
    with torch.no_grad():
        for kind in ablations:
            if progress:
                print(f"validate: {kind} ablation of {len(heads)} heads against up to {n_null} matched-random sets",
                      file=sys.stderr)
            runner = None
            if executor is not None and executor.kind != "local":
                runner = _block_runner(executor, series, step, suite, kind, seed, sorted({h[0] for h in heads}),
                                       plan.device)
            s, df = validate_checkpoint(bridge, heads, probes, n_null=n_null, seed=seed, ablation=kind, step=step,
                                        block_runner=runner)
            t = ((s["probes"].get(probe) or {}).get("tests") or {}).get("top1")
            if progress and t:
                print(f"validate: {kind}: null of {s['n_null']} sets ({s['null_kind']}); top-1 drop "
                      f"{t['observed_drop']:.3f} vs null mean {t['null_mean_drop']:.3f}, p = {t['p_value']:.4f}", file=sys.stderr)
            summary["ablations"][kind] = s
            rows.append(df.assign(ablation=kind))
        senders, rule = _previous_senders(run, step, probe, found["previous"])
        corrupted = corrupt_retrieval(batches[probe], seed)
        psum, pdf = patch_checkpoint(bridge, batches[probe], corrupted, previous_heads=senders,
                                     induction_heads=heads, step=step)
    psum["senders_rule"] = rule
    summary["patching"] = psum
    # the primary ablation's per-checkpoint summary, in the list form the report reads
    summary["checkpoints"] = [summary["ablations"][ablations[0]]]
    summary["status"] = "done"
    return _publish(run, summary, pd.concat(rows, ignore_index=True), pdf)


def _publish(run: RunStore, summary: dict, long: pd.DataFrame, patching: pd.DataFrame) -> Path:
    """Replace the run's validation outputs and pre-identification tables (computed with the validated
    circuit) in one step: every new file is written aside first, the old ones are kept until all are
    (headscreen/rundir/staged.py); validation.json is published after the tables it describes."""
    preid_table, preid_doc = preid_tables(run.root, validation=summary)
    stage = Stage(run.root, "validate")
    atomic_write(stage.path("validation.parquet"), lambda p: long.to_parquet(p, index=False))
    atomic_write(stage.path("patching.parquet"), lambda p: patching.to_parquet(p, index=False))
    write_json(stage.path("validation.json"), summary)
    write_preid(stage.dir, preid_table, preid_doc)
    stage.commit(["validation.parquet", "patching.parquet", "validation.json", "preid.parquet", "preid.json"])
    return run.root / "validation.json"


def _check_arguments(circuit, ablations, n_null) -> None:
    """The arguments that need no run: refused before the run is opened."""
    if circuit is not None:
        seen = set()
        for h in circuit:
            key = tuple(int(x) for x in h)
            if key in seen:
                raise ValueError(f"--heads names head L{key[0]}H{key[1]} twice; list each head once")
            seen.add(key)
    if ablations is not None:
        dup = sorted({a for a in ablations if list(ablations).count(a) > 1})
        if dup:
            raise ValueError(f"--ablation names {', '.join(dup)} twice; list each kind once")
        ValidationSettings(ablations=tuple(ablations), n_null=100 if n_null is None else n_null)
    elif n_null is not None:
        ValidationSettings(n_null=n_null)


def _check_heads_in_run(run: RunStore, heads: list[list[int]]) -> None:
    """Every head of the circuit exists in the screened model (the run's classes table lists every head)."""
    classes = run.read_table("classes")
    if classes is None or not len(classes) or not heads:
        return
    n_layers, n_heads = int(classes["layer"].max()) + 1, int(classes["head"].max()) + 1
    outside = [f"L{layer}H{head}" for layer, head in heads if not (0 <= layer < n_layers and 0 <= head < n_heads)]
    if outside:
        raise ValueError(f"--heads {', '.join(outside)} is outside the screened model ({n_layers} layers x {n_heads} "
                         "heads, 0-indexed); nothing was changed in the run")


def _null_blocks_task(series, step: int, suite: ProbeSuite, probe: str, ablation: str, seed: int, layers: list[int],
                      blocks: list, labels: list, device: str = "cpu"):
    """A worker's share of a validation: boot the checkpoint, rebuild the probe and its ablation source
    as the driver does, and ablate its blocks of head sets (headscreen.causal.validate.ablate_blocks)."""
    bridge = series.boot(series.checkpoint(step), device=device)
    batch = suite.build(n_ctx=bridge.cfg.n_ctx, d_vocab=bridge.cfg.d_vocab, tokenizer=bridge.tokenizer)[probe]
    with torch.no_grad():
        source = probe_source(bridge, probe, batch, ablation, layers, seed=seed)
        return ablate_blocks(bridge, Scoring.of(batch), source, blocks, labels, max_rows=None)


def _block_runner(executor, series, step, suite, ablation, seed, layers, device: str = "cpu"):
    """validate_checkpoint's block_runner: contiguous groups of blocks, one task per worker."""
    def run(probe, blocks, labels):
        groups = chunks(len(blocks), executor.workers)
        tasks = [(series, step, suite, probe, ablation, seed, layers, blocks[g.start:g.stop], labels[g.start:g.stop],
                  device) for g in groups]
        done = dict(executor.run(_null_blocks_task, tasks))
        for i in range(len(tasks)):
            if isinstance(done[i], TaskFailed):
                if not done[i].crashed:
                    raise done[i].error
                raise WorkerDied(f"a worker died computing the null ({done[i].describe()}); nothing was "
                                   "written — rerun the same command")
        return [done[i] for i in range(len(tasks))]
    return run


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory written by `headscreen screen`")
    p.add_argument("--checkpoint", type=int, help="step to validate (default: the last screened)")
    p.add_argument("--heads", help="override the circuit, e.g. 'L1H0,L1H3'")
    p.add_argument("--ablation", default=None,
                   help="comma-separated of zero,mean,resample (default: the config's validation section, else all)")
    p.add_argument("--n-null", type=int, default=None, help="matched-random head sets in the null (default 100)")
    p.add_argument("--seed", type=int, default=None, help="seed of the null draws (default 123)")
    p.add_argument("--config", default=None,
                   help="model config whose validation: section to use (default: the one the run was screened with)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers run Python code shipped with the checkpoints (the manifest cannot grant it)")
    add_device_argument(p, what="the checkpoint's ablations and patching")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                   help="precision the checkpoint is booted in (default: the screen's, manifest device.param_dtype)")
    add_executor_arguments(p)


def _parse_heads(text: str) -> list[list[int]]:
    out = []
    for item in text.split(","):
        head = parse_head_label(item)
        if head is None:
            raise ValueError(f"--heads item {item.strip()!r} is not like L1H3")
        if list(head) in out:
            raise ValueError(f"--heads names {item.strip()} twice; list each head once")
        out.append(list(head))
    return out


def main(args: argparse.Namespace) -> int:
    with executor_from_args(args) as executor:
        path = validate(args.run, checkpoint=args.checkpoint, circuit=_parse_heads(args.heads) if args.heads else None,
                        ablations=tuple(a.strip() for a in args.ablation.split(",") if a.strip()) if args.ablation else None,
                        n_null=args.n_null, seed=args.seed, config=args.config, trust_remote_code=args.trust_remote_code,
                        executor=executor, device=args.device, dtype=args.dtype)
    print(f"validation written to {path}")
    return 0
