"""The hub path against a fake hub on localhost: downloads, revisions, the cache, offline messages, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest
import torch
from fake_hub import FakeHub

from headscreen.series import CheckpointNotFound, HubSeries, HubUnavailable, LocalSeries, revisions
from headscreen.series.hub import attention_shards
from headscreen.testing import save_tiny_series

torch.set_num_threads(1)
REPO = "tiny-org/tiny-llama"
STEPS = [0, 10, 20]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A 3-revision sharded llama series (tokenizer inside each revision, as on the hub), served by a fake hub."""
    root = save_tiny_series(tmp_path_factory.mktemp("src") / "s", "llama", STEPS, max_shard_size="30KB")
    for step in STEPS:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(root / f, root / f"step{step}" / f)
    with FakeHub() as hub:
        for step in STEPS:
            hub.add(REPO, f"step{step}", root / f"step{step}")
        yield hub, root


@pytest.fixture
def online(monkeypatch, tmp_path):
    """huggingface_hub in online mode with an empty cache in tmp_path (whatever the environment says)."""
    import huggingface_hub.constants as hc

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf" / "hub"


def _series(hub, **kw) -> HubSeries:
    return HubSeries(REPO, revisions({"steps": STEPS}, "step{step}"), endpoint=hub.url, **kw)


def _downloaded(hub, rev: str) -> set[str]:
    """Files of revision `rev` fetched so far (by commit or by branch name)."""
    out = set()
    for prefix in (f"/{REPO}/resolve/{FakeHub.sha(REPO, rev)}/", f"/{REPO}/resolve/{rev}/"):
        out |= {p.removeprefix(prefix) for m, p in hub.requests if m == "GET" and p.startswith(prefix)}
    return out


def test_download_reads_only_attention_shards_into_the_standard_cache(served, online):
    hub, root = served
    weight_map = json.loads((root / "step10" / "model.safetensors.index.json").read_text())["weight_map"]
    attn = attention_shards(weight_map, "attention")
    assert 0 < len(attn) < len(set(weight_map.values()))  # the fixture does hold attention-free shards

    s = _series(hub)
    hw = s.head_weights(s.checkpoint(10))
    local = LocalSeries(root).head_weights(LocalSeries(root).checkpoint(10))
    for name in local.shapes():
        assert torch.equal(getattr(hw, name), getattr(local, name)), name
    assert _downloaded(hub, "step10") == {"config.json", "model.safetensors.index.json", *attn}
    # the standard cache layout: refs/<revision> -> commit, snapshots/<commit>/<files>
    repo_cache = online / f"models--{REPO.replace('/', '--')}"
    assert (repo_cache / "refs" / "step10").read_text() == FakeHub.sha(REPO, "step10")
    snap = repo_cache / "snapshots" / FakeHub.sha(REPO, "step10")
    assert sorted(p.name for p in snap.iterdir() if "safetensors" in p.name and "index" not in p.name) == attn
    assert s.geometry(s.checkpoint(10)).n_heads == 4

    # revisions differ (the series drifts), and the tokenizer comes from the last revision
    hw0 = s.head_weights(s.checkpoint(0))
    assert not torch.equal(hw0.W_Q, hw.W_Q)
    tok = s.tokenizer_dir()
    assert tok is not None and FakeHub.sha(REPO, "step20") in str(tok) and (tok / "tokenizer.json").exists()


def test_offline_mode_uses_the_cache_then_names_repo_revision_and_local_copy(served, online, monkeypatch):
    import huggingface_hub.constants as hc

    hub, _ = served
    s = _series(hub)
    expected = s.head_weights(s.checkpoint(0)).W_O
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    before = len(hub.requests)
    cached = _series(hub)
    assert torch.equal(cached.head_weights(cached.checkpoint(0)).W_O, expected)  # from the cache
    assert len(hub.requests) == before  # offline: not one request
    with pytest.raises(HubUnavailable) as e:
        cached.head_weights(cached.checkpoint(20))  # never downloaded
    msg = str(e.value)
    assert REPO in msg and "'step20'" in msg and "HF_HUB_OFFLINE is set" in msg
    assert f"hf download {REPO} --revision step20" in msg and "local_path" in msg
    assert len(hub.requests) == before


def test_unreachable_endpoint_says_so(online):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = HubSeries(REPO, revisions({"steps": [0]}, "step{step}"), endpoint=f"http://127.0.0.1:{port}")
    with pytest.raises(HubUnavailable) as e:
        s.head_weights(s.checkpoints[0])
    msg = str(e.value)
    assert f"cannot connect to http://127.0.0.1:{port}" in msg and REPO in msg and "check the network" in msg


def test_unknown_revision_and_repo_are_named(served, online):
    hub, _ = served
    s = HubSeries(REPO, revisions({"steps": [5]}, "step{step}"), endpoint=hub.url)
    with pytest.raises(CheckpointNotFound, match="no revision 'step5'.*list_repo_refs"):
        s.head_weights(s.checkpoints[0])
    s = HubSeries(REPO, revisions({"steps": [0, 5]}, "step{step}"), endpoint=hub.url)
    s.head_weights(s.checkpoint(0))  # the first revision answers; the missing one still says so
    with pytest.raises(CheckpointNotFound, match="no revision 'step5'"):
        s.head_weights(s.checkpoint(5))
    s = HubSeries("tiny-org/nope", revisions({"steps": [0]}, "step{step}"), endpoint=hub.url)
    with pytest.raises(CheckpointNotFound, match="no model repository 'tiny-org/nope'"):
        s.head_weights(s.checkpoints[0])


def test_cli_does_not_force_offline_mode(served, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    from pipelines.cli import main

    _, root = served
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    assert main(["series", str(root)]) == 0
    assert "HF_HUB_OFFLINE" not in os.environ and hc.HF_HUB_OFFLINE is False


def test_cli_screens_a_hub_series_end_to_end(served, online, tmp_path, monkeypatch):
    """`headscreen screen <config>` downloads a 3-revision series from the (fake) hub and screens it:
    probes on steps 0 and 20 (full downloads), step 10 through its attention shards alone."""
    from pipelines.cli import main

    hub, root = served
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    cfg = tmp_path / "fake-tiny.yaml"
    cfg.write_text(
        "name: fake-tiny\n"
        f"source: {{kind: hub, repo: {REPO}, revision_format: 'step{{step}}', schedule: {{steps: {STEPS}}}}}\n"
        "probes: {seq_len: 32, token_range: [2, 512], bos_id: 0, n_retrieval: 8, pair_range: [2, 16],\n"
        "         n_repeated: 4, repeated_span: 8, micro_batch: 8}\n"
    )
    out = tmp_path / "run"
    rc = main(["--threads", "1", "screen", str(cfg), "--out", str(out), "--probe-every", "2", "--no-progress"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["series"]["source"] == "hub" and manifest["series"]["revisions"] == ["step0", "step10", "step20"]
    assert manifest["series"]["endpoint"] == hub.url
    sel = pd.read_parquet(out / "selectivity.parquet")
    assert set(sel["step"]) == {0, 20} and len(sel) > 0
    assert sorted(int(p.stem.split("_")[1]) for p in (out / "records" / "sketch").glob("step_*.safetensors")) == STEPS
    weight_map = json.loads((root / "step10" / "model.safetensors.index.json").read_text())["weight_map"]
    attn = attention_shards(weight_map, "attention")
    # identical files (config.json, the index) are fetched once per cache: compare the cache snapshots
    snaps = online / f"models--{REPO.replace('/', '--')}" / "snapshots"
    step10 = {p.name for p in (snaps / FakeHub.sha(REPO, "step10")).iterdir()}
    assert step10 == {"config.json", "model.safetensors.index.json", *attn}
    assert _downloaded(hub, "step10") >= set(attn) and not _downloaded(hub, "step10") - step10
    step20 = {p.name for p in (snaps / FakeHub.sha(REPO, "step20")).iterdir()}
    assert step20 >= set(weight_map.values()) | {"tokenizer.json"}  # booted: every shard
    # validate finds the hub series from the manifest alone (the YAML is not in model_configs/)
    cfg.unlink()
    assert main(["--threads", "1", "validate", str(out), "--heads", "L1H0,L1H1", "--ablation", "zero",
                 "--n-null", "2"]) == 0
    v = json.loads((out / "validation.json").read_text())
    zero = v["ablations"]["zero"]
    assert v["step"] == 20 and v["circuit"] == [[1, 0], [1, 1]]
    # 4 heads: the only matched set of 2 heads in layer 1 is {L1H2, L1H3}, fewer than the 2 requested
    assert zero["n_matched_sets"] == zero["n_null"] == 1 and zero["null_kind"] == "exact: every matched set once"


def test_hf_home_and_hf_endpoint_from_the_environment(served, tmp_path):
    """A fresh process with only HF_HOME and HF_ENDPOINT set downloads into $HF_HOME/hub (the standard cache)."""
    import subprocess
    import sys

    hub, _ = served
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE")}
    env.update(HF_HOME=str(tmp_path / "home"), HF_ENDPOINT=hub.url, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    code = ("from headscreen.series import HubSeries, revisions; "
            f"s = HubSeries({REPO!r}, revisions({{'steps': [20]}}, 'step{{step}}')); "
            "print(s.head_weights(s.checkpoints[0]).n_heads)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "4"
    snap = tmp_path / "home" / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / FakeHub.sha(REPO, "step20")
    assert (snap / "config.json").exists() and any(snap.glob("model-*.safetensors"))


def test_series_listing_says_where_hub_revisions_can_come_from(served, online, monkeypatch):
    import huggingface_hub.constants as hc

    from pipelines.series_info import series_info

    hub, _ = served
    monkeypatch.setattr("pipelines.series_info.resolve_series", lambda spec, **kw: (_series(hub), None))
    before = len(hub.requests)
    info = series_info("tiny")
    a = info["availability"]
    assert a["hub"] is None and a["cached"] == [] and info["problems"] == []
    assert not any(m == "GET" and "/resolve/" in p for m, p in hub.requests[before:])  # nothing downloaded
    s = _series(hub)
    s.hf_config(s.checkpoint(10))  # config.json of one revision into the cache
    assert series_info("tiny")["availability"]["cached"] == ["step10"]
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    info = series_info("tiny")
    assert info["availability"]["hub"] == "HF_HUB_OFFLINE is set" and info["availability"]["cached"] == ["step10"]
    assert info["problems"] == []  # one revision can still be served from the cache
    empty = online.parent / "empty"
    monkeypatch.setattr("pipelines.series_info.resolve_series",
                        lambda spec, **kw: (_series(hub, cache_dir=empty), None))
    info = series_info("tiny")
    assert len(info["problems"]) == 1 and REPO in info["problems"][0] and "local_path" in info["problems"][0]


def test_a_download_cut_off_mid_file_is_named_and_a_rerun_resumes(served, online, tmp_path, monkeypatch, capsys):
    """The connection drops after 1000 bytes of an attention shard of step10: one line naming the repo,
    the revision and the file (exit 2, no traceback); the files already fetched stay in the cache and
    the rerun, with the connection whole again, finishes the screen (issue 26)."""
    from pipelines.cli import main

    hub, root = served
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    cfg = tmp_path / "fake-tiny.yaml"
    cfg.write_text(
        "name: fake-tiny\n"
        f"source: {{kind: hub, repo: {REPO}, revision_format: 'step{{step}}', schedule: {{steps: {STEPS}}}}}\n"
        "probes: {seq_len: 32, token_range: [2, 512], bos_id: 0, n_retrieval: 8, pair_range: [2, 16],\n"
        "         n_repeated: 4, repeated_span: 8, micro_batch: 8}\n"
    )
    weight_map = json.loads((root / "step10" / "model.safetensors.index.json").read_text())["weight_map"]
    shard = attention_shards(weight_map, "attention")[0]
    out = tmp_path / "run"
    argv = ["--threads", "1", "screen", str(cfg), "--out", str(out), "--probe-every", "2", "--no-progress"]
    hub.cut[f"step10/{shard}"] = 1000
    try:
        rc = main(argv)
    finally:
        hub.cut.clear()
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("headscreen ")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"the download of {shard} from {REPO} at revision 'step10'" in lines[0] and "rerun the same command" in lines[0]
    assert (out / "records" / "sketch" / "step_000000000.safetensors").is_file()  # step 0 was recorded before
    assert main(argv) == 0
    assert json.loads((out / "manifest.json").read_text())["tables"]["status"] == "current"
