"""The screen pipeline: one pass, resume, outputs; planted per-head updates through the real loaders."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch

from headscreen.probes.suite import ProbeSuite
from headscreen.series import LocalSeries
from headscreen.spectral import HeadSketcher, SpectralConfig, rank_heads
from headscreen.testing import build_tiny_model, save_tiny_series, save_word_tokenizer
from pipelines.screen import ScreenSettings, screen

torch.set_num_threads(1)

SMALL_PROBES = ProbeSuite(seq_len=48, token_range=(4, 500), n_retrieval=16, pair_range=(4, 20), n_repeated=8,
                          repeated_span=16, micro_batch=16)


def _settings(window=4):
    return ScreenSettings(spectral=SpectralConfig(window=window), probes=SMALL_PROBES)


@pytest.fixture(scope="module")
def tiny_series(tmp_path_factory):
    root = tmp_path_factory.mktemp("s")
    return save_tiny_series(root / "neox", "gpt_neox", [0, 1, 2, 4, 8, 16, 32, 48], n_ctx=64)


def test_screen_writes_every_table_and_resumes(tiny_series, tmp_path):
    out = tmp_path / "run"
    screen(tiny_series, out, settings=_settings(), progress=False)
    for t in ("fingerprints", "selectivity", "classes", "copying", "participation", "head_scores", "onsets"):
        assert (out / f"{t}.parquet").exists(), t
    fp = pd.read_parquet(out / "fingerprints.parquet")
    assert list(fp.columns) == ["step", "layer", "head", "metric", "value"]
    # windows end at each checkpoint from the (W+1)-th on: 8 checkpoints, W = 4 -> 4 windows
    assert sorted(fp["step"].unique()) == [8, 16, 32, 48]
    assert {"ratio_12", "ratio_23", "kstar", "kstar_weighted", "gap_norm", "update_norm"} <= set(fp["metric"])
    sel = pd.read_parquet(out / "selectivity.parquet")
    assert set(sel["step"]) == {0, 1, 2, 4, 8, 16, 32, 48}
    assert set(sel["class"]) >= {"induction", "duplicate", "previous", "self", "first", "local"}
    assert len(sel[(sel.step == 48) & (sel.probe == "retrieval")]) == 2 * 4 * 6  # layers x heads x classes
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["loading_mode"] == "raw" and manifest["series"]["n_checkpoints"] == 8
    assert manifest["device"]["device"] == "cpu" and manifest["device"]["compute_dtype"] == "float32"
    assert manifest["seeds"]["probes"] == 42 and "packages" in manifest
    assert manifest["sketch"]["projector"]["kind"] == "countsketch" and "s_t = s_(t-1)" in manifest["sketch"]["record"]  # the default kind
    assert manifest["config"]["spectral"]["gram_estimator"] == "norm_corrected"
    preid = json.loads((out / "preid.json").read_text())  # a random tiny model: most likely no circuit
    assert preid["circuit_source"] == "selectivity" and preid["status"] in ("done", "no circuit")
    assert (out / "preid.parquet").exists()

    # rerun: nothing recomputed (records untouched), tables identical
    rec = out / "records" / "sketch" / "step_000000048.safetensors"
    mtime = rec.stat().st_mtime_ns
    screen(tiny_series, out, settings=_settings(), progress=False)
    assert rec.stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(pd.read_parquet(out / "fingerprints.parquet"), fp)

    # an interrupted screen (last two records lost) resumes and reproduces the records bit for bit
    # (a sketch record holds its update's increment Φδ_t; θ_{t-1} is re-read)
    before = {s: store_tensors(out, s) for s in (32, 48)}
    for step in (32, 48):
        for kind, ext in (("sketch", "safetensors"), ("probes", "parquet")):
            (out / "records" / kind / f"step_{step:09d}.{ext}").unlink()
    screen(tiny_series, out, settings=_settings(), progress=False)
    for s, tensors in before.items():
        after = store_tensors(out, s)
        assert set(after) == set(tensors) == {"increment", "update_norm"}
        assert all(torch.equal(tensors[k], after[k]) for k in tensors), s
    pd.testing.assert_frame_equal(pd.read_parquet(out / "fingerprints.parquet"), fp, check_exact=True)


def store_tensors(out, step):
    from safetensors.torch import load_file

    return load_file(out / "records" / "sketch" / f"step_{step:09d}.safetensors")


def test_too_few_checkpoints_says_how_many(tiny_series, tmp_path):
    out = tmp_path / "run"
    series = LocalSeries(tiny_series)
    series.checkpoints = series.checkpoints[:3]
    screen(series, out, settings=_settings(window=4), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fingerprints"]["status"] == "skipped"
    assert "at least W+1 = 5 checkpoints" in manifest["fingerprints"]["reason"]
    assert "has 3" in manifest["fingerprints"]["reason"]
    assert not (out / "fingerprints.parquet").exists()
    assert (out / "selectivity.parquet").exists()  # the probes still ran


def _o_and_q(model, arch, layer):
    if arch == "gpt_neox":
        att = model.gpt_neox.layers[layer].attention
        return att.dense.weight, att.query_key_value.weight  # [D, H*dh], [H*3*dh, D] interleaved
    att = model.model.layers[layer].self_attn
    return att.o_proj.weight, att.q_proj.weight


def _planted_series(root, arch, planted: dict[tuple[int, int], int], n_ckpt=16, seed=0):
    """A saved series where head (l, h) in `planted` gets coherent rank-k updates in its Q and O slices
    (plus small isotropic noise on every attention weight), and all other heads get only the noise."""
    model = build_tiny_model(arch, n_ctx=64, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    dh, D = 16, 64
    dirs = {key: [(torch.randn(D, dh, generator=g), torch.randn(dh, D, generator=g)) for _ in range(k)]
            for key, k in planted.items()}
    for t in range(n_ckpt):
        if t:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "attn" in name or "attention" in name:
                        p.add_(1e-3 * torch.randn(p.shape, generator=g))
                for (layer, head), dlist in dirs.items():
                    o, q = _o_and_q(model, arch, layer)
                    for j, (uq, uo) in enumerate(dlist):
                        # rank 1: a steady drift; rank k: independent random coefficients per direction
                        z = torch.randn((), generator=g)
                        coef = 0.05 * (1.0 + 0.3 * z) if len(dlist) == 1 else 0.05 * z / (1 + 0.3 * j)
                        o[:, head * dh:(head + 1) * dh] += coef * uo.T  # o: [D, H*dh]
                        if arch == "gpt_neox":
                            rows = slice(head * 3 * dh, head * 3 * dh + dh)  # q rows of this head
                        else:
                            rows = slice(head * dh, (head + 1) * dh)
                        q[rows, :] += coef * uq.T
        model.save_pretrained(root / f"step{10 * t}")
    save_word_tokenizer(root, 512)
    return root


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
@pytest.mark.parametrize("k", [1, 2])
def test_planted_heads_rank_first_with_kstar_k(tmp_path, arch, k):
    planted = {(0, 1): k, (1, 3): k}
    root = _planted_series(tmp_path / arch, arch, planted)
    series = LocalSeries(root)
    cfg = SpectralConfig(window=5)
    sk = HeadSketcher(cfg)
    for ckpt, hw in series.iter_head_weights():
        sk.update(hw, ckpt.step)
    fp = sk.fingerprint()
    ranked = rank_heads(fp, "update_norm", reduce="median")
    top = {(int(r.layer), int(r.head)) for r in ranked.head(len(planted)).itertuples()}
    assert top == set(planted)
    kstar = fp[fp.metric == "kstar"]
    for (layer, head) in planted:
        ks = kstar[(kstar["layer"] == layer) & (kstar["head"] == head)]["value"]
        assert ks.mode().iloc[0] == k, (arch, k, ks.tolist())
    # the edge ratio at k separates planted heads from noise-only heads
    ratio = fp[fp.metric == f"ratio_{k}{k + 1}"].groupby(["layer", "head"])["value"].median()
    noise = ratio.drop(index=list(planted))
    assert ratio.loc[list(planted)].min() > 2 * noise.max()


def test_planted_series_sketch_agrees_with_exact(tmp_path):
    root = _planted_series(tmp_path / "neox", "gpt_neox", {(0, 1): 2}, n_ckpt=13)
    series = LocalSeries(root)
    exact, sk = HeadSketcher(SpectralConfig(window=5, exact=True)), HeadSketcher(SpectralConfig(window=5))
    for ckpt, hw in series.iter_head_weights():
        exact.update(hw, ckpt.step)
        sk.update(hw, ckpt.step)
    a = exact.fingerprint().set_index(["step", "layer", "head", "metric"])["value"]
    b = sk.fingerprint().set_index(["step", "layer", "head", "metric"])["value"]
    r_exact, r_sketch = a.xs("ratio_23", level="metric"), b.xs("ratio_23", level="metric")
    rel = ((r_sketch - r_exact).abs() / r_exact).mean()
    assert rel < 0.15
    # update norms are exact in both modes
    assert torch.allclose(torch.tensor(a.xs("update_norm", level="metric").values),
                          torch.tensor(b.xs("update_norm", level="metric").values), rtol=1e-6)


def test_screen_settings_from_config_validates(tmp_path):
    from headscreen.config import ConfigError, load_config

    p = tmp_path / "c.yaml"
    p.write_text("name: x\nsource: {kind: local, local_path: /x}\nprobes: {seq_len: 64, n_retreival: 3}\n")
    with pytest.raises(ConfigError, match=r"probes: unknown field\(s\) \['n_retreival'\]"):
        ScreenSettings.from_config(load_config(p))
    p.write_text("name: x\nsource: {kind: local, local_path: /x}\nspectral: {window: 2}\n")
    with pytest.raises(ConfigError, match="window"):
        ScreenSettings.from_config(load_config(p))
    p.write_text("name: x\nsource: {kind: local, local_path: /x}\nthresholds: {class_min: fast}\n")
    with pytest.raises(ConfigError, match="class_min"):
        ScreenSettings.from_config(load_config(p))
    ok = ScreenSettings.from_config(load_config("pythia-1b"))
    assert dataclasses.asdict(ok.thresholds)["induction_circuit"] == 50.0
