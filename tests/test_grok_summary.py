"""GrokSummary: the one grok.json record of both producers, and the public headscreen.grokking API."""

from __future__ import annotations

import json

import pytest
import torch
from grok_fixtures import make_run

from headscreen import grokking as gk
from headscreen.rundir.atomic import _json_default

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:only")


def test_grok_json_round_trips_through_the_record_byte_for_byte(tmp_path):
    run = make_run(tmp_path / "run", p=11, n_snap=14, switch=6)
    out = gk.analyse_run(run, progress=False)
    text = (run / "grok.json").read_text()
    summary = gk.read_summary(run)
    assert isinstance(summary, gk.GrokSummary) and summary.family == "modular"
    assert json.dumps(summary.to_dict(), indent=2, default=_json_default) == text  # the writer's own serialisation
    assert summary.to_dict() == out and list(json.loads(text)) == list(summary.to_dict())
    assert summary.window_analyses is not None and summary.trajectory["complete"] is True
    with pytest.raises(ValueError, match="outside its schema \\(lockin\\)"):
        gk.GrokSummary.from_dict({**out, "lockin": {}})


def test_a_li2_run_writes_the_li2_keys_in_order(tmp_path):
    g = gk.run_li2(gk.Li2Config(m=11, hidden=16, epochs=25, tau=3.0, snapshot_every=10), tmp_path / "li2",
                   progress=False)
    from headscreen.grokking.analysis.grok_summary import LI2_KEYS

    on_disk = json.loads((tmp_path / "li2" / "grok.json").read_text())
    assert list(on_disk) == list(LI2_KEYS) and on_disk == g and on_disk["n_snapshots"] == 4
    assert gk.read_summary(tmp_path / "li2").lockin["tau"] == 3.0


def test_the_public_grokking_api_resolves_every_name():
    for name in gk.__all__:
        assert getattr(gk, name) is not None, name
    with pytest.raises(AttributeError, match="its API"):
        gk.no_such_thing  # noqa: B018
