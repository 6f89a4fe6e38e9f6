"""The settings a stage takes: their types and defaults, checked as TOML gives them.

Each `Option` says which TOML values it accepts (`TYPES`: an integer, a number, a string, a list
of strings, …) and what it means when absent (`default`; TOML has no null, so "not given" is how
an option says None). `check_value` refuses anything else with a sentence saying what is allowed,
so a typo such as `wbits = "8"` is an error naming the key, never a silent default. Whether the
value itself is allowed (8 bits, not 99) is the job's own config's business (QuantConfig,
PruneConfig, CIMConfig, … check on construction), which the stage kinds call before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return _int(v) or isinstance(v, float)


#: type name -> (test, what an error says is allowed)
TYPES: dict[str, tuple[Any, str]] = {
    "int": (_int, "an integer"),
    "float": (_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "stage": (lambda v: isinstance(v, str), "the name of a stage (a string)"),
    "stages": (lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
               "a stage name or a list of stage names"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of strings"),
    "str|list[str]": (lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
                      "a string or a list of strings"),
    "str|list[int]": (lambda v: isinstance(v, str) or (isinstance(v, list) and all(_int(s) for s in v)),
                      "a string such as \"2,4,8\" or a list of integers"),
    "table": (lambda v: isinstance(v, dict), "a table, e.g. { width = 0.25 }"),
}


@dataclass(frozen=True)
class Option:
    """One setting of a stage kind: its TOML type (a key of TYPES), its default (None: absent
    means "not given"), whether it must be given, and whether it changes what the stage computes
    (`keyed`: False for where the data lives, which goes into no cache key)."""

    type: str
    default: Any = None
    required: bool = False
    keyed: bool = True

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"unknown option type {self.type!r}")


def check_value(option: Option, value: Any) -> str | None:
    """None if `value` is of the option's type, else what is allowed."""
    test, allowed = TYPES[option.type]
    return None if test(value) else allowed


def describe(value: Any) -> str:
    """A TOML value as the user wrote it, for messages."""
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    return repr(value)
