"""Every file, table, column, metric name and JSON key a screen + validate writes is in docs/run-format.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from headscreen.probes.suite import ProbeSuite
from headscreen.spectral import SpectralConfig
from headscreen.testing import save_tiny_series
from pipelines.screen import ScreenSettings, screen
from pipelines.validate import validate

torch.set_num_threads(1)
DOC = Path(__file__).resolve().parent.parent / "docs" / "run-format.md"
# families of generated names and the pattern the doc writes for them
FAMILIES = [(re.compile(r"sigma_\d+"), "sigma_1..sigma_W"), (re.compile(r"offset_\d+"), "offset_<k>"),
            (re.compile(r"head_L\d+H\d+"), "head_L<l>H<h>")]


def documented() -> set[str]:
    """Every name written in backticks in the doc (lists inside one pair of backticks split apart)."""
    names: set[str] = set()
    text = re.sub(r"```.*?```", " ", DOC.read_text(), flags=re.DOTALL)  # code blocks first: their fences
    for chunk in re.findall(r"`([^`]+)`", text):
        names.add(chunk)
        names.update(re.findall(r"[A-Za-z_][\w.<>-]*", chunk))
    return names


def family(name: str) -> str:
    for pattern, written in FAMILIES:
        if pattern.fullmatch(name):
            return written
    return name


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fmt")
    root = save_tiny_series(tmp / "s", "gpt_neox", [0, 1, 2, 4, 8, 16], n_ctx=64)
    settings = ScreenSettings(spectral=SpectralConfig(window=3),
                              probes=ProbeSuite(n_retrieval=16, n_repeated=8, micro_batch=16))
    out = tmp / "run"
    screen(root, out, settings=settings, progress=False)
    validate(out, circuit=[[1, 0], [1, 1]], n_null=3, ablations=("zero",), progress=False)
    return out


def _written(out: Path) -> dict[str, set[str]]:
    """{where: names} for everything the run directory holds."""
    found: dict[str, set[str]] = {"files": {p.name for p in out.iterdir()},
                                  "record kinds": {p.name for p in (out / "records").iterdir()}}
    for p in sorted(out.glob("*.parquet")):
        df = pd.read_parquet(p)
        found[f"{p.name} columns"] = set(df.columns)
        for col in ("metric", "class", "condition", "kind", "ablation"):
            if col in df:
                values = {str(v) for v in df[col].unique()}
                base = {re.sub(r"_(z|rel)$", "", v) for v in values}  # <metric>_z / <metric>_rel
                found[f"{p.name} {col} values"] = {family(v) for v in base}
                if base != values:
                    found[f"{p.name} {col} suffixes"] = {"<metric>_z", "<metric>_rel"}
    m = json.loads((out / "manifest.json").read_text())
    found["manifest keys"] = set(m)
    for key in ("config", "series", "seeds", "sketch", "fingerprints", "probe_defaults"):
        found[f"manifest {key} keys"] = set(m[key])
    for name, batch in m["probes"].items():
        found[f"manifest probes.{name} keys"] = set(batch) | set(batch["meta"]) | {name}
    c = json.loads((out / "circuits.json").read_text())
    found["circuits keys"] = set(c)
    found["circuits steps keys"] = {k for per in c["steps"].values() for probe in per.values() for k in probe}
    for key in ("emergence", "lead_times", "bos_layers01"):
        found[f"circuits {key} records"] = {k for rec in c[key] for k in rec}
    found["circuits pr_integral records"] = {k for recs in c["pr_integral"].values() for rec in recs for k in rec}
    v = json.loads((out / "validation.json").read_text())
    found["validation keys"] = set(v)
    ab = v["ablations"]["zero"]
    found["validation ablation keys"] = set(ab)
    probe = ab["probes"]["retrieval"]
    found["validation probe keys"] = set(probe)
    found["validation tests keys"] = {k for t in probe["tests"].values() for k in t}
    found["validation fired keys"] = {k for t in probe["fired"].values() for k in t}
    found["validation patching keys"] = set(v["patching"]) | set(v["patching"]["path_patching"])
    return found


def test_every_name_written_is_documented(run):
    doc = documented()
    found = _written(run)
    assert len(found) > 20 and "fingerprints.parquet columns" in found  # the run wrote every table
    missing = {where: sorted(names - doc) for where, names in found.items() if names - doc}
    assert not missing, f"docs/run-format.md does not document: {missing}"


def test_the_check_catches_an_undocumented_name():
    doc = documented()
    assert "noncanonical_copying" in doc and "p_value_distinct" in doc
    assert "not_a_column_anywhere" not in doc and family("offset_17") == "offset_<k>"


def test_methods_sections_cited_in_the_code_exist():
    """Every `docs/methods.md#<anchor>` in the package points at a heading; no private-notes citations."""
    repo = DOC.parent.parent
    headings = (repo / "docs" / "methods.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^##+ (.+)$", headings, flags=re.MULTILINE)}
    cited, stale = set(), []
    for folder in ("headscreen", "pipelines", "benchmarks", "model_configs"):
        for f in (repo / folder).rglob("*"):
            if f.suffix in (".py", ".yaml", ".md"):
                text = f.read_text(encoding="utf-8")
                cited.update(re.findall(r"docs/methods\.md#([a-z0-9-]+)", text))
                stale += [str(f) for pat in (r"METHODS §", r"\bDESIGN\b", r"notes/\w") if re.search(pat, text)]
    assert cited and cited <= anchors, f"cited sections missing from docs/methods.md: {sorted(cited - anchors)}"
    assert not stale, f"citations of documents outside the repository in {sorted(set(stale))}"
