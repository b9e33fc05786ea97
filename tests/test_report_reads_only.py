"""The report package reads and lays out; the report pipeline computes first (issue 24, items 2 and 8)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from grok_fixtures import make_run

import headscreen.report
from headscreen.grokking.analysis import analyse

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:only")

REPORT_DIR = Path(headscreen.report.__file__).parent
# compute code: training, analysis, model building, pre-identification, the pipelines
FORBIDDEN = ("headscreen.grokking", "headscreen.probes.preid", "headscreen.probes.screen", "headscreen.probes.forward",
             "headscreen.causal.validate", "headscreen.causal.ablation", "headscreen.causal.patching",
             "headscreen.synthetic", "headscreen.series", "pipelines", "torch.nn", "transformers")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_the_report_package_imports_no_compute_code():
    modules = sorted(REPORT_DIR.glob("*.py"))
    assert len(modules) > 20  # the whole package is parsed
    bad = [(p.name, n) for p in modules for n in _imports(p) if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == []
    # the parser sees lazy imports inside functions too (the old report imported the analysis there)
    assert "headscreen.grokking.analysis.analyse" in _imports(Path(analyse.__file__).parents[3] / "pipelines"
                                                                / "report_prep.py")


def test_the_report_package_keeps_no_module_level_cache():
    for path in REPORT_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for t in targets:
                assert not (isinstance(t, ast.Name) and "cache" in t.id.lower()), f"{path.name}: {t.id}"
            if isinstance(node, ast.FunctionDef):
                decos = [ast.unparse(d) for d in node.decorator_list]
                assert not any("cache" in d for d in decos), f"{path.name}: {node.name} {decos}"


def test_report_of_a_grok_run_without_analysis_runs_the_pipeline_step_first(tmp_path, capsys, monkeypatch):
    from headscreen.report.build import build_report
    from headscreen.report.inputs import MissingReportInput
    from pipelines.cli import main

    run = make_run(tmp_path / "run", p=11, n_snap=14, switch=6)
    assert not (run / "grok.json").exists()
    with pytest.raises(MissingReportInput, match="headscreen report"):
        build_report([run], tmp_path / "direct")  # the report package alone refuses: it never analyses
    assert not (run / "grok.json").exists()
    calls = []
    real = analyse.compute_analysis
    monkeypatch.setattr(analyse, "compute_analysis", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err
    assert "grok.json was missing" in err and "analysed it first" in err
    assert calls == [run]  # the pipeline step ran the analysis, once
    grok = json.loads((run / "grok.json").read_text())
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert doc["runs"][0]["sections"]["grok_summary"]["data"]["grok_step"] == grok["grok_step"]
    # a second report finds grok.json current: no analysis, no message
    assert main(["report", str(run), "--out", str(tmp_path / "rep2")]) == 0
    assert calls == [run] and "analysed" not in capsys.readouterr().err


def test_an_analysis_failure_is_named_not_skipped(tmp_path, monkeypatch):
    from headscreen.grokking.config import GrokConfig
    from headscreen.grokking.training.lifecycle import AnalysisFailed
    from pipelines import grok as grok_pipeline

    run = make_run(tmp_path / "run", p=11, n_snap=14, switch=6)
    ran = []

    def broken(*a, **k):
        ran.append(a[0])
        raise ImportError("cannot import name 'edge_frame' from 'headscreen.grokking.analysis.edge'")

    monkeypatch.setattr(analyse, "analyse_run", broken)
    monkeypatch.setattr("headscreen.grokking.training.train.train_run", lambda *a, **k: ran.append("trained"))
    with pytest.raises(AnalysisFailed, match=r"analysis of grok run .*run failed \(ImportError: cannot import name "
                                             r"'edge_frame'"):
        grok_pipeline.run_and_analyse(GrokConfig(tasks=("add",), p=11), run, progress=False)
    assert ran == ["trained", run] and not (run / "grok.json").exists()  # the path ran; no thinner grok.json
