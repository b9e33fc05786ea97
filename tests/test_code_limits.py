"""The house rules the layout promises (DESIGN: small modules, each with one job): no module of headscreen/
or pipelines/ over 400 lines, no function (or method) there over 80 lines, counted from its `def` to its
last line by the parser. A failure names every offender."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("headscreen", "pipelines")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def _sources(root: Path = ROOT) -> list[Path]:
    return sorted(f for pkg in PACKAGES for f in (root / pkg).rglob("*.py"))


def long_modules(files: list[Path], root: Path = ROOT, limit: int = MAX_MODULE_LINES) -> list[str]:
    return [f"{f.relative_to(root)}: {n} lines" for f in files if (n := len(f.read_text().splitlines())) > limit]


def long_functions(files: list[Path], root: Path = ROOT, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{f.relative_to(root)}:{node.lineno} {node.name}: {n} lines")
    return out


def test_the_scan_reads_the_packages_and_names_what_is_too_long(tmp_path):
    files = _sources()
    assert len(files) > 100 and ROOT / "pipelines" / "cli.py" in files  # it reads the tree, not nothing
    (tmp_path / "pipelines").mkdir()
    probe = tmp_path / "pipelines" / "long.py"
    probe.write_text("class C:\n    def f(self):\n" + "        x = 1\n" * 80 + "\n\ndef g():\n    return 1\n")
    assert _sources(tmp_path) == [probe]
    assert long_functions([probe], tmp_path) == ["pipelines/long.py:2 f: 81 lines"]  # a method counts too
    assert long_functions([probe], tmp_path, limit=81) == []
    assert long_modules([probe], tmp_path, limit=80) == ["pipelines/long.py: 86 lines"]


def test_no_module_over_400_lines():
    assert long_modules(_sources()) == []


def test_no_function_over_80_lines():
    assert long_functions(_sources()) == []
