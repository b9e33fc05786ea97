"""Every model-config section is registered and built when the config loads (headscreen/config/sections.py):
a typo in any of them fails at load naming the section, the key and the closest key; `preid:` and
`analysis:` change the results they should; every shipped config loads to the dataclasses it did before.

tests/data/model_configs_built.json holds repr() of every section of every model_configs/*.yaml as the
pre-redesign loaders built it (sweep lists now stored as their declared tuples; the sweeps' to_dict and
every grid run's config were checked byte-identical). After an intended edit of a YAML, regenerate it with
`PYTHONPATH=. python tests/test_config_sections.py` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
import torch
import yaml

from headscreen.config import CONFIG_DIR, SECTIONS, ConfigError, load_config

torch.set_num_threads(1)
GOLDEN = Path(__file__).parent / "data" / "model_configs_built.json"


def built(cfg) -> dict[str, str]:
    return {"source": repr(cfg.source), **{s: repr(cfg.settings(s)) for s in cfg.sections}}


def test_every_shipped_config_loads_to_the_same_dataclasses():
    golden = json.loads(GOLDEN.read_text())
    paths = sorted(CONFIG_DIR.glob("*.yaml"))
    assert sorted(p.stem for p in paths) == sorted(golden), "a config was added or removed: regenerate the golden"
    for path in paths:
        assert built(load_config(path)) == golden[path.stem], path.name


# a minimal valid mapping per section (li2_controls has required fields) and one (typo, meant key) each
VALID = {"li2_controls": {"subcritical_train_frac": 0.1, "calibration_seeds": [100]}}  # below 0.165 at M 71
TYPOS = {"train": ("stpes", "steps"), "probes": ("n_retreival", "n_retrieval"), "thresholds": ("class_mn", "class_min"),
         "spectral": ("windw", "window"), "onsets": ("margn", "margin"), "validation": ("n_nul", "n_null"),
         "grok": ("weight_decy", "weight_decay"), "sweep": ("wokers", "workers"), "analysis": ("onset_rul", "onset_rule"),
         "li2": ("hiden", "hidden"), "li2_controls": ("margn", "margin"), "boot": ("dtyp", "dtype"),
         "preid": ("auc_bra", "auc_bar")}


def _config(tmp_path, **sections) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "source": {"kind": "synthetic"}, **sections}))
    return path


def test_every_section_is_registered():
    assert set(TYPOS) | {"report"} == set(SECTIONS)


@pytest.mark.parametrize("section", sorted(TYPOS))
def test_a_typo_in_any_section_fails_at_load_naming_section_key_and_suggestion(tmp_path, section):
    typo, meant = TYPOS[section]
    load_config(_config(tmp_path, **{section: VALID.get(section, {})}))  # the section itself is accepted
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, **{section: {**VALID.get(section, {}), typo: 1}}))
    assert f"c.yaml: {section}: unknown field(s) [{typo!r}] (did you mean {meant!r}?)" in str(err.value)


@pytest.mark.parametrize("sections, needle", [
    ({"analysis": {"spectral": {"windw": 4}}}, "c.yaml: analysis.spectral: unknown field(s) ['windw'] (did you mean "
                                               "'window'?)"),
    ({"analysis": {"gap": {"factr": 2.0}}}, "c.yaml: analysis.gap: unknown field(s) ['factr'] (did you mean 'factor'?)"),
    ({"grok": {"model": {"d_modl": 64}}}, "c.yaml: grok.model: unknown field(s) ['d_modl'] (did you mean 'd_model'?)"),
    ({"sweep": {"extra": [{"weight_decy": 0.0}]}}, "c.yaml: sweep.extra[0]: unknown field(s) ['weight_decy'] (did you "
                                                    "mean 'weight_decay'?)"),
    ({"report": {"style": 1}}, "c.yaml: report: no settings exist in this section; remove ['style']"),
    ({"preidd": {}}, "unknown top-level key(s) ['preidd'] (did you mean 'preid'?)"),
])
def test_a_nested_or_top_level_typo_fails_at_load(tmp_path, sections, needle):
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, **sections))
    assert needle in str(err.value)


@pytest.mark.parametrize("section, field, value, needle", [
    ("grok", "betas", [0.9], "a list of 2 numbers"),
    ("train", "betas", [0.9, 0.99, 0.5], "a list of 2 numbers"),
    ("li2", "betas", [0.9, 0.99, 0.999], "a list of 2 numbers"),
    ("probes", "token_range", [4, 100, 200], "a list of 2 integers or a string"),
    ("li2_controls", "calibration_seeds", [100, 1.5], "a list of integers"),
])
def test_a_wrong_tuple_length_or_element_fails_at_load(tmp_path, section, field, value, needle):
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, **{section: {**VALID.get(section, {}), field: value}}))
    assert f"c.yaml: {section}: field {field!r} must be {needle}, got {value!r}" in str(err.value)


def test_li2_controls_are_checked_against_the_li2_modulus(tmp_path):
    ok = {"subcritical_train_frac": 0.2, "calibration_seeds": [1, 2]}
    cfg = load_config(_config(tmp_path, li2={"m": 47}, li2_controls=ok))  # critical 0.225 at M 47
    assert cfg.settings("li2_controls").calibration_seeds == (1, 2)
    with pytest.raises(ConfigError, match=r"li2_controls: subcritical_train_frac = 0.2 is not below the critical "
                                          r"fraction 0.130 of M = 97"):
        load_config(_config(tmp_path, li2={"m": 97}, li2_controls=ok))


# --- preid: and analysis: change the results they should --------------------------------------------
def test_a_preid_section_is_accepted_and_sets_the_bars_of_the_pre_identification(tmp_path):
    """The screen records the config; validate rewrites preid.json with the run's preid: section. On a
    random tiny series with a given circuit the default bars (AUC >= 0.9, p < 0.05) separate less than
    the lenient ones, and every row's `separates` is exactly its bars applied to its AUC and p."""
    from headscreen.testing import save_tiny_series
    from pipelines.preid import preid_tables
    from pipelines.screen import ScreenSettings, screen
    from pipelines.validate import validate

    series = save_tiny_series(tmp_path / "series", "gpt_neox", [0, 10, 20, 30, 40, 50], n_ctx=64)
    lenient = {"auc_bar": 0.55, "alpha": 0.6, "persist": 1, "n_perm": 20}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "source": {"kind": "local", "local_path": str(series)}, "preid": lenient,
        "probes": {"seq_len": 48, "token_range": [4, 500], "n_retrieval": 16, "pair_range": [4, 20], "n_repeated": 8,
                   "repeated_span": 16, "micro_batch": 16},
        "spectral": {"window": 3, "transient_windows": 0}, "validation": {"ablations": ["zero"], "n_null": 3}}))
    cfg = load_config(path)
    settings = ScreenSettings.from_config(cfg)
    assert settings.preid.to_dict() == {**settings.preid.__class__().to_dict(), **lenient}
    run = screen(series, tmp_path / "run", config=cfg, settings=settings, progress=False)
    validate(run, circuit=[[1, 0], [1, 2]], progress=False)
    doc = json.loads((run / "preid.json").read_text())
    table = pd.read_parquet(run / "preid.parquet")
    assert doc["circuit_source"] == "validated" and doc["settings"] == {**doc["settings"], **lenient}
    before = table[table["before_emergence"]]
    assert len(before) > 0
    bars = (before["auc"] >= lenient["auc_bar"]) & (before["p_value"] < lenient["alpha"])
    assert (before["separates"] == bars).all()
    default_table, default_doc = preid_tables(run, settings.preid.__class__(),
                                              validation=json.loads((run / "validation.json").read_text()))
    assert default_doc["settings"]["auc_bar"] == 0.9
    assert before["separates"].sum() > default_table.loc[default_table["before_emergence"], "separates"].sum()


TINY_GROK = {"tasks": ["add"], "p": 11, "train_frac": 0.5, "lr": 0.01, "batch_size": 32, "steps": 48, "eval_every": 4,
             "snapshot_every": 4, "defect_every": 0,
             "model": {"preset": "curv", "n_layers": 1, "d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64}}


def test_an_analysis_section_sets_the_grok_analysis(tmp_path):
    """The same 13-snapshot trajectory analysed with the default window (10) and with `analysis:`'s
    window 4: the trunk windows end at snapshots 10..12 vs 4..12; a rerun with the same section reuses
    grok.json (it is current for those settings) instead of recomputing it."""
    from pipelines.grok import grok

    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"name": "tiny", "source": {"kind": "synthetic"}, "grok": TINY_GROK}))
    sectioned = tmp_path / "sectioned.yaml"
    analysis = {"spectral": {"window": 4, "exact": True}, "window_analyses": False, "onset_rule": "z"}
    sectioned.write_text(yaml.safe_dump({"name": "tiny", "source": {"kind": "synthetic"}, "grok": TINY_GROK,
                                         "analysis": analysis}))
    run = tmp_path / "run"

    def trunk_steps():
        edge = pd.read_parquet(run / "edge.parquet")
        return sorted(int(s) for s in edge.loc[edge.scope == "trunk", "step"].unique())

    out = grok(plain, run, progress=False)
    assert out["settings"]["analysis"]["spectral"]["window"] == 10 and trunk_steps() == [40, 44, 48]
    assert out["defect_onset_rule"] == "ratio"
    out = grok(sectioned, run, progress=False)  # same trajectory (resumed: nothing to train), new analysis
    assert out["settings"]["analysis"]["spectral"]["window"] == 4 and trunk_steps() == list(range(16, 49, 4))
    assert out["defect_onset_rule"] == "z" and out["settings"]["analysis"]["window_analyses"] is False
    stamp = (run / "grok.json").stat().st_mtime_ns
    again = grok(sectioned, run, progress=False)
    assert (run / "grok.json").stat().st_mtime_ns == stamp and again == out
    from headscreen.grokking.analysis.analyse import load_analysis

    doc, _, how = load_analysis(run)  # a reader (the report) takes the analysis the run was given
    assert how == "current" and doc == out and (run / "grok.json").stat().st_mtime_ns == stamp


if __name__ == "__main__":  # regenerate the golden after an intended change of a shipped config
    GOLDEN.write_text(json.dumps({p.stem: built(load_config(p)) for p in sorted(CONFIG_DIR.glob("*.yaml"))},
                                 indent=1, sort_keys=True))
