"""`read_yaml`: a config file's YAML document, refused when it is not YAML or when its aliases would blow
it up (a leaf beside the config core)."""

from __future__ import annotations

from pathlib import Path

import yaml

from headscreen.config.core import ConfigError

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
