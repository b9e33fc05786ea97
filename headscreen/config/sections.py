"""The sections of a model config, each with the dataclass that owns it, all built when the config loads.

Every section a stage reads is registered here, so that a typo anywhere fails when the config loads,
naming the file, the section and the field (with the closest field), not when the stage that reads it
runs. Each builder imports its owner when a config has that section (the owners are heavy: torch, the
grokking models); the owners import only the config core (headscreen.config.core), never this module, so
no import circle closes.

  section        owner (module: class)                                  read by
  train          headscreen.synthetic.config: TrainConfig                `headscreen train`
  probes         headscreen.probes.suite: ProbeSuite                     `headscreen screen`
  thresholds     headscreen.probes.classify: ScreenThresholds            `headscreen screen`
  spectral       headscreen.spectral.config: SpectralConfig              `headscreen screen`
  onsets         headscreen.spectral.config: OnsetSettings               `headscreen screen`
  preid          headscreen.probes.preid: PreidSettings                  `headscreen screen`, `validate`
  boot           headscreen.series.precision: BootSettings               `headscreen screen`
  validation     headscreen.causal.settings: ValidationSettings          `headscreen validate`
  report         (no settings yet: any field is an error)
  grok           headscreen.grokking.config: GrokConfig                  `headscreen grok`
  sweep          headscreen.grokking.config: SweepConfig                 `headscreen grok sweep`
  analysis       headscreen.grokking.analysis.settings: AnalysisSettings `headscreen grok` (grok.json)
  li2            headscreen.grokking.li2.network: Li2Config              `headscreen grok li2`
  li2_controls   headscreen.grokking.li2.lockin: Li2Controls             benchmarks/bench_li2.py
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from headscreen.config.core import ConfigError, from_mapping, unknown_keys

SECTIONS = ("train", "probes", "thresholds", "spectral", "onsets", "validation", "report", "grok", "sweep", "analysis",
            "li2", "li2_controls", "boot", "preid")


def _train(data: dict, where: str, sections: dict):
    from headscreen.synthetic.config import TrainConfig

    return TrainConfig.from_dict(data, where)


#: sections whose owner is a dataclass built by the core's from_mapping alone: section -> (module, class)
PLAIN_OWNERS = {
    "probes": ("headscreen.probes.suite", "ProbeSuite"),
    "thresholds": ("headscreen.probes.classify", "ScreenThresholds"),
    "spectral": ("headscreen.spectral.config", "SpectralConfig"),
    "onsets": ("headscreen.spectral.config", "OnsetSettings"),
    "preid": ("headscreen.probes.preid", "PreidSettings"),
    "boot": ("headscreen.series.precision", "BootSettings"),
    "validation": ("headscreen.causal.settings", "ValidationSettings"),
    "analysis": ("headscreen.grokking.analysis.settings", "AnalysisSettings"),
}


def _plain(name: str) -> Callable[[dict, str, dict], Any]:
    """The builder of a PLAIN_OWNERS section: import its owner on first use, then from_mapping."""
    module, cls = PLAIN_OWNERS[name]

    def build(data: dict, where: str, sections: dict):
        return from_mapping(getattr(importlib.import_module(module), cls), data, where)

    build.__name__ = f"_{name}"
    return build


def _report(data: dict, where: str, sections: dict):
    if data:
        raise ConfigError(f"{where}: no settings exist in this section; remove {sorted(data)}")
    return None


def _grok(data: dict, where: str, sections: dict):
    from headscreen.grokking.config import GrokConfig

    return GrokConfig.from_dict(data, where)


def _sweep(data: dict, where: str, sections: dict):
    """The sweep's own fields, and the keys of each `extra` run (GrokConfig fields or `task`); the runs
    themselves are built at `grok sweep` time, from the grok section with the command's flags."""
    from headscreen.grokking.config import GrokConfig, SweepConfig

    sweep = SweepConfig.from_dict(data, where)
    fields = [*(f.name for f in dataclasses.fields(GrokConfig)), "task"]
    for i, extra in enumerate(sweep.extra):  # each a mapping (SweepConfig.extra: tuple[dict, ...])
        unknown_keys(extra, fields, f"{where}.extra[{i}]")
    return sweep



def _li2(data: dict, where: str, sections: dict):
    from headscreen.grokking.li2.network import Li2Config

    return Li2Config.from_dict(data, where)


def _li2_controls(data: dict, where: str, sections: dict):
    """The controls, checked against the li2 section's modulus (its default when the config has none)."""
    from headscreen.grokking.li2.lockin import Li2Controls
    from headscreen.grokking.li2.network import Li2Config

    controls = Li2Controls.from_dict(data, where)
    m = Li2Config.from_dict(sections.get("li2") or {}, "li2").m
    controls.check_subcritical(m, where)
    return controls


BUILDERS: dict[str, Callable[[dict, str, dict], Any]] = {
    "train": _train, "report": _report, "grok": _grok, "sweep": _sweep, "li2": _li2, "li2_controls": _li2_controls,
    **{name: _plain(name) for name in PLAIN_OWNERS}}
assert sorted(BUILDERS) == sorted(SECTIONS)


def build_section(name: str, sections: dict[str, dict], where: str):
    """Section `name` of a config's `sections` (its owner's defaults when absent) as its owner's dataclass;
    `where` names the config file in errors."""
    if name not in BUILDERS:
        unknown_keys([name], SECTIONS, f"{where}", what="section")
    return BUILDERS[name](sections.get(name) or {}, f"{where}: {name}", sections)


def check_sections(sections: dict[str, dict], where: str) -> None:
    """Build every section the config has, so that a bad value or key fails now, naming the section."""
    for name in SECTIONS:
        if name in sections:
            build_section(name, sections, where)
