"""Model configs: data in `model_configs/*.yaml`, validated into frozen dataclasses.

A config names a checkpoint series (hub repo + revision schedule, a local folder, or a series that
headscreen trains itself) plus the settings of each stage. Each stage owns its section's dataclass
(headscreen.config.sections lists them); this module validates the top level and the source, and builds
every section with its owner when the config loads. Errors name the file, the field and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from headscreen.config.core import ConfigError, from_mapping, unknown_keys
from headscreen.config.sections import SECTIONS, build_section, check_sections
from headscreen.config.yamlfile import read_yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "model_configs"
SOURCE_KINDS = ("hub", "local", "synthetic")


@dataclass(frozen=True)
class SourceConfig:
    kind: str  # hub | local | synthetic
    repo: str | None = None  # hub repository, e.g. EleutherAI/pythia-160m
    revision_format: str | None = None  # e.g. "step{step}" or "step{step}-tokens{tokens_b}B"
    tokens_per_step: int | None = None
    schedule: dict | None = None  # see headscreen.series.schedules
    schedule_note: str | None = None  # where the schedule comes from, how verified
    local_path: str | None = None  # a local copy; when set, the hub is never contacted
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if self.kind == "hub" and not (self.repo and self.revision_format and self.schedule):
            raise ValueError("a hub source needs repo, revision_format and schedule (or use kind: local with local_path)")
        if self.kind == "local" and not self.local_path:
            raise ValueError("a local source needs local_path: the folder that holds the checkpoints")
        if self.schedule is not None:
            from headscreen.series.schedules import schedule_steps

            schedule_steps(self.schedule)  # validates


@dataclass(frozen=True)
class ModelConfig:
    name: str
    source: SourceConfig
    description: str = ""
    architecture: dict = field(default_factory=dict)  # family, sizes, notes (informational)
    sections: dict = field(default_factory=dict)  # stage name -> raw mapping (probes, thresholds, spectral, ...)
    path: Path | None = None

    def section(self, name: str) -> dict:
        """Section `name` as written (a mapping; empty when the config has none)."""
        return dict(self.sections.get(name) or {})

    def settings(self, name: str):
        """Section `name` built by its owner (headscreen.config.sections): its dataclass, at the owner's
        defaults where the config has no such section."""
        return build_section(name, self.sections, self.path.name if self.path else self.name)

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "source": dataclasses.asdict(self.source),
                "architecture": self.architecture, **self.sections}


TOP_LEVEL = ("name", "description", "source", "architecture")


def load_config(path_or_name: str | Path) -> ModelConfig:
    """Load `model_configs/<name>.yaml`, or any YAML path, into a validated `ModelConfig`."""
    path = Path(path_or_name)
    if not path.exists() and not path.suffix:
        path = CONFIG_DIR / f"{path_or_name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"config {path_or_name!r} not found; give a YAML path or one of {known}")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    unknown_keys(data, TOP_LEVEL + SECTIONS, str(path), what="top-level key(s)")
    if "name" not in data or "source" not in data:
        raise ConfigError(f"{path}: needs 'name' and 'source'")
    source = from_mapping(SourceConfig, data["source"], f"{path.name}: source")
    for s in SECTIONS:
        if s in data and not isinstance(data[s] or {}, dict):
            raise ConfigError(f"{path.name}: {s} must be a mapping")
    sections = {s: data[s] or {} for s in SECTIONS if s in data}
    check_sections(sections, path.name)
    return ModelConfig(
        name=str(data["name"]),
        source=source,
        description=str(data.get("description", "")),
        architecture=dict(data.get("architecture") or {}),
        sections=sections,
        path=path.resolve(),
    )


def require_remote_code_flag(cfg: ModelConfig | None, granted: bool) -> None:
    """A config may ask for `source.trust_remote_code` but never grant it: only the caller's explicit
    `trust_remote_code=True` (the CLI's --trust-remote-code) does."""
    if cfg is not None and cfg.source.trust_remote_code and not granted:
        where = cfg.path or cfg.name
        raise ConfigError(
            f"{where}: source.trust_remote_code asks to run Python code shipped with the checkpoints; a config "
            "cannot grant that. Pass --trust-remote-code (trust_remote_code=True) if you trust them, or remove "
            "the setting"
        )


def config_series(cfg: ModelConfig, *, local_path: str | Path | None = None, cache_dir: str | Path | None = None,
                  trust_remote_code: bool = False):
    """The checkpoint series a config names. A local path (argument or `source.local_path`) always wins:
    then no hub call is made. Remote code runs only with `trust_remote_code=True` given here; a config
    whose source asks for it without that is refused (`require_remote_code_flag`)."""
    from headscreen.series import HubSeries, LocalSeries, revisions

    require_remote_code_flag(cfg, trust_remote_code)
    local = local_path or cfg.source.local_path
    if local:
        return LocalSeries(local, name=cfg.name, allow_pickle=cfg.source.allow_pickle,
                           trust_remote_code=trust_remote_code)
    if cfg.source.kind == "synthetic":
        raise ConfigError(
            f"config {cfg.name!r} describes a series that headscreen trains itself; run "
            f"`headscreen train --config {cfg.name} --out DIR` first and screen DIR"
        )
    assert cfg.source.repo and cfg.source.revision_format and cfg.source.schedule
    revs = revisions(cfg.source.schedule, cfg.source.revision_format, cfg.source.tokens_per_step)
    revs, rec = _with_hub_names(cfg.source.repo, revs)
    series = HubSeries(cfg.source.repo, revs, cache_dir=cache_dir, allow_pickle=cfg.source.allow_pickle,
                       trust_remote_code=trust_remote_code, config_name=cfg.name)
    series.hub_reconcile = rec
    return series


def _with_hub_names(repo: str, revs: list):
    """The config's revisions under the hub's own branch names when the hub answers (one API call;
    headscreen.series.hub_refs), with the reconciliation record; offline, the config's names and None."""
    import sys

    from headscreen.series.hub import hub_offline
    from headscreen.series.hub_refs import hub_names, hub_revisions, reconcile

    if hub_offline():
        return revs, None
    try:
        hub = hub_revisions(repo)
    except Exception as e:  # no network, a dead endpoint, an unknown repo: the screen's own checks say which
        print(f"warning: could not list the branches of {repo} ({type(e).__name__}); using the config's revision "
              "names unverified", file=sys.stderr)
        return revs, {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}
    return hub_names(revs, hub), reconcile(revs, hub)
