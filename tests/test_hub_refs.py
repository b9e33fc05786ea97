"""Revisions read from the hub itself (list_repo_refs on the loopback fake hub, OLMo-style branch names)."""

from __future__ import annotations

import argparse

import pytest
import yaml
from fake_hub import FakeHub

from headscreen.config import config_series, load_config
from headscreen.series import revisions
from headscreen.series.hub_refs import hub_revisions, reconcile
from headscreen.testing import save_tiny_model

REPO = "tiny-org/olmo-like"
# the hub's branches: OLMo style, tokens rounded down by the uploader at step 3000 (12.58B -> "12B")
BRANCHES = ["main", "step0-tokens0B", "step1000-tokens4B", "step2000-tokens8B", "step3000-tokens12B",
            "step5000-tokens21B"]
SOURCE = {"kind": "hub", "repo": REPO, "revision_format": "step{step}-tokens{tokens_b}B", "tokens_per_step": 4194304,
          "schedule": {"steps": [0, 1000, 2000, 3000, 4000]}}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    folder = save_tiny_model(tmp_path_factory.mktemp("olmo") / "m", "olmo")
    with FakeHub() as h:
        for b in BRANCHES:
            h.add(REPO, b, folder)
        yield h


@pytest.fixture
def online(monkeypatch, tmp_path, hub):
    import huggingface_hub.constants as hc

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    return hub


def _config(tmp_path):
    path = tmp_path / "olmo-like.yaml"
    path.write_text(yaml.safe_dump({"name": "olmo-like", "source": SOURCE}))
    return load_config(path)


def test_branches_parsed_and_reconciled(online):
    hub = hub_revisions(REPO)
    assert [(r.step, r.revision, r.tokens) for r in hub] == [
        (0, "step0-tokens0B", 0), (1000, "step1000-tokens4B", 4 * 10**9), (2000, "step2000-tokens8B", 8 * 10**9),
        (3000, "step3000-tokens12B", 12 * 10**9), (5000, "step5000-tokens21B", 21 * 10**9)]  # "main" has no step
    assert ("GET", f"/api/models/{REPO}/refs") in online.requests
    rec = reconcile(revisions(SOURCE["schedule"], SOURCE["revision_format"], SOURCE["tokens_per_step"]), hub)
    assert rec["renamed"] == [{"step": 3000, "config_name": "step3000-tokens13B", "hub_name": "step3000-tokens12B"}]
    assert rec["missing_on_hub"] == [{"step": 4000, "config_name": "step4000-tokens17B"}]
    assert rec["only_on_hub"] == {"count": 1, "first": ["step5000-tokens21B"]} and not rec["agree"]


def test_a_hub_config_uses_the_hubs_names_and_series_reports_the_disagreement(online, tmp_path, capsys, monkeypatch):
    cfg = _config(tmp_path)
    series = config_series(cfg, cache_dir=tmp_path / "cache")
    names = {c.step: c.name for c in series}
    assert names[3000] == "step3000-tokens12B" and names[1000] == "step1000-tokens4B"
    assert names[4000] == "step4000-tokens17B"  # not on the hub: the config's name, reported below
    from pipelines import series_info

    monkeypatch.setattr(series_info, "resolve_series", lambda spec, **kw: (series, cfg))
    series_info.main(argparse.Namespace(series="x", allow_pickle=False, trust_remote_code=False, quick=True))
    out = capsys.readouterr().out
    assert "the hub calls it 'step3000-tokens12B'" in out and "step 4000" in out and "no branch" in out


def test_offline_keeps_the_configs_names(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    series = config_series(_config(tmp_path), cache_dir=tmp_path / "cache")
    assert {c.step: c.name for c in series}[3000] == "step3000-tokens13B" and series.hub_reconcile is None
