"""Model configs: data in `model_configs/*.yaml`, validated into frozen dataclasses.

A config names a checkpoint series (hub repo + revision schedule, a local folder, or a series that
headscreen trains itself) plus the settings of each stage. Each stage owns its section's dataclass;
this module validates the top level and the source, and hands every section to its owner.
Errors name the file, the field and the fix.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
SOURCE_KINDS = ("hub", "local", "synthetic")


class ConfigError(ValueError):
    pass


#: the most values a config may expand to through its YAML aliases (the largest shipped config has ~300)
MAX_YAML_VALUES = 100_000


def read_yaml(path: str | Path, limit: int = MAX_YAML_VALUES):
    """The YAML document in `path`, refused (ConfigError) when it is not valid YAML or when its aliases
    would expand it beyond `limit` values ("billion laughs": a few lines of nested aliases that grow to
    gigabytes once the config is written into a manifest). The expanded size is counted on the composed
    node graph, where an alias is one shared node, before anything is constructed or expanded."""
    path = Path(path)
    try:
        loader = yaml.SafeLoader(path.read_text())
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e}); save the config as UTF-8") from e
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, limit)
        if size > limit:
            raise ConfigError(f"{path}: its aliases (&anchor / *alias) expand it to more than {limit:,} values, far "
                              "beyond any config; write the values out or remove the nested aliases")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from e
    finally:
        loader.dispose()


def _expanded_size(node, memo: dict, limit: int) -> int:
    """Values `node` stands for once every alias is expanded (memoised per shared node; capped above `limit`)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = limit + 1  # a node reached again while being counted is a cycle: too large
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_size(child, memo, limit) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_size(k, memo, limit) + _expanded_size(v, memo, limit) for k, v in node.value)
    else:
        total = 1
    memo[key] = min(total, limit + 1)
    return memo[key]


def _number_hint(value, tp) -> str:
    """For a number YAML read as a string (YAML 1.1 reads 1e9 as text: it wants a dot and a sign)."""
    if not isinstance(value, str) or not (_type_ok(1, tp) or _type_ok(1.0, tp)):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    whole = f"{int(number)} or " if number.is_integer() and abs(number) < 1e18 else ""
    return (f"; YAML reads {value!r} as text, not a number: write {whole}{number:.1e}"
            .replace("e+0", "e+").replace("e-0", "e-"))


def _type_ok(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, list | tuple)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def from_mapping(cls, data: dict | None, where: str):
    """Build frozen dataclass `cls` from a mapping, naming any unknown key, missing field or wrong type."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {data!r} ({type(data).__name__}); "
                          f"write it as an indented block of `field: value` lines")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(fields)}")
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required field {name!r}")
            continue
        if not _type_ok(data[name], hints[name]):
            raise ConfigError(
                f"{where}.{name}: expected {hints[name]}, got {data[name]!r} ({type(data[name]).__name__})"
                f"{_number_hint(data[name], hints[name])}"
            )
        if typing.get_origin(hints[name]) is tuple and isinstance(data[name], list):
            data[name] = tuple(data[name])
    try:
        return cls(**data)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from e


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
        return dict(self.sections.get(name) or {})

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "source": dataclasses.asdict(self.source),
                "architecture": self.architecture, **self.sections}


TOP_LEVEL = ("name", "description", "source", "architecture")
SECTIONS = ("train", "probes", "thresholds", "spectral", "onsets", "validation", "report", "grok", "sweep", "analysis", "li2",
            "li2_controls", "boot")


def _section_owners() -> dict[str, type | None]:
    """Section -> the dataclass that owns it (imported here, lazily: the owners import this module).
    `report` has no settings yet: any field in it is an error."""
    from headscreen.causal.settings import ValidationSettings
    from headscreen.probes.classify import ScreenThresholds
    from headscreen.probes.preid import PreidSettings
    from headscreen.probes.suite import ProbeSuite
    from headscreen.series.precision import BootSettings
    from headscreen.spectral.config import OnsetSettings, SpectralConfig
    from headscreen.synthetic.config import TrainConfig

    return {"train": TrainConfig, "probes": ProbeSuite, "thresholds": ScreenThresholds, "spectral": SpectralConfig,
            "onsets": OnsetSettings, "validation": ValidationSettings, "preid": PreidSettings,
            "boot": BootSettings, "report": None}


def check_sections(sections: dict[str, dict], where: str) -> None:
    """Validate every section with its owner's checks, so that a typo anywhere fails when the config
    loads (naming the section and the field), not when the stage that reads it runs."""
    from headscreen.synthetic.config import TrainConfig

    for name, owner in _section_owners().items():
        data = sections.get(name)
        if data is None:
            continue
        if owner is None:
            if data:
                raise ConfigError(f"{where}: {name}: no settings exist in this section; remove {sorted(data)}")
        elif owner is TrainConfig:
            try:
                TrainConfig.from_dict(data)
            except ConfigError as e:
                raise ConfigError(f"{where}: train: {e}") from None
        else:
            from_mapping(owner, data, f"{where}: {name}")


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
    unknown = sorted(set(data) - set(TOP_LEVEL) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; allowed: {sorted(TOP_LEVEL + SECTIONS)}")
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
