"""Stored attention patterns (attention.safetensors): which heads and checkpoints, and that the stored
patterns equal the patterns recomputed from the checkpoint by transformers itself (eager attention)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from headscreen.probes.attention import which_heads
from headscreen.probes.suite import ProbeSuite
from headscreen.rundir.attention_file import FILE, pattern_key, read_attention
from headscreen.rundir.store import RunStore
from headscreen.series import LocalSeries
from headscreen.spectral import SpectralConfig
from headscreen.testing import save_tiny_series
from pipelines.attention import probes_of_manifest, record_attention
from pipelines.screen import ScreenSettings, screen

torch.set_num_threads(1)

STEPS = [0, 10, 20]
PROBES = ProbeSuite(seq_len=40, token_range=(4, 500), n_retrieval=8, pair_range=(4, 20), n_repeated=4,
                    repeated_span=12, micro_batch=8)
#: float16 storage of values in [0, 1]: half a unit in the last place at 1 is 2**-12; the float32 forward
#: passes of the bridge and of transformers' eager attention agree to ~1e-6
TOL = 2.5e-4


def circuits_doc(last: int, emerged: int) -> dict:
    steps = {str(s): {"retrieval": {"induction": [], "previous": [], "bos": []}} for s in STEPS}
    steps[str(last)]["retrieval"] = {"induction": [[1, 2]], "previous": [[0, 1]], "bos": [[1, 0]]}
    return {"steps": steps, "emergence": [
        {"probe": "retrieval", "layer": 1, "head": 2, "class": "induction", "emergence_step": emerged},
        {"probe": "retrieval", "layer": 0, "head": 1, "class": "previous", "emergence_step": last},
        {"probe": "retrieval", "layer": 1, "head": 0, "class": "bos", "emergence_step": float("nan")},
        {"probe": "retrieval", "layer": 0, "head": 3, "class": "induction", "emergence_step": emerged},  # not chosen
    ]}


def test_which_heads_takes_the_last_circuits_and_their_emergence_steps():
    plan = which_heads(circuits_doc(20, 10))
    assert list(plan) == [10, 20]
    assert set(plan[20]) == {(1, 2), (0, 1), (1, 0)}
    assert set(plan[10]) == {(1, 2)}  # L0H3 is in no circuit at the last step; L1H0 has no emergence step
    assert plan[10][(1, 2)] == ["induction (retrieval) emerged"]
    assert which_heads({"steps": {}}) == {}


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    root = tmp_path_factory.mktemp("attn")
    series_dir = save_tiny_series(root / "llama", "llama", STEPS, drift=0.05, n_ctx=64)
    out = root / "run"
    settings = ScreenSettings(spectral=SpectralConfig(window=3), probes=PROBES)
    screen(series_dir, out, settings=settings, progress=False)
    return series_dir, out, settings


def test_the_screen_writes_the_file_and_stored_patterns_equal_eager_attention(screened):
    from transformers import AutoModelForCausalLM

    series_dir, out, settings = screened
    index, _ = read_attention(out / FILE)  # the screen's own call wrote it (heads of a random model, maybe none)
    assert index.tables_id == json.loads((out / "manifest.json").read_text())["tables"]["id"]
    # plant a circuit so that heads at two checkpoints are stored, then redo the screen's last step
    (out / "circuits.json").write_text(json.dumps(circuits_doc(20, 10)))
    with RunStore.locked(out, "test") as store:  # the probes as the screen fitted them to the model
        record_attention(store, LocalSeries(series_dir), probes_of_manifest(store.manifest()), rows=2, progress=False)
    index, tensors = read_attention(out / FILE)
    assert index.rows == 2 and set(index.probes) == {"retrieval", "repeated"}
    stored = {(e["probe"], e["step"], e["layer"], e["head"]) for e in index.entries}
    assert stored == {(p, s, layer, h) for p in ("retrieval", "repeated")
                      for s, heads in ((20, [(1, 2), (0, 1), (1, 0)]), (10, [(1, 2)])) for layer, h in heads}
    worst = 0.0
    for step in (10, 20):
        model = AutoModelForCausalLM.from_pretrained(series_dir / f"step{step}", attn_implementation="eager").eval()
        for probe in index.probes:
            toks = tensors[f"tokens.{probe}"]
            assert toks.shape == (2, index.probes[probe]["seq_len"])
            with torch.no_grad():
                att = model(toks, output_attentions=True).attentions  # per layer [row, head, q, k]
            for e in (e for e in index.entries if e["probe"] == probe and e["step"] == step):
                got = tensors[pattern_key(probe, step, (e["layer"], e["head"]))]
                assert got.dtype == torch.float16 and got.shape == (2, toks.shape[1], toks.shape[1])
                want = att[e["layer"]][:, e["head"]]
                worst = max(worst, (got.float() - want).abs().max().item())
                assert torch.allclose(got.float().sum(-1), torch.ones(2, toks.shape[1]), atol=0.02)
    print(f"stored float16 vs eager float32: max |diff| = {worst:.3g}")
    assert 0 < worst <= TOL, worst
    # a decoded token text for every stored token
    text = index.probes["retrieval"]["text"]
    assert len(text) == 2 and all(len(r) == PROBES.seq_len and all(isinstance(t, str) for t in r) for r in text)
    assert math.isfinite(worst)


def test_a_run_without_circuits_json_gets_no_file(screened, tmp_path):
    series_dir, out, settings = screened
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "circuits.json").unlink()
    with RunStore.locked(copy, "test") as store:
        assert record_attention(store, LocalSeries(series_dir), settings.probes, progress=False) is None
    assert not (copy / FILE).exists()


def test_the_attention_command_adds_the_file_to_an_older_run(screened, tmp_path):
    """A run screened before attention.safetensors existed gets it from `headscreen attention RUN`, from
    its manifest alone, with the same patterns; its tables are untouched."""
    import shutil

    from pipelines.attention import attention
    from pipelines.cli import main

    series_dir, out, settings = screened
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    (copy / FILE).unlink()
    tables = {p.name: p.read_bytes() for p in copy.glob("*.parquet")}
    assert attention(copy, device="cpu", rows=2, progress=False) == copy / FILE
    a_index, a = read_attention(out / FILE)
    b_index, b = read_attention(copy / FILE)
    assert a_index.entries == b_index.entries and set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert tables == {p.name: p.read_bytes() for p in copy.glob("*.parquet")}
    assert main(["attention", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
