"""The task interface of the grokking trainer: what one task gives `train_run`.

A `Task` holds its dataset and knows how to build its model, its loss on a batch, and its evaluation
rows (one per task head: train/test loss and accuracy). The trainer, the snapshot writer, the defect
and the interventions only see this interface, so every task shares them.

Registered tasks (`TASKS`): the modular-arithmetic tasks (`add`, `sub`, `mul`, `sq`, and several at once
as multi-task), `dyck` (Dyck-1 depth) and `scan` (SCAN command -> actions). A sequence task reads its
data settings from GrokConfig.task_options (validated by its spec class: DyckSpec, ScanSpec).
Another task plugs in by adding its builder to `TASKS` (and its spec class to `_spec_classes`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headscreen.config.core import ConfigError, from_mapping

Batch = tuple[Tensor, Tensor]  # (inputs, labels); shapes depend on the task


class Task(Protocol):
    name: str

    def train(self) -> Batch: ...
    def build_model(self, seed: int) -> nn.Module: ...
    def loss_fn(self, model: nn.Module, batch: Batch) -> Tensor: ...
    def evaluate(self, model: nn.Module) -> list[dict]: ...


def _seeded(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


# --- modular arithmetic -------------------------------------------------------------------------
def modular_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Cross-entropy at the '=' position, summed over tasks (mean over the batch)."""
    x, y = batch
    logits = model(x)  # [B, tasks, p]
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / x.shape[0]


@torch.no_grad()
def modular_evaluate(model: nn.Module, data) -> list[dict]:
    """Loss and accuracy on the train and test split, one row per task."""
    logits = model(data.inputs)  # [N, tasks, p]
    losses = F.cross_entropy(logits.flatten(0, 1), data.labels.flatten(), reduction="none").view(data.labels.shape)
    correct = (logits.argmax(-1) == data.labels).float()
    rows = []
    for t, task in enumerate(data.tasks):
        rows.append({"task": task,
                     "train_loss": losses[data.train_idx, t].mean().item(),
                     "test_loss": losses[data.test_idx, t].mean().item(),
                     "train_acc": correct[data.train_idx, t].mean().item(),
                     "test_acc": correct[data.test_idx, t].mean().item()})
    return rows


class ModularTask:
    def __init__(self, cfg):
        from headscreen.grokking.tasks.modular import make_dataset

        self.cfg, self.name = cfg, cfg.task_name
        self.data = make_dataset(cfg.tasks, cfg.p, cfg.train_frac, cfg.seed, cfg.split)

    def train(self) -> Batch:
        return self.data.train()

    def build_model(self, seed: int) -> nn.Module:
        from headscreen.grokking.models.transformer import build_model

        return build_model(self.cfg.model, self.cfg.p, self.cfg.tasks, seed)

    loss_fn = staticmethod(modular_loss)

    def evaluate(self, model: nn.Module) -> list[dict]:
        return modular_evaluate(model, self.data)


# --- sequence tasks (Dyck-1, SCAN) --------------------------------------------------------------
def sequence_loss(model: nn.Module, batch: Batch, ignore_index: int = -100) -> Tensor:
    """Mean token cross-entropy of a model that predicts a label at every position."""
    x, y = batch
    logits = model(x, y) if getattr(model, "teacher_forced", False) else model(x)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=ignore_index)


@torch.no_grad()
def _sequence_metrics(model: nn.Module, batch: Batch, ignore: int | None, chunk: int = 1024,
                      token: bool = False) -> tuple[float, float]:
    """(mean token loss over non-ignored tokens, accuracy): exact match, the share of sequences whose every
    non-ignored position is predicted right; with `token`, the share of non-ignored positions right."""
    x, y = batch
    loss_sum, n_tok, correct, tok_right = 0.0, 0, 0.0, 0
    for i in range(0, len(x), chunk):
        xb, yb = x[i:i + chunk], y[i:i + chunk]
        logits = model(xb, yb) if getattr(model, "teacher_forced", False) else model(xb)
        keep = yb != ignore if ignore is not None else torch.ones_like(yb, dtype=torch.bool)
        loss_sum += F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")[keep.flatten()].sum().item()
        n_tok += int(keep.sum())
        hit = (logits.argmax(-1) == yb) | ~keep
        correct += hit.all(-1).float().sum().item()
        tok_right += int((hit & keep).sum())
    return loss_sum / max(n_tok, 1), (tok_right / max(n_tok, 1) if token else correct / len(x))


class SequenceTask:
    """Shared by Dyck and SCAN (SCAN ignores the padding after EOS). Accuracy = exact match per sequence;
    for SCAN, teacher-forced exact match equals greedy-decoding exact match (every position right under
    teacher forcing means greedy decoding reproduces the target, and the first wrong position derails it)."""

    ignore: int | None = None

    def __init__(self, cfg, data, model_factory: Callable[[], nn.Module], token_accuracy: bool = False):
        self.cfg, self.name, self.data, self._factory = cfg, cfg.task_name, data, model_factory
        self.token_accuracy = token_accuracy

    def train(self) -> Batch:
        return self.data.train()

    def build_model(self, seed: int) -> nn.Module:
        return _seeded(seed, self._factory)

    def loss_fn(self, model: nn.Module, batch: Batch) -> Tensor:
        return sequence_loss(model, batch, -100 if self.ignore is None else self.ignore)

    def masked_token_accuracy(self, model: nn.Module, batch: Batch) -> float:
        """The share of non-ignored label positions predicted right on `batch` (the studies' masked_accuracy),
        whatever accuracy the task reports in its curves."""
        return _sequence_metrics(model, batch, self.ignore, token=True)[1]

    def evaluate(self, model: nn.Module) -> list[dict]:
        tr_loss, tr_acc = _sequence_metrics(model, self.data.train(), self.ignore, token=self.token_accuracy)
        te_loss, te_acc = _sequence_metrics(model, self.data.test(), self.ignore, token=self.token_accuracy)
        return [{"task": self.name, "train_loss": tr_loss, "test_loss": te_loss, "train_acc": tr_acc,
                 "test_acc": te_acc}]


def _dyck(cfg) -> Task:
    from headscreen.grokking.models.sequence import DyckTransformer
    from headscreen.grokking.tasks.dyck import IGNORE, DyckSpec, make_dyck

    spec: DyckSpec = task_spec(cfg)
    task = SequenceTask(cfg, make_dyck(spec, cfg.seed),
                        lambda: DyckTransformer(cfg.model, spec.n_ctx, spec.vocab, spec.n_classes),
                        token_accuracy=spec.accuracy == "token")
    task.ignore = IGNORE  # PAD positions of the published generator (the distinct generator has none)
    return task


def trim_padding(batch: Batch, pad: int = 0) -> Batch:
    """Drop the target columns that are padding in every row (teacher forcing is causal in the target,
    so the kept columns' logits do not change)."""
    x, y = batch
    used = (y != pad).any(0).nonzero()
    return x, y[:, : int(used.max()) + 1 if len(used) else 1]


class _ScanTask(SequenceTask):
    ignore = 0  # PAD: the loss and the exact match skip padding after EOS

    def loss_fn(self, model: nn.Module, batch: Batch) -> Tensor:
        return sequence_loss(model, trim_padding(batch), self.ignore)

    def evaluate(self, model: nn.Module) -> list[dict]:
        tr_loss, tr_acc = _sequence_metrics(model, trim_padding(self.data.train()), self.ignore)
        te_loss, te_acc = _sequence_metrics(model, trim_padding(self.data.test()), self.ignore)
        return [{"task": self.name, "train_loss": tr_loss, "test_loss": te_loss, "train_acc": tr_acc,
                 "test_acc": te_acc}]


def _scan(cfg) -> Task:
    from headscreen.grokking.models.sequence import ScanTransformer
    from headscreen.grokking.tasks.scan import MAX_SRC, MAX_TGT, SRC_VOCAB, TGT_VOCAB, make_scan

    spec = task_spec(cfg)

    def factory() -> nn.Module:
        m = ScanTransformer(cfg.model, len(SRC_VOCAB), len(TGT_VOCAB), MAX_SRC, MAX_TGT)
        m.teacher_forced = True
        return m

    return _ScanTask(cfg, make_scan(spec, cfg.seed), factory)


def _spec_classes() -> dict[str, type]:
    """The dataclass that validates GrokConfig.task_options, per task that takes options."""
    from headscreen.grokking.tasks.dyck import DyckSpec
    from headscreen.grokking.tasks.scan import ScanSpec

    return {"dyck": DyckSpec, "scan": ScanSpec}


TASKS: dict[str, Callable[[Any], Task]] = {"dyck": _dyck, "scan": _scan}  # name -> builder(GrokConfig)


def task_spec(cfg):
    """GrokConfig.task_options validated as the task's spec dataclass."""
    cls = _spec_classes().get(cfg.tasks[0])
    if cls is None:
        if cfg.task_options:
            raise ConfigError(f"task_options {cfg.task_options!r}: task {cfg.tasks[0]!r} takes none; remove them")
        return None
    return from_mapping(cls, cfg.task_options, f"grok.task_options ({cfg.tasks[0]})")


def is_registered(name: str) -> bool:
    return name in TASKS


def make_task(cfg) -> Task:
    """The Task of a GrokConfig: a registered task by name, else modular arithmetic."""
    build = TASKS.get(cfg.tasks[0])
    return build(cfg) if build is not None else ModularTask(cfg)
