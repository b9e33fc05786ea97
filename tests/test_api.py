"""The public API (headscreen/api.py): the README's worked example runs as written on a tiny series, and each
function gives what the run's files hold, read independently."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import headscreen
from headscreen import api
from headscreen.testing import save_tiny_series, tiny_screen_config

REPO = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- api-example[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its api-example block"
    return m.group(1)


def test_the_package_exports_exactly_the_api():
    assert headscreen.__all__ == api.__all__
    for name in api.__all__:
        assert getattr(headscreen, name) is getattr(api, name) and getattr(api, name).__doc__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        headscreen.nope  # noqa: B018


def test_no_api_name_is_shadowed_by_a_subpackage():
    """Importing headscreen.<x> sets the attribute headscreen.<x> to the module: an API function of the same
    name would be replaced by the module once anything imported it."""
    pkg = Path(headscreen.__file__).parent
    assert not [n for n in api.__all__ if (pkg / n).is_dir() or (pkg / f"{n}.py").is_file()]


def test_only_the_api_imports_pipelines():
    """The library never imports pipelines/ (DESIGN: imports point down); headscreen/api.py is the top floor
    that opens the pipelines to notebook users, so it is the one exception."""
    import ast

    pkg = Path(headscreen.__file__).parent
    offenders = []
    for path in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "pipelines" or n.startswith("pipelines.") for n in names):
                offenders.append(str(path.relative_to(pkg)))
    assert sorted(set(offenders)) == ["api.py"]


def test_import_headscreen_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, headscreen; print('torch' in sys.modules)"],
                         cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "False", out.stderr


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """(tmp dir, the example's stdout) after running the README block with its three settings replaced."""
    tmp = tmp_path_factory.mktemp("api")
    series = save_tiny_series(tmp / "series", "llama", [0, 1, 2, 3], n_layers=2, d_model=32, n_heads=4, vocab=128,
                              n_ctx=64)
    (tmp / "cfg.yaml").write_text(tiny_screen_config(series, "api-tiny"))
    code = readme_example()
    for name, value in (("SERIES", str(series)), ("CONFIG", str(tmp / "cfg.yaml")), ("OUT", str(tmp / "out"))):
        code, n = re.subn(rf'^{name} = "[^"]*"', f"{name} = {value!r}", code, flags=re.M)
        assert n == 1, f"the README example no longer sets {name} on its own line"
    (tmp / "example.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "example.py"], cwd=tmp, capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, out.stdout


def test_readme_example_writes_the_runs_it_promises(example):
    tmp, stdout = example
    run = tmp / "out" / "run"
    for name in ("classes.parquet", "circuits.json", "validation.json", "report/report.html"):
        assert (run / name).is_file(), name
    assert stdout.splitlines()[0].startswith("4 checkpoints of ")
    assert str(run / "report" / "report.html") in stdout
    grok = json.loads((tmp / "out" / "modadd" / "grok.json").read_text())
    assert f"{grok['final_train_acc']} {grok['grok_step']} {grok['defect_onset_step']}" in stdout
    curves = pd.read_parquet(tmp / "out" / "modadd" / "curves.parquet")
    assert curves.step.max() == 300 and curves.train_loss.iloc[-1] < curves.train_loss.iloc[0]


def test_tables_and_circuits_agree_with_the_files(example):
    run = example[0] / "out" / "run"
    tables = api.tables(run)
    for name in ("classes", "selectivity", "onsets"):
        pd.testing.assert_frame_equal(tables[name], pd.read_parquet(run / f"{name}.parquet"))
    assert ("validation" in tables) == (run / "validation.parquet").is_file()  # absent when the circuit is empty
    if "validation" in tables:
        pd.testing.assert_frame_equal(tables["validation"], pd.read_parquet(run / "validation.parquet"))
    steps = json.loads((run / "circuits.json").read_text())["steps"]  # {step: {probe: {induction, ...}}}
    last = steps[max(steps, key=int)][api.view(run).probe]
    assert api.circuits(run) == {k: [tuple(h) for h in last[k]] for k in ("induction", "previous", "bos")}


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least one run"):
        api.write_report()
    with pytest.raises(Exception, match="no-such-series-or-config"):
        api.open_series("no-such-series-or-config")
