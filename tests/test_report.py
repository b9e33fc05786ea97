"""Circuit reports from synthetic run directories (docs/run-format.md) with planted, known values."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from headscreen.probes.screen import summarise_series
from headscreen.probes.selectivity import CLASSES
from headscreen.report import NotARunDirectoryError, RunFileError, StepNotFoundError
from headscreen.report.content import SECTION_ORDER
from pipelines.report import report as render_report

N_LAYERS, N_HEADS = 3, 4
STEPS = [0, 250, 500, 750, 1000]
TOKENS_PER_STEP = 2048
PROBES = ("retrieval", "repeated")  # retrieval is the report's default probe
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- synthetic runs


def _planted_selectivity(model: str) -> dict[tuple[int, int, str], list[float]]:
    """(layer, head, class) -> selectivity per step on the retrieval probe; every other entry is ~1."""
    plant = {
        (1, 2, "induction"): [1.0, 2.0, 60.0, 120.0, 200.0],
        (0, 1, "previous"): [1.0, 120.0, 150.0, 160.0, 170.0],
        (2, 0, "first"): [1.0, 5.0, 40.0, 45.0, 50.0],
        (2, 3, "first"): [1.0, 5.0, 35.0, 40.0, 42.0],
    }
    if model == "a":
        plant[(2, 1, "induction")] = [1.0, 1.0, 10.0, 55.0, 80.0]
    else:  # model b: one induction head only, and a BOS head in layer 1 at the last two checkpoints
        plant[(1, 0, "first")] = [1.0, 2.0, 8.0, 31.0, 33.0]
    return plant


def _selectivity(model: str, rng) -> pd.DataFrame:
    """Long selectivity rows; on the repeated probe every planted induction value is halved."""
    plant = _planted_selectivity(model)
    rows = []
    for probe in PROBES:
        for si, step in enumerate(STEPS):
            for layer in range(N_LAYERS):
                for head in range(N_HEADS):
                    for cls in CLASSES:
                        v = plant.get((layer, head, cls), [1.0 + 0.1 * rng.rand()] * len(STEPS))[si]
                        if probe == "repeated" and cls == "induction" and (layer, head, cls) in plant:
                            v = v / 2
                        rows.append({"step": step, "layer": layer, "head": head, "probe": probe, "class": cls,
                                     "selectivity": v, "null_z": (v - 1.0) / 0.5})
    return pd.DataFrame(rows)


def make_run(root: Path, model: str, *, validated: bool) -> dict:
    """Write a run directory for model 'a' or 'b' as `headscreen screen` lays it out; returns what was planted.

    classes.parquet and circuits.json come from the screen's own summary (probes.screen.summarise_series)
    of the planted selectivity, so the report is tested against the layout the screen really writes.
    """
    root.mkdir(parents=True)
    rng = np.random.RandomState(0 if model == "a" else 1)
    sel = _selectivity(model, rng)
    circuit_heads = {(1, 2), (2, 1)} if model == "a" else {(1, 2)}
    fp_rows, pr_rows = [], []
    for si, step in enumerate(STEPS):
        for layer in range(N_LAYERS):
            for head in range(N_HEADS):
                boost = 1.0 + si * (1 + layer) / 2 if (layer, head) in circuit_heads else 1.0
                for metric, v in (("ratio_12", 1.2 * boost), ("ratio_23", 1.1 + 0.05 * rng.rand()),
                                  ("kstar", 2.0), ("update_norm", 0.5 / (1 + si) + 0.01 * rng.rand())):
                    fp_rows.append({"step": step, "layer": layer, "head": head, "metric": metric, "value": v})
                    fp_rows.append({"step": step, "layer": layer, "head": head, "metric": f"{metric}_z", "value": 0.0})
                for probe in PROBES:
                    pr = 2.0 + (si * (2 + layer) if (layer, head) in circuit_heads else rng.rand())
                    pr_rows.append({"step": step, "tokens": step * TOKENS_PER_STEP, "layer": layer, "head": head,
                                    "probe": probe, "pr": pr})
    participation = pd.DataFrame(pr_rows)
    onsets = pd.DataFrame([{"layer": h[0], "head": h[1], "metric": "update_norm_z", "onset_step": 250.0}
                           for h in sorted(circuit_heads)] + [{"layer": 0, "head": 0, "metric": "update_norm_z",
                                                               "onset_step": np.nan}])
    classes, circuits = summarise_series({"selectivity": sel, "participation": participation, "onsets": onsets})
    sel.to_parquet(root / "selectivity.parquet")
    classes.to_parquet(root / "classes.parquet")
    (root / "circuits.json").write_text(json.dumps(circuits))
    pd.DataFrame(fp_rows).to_parquet(root / "fingerprints.parquet")
    participation.to_parquet(root / "participation.parquet")
    onsets.to_parquet(root / "onsets.parquet")
    pd.DataFrame([{"step": s, "layer": 0, "head": 0, "probe": p, "metric": "sink_rate", "value": 0.1}
                  for s in STEPS for p in PROBES]).to_parquet(root / "head_scores.parquet")
    loss_first = [4.8, 4.8, 4.7, 4.7, 4.6]
    loss_second = [4.8, 3.0, 2.0, 1.0, 0.8]
    max_ind = [sel[(sel["step"] == s) & (sel["class"] == "induction")]["selectivity"].max() for s in STEPS]
    gap = [a - b for a, b in zip(loss_first, loss_second, strict=True)]
    flagged = [g > 1.0 and m < 50 for g, m in zip(gap, max_ind, strict=True)]
    pd.DataFrame({"step": STEPS, "loss_first": loss_first, "loss_second": loss_second, "loss_gap": gap,
                  "max_induction_selectivity": max_ind, "noncanonical_copying": flagged},
                 ).to_parquet(root / "copying.parquet")
    manifest = {  # the shape pipelines/screen.py writes
        "kind": "screen", "model": f"tiny-{model}",
        "config": {"model_config": {"name": f"tiny-{model}", "source": {"kind": "local", "path": f"/series/tiny-{model}"}},
                   "thresholds": circuits["thresholds"], "probes": {"seq_len": 64, "seed": 42}},
        "series": {"source": "local", "name": f"tiny-{model}", "n_checkpoints": len(STEPS), "steps": STEPS},
        "seeds": {"probes": 42, "sketch": 0}, "loading_mode": "raw",
        "created": "2025-01-01T00:00:00+00:00", "packages": {"torch": "2.4.0", "transformer-lens": "4.3.0"},
        "git_commit": "0123456789abcdef0123456789abcdef01234567", "python": "3.11.2",
        "probes": {p: {"n": 32, "seq_len": 64, "has_bos": False, "seed": 42} for p in PROBES},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    truth = {"circuits": circuits, "copying_flagged": [s for s, f in zip(STEPS, flagged, strict=True) if f],
             "selectivity": sel}
    if validated:
        truth.update(_write_validation(root, rng))
    return truth


METRICS = ("cross_entropy", "top1", "top5", "target_logit", "logit_diff")


def _ablation_summary(kind: str, clean: dict, conds: dict, null: dict) -> dict:
    """One ablation kind's per-checkpoint summary, as causal.validate_checkpoint writes it."""
    def drop(m, v):
        return v - clean[m] if m == "cross_entropy" else clean[m] - v

    tests = {}
    for m in METRICS:
        null_drops = np.array([drop(m, v) for v in null[m]])
        observed = drop(m, conds["circuit"][m])
        tests[m] = {"metric": m, "observed_drop": observed, "null_mean_drop": float(null_drops.mean()),
                    "null_std_drop": float(null_drops.std(ddof=1)),
                    "effect_ratio": observed / float(null_drops.mean()),
                    "p_value": (1 + int((null_drops >= observed).sum())) / (1 + len(null_drops)), "n_null": len(null_drops)}
    return {"format": "headscreen-validation/1", "step": 1000, "ablation": kind, "seed": 123, "n_null": 20,
            "n_null_requested": 100, "n_matched_sets": 20, "null_kind": "exact: every matched set once",
            "circuit": [[1, 2], [2, 1]], "null_skipped": None, "metrics": list(METRICS),
            "probes": {"retrieval": {"clean": clean, "conditions": conds,
                                     "matched_random_mean": {m: float(np.mean(null[m])) for m in METRICS},
                                     "tests": tests}}}


def _write_validation(root: Path, rng) -> dict:
    """validation.json / validation.parquet / patching.parquet laid out as `headscreen validate` writes them."""
    clean = {"cross_entropy": 1.1, "top1": 0.62, "top5": 0.8, "target_logit": 9.0, "logit_diff": 7.0}
    rows, ablations = [], {}
    for kind, scale in (("zero", 1.0), ("mean", 0.8)):
        conds = {"circuit": {"cross_entropy": 1.1 + 2.8 * scale, "top1": 0.62 - 0.57 * scale, "top5": 0.8 - 0.6 * scale,
                             "target_logit": 9.0 - 5 * scale, "logit_diff": 7.0 - 5 * scale},
                 "upper_bound": {"cross_entropy": 4.5, "top1": 0.01, "top5": 0.05, "target_logit": 2.0, "logit_diff": 1.0},
                 "head_L1H2": {"cross_entropy": 2.0, "top1": 0.3, "top5": 0.5, "target_logit": 6.0, "logit_diff": 4.0}}
        null = {m: (clean[m] + (0.02 if m == "cross_entropy" else -0.02) * (1 + rng.rand(20))).tolist() for m in METRICS}
        ablations[kind] = _ablation_summary(kind, clean, conds, null)
        rows += [(1000, "retrieval", "clean", 0, m, clean[m], kind) for m in METRICS]
        rows += [(1000, "retrieval", c, 0, m, v[m], kind) for c, v in conds.items() for m in METRICS]
        rows += [(1000, "retrieval", "matched_random", i, m, null[m][i], kind) for m in METRICS for i in range(20)]
    pd.DataFrame(rows, columns=["step", "probe", "condition", "draw", "metric", "value", "ablation"]).to_parquet(
        root / "validation.parquet")
    patch = [(1000, "activation", layer, head, 0.02 * (layer + head), "", "")
             for layer in range(N_LAYERS) for head in range(N_HEADS)]
    patch[1 * N_HEADS + 2] = (1000, "activation", 1, 2, 0.81, "", "")
    patch[2 * N_HEADS + 1] = (1000, "activation", 2, 1, 0.44, "", "")
    patch += [(1000, "path_k_noising", 2, 1, 0.3, "L0H1", "L2H1"), (1000, "path_k_noising", -1, -1, 0.5, "L0H1", "L1H2,L2H1")]
    pd.DataFrame(patch, columns=["step", "kind", "layer", "head", "score", "senders", "receivers"]).to_parquet(
        root / "patching.parquet")
    doc = {"format": "headscreen-validation-run/1", "step": 1000, "probe": "retrieval", "circuit": [[1, 2], [2, 1]],
           "circuit_source": "screened induction circuit", "n_null": 20, "seed": 123, "ablations": ablations,
           "patching": {"format": "headscreen-patching/1", "step": 1000, "unchanged_heads": [],
                        "path_patching": {"component": "k", "results": []},
                        "path_patching_excluded_senders": {"heads": [[2, 3]], "why": "not in a layer below 1"}},
           "checkpoints": [ablations["zero"]], "status": "done"}
    (root / "validation.json").write_text(json.dumps(doc))
    zero = ablations["zero"]["probes"]["retrieval"]["tests"]["top1"]
    return {"null_top1": [r[5] for r in rows if r[6] == "zero" and r[2] == "matched_random" and r[4] == "top1"],
            "effect_ratio": zero["effect_ratio"], "p_value": zero["p_value"], "patch_12": 0.81,
            "mean_effect_ratio": ablations["mean"]["probes"]["retrieval"]["tests"]["top1"]["effect_ratio"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    truth_a = make_run(root / "tiny-a" / "run1", "a", validated=True)
    truth_b = make_run(root / "tiny-b" / "run1", "b", validated=False)
    return {"root": root, "a": root / "tiny-a" / "run1", "b": root / "tiny-b" / "run1", "truth_a": truth_a,
            "truth_b": truth_b}


@pytest.fixture(scope="module")
def report_a(runs):
    return render_report([runs["a"]])


@pytest.fixture(scope="module")
def report_ab(runs):
    return render_report([runs["a"], runs["b"]], out=runs["root"] / "cmp")


def _json(paths) -> dict:
    return json.loads(paths["json"].read_text())


def _sections(doc, i=0) -> dict:
    return doc["runs"][i]["sections"]


# ---------------------------------------------------------------- the three formats


def test_all_three_formats_are_written_in_the_run_report_dir(runs, report_a):
    assert set(report_a) == {"html", "md", "json"}
    for kind, name in (("html", "report.html"), ("md", "report.md"), ("json", "report.json")):
        assert report_a[kind] == runs["a"] / "report" / name
        assert report_a[kind].stat().st_size > 500


def test_json_numbers_equal_the_stored_input(runs, report_a):
    doc = _json(report_a)
    truth = runs["truth_a"]
    circuits = truth["circuits"]
    sec = _sections(doc)
    assert doc["runs"][0]["step"] == 1000 and doc["runs"][0]["name"] == "tiny-a"
    assert doc["runs"][0]["probe"] == "retrieval"
    # circuits at the report step and at every step, as circuits.json holds them for the retrieval probe
    assert sec["circuits"]["data"]["circuits_at_step"] == circuits["steps"]["1000"]["retrieval"]
    assert sec["circuits"]["data"]["circuits_at_step"]["induction"] == [[1, 2], [2, 1]]  # the planted heads
    by_step = {r["step"]: r["induction"] for r in sec["circuits"]["data"]["by_step"]}
    assert by_step == {int(s): v["retrieval"]["induction"] for s, v in circuits["steps"].items()}
    classified = {(r["layer"], r["head"]): r["best_class"] for r in sec["circuits"]["data"]["classified"]}
    assert classified == {(0, 1): "previous", (1, 2): "induction", (2, 1): "induction", (2, 0): "first",
                          (2, 3): "first"}
    # emergence steps: every head that emerged, equal to circuits.json and to the planted crossings
    got = {(r["class"], r["layer"], r["head"]): r["step"] for r in sec["emergence"]["data"]["records"]}
    want = {(r["class"], r["layer"], r["head"]): r["emergence_step"] for r in circuits["emergence"]
            if r["probe"] == "retrieval" and r["emergence_step"] is not None}
    assert got == want
    assert got[("induction", 1, 2)] == 500 and got[("induction", 2, 1)] == 750 and got[("previous", 0, 1)] == 250
    assert all(r["tokens"] == r["step"] * TOKENS_PER_STEP for r in sec["emergence"]["data"]["records"])
    # BOS heads in layers 0/1 per step and probe
    bos = {(r["step"], r["probe"]): (r["layer0"], r["layer1"]) for r in sec["bos_layers01"]["data"]["records"]}
    assert bos == {(r["step"], r["probe"]): (r["bos_layer0"], r["bos_layer1"]) for r in circuits["bos_layers01"]}
    assert len(bos) == len(STEPS) * len(PROBES)
    # ablation summaries per kind and the null distributions, draw for draw
    recs = {r["ablation"]: r for r in sec["ablation"]["data"]["records"]}
    assert set(recs) == {"zero", "mean"}
    assert recs["zero"]["effect_ratio"] == truth["effect_ratio"] and recs["zero"]["p_value"] == truth["p_value"]
    assert recs["mean"]["effect_ratio"] == truth["mean_effect_ratio"] != truth["effect_ratio"]
    assert recs["zero"]["circuit"] == [[1, 2], [2, 1]] and recs["zero"]["metric"] == "top1"
    nulls = {n["ablation"]: n for n in sec["ablation"]["data"]["null_distributions"]}
    assert nulls["zero"]["random_draws"]["top1"] == pytest.approx(truth["null_top1"])
    assert nulls["zero"]["circuit"]["top1"] == pytest.approx(0.05) and nulls["zero"]["clean"]["top1"] == 0.62
    assert nulls["mean"]["circuit"]["top1"] == pytest.approx(0.62 - 0.57 * 0.8)
    assert len(sec["ablation"]["figures"]) == 2
    # patching grid, lead times, copying, selectivity
    grid = sec["patching"]["data"]["steps"]["1000"]
    assert grid[1][2] == pytest.approx(truth["patch_12"]) and len(grid) == N_LAYERS and len(grid[0]) == N_HEADS
    assert len(sec["patching"]["data"]["path_patching"]) == 2
    leads = {(r["layer"], r["head"]): r["lead_steps"] for r in sec["lead_times"]["data"]["records"]
             if r["class"] == "induction"}
    assert leads == {(1, 2): 500 - 250, (2, 1): 750 - 250}
    assert sec["lead_times"]["data"]["median_lead_steps_induction"] == 375
    assert sec["copying"]["data"]["noncanonical_steps"] == truth["copying_flagged"] == [250]
    sel = truth["selectivity"]
    for probe in PROBES:
        stored = sel[(sel["step"] == 1000) & (sel["probe"] == probe) & (sel["class"] == "induction")]
        grid = sec["selectivity"]["data"]["probes"][probe]["induction"]
        assert all(grid[r.layer][r.head] == r.selectivity for r in stored.itertuples())


def test_provenance_holds_the_manifest_fields(report_a):
    prov = _sections(_json(report_a))["provenance"]["data"]
    assert prov["model"] == "tiny-a" and prov["loading_mode"] == "raw"
    assert prov["git_commit"].startswith("0123456789abcdef")
    assert prov["package_versions"]["transformer-lens"] == "4.3.0"
    assert prov["seeds"] == {"probes": 42, "sketch": 0}
    assert prov["revisions"] == STEPS and prov["probe_settings"]["retrieval"]["seq_len"] == 64
    assert prov["source"] == {"kind": "local", "path": "/series/tiny-a"}
    assert prov["thresholds"]["induction_circuit"] == 50 and prov["thresholds"]["class_min"] == 30


def test_markdown_references_pngs_that_exist(report_a):
    md = report_a["md"].read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    doc = _json(report_a)
    listed = [f for s in _sections(doc).values() for f in s["figures"]]
    assert sorted(refs) == sorted(listed) and len(refs) >= 6
    for ref in refs:
        png = report_a["md"].parent / ref
        assert png.is_file() and png.read_bytes()[:8] == PNG_MAGIC
    for title, heading in ((t, f"### {t}") for _, t in SECTION_ORDER):
        assert heading in md, title
    assert "| L1H2 |" in md  # the classified-heads table


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.srcs, self.hrefs, self.imgs, self.external_tags = set(), [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if "src" in a:
            self.srcs.append(a["src"])
        if "href" in a:
            self.hrefs.append(a["href"])
        if tag == "img":
            self.imgs.append(a)
        if tag in ("link", "iframe", "object", "embed") or (tag == "script" and "src" in a):  # inline scripts only
            self.external_tags.append(tag)


def _parse(path: Path) -> _Collector:
    c = _Collector()
    c.feed(path.read_text())
    return c


def test_html_is_self_contained_and_has_every_section(report_a):
    html = report_a["html"].read_text()
    page = _parse(report_a["html"])
    assert page.external_tags == []
    assert page.srcs and all(s.startswith("data:image/png;base64,") for s in page.srcs)
    assert all(h.startswith("#") and h[1:] in page.ids for h in page.hrefs)
    assert "url(" not in html and "@import" not in html
    slug = _json(report_a)["runs"][0]["slug"]
    for key, title in SECTION_ORDER:
        assert f"{slug}-{key}" in page.ids, key
        assert f">{title}</h3>" in html
    n_figures = sum(len(s["figures"]) for s in _sections(_json(report_a)).values())
    assert len(page.imgs) == n_figures
    for img in page.imgs:
        png = base64.b64decode(img["src"].split(",", 1)[1])
        assert png[:8] == PNG_MAGIC and int.from_bytes(png[16:20], "big") == int(img["width"])
        assert img["alt"]


def test_run_without_validation_says_so(report_ab):
    doc = _json(report_ab)
    run_b = doc["runs"][1]
    assert run_b["name"] == "tiny-b"
    for key in ("ablation", "patching"):
        sec = run_b["sections"][key]
        assert sec["available"] is False and sec["data"]["validated"] is False and sec["figures"] == []
        assert any("Validation has not been run" in n for n in sec["notices"]), key
    assert _sections(doc, 0)["ablation"]["available"] is True  # run a is validated: no such notice
    assert not any("Validation has not been run" in n for n in _sections(doc, 0)["ablation"]["notices"])
    html, md = report_ab["html"].read_text(), report_ab["md"].read_text()
    ablation_html = html.split(f'id="{run_b["slug"]}-ablation"')[1].split("</section>")[0]
    assert "Validation has not been run for this run" in ablation_html and "headscreen validate" in ablation_html
    assert md.count("Validation has not been run for this run") == 2  # ablation and patching of run b


def test_every_section_is_filled_or_says_what_is_missing(tmp_path, report_a, report_ab):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "manifest.json").write_text(json.dumps({"config": {"name": "bare-model"}}))
    paths = render_report([bare])
    for doc in (_json(report_a), _json(report_ab), _json(paths)):
        for run in doc["runs"]:
            for key, sec in run["sections"].items():
                assert sec["available"] or sec["notices"], key
    bare_sections = _sections(_json(paths))
    assert not bare_sections["selectivity"]["available"]
    assert "selectivity.parquet" in bare_sections["selectivity"]["notices"][0]
    assert "not recorded in manifest.json" in paths["md"].read_text()


def test_a_directory_that_is_not_a_run_gives_a_clear_error(runs, tmp_path):
    not_run = tmp_path / "notarun"
    not_run.mkdir()
    with pytest.raises(NotARunDirectoryError, match="manifest.json") as err:
        render_report([not_run])
    assert str(not_run) in str(err.value) and "headscreen screen" in str(err.value)
    with pytest.raises(NotARunDirectoryError) as err:  # a results root: the runs below it are named
        render_report([runs["root"]])
    assert str(runs["a"]) in str(err.value)
    with pytest.raises(NotARunDirectoryError, match="does not exist"):
        render_report([tmp_path / "nowhere"])
    assert not (not_run / "report").exists()


def test_a_truncated_table_is_an_error_naming_the_file(runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs["a"], broken, ignore=shutil.ignore_patterns("report"))
    (broken / "classes.parquet").write_bytes((broken / "classes.parquet").read_bytes()[:100])
    with pytest.raises(RunFileError, match="classes.parquet"):
        render_report([broken])


def test_step_and_probe_options(runs, tmp_path):
    doc = _json(render_report([runs["a"]], out=tmp_path / "r750", step=750, probe="repeated"))
    sec = _sections(doc)
    assert (doc["runs"][0]["step"], doc["runs"][0]["probe"]) == (750, "repeated")
    # on the repeated probe the planted induction values are halved: at step 750 only L1H2 (60x) is >= 50x,
    # where the retrieval probe has L1H2 and L2H1
    assert sec["circuits"]["data"]["circuits_at_step"]["induction"] == [[1, 2]]
    assert runs["truth_a"]["circuits"]["steps"]["750"]["retrieval"]["induction"] == [[1, 2], [2, 1]]
    assert sec["bos_layers01"]["data"]["at_step"] == {"step": 750, "probe": "repeated", "layer0": 0, "layer1": 0,
                                                      "total": 0}
    got = {(r["class"], r["layer"], r["head"]): r["step"] for r in sec["emergence"]["data"]["records"]}
    assert got[("induction", 1, 2)] == 750 and ("induction", 2, 1) not in got
    with pytest.raises(StepNotFoundError, match="available steps: 0, 250, 500, 750, 1000"):
        render_report([runs["a"]], out=tmp_path / "r7", step=7)
    with pytest.raises(ValueError, match="probe 'nope' was not screened"):
        render_report([runs["a"]], out=tmp_path / "x", probe="nope")
    assert not (tmp_path / "r7").exists() and not (tmp_path / "x").exists()


def test_two_runs_give_one_comparison_row_per_model(runs, report_ab):
    doc = _json(report_ab)
    rows = doc["comparison"]["data"]["rows"]
    assert [r["model"] for r in rows] == ["tiny-a", "tiny-b"]
    a, b = rows
    assert a["induction_circuit"] == [[1, 2], [2, 1]] and a["induction_circuit_size"] == 2
    assert b["induction_circuit"] == [[1, 2]] and b["induction_circuit_size"] == 1
    assert (a["effect_ratio"], a["p_value"]) == (runs["truth_a"]["effect_ratio"], runs["truth_a"]["p_value"])
    assert b["validated"] is False and b["effect_ratio"] is None
    want_b = next(r for r in runs["truth_b"]["circuits"]["bos_layers01"] if r["step"] == 1000
                  and r["probe"] == "retrieval")
    assert (b["bos_layer0"], b["bos_layer1"]) == (want_b["bos_layer0"], want_b["bos_layer1"]) == (0, 1)
    assert (a["bos_layer0"], a["bos_layer1"]) == (0, 0)
    assert a["median_lead_steps"] == 375 and b["median_lead_steps"] == 250
    html = report_ab["html"].read_text()
    table = html.split('id="comparison"')[1].split("</section>")[0]
    assert table.count("<tr>") == 1 + len(rows)  # header + one row per model
    assert "not validated" in table
    md = report_ab["md"].read_text()
    assert "## Comparison across models" in md
    assert len([ln for ln in md.split("## Comparison across models")[1].split("\n## ")[0].splitlines()
                if ln.startswith("| tiny-")]) == 2
    assert len({r["slug"] for r in doc["runs"]}) == 2


# ---------------------------------------------------------------- a real browser


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0")

# injected into a copy of the page: writes how many images failed to decode, for --dump-dom to read
_IMAGE_PROBE = ("<script>window.addEventListener('load',()=>{const im=[...document.images];"
                "const bad=im.filter(i=>!(i.complete&&i.naturalWidth>0)).length;const p=document.createElement('p');"
                "p.id='image-probe';p.textContent='IMAGES '+im.length+' BROKEN '+bad;document.body.appendChild(p);});"
                "</script>")


def _browse(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=90)


def _console_errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]


def _check_page(page: Path, tmp: Path) -> tuple[list[str], Path, str]:
    shot = tmp / "screenshot.png"
    res = _browse(page, tmp, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars")
    probe = tmp / "probe.html"
    probe.write_text(page.read_text().replace("</body>", _IMAGE_PROBE + "</body>"))
    dom = _browse(probe, tmp, "--dump-dom", "--virtual-time-budget=5000").stdout
    return _console_errors(res.stderr), shot, dom


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (apt-get install -y chromium); "
                                                  "the browser check of report.html is skipped")
def test_html_opens_in_headless_chromium_without_errors(report_ab, tmp_path):
    from matplotlib.image import imread

    errors, shot, dom = _check_page(report_ab["html"], tmp_path)
    assert errors == []
    assert shot.is_file() and shot.read_bytes()[:8] == PNG_MAGIC
    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1280) and pixels[..., :3].std() > 0.05  # not a blank page
    n_imgs = report_ab["html"].read_text().count("<img ")
    assert f"IMAGES {n_imgs} BROKEN 0" in dom and n_imgs >= 8
    assert 'id="comparison"' in dom and "run2-tiny-b-ablation" in dom


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (apt-get install -y chromium)")
def test_browser_check_catches_a_broken_page(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><img src='missing.png'><script>console.error('boom')</script></body></html>")
    errors, _, dom = _check_page(bad, tmp_path)
    assert any("boom" in e for e in errors)
    assert "IMAGES 1 BROKEN 1" in dom


def test_schema_reads_the_simpler_circuits_layouts_too():
    from headscreen.report.schema import (
        SchemaError,
        bos_layers01_records,
        circuits_by_step,
        emergence_records,
        validation_records,
    )

    doc = {"steps": {"500": {"induction": ["L1H2", {"layer": 2, "head": 1}], "previous": [[0, 1]], "bos": []}},
           "emergence": {"induction": {"L1H2": 500, "L2H1": None}},
           "bos_layers01": {"500": {"layer0": 0, "layer1": 2}, "750": 3}}
    assert circuits_by_step(doc) == [{"step": 500, "probe": None, "induction": [(1, 2), (2, 1)],
                                      "previous": [(0, 1)], "bos": []}]
    assert [(r["layer"], r["head"], r["step"]) for r in emergence_records(doc)] == [(1, 2, 500), (2, 1, None)]
    assert [(r["step"], r["layer0"], r["layer1"], r["total"]) for r in bos_layers01_records(doc)] == [
        (500, 0, 2, 2), (750, None, None, 3)]
    flat = validation_records([{"step": 9, "circuit": [[0, 0]], "effect_ratio": 3.0, "p_value": 0.01}])
    assert (flat[0]["effect_ratio"], flat[0]["p_value"], flat[0]["circuit"]) == (3.0, 0.01, [(0, 0)])
    with pytest.raises(SchemaError, match="'steps' 500 'induction'.*L<layer>H<head>"):
        circuits_by_step({"steps": {"500": {"induction": ["head four"]}}})


def test_ablation_table_names_the_null(report_a):
    md = report_a["md"].read_text()
    assert "Null: exact: every matched set once (20 matched sets exist); p cannot go below 1/(1 + draws)." in md


def test_patching_section_names_excluded_path_senders(report_a):
    md = report_a["md"].read_text()
    assert "Previous-token heads left out of the path-patching senders: L2H3 (not in a layer below 1)." in md


def test_bos_section_counts_gu_sink_heads_per_layer(tmp_path):
    root = tmp_path / "run"
    make_run(root, "s", validated=False)
    hs = pd.read_parquet(root / "head_scores.parquet")
    last = max(STEPS)
    extra = pd.DataFrame([{"step": s, "layer": 1, "head": 2, "probe": p, "metric": "sink_rate", "value": 0.8}
                          for s in STEPS[-2:] for p in PROBES])
    pd.concat([hs, extra], ignore_index=True).to_parquet(root / "head_scores.parquet")
    doc = _json(render_report([root], out=tmp_path / "rep"))
    data = _sections(doc, 0)["bos_layers01"]["data"]["sink_heads"]
    assert data["1"] == {"heads_at_step": [2], "checkpoints_flagged": 2}
    assert data["0"] == {"heads_at_step": [], "checkpoints_flagged": 0}  # the fixture's 0.1 rates stay below 0.5
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"Gu sink heads at step {last}" in md and "L1H2" in md


# ---------------------------------------------------------------- findings first, provenance last


def test_report_opens_with_findings_and_ends_with_provenance(report_a):
    doc = _json(report_a)
    keys = list(_sections(doc))
    assert keys[:2] == ["summary", "findings"] and keys[-1] == "provenance" and "preid" in keys
    html = report_a["html"].read_text()
    order = [html.index(f">{title}</h3>") for _, title in SECTION_ORDER]
    assert order == sorted(order)  # the page follows SECTION_ORDER
    summary = {row[0]: row[1] for row in _table_rows(html, "summary")}
    assert summary["Induction circuit (step 1000, retrieval probe)"] == "L1H2 (200×), L2H1 (80×)"
    assert "L1H2 at step 500" in summary["Induction heads emerged"]
    assert "p = " in summary["Ablation of the circuit"] and "zero ablation" in summary["Ablation of the circuit"]


def _table_rows(html: str, key: str) -> list[list[str]]:
    part = html.split(f'class="section-{key}"')[1].split("</section>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", part, flags=re.S)
    return [re.findall(r"<td[^>]*>(.*?)</td>", r, flags=re.S) for r in rows if "<td" in r]


def test_findings_check_verdicts(report_ab):
    doc = _json(report_ab)
    a = {c["finding"]: c for c in _sections(doc, 0)["findings"]["data"]["checks"]}
    b = {c["finding"]: c for c in _sections(doc, 1)["findings"]["data"]["checks"]}
    circuit = "3–4-head induction circuit at ≥ 50×"
    assert a[circuit]["verdict"] == b[circuit]["verdict"] == "not held"  # 2 heads and 1 head
    bos = "no BOS heads in layers 0 and 1"
    assert a[bos]["verdict"] == "held"  # model a's BOS heads are in layer 2
    assert b[bos]["verdict"] == "not held" and "step 750, 1000" in b[bos]["evidence"]
    pre = "the spectral signal pre-identifies the circuit"
    # circuit L1H2, L2H1: 4 x 4 within-layer relabellings, so p >= 1/16 > 0.05
    assert a[pre]["verdict"] == "cannot test" and "16 relabellings" in a[pre]["evidence"]


def test_long_per_checkpoint_tables_are_folded_under_a_timeline(report_a):
    html, md = report_a["html"].read_text(), report_a["md"].read_text()
    for key in ("circuits", "bos_layers01", "copying"):
        part = html.split(f'class="section-{key}"')[1].split("</section>")[0]
        assert "<details><summary>" in part and "<img " in part, key
    figs = _sections(_json(report_a))
    assert any("circuit_timeline" in f for f in figs["circuits"]["figures"])
    assert any("bos_timeline" in f for f in figs["bos_layers01"]["figures"])
    assert md.count("<details><summary>") == 3 and md.count("</details>") == 3


def test_preid_is_computed_by_the_report_pipeline_never_by_the_report(runs, tmp_path):
    from headscreen.report.findings_sections import preid_section
    from headscreen.report.inputs import MissingReportInput, ReportInputs
    from headscreen.report.load import load_run
    from headscreen.report.runinfo import Context, step_tokens, thresholds
    from pipelines.preid import preidentify_run
    from pipelines.report_prep import prepare

    def section(path, probe="retrieval", inputs=None):
        r = load_run(path)
        return preid_section(Context(run=r, step=1000, slug="a", tokens=step_tokens(r), thresholds=thresholds(r),
                                     probe=probe, inputs=inputs or ReportInputs()))

    run, twin = tmp_path / "a", tmp_path / "twin"
    for dest in (run, twin):
        shutil.copytree(runs["a"], dest, ignore=shutil.ignore_patterns("report", "preid.*"))
    with pytest.raises(MissingReportInput, match="preid.json / preid.parquet are not in the run"):
        section(run)  # the report package does not compute it
    said = []
    assert prepare([run], say=said.append).preid == {}  # written into the run, nothing kept in memory
    assert len(said) == 1 and "wrote preid.json" in said[0] and (run / "preid.parquet").is_file()
    after = section(run)
    assert not any("Computed now" in n for n in after.notices)
    written = preidentify_run(twin)  # the pipeline's own function on an identical copy: the same document
    assert written["circuit_source"] == "validated" and written["circuit"] == [[1, 2], [2, 1]]
    assert after.data["metrics"] == written["metrics"] and after.data["null"]["n_labelings"] == 16
    # a preid.json from before validation (selectivity circuit) is stale once validation.json exists
    stale = json.loads((run / "preid.json").read_text()) | {"circuit_source": "selectivity"}
    (run / "preid.json").write_text(json.dumps(stale))
    with pytest.raises(MissingReportInput, match="predates validation.json"):
        section(run)
    prepare([run], say=said.append)
    assert "predates validation.json" in said[-1] and section(run).data["circuit_source"] == "validated"
    # an unvalidated run's preid.json is for one probe: another report probe computes it in memory only
    run_b = tmp_path / "b"
    shutil.copytree(runs["b"], run_b, ignore=shutil.ignore_patterns("report"))
    assert preidentify_run(run_b)["probe"] == "retrieval"
    inputs = prepare([run_b], probe="repeated", say=said.append)
    other = section(run_b, probe="repeated", inputs=inputs)
    assert any("is for the retrieval probe" in n for n in other.notices) and other.data["probe"] == "repeated"
    assert json.loads((run_b / "preid.json").read_text())["probe"] == "retrieval"  # the run's own file is kept


def test_a_report_loads_each_screen_run_once(runs, report_ab, tmp_path, monkeypatch):
    # the preparing step (report_prep) loads the run to check its pre-identification; the report renders that
    # same load instead of reading every table again
    import headscreen.report.build as build
    import headscreen.report.load as load

    calls = []
    real = load.load_run

    def counting(path, **kw):
        calls.append(Path(path).resolve())
        return real(path, **kw)

    monkeypatch.setattr(load, "load_run", counting)
    monkeypatch.setattr(build, "load_run", counting)
    doc = _json(render_report([runs["a"], runs["b"]], out=tmp_path / "once"))
    assert sorted(calls) == sorted(Path(runs[k]).resolve() for k in ("a", "b"))
    assert doc["runs"] == _json(report_ab)["runs"]  # the same report as loading in the renderer
