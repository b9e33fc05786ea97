"""The Dyck/SCAN study's published recipes: datasets, settings against the documented table, the pieces the
presets add (token accuracy, PyTorch init, draws with replacement, early stop, direct defect, onset rule),
and a short run of each preset (memorises, resumes bit-identically, its report has the findings rows)."""

from __future__ import annotations

import collections
import hashlib
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from headscreen.config import ConfigError
from headscreen.grokking.analysis.detect import PUBLISHED_ONSET, onset_ratio
from headscreen.grokking.config import GrokConfig
from headscreen.grokking.models.sequence import DyckTransformer, ScanTransformer, _pytorch_bounds
from headscreen.grokking.models.transformer import ModelSpec
from headscreen.grokking.tasks.base import _sequence_metrics, make_task
from headscreen.grokking.tasks.dyck import IGNORE, PAD, DyckSpec, make_dyck, sample_published
from headscreen.grokking.tasks.scan import N_COMMANDS, ScanSpec, all_commands, make_scan
from headscreen.grokking.training.defect import _grads, _norm, commutator_defect
from headscreen.grokking.training.snapshots import Trajectory
from headscreen.grokking.training.train import train_run

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"dyck": "grok-dyck-published.yaml", "scan": "grok-scan-published.yaml"}
# the study's own strings: sha256 of the 5050 x 24 input ids (train then test) and the first strings, as its
# build_depth_dataset + split_dataset give them at data seed 0 (run outside the project: docs/methods.md)
STUDY_DIGEST = "8f09b26d3f54fa7e2d9c0817113d5864fc36fdf719726479e43122ea5ee48637"
STUDY_FIRST = ["(())", "()()(((())))", "(())"]
STUDY_FIRST_TEST = "()()(((((()(()()))))))"


def _text(row: torch.Tensor) -> str:
    return "".join("()"[t] for t in row.tolist() if t != PAD)


def test_published_dyck_dataset_is_the_studys_own():
    d = make_dyck(DyckSpec(generator="published", p_open=0.55, data_seed=0), seed=123)  # the model seed is ignored
    assert hashlib.sha256(d.inputs.numpy().tobytes()).hexdigest() == STUDY_DIGEST
    assert [_text(d.inputs[i]) for i in range(3)] == STUDY_FIRST and _text(d.inputs[50]) == STUDY_FIRST_TEST
    assert len(d.train_idx) == 50 and len(d.test_idx) == 5000 and d.spec.n_classes == 13 and d.spec.vocab == 3
    pad = d.inputs == PAD
    assert torch.equal(d.labels == IGNORE, pad)
    depth = torch.cumsum(torch.where(pad, 0, 1 - 2 * d.inputs), 1)
    assert torch.equal(d.labels[~pad], depth[~pad]) and (d.labels[~pad] >= 0).all()
    lengths = (~pad).sum(1)
    assert (lengths % 2 == 0).all() and lengths.min() >= 2 and lengths.max() <= 24
    assert (depth.gather(1, (lengths - 1)[:, None]) == 0).all()  # balanced


def test_published_dyck_generator_small_case_frequencies():
    import random

    rng = random.Random(5)
    n = 20000
    counts = collections.Counter("".join("()"[t] for t in sample_published(rng, 2, 0.55)) for _ in range(n))
    # m = 1: '()' (1/2); m = 2: '(())' opens again w.p. 0.55, else '()()' (1/2 x 0.45)
    assert set(counts) == {"()", "(())", "()()"}
    for s, p in (("()", 0.5), ("(())", 0.5 * 0.55), ("()()", 0.5 * 0.45)):
        assert abs(counts[s] / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    with pytest.raises(ConfigError, match="generator"):
        DyckSpec(generator="uniform")


def test_published_dyck_options_leave_the_default_generator_unchanged():
    a = make_dyck(DyckSpec(n_train=10, n_test=20), 3)
    b = make_dyck(DyckSpec(n_train=10, n_test=20, p_open=0.5, data_seed=3), 99)
    assert torch.equal(a.inputs, b.inputs) and a.spec.vocab == 2


def test_scan_published_split_sizes():
    assert len(set(all_commands())) == N_COMMANDS == 16728 + 4182
    d = make_scan(ScanSpec(split="simple", n_train=2048, n_test=0, pool_train=16728, data_seed=0), seed=7)
    train = {d.commands[i] for i in d.train_idx.tolist()}
    test = {d.commands[i] for i in d.test_idx.tolist()}
    assert len(train) == 2048 and len(test) == 4182 and not train & test
    again = make_scan(ScanSpec(split="simple", n_train=2048, n_test=500, pool_train=16728, data_seed=0), seed=8)
    assert {again.commands[i] for i in again.train_idx.tolist()} == train  # data seed, not the model seed
    assert {again.commands[i] for i in again.test_idx.tolist()} < test and len(again.test_idx) == 500
    with pytest.raises(ConfigError, match="pool_train"):
        ScanSpec(split="addjump", pool_train=16728)
    with pytest.raises(ConfigError, match="pool_train"):
        ScanSpec(n_train=2048, pool_train=100)


class _Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_token_accuracy_counts_positions_and_skips_padding():
    y = torch.tensor([[1, 2, IGNORE], [0, 0, 0]])
    pred = torch.tensor([[1, 0, 5], [0, 0, 0]])  # row 0: one of two right; row 1: all right
    logits = torch.nn.functional.one_hot(pred, 6).float() * 10
    _, tok = _sequence_metrics(_Fixed(logits), (torch.zeros(2, 3, dtype=torch.long), y), IGNORE, token=True)
    _, seq = _sequence_metrics(_Fixed(logits), (torch.zeros(2, 3, dtype=torch.long), y), IGNORE)
    assert tok == pytest.approx(4 / 5) and seq == pytest.approx(1 / 2)


def test_pytorch_inits_follow_the_module_defaults():
    spec = ModelSpec(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128, init="pytorch-layer")
    torch.manual_seed(0)
    m = DyckTransformer(spec, 24, 3, 13)
    b = _pytorch_bounds(spec)
    assert b["W_Q"] == pytest.approx(math.sqrt(6 / (64 + 3 * 64))) and b["W_O"] == pytest.approx(1 / 8)
    for name, p in m.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in b:
            assert p.abs().max() <= b[leaf] and p.abs().max() > 0.9 * b[leaf]
    assert m.embed.W_E.std().item() == pytest.approx(1.0, abs=0.15)
    s0, s1 = dict(m.blocks[0].named_parameters()), dict(m.blocks[1].named_parameters())
    assert all(torch.equal(s0[k], s1[k]) for k in s0)  # nn.TransformerEncoder's deep copies
    spec_t = ModelSpec(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128, init="pytorch-transformer")
    s = ScanTransformer(spec_t, 16, 9, 9, 49)
    enc0, enc1, dec0, dec1 = (s.blocks[i] for i in range(4))
    assert torch.equal(enc0.mlp.b_in, enc1.mlp.b_in) and torch.equal(dec0.mlp.b_out, dec1.mlp.b_out)
    assert not torch.equal(enc0.attn.W_Q, enc1.attn.W_Q) and not torch.equal(enc0.mlp.b_in, dec0.mlp.b_in)
    assert s.blocks[2].mlp.W_in.abs().max() <= math.sqrt(6 / (64 + 128))
    with pytest.raises(ConfigError, match="init"):
        ModelSpec(init="kaiming")


def _tiny_problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()

    def loss_fn(m, batch):
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])

    pairs = [((torch.randn(6, 4, dtype=torch.float64), torch.randint(3, (6,))),
              (torch.randn(6, 4, dtype=torch.float64), torch.randint(3, (6,)))) for _ in range(3)]
    return model, loss_fn, pairs


def test_direct_defect_equals_the_exact_form_in_float64_and_its_adaptive_eta():
    model, loss_fn, pairs = _tiny_problem()
    before = [p.detach().clone() for p in model.parameters()]
    exact = commutator_defect(model, loss_fn, pairs, eta=1e-3)
    direct = commutator_defect(model, loss_fn, pairs, eta=1e-3, form="float32_direct", min_step=1e-9)
    assert torch.allclose(direct, exact, rtol=1e-4)  # no rounding to speak of in float64; 1e-9 never binds
    # a step floor that binds: each pair's eta becomes floor / min(|g_A|, |g_B|), as if given directly
    params = list(model.parameters())
    floor = 0.5
    adaptive = commutator_defect(model, loss_fn, pairs, eta=1e-3, form="float32_direct", min_step=floor)
    for k, (a, b) in enumerate(pairs):
        smaller = float(min(_norm(_grads(loss_fn, model, a, params)), _norm(_grads(loss_fn, model, b, params))))
        eta_k = min(floor / smaller, 1.0)
        assert eta_k > 1e-3
        one = commutator_defect(model, loss_fn, [(a, b)], eta=eta_k, form="float32_direct")
        assert adaptive[k].item() == pytest.approx(one.item(), rel=1e-9)
    assert not torch.allclose(adaptive, direct)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    with pytest.raises(ValueError, match="min_step"):
        commutator_defect(model, loss_fn, pairs, min_step=0.0)
    with pytest.raises(ConfigError, match="defect_min_step"):
        GrokConfig(defect_min_step=-1.0)


def test_published_onset_rule_floors_the_baseline_and_starts_at_the_third_measurement():
    steps = [0, 100, 200, 300]
    assert onset_ratio(steps, [0.01, 0.02, 25.0, 30.0], **PUBLISHED_ONSET) == 200  # third measurement counts
    assert onset_ratio(steps, [0.01, 0.02, 25.0, 30.0]) == 300  # our default starts after the baseline
    assert onset_ratio(steps, [3.0, 3.0, 3.0, 25.0], **PUBLISHED_ONSET) is None  # 10 x median 3 = 30 > 25
    # a zero baseline is floored at 0.1 (bar max(10 x 0.1, 20) = 20); a baseline of 2.5 raises the bar to 25
    assert onset_ratio(steps, [0.0, 0.0, 0.0, 21.0], **PUBLISHED_ONSET) == 300
    assert onset_ratio(steps, [2.5, 2.5, 2.5, 24.0], **PUBLISHED_ONSET) is None


def _doc_tables() -> dict[str, dict[str, str]]:
    text = (ROOT / "docs" / "methods.md").read_text()
    start = text.index("## Grokking II: the published recipes")
    section = text[start:text.index("\n## ", start + 5)]
    out, current = {}, None
    for line in section.splitlines():
        if line.startswith("**Dyck-1 (grok-dyck-published.yaml)"):
            current = "dyck"
        elif line.startswith("**SCAN (grok-scan-published.yaml)"):
            current = "scan"
        m = re.match(r"\| `([\w.]+)` \| ([^|]+) \|", line)
        if m and current:
            out.setdefault(current, {})[m.group(1)] = m.group(2).strip()
    return out


def _flatten(d: dict, prefix: str) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in ("task_options", "model"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("task", ["dyck", "scan"])
def test_preset_settings_equal_the_documented_table(task):
    doc = _doc_tables()[task]
    data = yaml.safe_load((ROOT / "model_configs" / PRESETS[task]).read_text())
    settings = {**_flatten(data["grok"], "grok."), **{f"sweep.{k}": v for k, v in data["sweep"].items()}}
    settings.pop("grok.model.preset")
    settings.pop("sweep.workers")
    assert set(settings) == set(doc), f"keys in only one of YAML/docs: {set(settings) ^ set(doc)}"
    for key, value in settings.items():
        assert yaml.safe_load(doc[key]) == value, f"{key}: YAML {value!r} but the docs table says {doc[key]!r}"
    GrokConfig.from_dict(data["grok"])  # and the preset is a valid config


def _short(task: str, **over) -> GrokConfig:
    data = yaml.safe_load((ROOT / "model_configs" / PRESETS[task]).read_text())["grok"]
    data.update(over)
    return GrokConfig.from_dict(data)


SHORT = {
    "dyck": {"task_options": {"n_ctx": 24, "max_depth": 12, "n_train": 50, "n_test": 100, "generator": "published",
                              "p_open": 0.55, "data_seed": 0, "accuracy": "token"},
             "model": {"preset": "curv", "n_layers": 1, "d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64,
                       "init": "pytorch-layer"},
             "steps": 60, "eval_every": 20, "snapshot_every": 20, "defect_every": 20, "lr": 0.003},
    "scan": {"task_options": {"split": "simple", "n_train": 32, "n_test": 16, "pool_train": 16728, "data_seed": 0},
             "model": {"preset": "curv", "n_layers": 1, "d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64,
                       "init": "pytorch-transformer"},
             "batch_size": 16, "defect_batch_size": 8, "defect_pairs": 2, "lr": 0.003,
             "steps": 60, "eval_every": 20, "snapshot_every": 20, "defect_every": 20},
}


@pytest.mark.slow  # a training run with defect, resume and a report with its analysis: minutes under load
@pytest.mark.parametrize("task", ["dyck", "scan"])
def test_short_preset_run_memorises_resumes_and_reports_findings(task, tmp_path):
    from pipelines.report import report as render_report

    cfg = _short(task, **SHORT[task])
    whole = train_run(cfg, tmp_path / "whole", progress=False)
    parts = train_run(cfg, tmp_path / "parts", progress=False, stop_at=30)
    train_run(cfg, parts, progress=False)
    a, b = Trajectory(whole), Trajectory(parts)
    assert a.steps == b.steps == [0, 20, 40, 60]
    for step in a.steps:
        sa, sb = a.load(step), b.load(step)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    for table in ("curves", "defect"):
        pd.testing.assert_frame_equal(pd.read_parquet(whole / f"{table}.parquet"), pd.read_parquet(parts / f"{table}.parquet"))
    c = pd.read_parquet(whole / "curves.parquet")
    assert c["train_loss"].iloc[-1] < 0.5 * c["train_loss"].iloc[0]  # it learns the training set...
    task_obj = make_task(cfg)
    assert task_obj.token_accuracy == (task == "dyck")
    if task == "dyck":
        assert c["train_acc"].iloc[-1] > max(0.5, 10 * c["train_acc"].iloc[0])  # ...token by token
    paths = render_report([whole], out=tmp_path / "rep")
    md = paths["md"].read_text()
    assert "Findings check" in md and "defect onset precedes grokking" in md and "g₂₃ compresses" in md
    assert "gradient share" in md and "ablating the top two edge directions" in md
