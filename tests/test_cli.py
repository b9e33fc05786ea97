"""The `headscreen` command itself: --help of every command, usage errors (exit 2 from argparse), the
one-line error and exit code 2 for bad input, 130 for Ctrl-C, 0 on success.

Input faults of the screen (bad series, bad counts, --threads 0, Ctrl-C during a screen) are in
test_input_faults.py and the grok task errors in test_grok_train.py; this file covers the dispatch
that every command shares.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import report as report_workflow
from pipelines.cli import build_parser, commands, main
from pipelines.grok import TASK_CONFIGS

ROOT = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


HELP_PATHS = [[name] for name, _, _ in commands()] + [["grok", task] for task in (*TASK_CONFIGS, "sweep")]


@pytest.mark.parametrize("path", HELP_PATHS, ids=[" ".join(p) for p in HELP_PATHS])
def test_every_command_has_help_listing_its_options(path, capsys):
    assert _exit_code([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: headscreen {' '.join(path)}")
    parser = build_parser()
    for name in path:
        parser = _subparsers(parser)[name]
    for opt in _option_strings(parser):
        assert opt in out, f"`headscreen {' '.join(path)} --help` does not mention {opt}"


def test_top_level_help_lists_every_command(capsys):
    assert _exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    for name, _, help_ in commands():
        assert name in out and help_.split()[0] in out
    assert set(_subparsers(build_parser())) == {name for name, _, _ in commands()}


@pytest.mark.parametrize("argv,needle", [
    ([], "required"),
    (["bogus"], "invalid choice"),
    (["report"], "runs"),  # a positional is missing
    (["train"], "--out"),  # a required flag is missing
    (["grok"], "required"),  # grok without a task
    (["report", "x", "--step", "last"], "--step"),  # a flag of the wrong type
    (["--threads", "-2", "report", "x"], "--threads"),
    *[([*cmd, "--no-such-flag"], "unrecognized arguments")
      for cmd in (["demo"], ["series", "x"], ["screen", "x", "--out", "y"], ["validate", "x"])],
], ids=["none", "unknown-command", "missing-positional", "missing-required-flag", "grok-no-task", "bad-type",
        "threads-negative", "demo-flag", "series-flag", "screen-flag", "validate-flag"])
def test_usage_errors_exit_2_naming_the_problem(argv, needle, capsys):
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: headscreen") and needle in err


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert main(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headscreen report: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert main(["series", str(tmp_path / "no-such-series")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headscreen series: error:") and err.count("\n") == 1
    # --heads is parsed before the run is read: the message names the flag and the expected spelling
    assert main(["validate", str(missing), "--heads", "L1H3,head7"]) == 2
    err = capsys.readouterr().err
    assert "--heads item 'head7' is not like L1H3" in err and err.count("\n") == 1


def test_validate_heads_accepts_the_label_spellings():
    from pipelines.validate import _parse_heads

    assert _parse_heads("L1H3, l0h2,L10.H11") == [[1, 3], [0, 2], [10, 11]]
    with pytest.raises(ValueError, match="not like L1H3"):
        _parse_heads("1,3")


@pytest.mark.parametrize("exc,rc,needle", [
    (KeyboardInterrupt(), 130, "interrupted; finished records are kept"),
    (PermissionError(13, "Permission denied", "/somewhere/run"), 2, "/somewhere/run: Permission denied"),
    (ValueError("the bad thing\nover two lines"), 2, "error: the bad thing over two lines"),
], ids=["ctrl-c", "os-error", "value-error"])
def test_dispatch_maps_exceptions_to_exit_codes(exc, rc, needle, monkeypatch, capsys):
    def fail(args):
        raise exc

    monkeypatch.setattr(report_workflow, "main", fail)
    assert main(["report", "anything"]) == rc
    err = capsys.readouterr().err
    assert err.startswith("headscreen report: ") and needle in err and err.count("\n") == 1


def test_success_is_exit_0_and_the_module_entry_point_works(monkeypatch):
    seen = {}

    def ok(args):
        seen["runs"] = args.runs
        return None  # a command that returns nothing succeeded

    monkeypatch.setattr(report_workflow, "main", ok)
    assert main(["--threads", "1", "report", "a", "b"]) == 0 and seen["runs"] == ["a", "b"]
    # the real process: `python -m pipelines.cli` exits with the codes main returns
    run = [sys.executable, "-m", "pipelines.cli"]
    assert subprocess.run([*run, "--help"], cwd=ROOT, capture_output=True).returncode == 0
    bad = subprocess.run([*run, "bogus"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
