"""Where a key of a TOML file is written: its line number, for error messages.

tomllib reports the line of a syntax error but keeps no positions in what it returns, so a schema
error ("stages.int8.wbits: 99 is not allowed") finds its line here, by reading the text the way a
person would: table headers (`[stages.int8]`) set the current table, `key = value` lines name a
key of it (dotted keys too), and an inline table (`int8 = {kind = "quantize"}`) counts as the line
of each of its keys. A key that cannot be found gives its table's line, else None.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")
_PART = re.compile(r"[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'")


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(p.strip("\"'") for p in _PART.findall(dotted))


class KeyLines:
    """Line numbers (1-based) of the keys and tables of one TOML text."""

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                table = _parts(header.group(1))
                self._lines.setdefault(table, number)
                continue
            key = _KEY.match(line)
            if not key:
                continue
            path = table + _parts(key.group(1))
            for end in range(len(table) + 1, len(path) + 1):  # a dotted key defines its parents too
                self._lines.setdefault(path[:end], number)
            rest = line[key.end():].strip()
            if rest.startswith("{"):  # an inline table: its keys are on this line
                for inner in re.finditer(r"([A-Za-z0-9_-]+)\s*=", rest):
                    self._lines.setdefault(path + (inner.group(1),), number)

    def line(self, *path: str) -> int | None:
        """The line of `path` (e.g. "stages", "int8", "wbits"), else of its nearest enclosing table."""
        for end in range(len(path), 0, -1):
            if path[:end] in self._lines:
                return self._lines[path[:end]]
        return None
