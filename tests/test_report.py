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

from headscreen.report import NotARunDirectoryError, RunFileError, StepNotFoundError, build_report
from headscreen.report.content import SECTION_ORDER

N_LAYERS, N_HEADS = 3, 4
STEPS = [0, 250, 500, 750, 1000]
TOKENS_PER_STEP = 2048
CLASSES = ("induction", "duplicate", "previous", "self", "bos", "local")
PROBE = "repeated"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- synthetic runs


def _planted_selectivity(model: str) -> dict[tuple[int, int, str], list[float]]:
    """(layer, head, class) -> selectivity per step; every other entry is near 1 (no preference)."""
    plant = {
        (1, 2, "induction"): [1.0, 2.0, 60.0, 120.0, 200.0],
        (0, 1, "previous"): [1.0, 120.0, 150.0, 160.0, 170.0],
        (2, 0, "bos"): [1.0, 5.0, 40.0, 45.0, 50.0],
        (2, 3, "bos"): [1.0, 5.0, 35.0, 40.0, 42.0],
    }
    if model == "a":
        plant[(2, 1, "induction")] = [1.0, 1.0, 10.0, 55.0, 80.0]
    else:  # model b: one induction head only, and a BOS head in layer 1 at the last two checkpoints
        plant[(1, 0, "bos")] = [1.0, 2.0, 8.0, 31.0, 33.0]
    return plant


def _classify(sel: pd.DataFrame) -> pd.DataFrame:
    """The METHODS §7 rules applied to the planted selectivity (the screen's job, done here for the fixture)."""
    rows = []
    for (step, layer, head), g in sel.groupby(["step", "layer", "head"]):
        by_class = dict(zip(g["class"], g["selectivity"], strict=True))
        best = max(by_class, key=by_class.get)
        best_sel = by_class[best]
        best_class = best if best_sel >= 30 else "unclassified"
        rows.append({"step": step, "layer": layer, "head": head, "probe": PROBE, "best_class": best_class,
                     "best_selectivity": best_sel, "induction_selectivity": by_class["induction"],
                     "in_induction_circuit": by_class["induction"] >= 50,
                     "in_previous_circuit": best_class == "previous" and best_sel >= 100,
                     "is_bos": best_class == "bos"})
    return pd.DataFrame(rows)


def make_run(root: Path, model: str, *, validated: bool) -> dict:
    """Write a complete run directory for model 'a' or 'b'; returns the planted truth."""
    root.mkdir(parents=True)
    rng = np.random.RandomState(0 if model == "a" else 1)
    plant = _planted_selectivity(model)
    sel_rows = []
    for si, step in enumerate(STEPS):
        for layer in range(N_LAYERS):
            for head in range(N_HEADS):
                for cls in CLASSES:
                    v = plant.get((layer, head, cls), [1.0 + 0.1 * rng.rand()] * len(STEPS))[si]
                    sel_rows.append({"step": step, "layer": layer, "head": head, "probe": PROBE, "class": cls,
                                     "selectivity": v, "null_z": (v - 1.0) / 0.5})
    sel = pd.DataFrame(sel_rows)
    sel.to_parquet(root / "selectivity.parquet")
    classes = _classify(sel)
    classes.to_parquet(root / "classes.parquet")

    def heads(step, mask_col):
        c = classes[(classes["step"] == step) & classes[mask_col]]
        return sorted([int(a), int(b)] for a, b in zip(c["layer"], c["head"], strict=True))

    circuits_steps = {str(s): {"induction": heads(s, "in_induction_circuit"), "previous": heads(s, "in_previous_circuit"),
                               "bos": heads(s, "is_bos")} for s in STEPS}
    emergence: dict[str, dict[str, int]] = {}
    for (layer, head, cls), values in plant.items():
        threshold = 50 if cls == "induction" else 30
        first = next((STEPS[i] for i, v in enumerate(values) if v >= threshold), None)
        emergence.setdefault(cls, {})[f"L{layer}H{head}"] = first
    bos01 = {}
    for s in STEPS:
        b = heads(s, "is_bos")
        bos01[str(s)] = {"layer0": sum(1 for h in b if h[0] == 0), "layer1": sum(1 for h in b if h[0] == 1)}
    induction_heads = [k for k in emergence["induction"] if emergence["induction"][k] is not None]
    lead_times = [{"layer": int(k[1]), "head": int(k[3]), "metric": "pr", "class": "induction", "onset_step": 250,
                   "emergence_step": emergence["induction"][k]} for k in induction_heads]
    circuits = {"thresholds": {"class": 30, "bos": 30, "induction_circuit": 50, "previous_circuit": 100},
                "steps": circuits_steps, "emergence": emergence, "lead_times": lead_times, "bos_layers01": bos01,
                "pr_ranking": [{"layer": 1, "head": 2, "integral": 9.5}, {"layer": 2, "head": 1, "integral": 7.0}]}
    (root / "circuits.json").write_text(json.dumps(circuits))

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
                pr_rows.append({"step": step, "tokens": step * TOKENS_PER_STEP, "layer": layer, "head": head,
                                "probe": PROBE, "pr": 2.0 + (si * (2 + layer) if (layer, head) in circuit_heads else rng.rand())})
    pd.DataFrame(fp_rows).to_parquet(root / "fingerprints.parquet")
    pd.DataFrame(pr_rows).to_parquet(root / "participation.parquet")
    pd.DataFrame([{"step": s, "layer": 0, "head": 0, "probe": PROBE, "metric": "sink_rate", "value": 0.1}
                  for s in STEPS]).to_parquet(root / "head_scores.parquet")
    pd.DataFrame([{"layer": h[0], "head": h[1], "metric": "pr", "onset_step": 250.0} for h in sorted(circuit_heads)]
                 + [{"layer": 0, "head": 0, "metric": "pr", "onset_step": np.nan}]).to_parquet(root / "onsets.parquet")
    loss_first = [4.8, 4.8, 4.7, 4.7, 4.6]
    loss_second = [4.8, 3.0, 2.0, 1.0, 0.8]
    max_ind = [sel[(sel["step"] == s) & (sel["class"] == "induction")]["selectivity"].max() for s in STEPS]
    gap = [a - b for a, b in zip(loss_first, loss_second, strict=True)]
    pd.DataFrame({"step": STEPS, "loss_first": loss_first, "loss_second": loss_second, "loss_gap": gap,
                  "max_induction_selectivity": max_ind,
                  "noncanonical_copying": [g > 1.0 and m < 50 for g, m in zip(gap, max_ind, strict=True)]},
                 ).to_parquet(root / "copying.parquet")

    truth = {"plant": plant, "circuits": circuits, "copying_flagged": [s for s, g, m in zip(STEPS, gap, max_ind, strict=True)
                                                                        if g > 1.0 and m < 50]}
    manifest = {"model": f"tiny-{model}", "config": {"name": f"tiny-{model}", "source": f"local:/series/tiny-{model}",
                                                      "probes": {"n": 64, "seq_len": 64, "seed": 42}},
                "series": {"name": f"tiny-{model}", "checkpoints": [{"step": s, "tokens": s * TOKENS_PER_STEP}
                                                                     for s in STEPS]},
                "thresholds": circuits["thresholds"], "seeds": {"probes": 42, "matched_random": 123},
                "loading_mode": "raw", "versions": {"torch": "2.4.0", "transformer_lens": "4.3.0"},
                "git_commit": "0123456789abcdef0123456789abcdef01234567"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    if validated:
        truth.update(_write_validation(root, rng))
    return truth


def _write_validation(root: Path, rng) -> dict:
    null_top1 = (0.55 + 0.02 * rng.randn(20)).tolist()
    rows = [{"step": 1000, "probe": PROBE, "condition": "clean", "draw": 0, "metric": "top1", "value": 0.62},
            {"step": 1000, "probe": PROBE, "condition": "circuit", "draw": 0, "metric": "top1", "value": 0.05},
            {"step": 1000, "probe": PROBE, "condition": "upper_bound", "draw": 0, "metric": "top1", "value": 0.01}]
    rows += [{"step": 1000, "probe": PROBE, "condition": "matched_random", "draw": i, "metric": "top1", "value": v}
             for i, v in enumerate(null_top1)]
    rows += [{"step": 1000, "probe": PROBE, "condition": c, "draw": 0, "metric": "ce", "value": v}
             for c, v in (("clean", 1.1), ("circuit", 3.9), ("upper_bound", 4.5))]
    rows += [{"step": 1000, "probe": PROBE, "condition": "matched_random", "draw": i, "metric": "ce", "value": 1.2 + 0.05 * i}
             for i in range(20)]
    pd.DataFrame(rows).to_parquet(root / "validation.parquet")
    summary = {"checkpoints": [{
        "step": 1000, "probe": PROBE, "circuit": [[1, 2], [2, 1]], "metric": "top1",
        "conditions": {"clean": {"top1": 0.62, "ce": 1.1}, "circuit": {"top1": 0.05, "ce": 3.9},
                       "matched_random": {"top1": float(np.mean(null_top1)), "ce": 1.675},
                       "upper_bound": {"top1": 0.01, "ce": 4.5}},
        "effect_ratio": 8.14, "p_value": 0.0476, "n_draws": 20, "seeds": {"matched_random": 123}}]}
    (root / "validation.json").write_text(json.dumps(summary))
    patch = [{"step": 1000, "layer": layer, "head": head, "kind": "head", "score": 0.02 * (layer + head)}
             for layer in range(N_LAYERS) for head in range(N_HEADS)]
    patch[1 * N_HEADS + 2]["score"] = 0.81
    patch[2 * N_HEADS + 1]["score"] = 0.44
    patch.append({"step": 1000, "layer": 2, "head": 1, "kind": "path", "score": 0.3, "sender_layer": 1.0,
                  "sender_head": 2.0})
    pd.DataFrame(patch).to_parquet(root / "patching.parquet")
    return {"null_top1": null_top1, "effect_ratio": 8.14, "p_value": 0.0476, "patch_12": 0.81}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    truth_a = make_run(root / "tiny-a" / "run1", "a", validated=True)
    truth_b = make_run(root / "tiny-b" / "run1", "b", validated=False)
    return {"root": root, "a": root / "tiny-a" / "run1", "b": root / "tiny-b" / "run1", "truth_a": truth_a,
            "truth_b": truth_b}


@pytest.fixture(scope="module")
def report_a(runs):
    return build_report([runs["a"]])


@pytest.fixture(scope="module")
def report_b(runs):
    return build_report([runs["b"]])


@pytest.fixture(scope="module")
def report_ab(runs):
    return build_report([runs["a"], runs["b"]], out_dir=runs["root"] / "cmp")


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
    sec = _sections(doc)
    assert doc["runs"][0]["step"] == 1000 and doc["runs"][0]["name"] == "tiny-a"
    # circuits at the report step and at every step, exactly as circuits.json holds them
    assert sec["circuits"]["data"]["circuits_at_step"] == truth["circuits"]["steps"]["1000"]
    assert sec["circuits"]["data"]["circuits_at_step"]["induction"] == [[1, 2], [2, 1]]
    by_step = {r["step"]: r["induction"] for r in sec["circuits"]["data"]["by_step"]}
    assert by_step == {int(s): v["induction"] for s, v in truth["circuits"]["steps"].items()}
    # emergence steps
    got = {(r["class"], r["layer"], r["head"]): r["step"] for r in sec["emergence"]["data"]["records"]}
    want = {(cls, int(k[1]), int(k[3])): s for cls, d in truth["circuits"]["emergence"].items() for k, s in d.items()}
    assert got == want and got[("induction", 2, 1)] == 750
    tokens = {r["step"]: r["tokens"] for r in sec["emergence"]["data"]["records"] if r["step"] is not None}
    assert all(t == s * TOKENS_PER_STEP for s, t in tokens.items())
    # BOS heads in layers 0/1 per step
    bos = {r["step"]: (r["layer0"], r["layer1"]) for r in sec["bos_layers01"]["data"]["records"]}
    assert bos == {int(s): (v["layer0"], v["layer1"]) for s, v in truth["circuits"]["bos_layers01"].items()}
    # ablation summary and the null distribution, draw for draw
    rec = sec["ablation"]["data"]["records"][0]
    assert rec["effect_ratio"] == truth["effect_ratio"] and rec["p_value"] == truth["p_value"]
    assert rec["circuit"] == [[1, 2], [2, 1]]
    null = sec["ablation"]["data"]["null_distributions"][0]
    assert null["random_draws"]["top1"] == pytest.approx(truth["null_top1"])
    assert null["circuit"]["top1"] == 0.05 and null["clean"]["top1"] == 0.62
    # patching grid and lead times
    grid = sec["patching"]["data"]["steps"]["1000"]
    assert grid[1][2] == pytest.approx(truth["patch_12"]) and len(grid) == N_LAYERS and len(grid[0]) == N_HEADS
    assert len(sec["patching"]["data"]["path_patching"]) == 1
    assert sec["lead_times"]["data"]["median_lead_steps_induction"] == np.median([500 - 250, 750 - 250])
    assert sec["copying"]["data"]["noncanonical_steps"] == truth["copying_flagged"] == [250]
    sel = sec["selectivity"]["data"]["probes"][PROBE]["induction"]
    assert sel[1][2] == truth["plant"][(1, 2, "induction")][-1]


def test_provenance_holds_the_manifest_fields(report_a):
    prov = _sections(_json(report_a))["provenance"]["data"]
    assert prov["model"] == "tiny-a" and prov["loading_mode"] == "raw"
    assert prov["git_commit"].startswith("0123456789abcdef")
    assert prov["package_versions"]["transformer_lens"] == "4.3.0"
    assert prov["seeds"] == {"probes": 42, "matched_random": 123}
    assert prov["revisions"] == STEPS and prov["probe_settings"]["seq_len"] == 64
    assert prov["source"] == "local:/series/tiny-a" and prov["thresholds"]["induction_circuit"] == 50


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
        if tag in ("link", "script", "iframe", "object", "embed"):
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


def test_run_without_validation_says_so(report_b):
    doc = _json(report_b)
    sec = _sections(doc)
    for key in ("ablation", "patching"):
        assert sec[key]["available"] is False and sec[key]["data"]["validated"] is False
        assert any("Validation has not been run" in n for n in sec[key]["notices"]), key
    html, md = report_b["html"].read_text(), report_b["md"].read_text()
    ablation_html = html.split(f'id="{doc["runs"][0]["slug"]}-ablation"')[1].split("</section>")[0]
    assert "Validation has not been run for this run" in ablation_html and "headscreen validate" in ablation_html
    assert "Validation has not been run for this run" in md


def test_every_section_is_filled_or_says_what_is_missing(tmp_path, report_a, report_b):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "manifest.json").write_text(json.dumps({"config": {"name": "bare-model"}}))
    paths = build_report([bare])
    for doc in (_json(report_a), _json(report_b), _json(paths)):
        for key, sec in _sections(doc).items():
            assert sec["available"] or sec["notices"], key
    bare_sections = _sections(_json(paths))
    assert not bare_sections["selectivity"]["available"]
    assert "selectivity.parquet" in bare_sections["selectivity"]["notices"][0]
    assert "not recorded in manifest.json" in paths["md"].read_text()


def test_a_directory_that_is_not_a_run_gives_a_clear_error(runs, tmp_path):
    not_run = tmp_path / "notarun"
    not_run.mkdir()
    with pytest.raises(NotARunDirectoryError, match="manifest.json") as err:
        build_report([not_run])
    assert str(not_run) in str(err.value) and "headscreen screen" in str(err.value)
    with pytest.raises(NotARunDirectoryError) as err:  # a results root: the runs below it are named
        build_report([runs["root"]])
    assert str(runs["a"]) in str(err.value)
    with pytest.raises(NotARunDirectoryError, match="does not exist"):
        build_report([tmp_path / "nowhere"])
    assert not (not_run / "report").exists()


def test_a_truncated_table_is_an_error_naming_the_file(runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs["a"], broken, ignore=shutil.ignore_patterns("report"))
    (broken / "classes.parquet").write_bytes((broken / "classes.parquet").read_bytes()[:100])
    with pytest.raises(RunFileError, match="classes.parquet"):
        build_report([broken])


def test_step_option_and_unknown_step(runs, tmp_path):
    doc = _json(build_report([runs["a"]], out_dir=tmp_path / "r500", step=500))
    sec = _sections(doc)
    assert doc["runs"][0]["step"] == 500
    assert sec["circuits"]["data"]["circuits_at_step"]["induction"] == [[1, 2]]
    assert sec["bos_layers01"]["data"]["at_step"]["step"] == 500
    with pytest.raises(StepNotFoundError, match="available steps: 0, 250, 500, 750, 1000"):
        build_report([runs["a"]], out_dir=tmp_path / "r7", step=7)


def test_two_runs_give_one_comparison_row_per_model(runs, report_ab):
    doc = _json(report_ab)
    rows = doc["comparison"]["data"]["rows"]
    assert [r["model"] for r in rows] == ["tiny-a", "tiny-b"]
    a, b = rows
    assert a["induction_circuit"] == [[1, 2], [2, 1]] and a["induction_circuit_size"] == 2
    assert b["induction_circuit"] == [[1, 2]] and b["induction_circuit_size"] == 1
    assert (a["effect_ratio"], a["p_value"]) == (runs["truth_a"]["effect_ratio"], runs["truth_a"]["p_value"])
    assert b["validated"] is False and b["effect_ratio"] is None
    want_b = runs["truth_b"]["circuits"]["bos_layers01"]["1000"]
    assert (b["bos_layer0"], b["bos_layer1"]) == (want_b["layer0"], want_b["layer1"]) == (0, 1)
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
