"""Train a synthetic checkpoint series: plain PyTorch on the raw HF module, checkpoints as HF folders.

Layout written (docs/run-format.md):

    <out>/series.json                       rewritten atomically after every checkpoint
    <out>/tokenizer.json, tokenizer_config.json, special_tokens_map.json
    <out>/step{N:06d}/config.json + model.safetensors
    <out>/resume.safetensors                AdamW state at the last checkpoint (deleted when complete)

Checkpoint N holds the weights after N optimizer updates; its `train_loss` is the loss of exactly
those weights on training batch N. Batches depend only on (seed, step), so an interrupted run
resumes from its last checkpoint and produces the same checkpoints as an uninterrupted one.

Never trains a TransformerBridge (on NeoX a bridge optimizer step misses the fused QKV weight).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

import torch

from headscreen.config.optimizer import scheduled_lr
from headscreen.rundir.atomic import fsync_dir, fsync_tree
from headscreen.rundir.optimizer_state import load_optimizer_state, optimizer_state_step, save_optimizer_state
from headscreen.rundir.store import write_json
from headscreen.synthetic.config import TrainConfig
from headscreen.synthetic.corpus import SyntheticCorpus
from headscreen.synthetic.diagnostics import copying_diagnostics
from headscreen.synthetic.model import build_model, load_checkpoint_weights, quiet_hf_progress
from headscreen.synthetic.tokenizer import save_tokenizer, save_tokenizer_object

SERIES_FORMAT = "headscreen-series/1"
RESUME_FILE = "resume.safetensors"
_NOT_IDENTITY = ("threads",)  # config fields that may differ between a run and its resumption
#: fields added to TrainConfig after series were written, at their defaults (older series.json lack them)
_LATER_FIELDS = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                 if f.name in ("corpus", "corpus_split", "text_column", "tokenizer", "tokenizer_docs")}


def checkpoint_dirname(step: int) -> str:
    return f"step{step:06d}"


def train_series(cfg: TrainConfig, out_dir: str | Path, progress: bool = True, *, overwrite: bool = False,
                 name: str | None = None, device: str | None = "cpu") -> Path:
    """Train `cfg` into `out_dir` and return it; resumes or returns at once if it is a series of `cfg`.

    `device` ("cpu", "cuda", "auto"; headscreen/compute/device.py): where the steps run; on a GPU the forward
    runs under bf16 autocast (float32 weights and optimizer state). It is recorded in series.json
    `device` and is not part of the recipe's identity (a series may be resumed on another device).

    - An empty or missing `out_dir` starts a fresh series.
    - A series of the same config (ignoring `threads`) is resumed from its last checkpoint, or left
      as it is if complete.
    - A series of another config raises FileExistsError unless `overwrite=True`, which deletes it.
    - A non-empty directory that is not a headscreen series is never deleted: FileExistsError.
    """
    from headscreen.compute.device import plan_device

    out = Path(out_dir)
    plan = plan_device(device)  # a missing GPU fails here, before anything is written
    torch.set_num_threads(cfg.threads)
    if out.is_dir() and any(out.iterdir()) and not (out / "series.json").is_file():
        raise FileExistsError(
            f"{out} is not empty and holds no series.json, so it is not a headscreen series; it is never "
            f"deleted for you: choose another out_dir or empty it yourself"
        )
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        series = _prepare(out, cfg, overwrite, name or out.resolve().name)
        if series["complete"]:
            return out
        _run(cfg, out, series, progress, plan)
    return out


# --------------------------------------------------------------------------------------------------
def _corpus(cfg: TrainConfig, out: Path, series: dict) -> SyntheticCorpus:
    """The batches of `cfg`, with its tokenizer saved into `out`; a resumed text stream starts where
    the last recorded checkpoint's batch started."""
    if cfg.corpus is None:
        corpus = SyntheticCorpus(cfg)
        save_tokenizer(corpus.vocab, out, model_max_length=cfg.ctx)
        return corpus
    from headscreen.synthetic.text import CorpusText, prepare_tokenizer

    last = series["checkpoints"][-1] if series["checkpoints"] else None
    tok = prepare_tokenizer(cfg, out, resume=last is not None)
    save_tokenizer_object(tok, out, model_max_length=cfg.ctx)
    start = tuple(last["corpus_position"]) if last is not None else (0, 0)
    return SyntheticCorpus(cfg, text=CorpusText(cfg, tok, start=start))


def _run(cfg: TrainConfig, out: Path, series: dict, progress: bool, plan) -> None:
    from tqdm.auto import tqdm

    from headscreen.compute.device import training_autocast

    corpus = _corpus(cfg, out, series)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).train()  # initialised on the CPU (the same weights on every device), then moved
    model.to(plan.device)
    optimizer = _optimizer(model, cfg)
    start = 0
    if series["checkpoints"]:  # resume from the last recorded checkpoint, after the checkpoint checks
        start = series["checkpoints"][-1]["step"]
        _resume_weights(model, out / checkpoint_dirname(start))
        load_optimizer_state(out / RESUME_FILE, optimizer, _damaged(out / RESUME_FILE))
    series["device"] = plan.record()  # the latest session's device and precision
    for stale in out.glob("step*"):  # folders from after the last recorded checkpoint, or half-written
        if stale.is_dir() and stale.name not in {c["path"] for c in series["checkpoints"]}:
            shutil.rmtree(stale)

    eval_repeats, eval_stories = corpus.eval_repeats(), corpus.eval_stories()
    schedule = set(cfg.checkpoint_steps())
    trainable = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, unit="step", desc=series["name"])
    t0 = time.perf_counter()
    for step in range(start, cfg.steps + 1):
        position = corpus.text.position if corpus.text is not None else None  # where batch `step` starts
        tokens = corpus.batch(step).to(plan.device, non_blocking=True)  # [batch, ctx]
        with training_autocast(plan):
            loss = model(input_ids=tokens, labels=tokens).loss
        if step in schedule and not (series["checkpoints"] and series["checkpoints"][-1]["step"] == step):
            loss_value = loss.item()  # the one host sync of a step, at checkpoints only
            diag = copying_diagnostics(model, eval_repeats, eval_stories)
            _save_checkpoint(model, out, step)
            entry = {"step": step, "tokens": step * cfg.tokens_per_step, "path": checkpoint_dirname(step),
                     "train_loss": round(loss_value, 6), "diagnostics": diag}
            if position is not None:
                entry["corpus_position"] = position
            series["checkpoints"].append(entry)
            write_json(out / "series.json", series)
            save_optimizer_state(out / RESUME_FILE, optimizer, step)
            bar.set_postfix(loss=f"{loss_value:.3f}", copy2=f"{diag['loss_second']:.2f}")
        if step == cfg.steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(cfg.lr, step, steps=cfg.steps, warmup=cfg.warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        bar.update(1)
    bar.close()
    series["complete"] = True
    series["train_seconds_last_session"] = round(time.perf_counter() - t0, 2)
    write_json(out / "series.json", series)
    (out / RESUME_FILE).unlink(missing_ok=True)


def _resume_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load the checkpoint to resume from, after the same checks as every other loader (and a NaN check
    of every tensor: training on from a diverged checkpoint is never what is wanted)."""
    from headscreen.series import CorruptCheckpoint, check_checkpoint
    from headscreen.series.checks import check_finite_parameters

    where = f"{folder} (the checkpoint this series resumes from)"
    check_checkpoint(folder, label=where)
    try:
        load_checkpoint_weights(model, folder)  # through transformers: on-disk names differ (NeoX embed_out)
    except Exception as e:  # noqa: BLE001 - transformers' own errors name no checkpoint: one named fault
        raise CorruptCheckpoint(f"checkpoint {where}: cannot load it into the recipe's model ({' '.join(str(e).split())[:300]}); "
                                "delete this step folder and its series.json entry, or train into a new --out") from e
    check_finite_parameters(model, where)


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas,
    )


def _save_checkpoint(model: torch.nn.Module, out: Path, step: int) -> None:
    final, tmp = out / checkpoint_dirname(step), out / f".tmp-{checkpoint_dirname(step)}"
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_hf_progress():
        model.save_pretrained(tmp, safe_serialization=True)
    fsync_tree(tmp)  # the folder's files are on disk before the rename publishes it
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(out)


def _damaged(path: Path):
    """resume.safetensors' named fault (headscreen.rundir.optimizer_state.Fault): `CorruptCheckpoint`."""
    from headscreen.series import CorruptCheckpoint

    return lambda reason: CorruptCheckpoint(f"{path} (the optimizer state to resume from) {reason}; delete it to "
                                            "retrain this series from step 0, or train into a new --out")


# --------------------------------------------------------------------------------------------------
def _prepare(out: Path, cfg: TrainConfig, overwrite: bool, name: str) -> dict:
    """The series dict to continue (fresh, resumable or complete), after checking what `out` holds."""
    fresh = {"format": SERIES_FORMAT, "name": name, "seed": cfg.seed, "train_config": cfg.to_dict(),
             "complete": False, "checkpoints": []}
    meta = out / "series.json"
    entries = [p for p in out.iterdir() if p.name != ".train.lock"]
    if not entries:
        write_json(meta, fresh)
        return fresh
    if not meta.is_file():
        raise FileExistsError(
            f"{out} is not empty and holds no series.json, so it is not a headscreen series; it is never "
            f"deleted for you: choose another out_dir or empty it yourself"
        )
    try:
        old = json.loads(meta.read_text())
    except json.JSONDecodeError as err:
        raise FileExistsError(f"{meta} is not valid JSON ({err}); move the directory aside or delete it") from None
    if old.get("format") == SERIES_FORMAT and _identity(old.get("train_config", {})) == _identity(cfg.to_dict()):
        if old.get("complete"):
            return old
        if old["checkpoints"] and not (out / RESUME_FILE).is_file():
            old["checkpoints"] = []  # no optimizer state to resume from: start over (same config)
        if old["checkpoints"]:
            resume_step = optimizer_state_step(out / RESUME_FILE, _damaged(out / RESUME_FILE))
            old["checkpoints"] = [c for c in old["checkpoints"] if c["step"] <= resume_step]
        old["train_config"] = cfg.to_dict()
        write_json(meta, old)
        return old
    if not overwrite:
        diff = _diff(old.get("train_config", {}), cfg.to_dict())
        raise FileExistsError(
            f"{out} holds a series of a different train config ({diff}); pass overwrite=True to replace it, "
            f"or choose another out_dir"
        )
    for p in entries:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    write_json(meta, fresh)
    return fresh


def _identity(d: dict) -> dict:
    """The recipe fields that make a series; a field added after a series was written counts at its default."""
    return {k: v for k, v in {**_LATER_FIELDS, **d}.items() if k not in _NOT_IDENTITY}


def _diff(old: dict, new: dict) -> str:
    old, new = {**_LATER_FIELDS, **old}, {**_LATER_FIELDS, **new}
    keys = sorted(set(old) | set(new))
    parts = [f"{k}: {old.get(k, '<missing>')!r} -> {new.get(k, '<missing>')!r}"
             for k in keys if k not in _NOT_IDENTITY and old.get(k) != new.get(k)]
    return "; ".join(parts) or "format differs"


@contextlib.contextmanager
def _locked(out: Path):
    with open(out / ".train.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another process is training into {out}; wait for it or choose another out_dir") \
                from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
