"""Duplicate checkpoints (a zero update is not a training step): detected, recorded, kept out of the windows."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from headscreen.probes.suite import ProbeSuite
from headscreen.spectral import SpectralConfig
from headscreen.spectral.duplicates import drop_duplicates, find_duplicates
from headscreen.testing import save_tiny_series
from pipelines.screen import ScreenSettings, screen

torch.set_num_threads(1)

STEPS = [0, 1, 2, 3, 4, 5, 6, 7]
SETTINGS = ScreenSettings(spectral=SpectralConfig(window=3),
                          probes=ProbeSuite(seq_len=32, token_range=(4, 500), n_retrieval=8, pair_range=(4, 12),
                                            n_repeated=4, repeated_span=8, micro_batch=8),
                          probe_every=100)


@pytest.fixture(scope="module")
def series_root(tmp_path_factory):
    return save_tiny_series(tmp_path_factory.mktemp("dup") / "neox", "gpt_neox", STEPS, n_ctx=64)


def _variant(src, dst, *, copy_onto: int | None = None, drop: int | None = None, nudge: bool = False):
    """A copy of the series; `copy_onto` s: step s's folder holds step s-1's files (a planted duplicate),
    with `nudge` one attention weight changed by one bf16-sized step; `drop` s: step s removed."""
    shutil.copytree(src, dst)
    if copy_onto is not None:
        shutil.rmtree(dst / f"step{copy_onto}")
        shutil.copytree(dst / f"step{copy_onto - 1}", dst / f"step{copy_onto}")
        if nudge:
            f = dst / f"step{copy_onto}" / "model.safetensors"
            sd = load_file(f)
            key = "gpt_neox.layers.1.attention.query_key_value.weight"
            sd[key][3, 5] += 1e-3
            save_file(sd, f, metadata={"format": "pt"})
    if drop is not None:
        shutil.rmtree(dst / f"step{drop}")
    return dst


def _fp(run):
    fp = pd.read_parquet(run / "fingerprints.parquet")
    return fp.sort_values(["step", "layer", "head", "metric"]).reset_index(drop=True)


def test_planted_duplicate_is_recorded_and_kept_out_of_the_windows(series_root, tmp_path):
    dup = _variant(series_root, tmp_path / "dup", copy_onto=4)
    ref = _variant(series_root, tmp_path / "ref", copy_onto=4, drop=4)  # the same series never saving the copy
    screen(dup, tmp_path / "run_dup", settings=SETTINGS, progress=False)
    screen(ref, tmp_path / "run_ref", settings=SETTINGS, progress=False)
    m = json.loads((tmp_path / "run_dup" / "manifest.json").read_text())
    assert m["duplicates"] == [{"step": 4, "name": "step4", "same_as_step": 3, "same_as_name": "step3",
                                "fingerprint_equal": True}]
    assert json.loads((tmp_path / "run_ref" / "manifest.json").read_text())["duplicates"] == []
    a, b = _fp(tmp_path / "run_dup"), _fp(tmp_path / "run_ref")
    assert 4 not in set(a["step"])  # no window ends on the duplicate
    pd.testing.assert_frame_equal(a, b)  # windows as if the copy had never been saved (bit-identical)
    # the report says so
    from headscreen.report.load import load_run
    from headscreen.report.provenance_section import provenance_section

    sec = provenance_section(load_run(tmp_path / "run_dup"))
    assert any("step 4 = step 3" in n for n in sec.notices)


def test_near_duplicate_is_a_training_step(series_root, tmp_path):
    near = _variant(series_root, tmp_path / "near", copy_onto=4, nudge=True)
    screen(near, tmp_path / "run", settings=SETTINGS, progress=False)
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["duplicates"] == []
    assert 4 in set(_fp(tmp_path / "run")["step"])


def test_runs_of_duplicates_name_their_origin():
    steps = [0, 10, 20, 30, 40]
    norms = torch.ones(5, 2, 3)
    norms[0] = float("nan")
    norms[2] = 0.0
    norms[3] = 0.0
    norms[4, 1, 2] = 0.0  # one frozen head is not a duplicate
    found = find_duplicates(steps, norms)
    assert [(d["step"], d["same_as_step"]) for d in found] == [(20, 10), (30, 10)]
    s, kept, n = drop_duplicates(torch.arange(5.0).reshape(5, 1, 1, 1).expand(5, 2, 3, 4), steps, norms, found)
    assert kept == [0, 10, 40] and s[:, 0, 0, 0].tolist() == [0.0, 1.0, 4.0] and n.shape == (3, 2, 3)
