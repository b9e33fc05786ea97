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
from collections.abc import Callable
from typing import Any

from headscreen.config.core import ConfigError, from_mapping, unknown_keys

SECTIONS = ("train", "probes", "thresholds", "spectral", "onsets", "validation", "report", "grok", "sweep", "analysis",
            "li2", "li2_controls", "boot", "preid")


def _train(data: dict, where: str, sections: dict):
    from headscreen.synthetic.config import TrainConfig

    return TrainConfig.from_dict(data, where)


def _probes(data: dict, where: str, sections: dict):
    from headscreen.probes.suite import ProbeSuite

    return from_mapping(ProbeSuite, data, where)


def _thresholds(data: dict, where: str, sections: dict):
    from headscreen.probes.classify import ScreenThresholds

    return from_mapping(ScreenThresholds, data, where)


def _spectral(data: dict, where: str, sections: dict):
    from headscreen.spectral.config import SpectralConfig

    return from_mapping(SpectralConfig, data, where)


def _onsets(data: dict, where: str, sections: dict):
    from headscreen.spectral.config import OnsetSettings

    return from_mapping(OnsetSettings, data, where)


def _preid(data: dict, where: str, sections: dict):
    from headscreen.probes.preid import PreidSettings

    return from_mapping(PreidSettings, data, where)


def _boot(data: dict, where: str, sections: dict):
    from headscreen.series.precision import BootSettings

    return from_mapping(BootSettings, data, where)


def _validation(data: dict, where: str, sections: dict):
    from headscreen.causal.settings import ValidationSettings

    return from_mapping(ValidationSettings, data, where)


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


def _analysis(data: dict, where: str, sections: dict):
    from headscreen.grokking.analysis.settings import AnalysisSettings

    return from_mapping(AnalysisSettings, data, where)


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
    "train": _train, "probes": _probes, "thresholds": _thresholds, "spectral": _spectral, "onsets": _onsets,
    "validation": _validation, "report": _report, "grok": _grok, "sweep": _sweep, "analysis": _analysis,
    "li2": _li2, "li2_controls": _li2_controls, "boot": _boot, "preid": _preid}
assert tuple(BUILDERS) == SECTIONS


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
