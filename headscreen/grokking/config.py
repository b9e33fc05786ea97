"""`GrokConfig` (one training run) and `SweepConfig` (a grid of runs): frozen, validated on construction.

They come from the `grok:` and `sweep:` sections of `model_configs/grok-*.yaml`; every key is
listed in docs/run-format.md ("grok configs"). Errors name the field and the fix.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from headscreen.config.core import ConfigError, from_mapping, unknown_keys
from headscreen.config.optimizer import LR_DECAYS, OptimizerSettings
from headscreen.grokking.models.transformer import PRESETS, ModelSpec
from headscreen.grokking.tasks.base import is_registered, task_spec
from headscreen.grokking.tasks.modular import check_task
from headscreen.grokking.training.interventions import Intervention


@dataclass(frozen=True)
class GrokConfig:
    # task
    tasks: tuple[str, ...] = ("add",)  # one task, or several sharing a trunk (one head each, losses summed)
    task_options: dict = field(default_factory=dict)  # data settings of a sequence task (dyck, scan)
    p: int = 59
    train_frac: float = 0.3
    # model
    model: ModelSpec = field(default_factory=ModelSpec)  # YAML: a preset name or a mapping (`preset:` + overrides)
    # optimisation (AdamW; weight decay on every trained parameter)
    lr: float = 3e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    batch_size: int | None = 512  # None (or >= the training set): full batch
    grad_clip: float | None = 1.0  # max global gradient norm; None: no clipping
    warmup: int = 0  # linear learning-rate warm-up steps
    # learning-rate decay (config.optimizer.scheduled_lr): "none", or "linear" / "cosine" from update
    # lr_decay_start on, falling from lr towards lr_final, which it would reach at `steps`
    lr_decay: str = "none"
    lr_decay_start: int = 0
    lr_final: float = 0.0
    steps: int = 2000
    seed: int = 0  # model init, split and batches (batches depend only on (seed, step))
    # trajectory capture
    eval_every: int = 50  # rows of curves.parquet
    snapshot_every: int = 50  # trajectory snapshots (and resume points)
    defect_every: int = 100  # commutator-defect measurements; 0 disables them
    defect_pairs: int = 9  # K batch pairs per measurement
    defect_batch_size: int = 128
    defect_eta: float = 1e-3
    defect_form: str = "exact"  # or "float32_direct": the published evaluation (defect.commutator_defect)
    defect_min_step: float | None = None  # the Dyck/SCAN study's adaptive η: min ‖η g‖ >= this (1e-6 there)
    # the published recipe's data and stop rule (docs/methods.md, "Reproducing the published grokking results")
    split: str = "torch_permutation"  # or "python_shuffle" (tasks.make_dataset)
    batch_sampling: str = "without_replacement"  # or "with_replacement" (sampling.ReplacementStream)
    stop_acc: float | None = None  # stop `stop_after` steps after `stop_patience` evaluations in a row at
    stop_patience: int = 3  # test accuracy >= stop_acc (every task); None: run all `steps`
    stop_after: int = 1000
    # causal intervention on the gradient (headscreen.grokking.training.interventions); kind "none" by default
    intervention: Intervention = field(default_factory=Intervention)

    def __post_init__(self) -> None:
        if self.tasks and is_registered(self.tasks[0]):
            if len(self.tasks) != 1:
                raise ConfigError(f"tasks {list(self.tasks)}: task {self.tasks[0]!r} runs alone; give one task")
            task_spec(self)
        else:
            check_task(self.tasks, self.p, self.train_frac)
            if self.task_options:
                raise ConfigError(f"task_options {self.task_options!r}: the modular tasks take none; remove them")

        def fail(name: str, fix: str) -> None:
            raise ConfigError(f"grok config field {name!r} = {getattr(self, name)!r} is invalid: {fix}")

        OptimizerSettings.of(self, "grok")
        if self.batch_size is not None and self.batch_size < 1:
            fail("batch_size", "use a positive integer, or null for full batch")
        for name in ("steps", "eval_every", "snapshot_every", "defect_pairs", "defect_batch_size"):
            if getattr(self, name) < 1:
                fail(name, "use a positive integer")
        for name in ("warmup", "seed", "defect_every"):
            if getattr(self, name) < 0:
                fail(name, "use an integer >= 0")
        if not self.defect_eta > 0:
            fail("defect_eta", "use a positive step size such as 0.001")
        if self.intervention.active and self.intervention.start >= self.steps:
            raise ConfigError(f"intervention.start = {self.intervention.start} is not before the last step (steps = "
                              f"{self.steps}): the intervention would never act; use a start below {self.steps} "
                              "(--intervention-start) or more --steps")
        if self.lr_decay != "none":
            if not 0 <= self.lr_decay_start < self.steps:
                fail("lr_decay_start", f"use a step in [0, steps = {self.steps}): where the decay begins")
            if not 0.0 <= self.lr_final <= self.lr:
                fail("lr_final", f"use a final learning rate in [0, lr = {self.lr}]")
        choices = {"lr_decay": LR_DECAYS, "defect_form": ("exact", "float32_direct"),
                   "split": ("torch_permutation", "python_shuffle"),
                   "batch_sampling": ("without_replacement", "with_replacement")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                fail(name, f"use one of {', '.join(allowed)}")
        if self.defect_min_step is not None and not self.defect_min_step > 0:
            fail("defect_min_step", "use a positive step norm such as 1e-6, or null for a fixed defect_eta")
        if self.stop_acc is not None and not 0.0 < self.stop_acc <= 1.0:
            fail("stop_acc", "use a test accuracy in (0, 1], e.g. 0.98, or null to run all steps")
        if self.stop_patience < 1:
            fail("stop_patience", "use a positive integer")
        if self.stop_after < 0:
            fail("stop_after", "use an integer >= 0")
        if self.batch_sampling == "with_replacement" and self.batch_size is None:
            fail("batch_sampling", "with_replacement needs a batch_size")
        if self.batch_sampling == "with_replacement" and self.intervention.active:
            fail("batch_sampling", "a gradient intervention needs the stateless without_replacement batches")

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "grok") -> GrokConfig:
        data = dict(data or {})
        if "task" in data:  # a single task may be given as `task: add`
            if "tasks" in data:
                raise ConfigError(f"{where}: give either task or tasks, not both")
            data["tasks"] = [data.pop("task")]
        if "model" in data:
            data["model"] = model_spec(data["model"], f"{where}.model")
        if "intervention" in data:
            data["intervention"] = Intervention.from_value(data["intervention"], f"{where}.intervention")
        return from_mapping(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tasks"], d["betas"] = list(self.tasks), list(self.betas)
        return d

    def replace(self, **changes) -> GrokConfig:
        return dataclasses.replace(self, **changes)

    @property
    def optimizer(self) -> OptimizerSettings:
        """lr, betas, weight_decay and grad_clip (AdamW, decay on every trained parameter)."""
        return OptimizerSettings.of(self, "grok")

    @property
    def task_name(self) -> str:
        return self.tasks[0] if len(self.tasks) == 1 else "multitask"


def model_spec(value: str | dict | ModelSpec, where: str = "model") -> ModelSpec:
    """A preset name (`curv`, `nanda`), or a mapping with an optional `preset:` and field overrides."""
    if isinstance(value, ModelSpec):
        return value
    if isinstance(value, str):
        value = {"preset": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: give a preset name ({', '.join(PRESETS)}) or a mapping of model fields")
    value = dict(value)
    preset = value.pop("preset", "curv")
    if preset not in PRESETS:
        raise ConfigError(f"{where}.preset = {preset!r} is unknown; use one of {', '.join(PRESETS)}")
    base = PRESETS[preset].to_dict()
    unknown_keys(value, ["preset", *base], where)
    return from_mapping(ModelSpec, {**base, **value}, where)


# ----------------------------------------------------------------------------------------------
GRID_KEYS = ("weight_decay", "lr", "seed")


def config_defaults() -> dict[str, Any]:
    """Every GrokConfig field at its default: a run written before a field existed ran with that default
    (RunStore.open's `defaults`), e.g. the intervention block added after the first runs."""
    return GrokConfig.from_dict({}, "defaults").to_dict()


@dataclass(frozen=True)
class SweepConfig:
    """A grid over weight decay, learning rate, seed and intervention strength (each a list; a missing
    one keeps the base value). The strength axis needs the base config's intervention kind."""

    weight_decay: tuple[float, ...] | None = None
    lr: tuple[float, ...] | None = None
    seed: tuple[int, ...] | None = None
    intervention_strength: tuple[float, ...] | None = None
    task: tuple[str, ...] | None = None  # one run per task (outermost axis); names then start with the task
    extra: tuple[dict, ...] = ()  # single runs after the grid, each a mapping of GrokConfig fields (task: allowed)
    workers: int = 2  # runs at once, one process each (1 torch thread per process)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"sweep field 'workers' = {self.workers!r} is invalid: use a positive integer")
        for key in (*GRID_KEYS, "intervention_strength", "task"):
            values = getattr(self, key)
            if values is not None and len(values) == 0:
                raise ConfigError(f"sweep field {key!r} is an empty list: give at least one value or leave it out")
            for v in (values or ()) if key != "task" else ():  # the task axis holds names (checked per run)
                whole = key == "seed"
                if isinstance(v, bool) or not isinstance(v, int | float) or (whole and v != int(v)):
                    raise ConfigError(f"sweep field {key!r} has the value {v!r}, which is not "
                                      f"{'an integer' if whole else 'a number'}: give a list of "
                                      f"{'integers, e.g. [0, 1, 2]' if whole else 'numbers, e.g. [0.0, 1.0]'}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "sweep") -> SweepConfig:
        return from_mapping(cls, data, where)

    def grid(self, base: GrokConfig) -> list[tuple[str, GrokConfig]]:
        """(run name, config) for every grid point, in a fixed order (task, weight decay, lr, seed), then
        the `extra` runs in their order."""
        axes = [getattr(self, k) or (getattr(base, k),) for k in GRID_KEYS]
        out = []
        strengths = self.intervention_strength
        if strengths is not None and not base.intervention.active:
            raise ConfigError("sweep field 'intervention_strength' needs the grok section's intervention.kind "
                              "(suppress or amplify)")
        for task in self.task or (None,):
            root = base if task is None else _with_task(base, task, "sweep.task")
            prefix = "" if task is None else f"{task}_"
            for wd, lr, seed, s in itertools.product(*axes, strengths or (None,)):
                cfg = root.replace(weight_decay=float(wd), lr=float(lr), seed=int(seed))
                name = f"{prefix}wd{wd:g}_lr{lr:g}_seed{seed}"
                if s is not None:
                    cfg = cfg.replace(intervention=dataclasses.replace(base.intervention, strength=float(s)))
                    name += f"_s{s:g}"
                out.append((name, cfg))
        for i, fields in enumerate(self.extra):
            out.append(extra_run(base, fields, f"sweep.extra[{i}]"))
        names = [n for n, _ in out]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"sweep: runs {dup} appear twice (grid and extra); remove the duplicate extra entry")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def _with_task(base: GrokConfig, task: str, where: str) -> GrokConfig:
    return GrokConfig.from_dict({**base.to_dict(), "tasks": [task]}, where)


def extra_run(base: GrokConfig, fields: dict, where: str) -> tuple[str, GrokConfig]:
    """(name, config) of one `extra` sweep run: the base with `fields` (GrokConfig fields; `task` for the
    task), named <task>_wd<wd>_lr<lr>_seed<seed>."""
    if not isinstance(fields, dict) or not fields:
        raise ConfigError(f"{where}: give a mapping of grok fields, e.g. {{task: add, weight_decay: 0.0}}")
    cfg = GrokConfig.from_dict({**base.to_dict(), **{k: v for k, v in fields.items() if k != "task"},
                                **({"tasks": [fields["task"]]} if "task" in fields else {})}, where)
    return f"{cfg.task_name}_wd{cfg.weight_decay:g}_lr{cfg.lr:g}_seed{cfg.seed}", cfg
