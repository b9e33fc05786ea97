"""The config core (headscreen/config/core.py): one strict `from_mapping`, and the shared optimizer rules."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from headscreen.config import ConfigError, OptimizerSettings, from_mapping


@dataclasses.dataclass(frozen=True)
class Inner:
    window: int = 10
    kind: Literal["a", "b"] = "a"


@dataclasses.dataclass(frozen=True)
class Outer:
    pair: tuple[float, float] = (0.9, 0.99)
    many: tuple[int, ...] | None = None
    either: tuple[int, int] | str = "auto"
    flag: bool = False
    count: int = 1
    rate: float = 0.5
    inner: Inner = dataclasses.field(default_factory=Inner)
    table: dict = dataclasses.field(default_factory=dict)
    name: str | None = None


def test_values_are_stored_as_annotated():
    got = from_mapping(Outer, {"pair": [1, 0.5], "many": [3, 4], "either": [1, 2], "inner": {"window": 3, "kind": "b"},
                               "rate": 2, "table": {"x": [1]}}, "o")
    assert got == Outer(pair=(1, 0.5), many=(3, 4), either=(1, 2), inner=Inner(3, "b"), rate=2, table={"x": [1]})
    assert type(got.rate) is int and type(got.pair[0]) is int  # kept as given...
    floats = from_mapping(Outer, {"pair": [1, 0.5], "rate": 2}, "o", floats=True)
    assert type(floats.rate) is float and floats.pair == (1.0, 0.5) and type(floats.pair[0]) is float  # ...or floats
    assert from_mapping(Outer, None, "o") == Outer()


@pytest.mark.parametrize("data, needle", [
    ({"pair": [0.9]}, "field 'pair' must be a list of 2 numbers, got [0.9]"),
    ({"pair": [0.9, 0.99, 0.5]}, "field 'pair' must be a list of 2 numbers"),
    ({"either": [1, 2, 3]}, "field 'either' must be a list of 2 integers or a string"),
    ({"many": [1, 2.5]}, "field 'many' must be a list of integers or null, got [1, 2.5] (list): item 1, 2.5, is not "
                         "an integer"),
    ({"pair": [0.9, "1e-3"]}, "item 1, '1e-3', is not a number; YAML reads '1e-3' as text, not a number: write 1.0e-3"),
    ({"flag": 1}, "field 'flag' must be true or false, got 1 (int)"),
    ({"count": True}, "field 'count' must be an integer, got True (bool)"),
    ({"count": 1.0}, "field 'count' must be an integer"),
    ({"rate": "fast"}, "field 'rate' must be a number, got 'fast' (str)"),
    ({"rate": "1e-3"}, "YAML reads '1e-3' as text, not a number: write 1.0e-3"),
    ({"name": 3}, "field 'name' must be a string or null"),
    ({"table": [1]}, "field 'table' must be a mapping"),
    ({"inner": {"kind": "c"}}, "o.inner: field 'kind' must be one of 'a', 'b', got 'c'"),
    ({"inner": {"windw": 3}}, "o.inner: unknown field(s) ['windw'] (did you mean 'window'?)"),
    ({"inner": 3}, "field 'inner' must be a mapping of Inner fields"),
    ({"cuont": 1, "rtae": 1}, "unknown field(s) ['cuont', 'rtae'] (did you mean 'count' for 'cuont', 'rate' for 'rtae'?)"),
    ({"zzz": 1}, "o: unknown field(s) ['zzz']; allowed: count, either"),
    ([1, 2], "o: expected a mapping of fields"),
])
def test_a_wrong_value_or_key_is_named(data, needle):
    with pytest.raises(ConfigError) as err:
        from_mapping(Outer, data, "o")
    assert needle in str(err.value)


def test_a_missing_required_field_and_the_owner_check_name_where():
    @dataclasses.dataclass(frozen=True)
    class Needs:
        x: int

        def __post_init__(self):
            if self.x < 0:
                raise ValueError(f"x={self.x} must be >= 0")

    with pytest.raises(ConfigError, match="here: missing required field 'x'"):
        from_mapping(Needs, {}, "here")
    with pytest.raises(ConfigError, match=r"here: x=-1 must be >= 0"):
        from_mapping(Needs, {"x": -1}, "here")


def test_an_annotation_the_core_does_not_know_is_a_programming_error():
    @dataclasses.dataclass(frozen=True)
    class Odd:
        f: "set[int]" = dataclasses.field(default_factory=set)  # a generic the core has no rule for

    with pytest.raises(TypeError, match="not one the config core checks"):
        from_mapping(Odd, {"f": [1]}, "odd")


@pytest.mark.parametrize("section, build", [
    ("train", lambda **kw: __import__("headscreen.synthetic.config", fromlist=["TrainConfig"]).TrainConfig(**kw)),
    ("grok", lambda **kw: __import__("headscreen.grokking.config", fromlist=["GrokConfig"]).GrokConfig(**kw)),
    ("li2", lambda **kw: __import__("headscreen.grokking.li2.network", fromlist=["Li2Config"]).Li2Config(**kw)),
])
def test_the_three_trainers_share_the_optimizer_rules(section, build):
    assert build().optimizer == OptimizerSettings.of(build(), section)
    for field, value, fix in (("lr", 1.5, "use a learning rate in (0, 1)"), ("lr", 0.0, "use a learning rate"),
                              ("betas", (0.9, 1.0), "use two Adam betas in [0, 1)"),
                              ("betas", (0.9,), "use two Adam betas"),
                              ("weight_decay", -0.1, "use a value >= 0")):
        with pytest.raises(ConfigError) as err:
            build(**{field: value})
        assert f"{section} config field {field!r} = {value!r} is invalid: {fix}" in str(err.value)
    if section != "li2":  # Li2 never clips
        with pytest.raises(ConfigError, match=f"{section} config field 'grad_clip' = 0.0 is invalid"):
            build(grad_clip=0.0)
