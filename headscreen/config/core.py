"""The config core: `ConfigError` and the one `from_mapping` that turns plain data (YAML, JSON, CLI flags)
into a frozen settings dataclass. A leaf: it imports nothing else from headscreen.

`from_mapping(cls, data, where)` checks every key against the dataclass's fields (an unknown key is named
with the closest field: "did you mean"), every value against its field's annotation, strictly:

  bool, int, float, str, None   bool is not an int; an int is a float (kept an int unless `floats=True`)
  X | Y, Optional[X]            one of the members (tried in order)
  Literal[a, b]                 one of the listed values
  tuple[X, ...], tuple[X, Y]    a list or tuple of X's / of exactly two values (stored as a tuple)
  list[X], dict, dict[K, V]     a list of X's, a mapping (of K -> V)
  a dataclass                   a mapping of its fields (built by from_mapping, recursively) or an instance
  any other class               an instance of it (e.g. torch.dtype)
  typing.Any                    anything

An annotation outside this list is a programming error (TypeError), never accepted unchecked. The
dataclass's own `__post_init__` then checks values (ranges, choices); a ValueError or TypeError it raises
becomes a ConfigError that names `where`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable


class ConfigError(ValueError):
    """A config value or key that is wrong, named with its place (file, section, field) and the fix."""


def unknown_keys(keys: Iterable, allowed: Iterable[str], where: str, what: str = "field(s)") -> None:
    """Raise ConfigError naming the keys outside `allowed`, each with its closest allowed key."""
    allowed = list(allowed)
    unknown = sorted(str(k) for k in keys if k not in allowed)
    if not unknown:
        return
    close = {k: difflib.get_close_matches(k, allowed, n=1) for k in unknown}
    hints = [f"{c[0]!r}" + (f" for {k!r}" if len(unknown) > 1 else "") for k, c in close.items() if c]
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    raise ConfigError(f"{where}: unknown {what} {unknown}{hint}; allowed: {', '.join(sorted(allowed))}")


def from_mapping(cls, data: dict | None, where: str, *, floats: bool = False):
    """Build dataclass `cls` from a mapping, naming any unknown key, missing field or wrong type (see the
    module docstring). `floats`: an int given for a float field is stored as a float."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {data!r} ({type(data).__name__}); "
                          f"write it as an indented block of `field: value` lines")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown_keys(data, fields, where)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = convert(data[name], hints[name], where, name, floats=floats)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required field {name!r}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # ConfigError included: its checks do not know `where`
        raise ConfigError(f"{where}: {e}") from e


class _Mismatch(Exception):
    """A value that does not match an annotation (internal: `convert` turns it into one ConfigError)."""


def convert(value, tp, where: str, name: str, *, floats: bool = False):
    """Field `name`'s `value` checked against its annotation `tp` (lists become tuples where `tp` is a
    tuple, mappings become the dataclass `tp` names); a mismatch raises ConfigError: "<where>: field
    <name> must be <what tp accepts>, got <value> (<type>)"."""
    try:
        return _convert(value, tp, floats, f"{where}.{name}")
    except _Mismatch:
        raise ConfigError(f"{where}: field {name!r} must be {describe(tp)}, got {value!r} ({type(value).__name__})"
                          f"{_item_hint(value, tp)}{_number_hint(value, tp)}") from None


def _convert(value, tp, floats: bool, where: str = "value"):
    """`value` as annotation `tp` stores it, or _Mismatch; a nested dataclass is built at `where`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for member in args:
            try:
                return _convert(value, member, floats, where)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch
    if tp is type(None) or tp is None:
        return _require(value, value is None)
    if tp is bool:
        return _require(value, isinstance(value, bool))
    if tp is int:
        return _require(value, isinstance(value, int) and not isinstance(value, bool))
    if tp is float:
        _require(value, isinstance(value, int | float) and not isinstance(value, bool))
        return float(value) if floats else value
    if tp is str:
        return _require(value, isinstance(value, str))
    if origin is tuple:
        return _tuple(value, args, floats, where)
    if origin is list:
        _require(value, isinstance(value, list))
        return [_convert(v, args[0], floats, where) for v in value]
    if tp is dict or origin is dict:
        _require(value, isinstance(value, dict))
        if not args:
            return value
        return {_convert(k, args[0], floats, where): _convert(v, args[1], floats, where) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        _require(value, isinstance(value, dict))
        return from_mapping(tp, value, where, floats=floats)
    if isinstance(tp, type) and origin is None:
        return _require(value, isinstance(value, tp))
    raise TypeError(f"from_mapping: annotation {tp!r} is not one the config core checks; use bool, int, float, "
                    "str, None, a union, Literal, tuple, list, dict, a dataclass or a class")


def _require(value, ok: bool):
    if not ok:
        raise _Mismatch
    return value


def _tuple(value, args: tuple, floats: bool, where: str) -> tuple:
    _require(value, isinstance(value, list | tuple))
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(v, args[0], floats, where) for v in value)
    if not args:  # a bare `tuple`
        return tuple(value)
    _require(value, len(value) == len(args))
    return tuple(_convert(v, a, floats, where) for v, a in zip(value, args, strict=True))


def describe(tp) -> str:
    """What annotation `tp` accepts, in words ("an integer or null", "a list of 2 numbers")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        if args and len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})" if args else "a list"
    if origin is list:
        return f"a list of {_plural(args[0])}"
    if tp is dict or origin is dict:
        return "a mapping"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    names = {type(None): "null", None: "null", bool: "true or false", int: "an integer", float: "a number",
             str: "a string", typing.Any: "anything"}
    return names.get(tp, f"a {getattr(tp, '__name__', tp)}")


def _plural(tp) -> str:
    words = {int: "integers", float: "numbers", str: "strings", bool: "booleans", dict: "mappings"}
    return words.get(tp, f"values that are each {describe(tp)}")


def _item_hint(value, tp) -> str:
    """For a list of the right length with a bad item: which item, and what it should be."""
    if not isinstance(value, list | tuple):
        return ""
    members = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    for member in members:
        args = typing.get_args(member)
        if typing.get_origin(member) is not tuple or not args:
            continue
        items = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(items) != len(value):
            continue
        for i, (v, item_tp) in enumerate(zip(value, items, strict=True)):
            if not _accepts(v, item_tp):
                return f": item {i}, {v!r}, is not {describe(item_tp)}{_number_hint(v, item_tp)}"
    return ""


def _number_hint(value, tp) -> str:
    """For a number YAML read as a string (YAML 1.1 reads 1e9 as text: it wants a dot and a sign)."""
    if not isinstance(value, str) or not (_accepts(1, tp) or _accepts(1.0, tp)):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    whole = f"{int(number)} or " if number.is_integer() and abs(number) < 1e18 else ""
    return (f"; YAML reads {value!r} as text, not a number: write {whole}{number:.1e}"
            .replace("e+0", "e+").replace("e-0", "e-"))


def _accepts(value, tp) -> bool:
    try:
        _convert(value, tp, False)
    except (_Mismatch, TypeError):
        return False
    return True
