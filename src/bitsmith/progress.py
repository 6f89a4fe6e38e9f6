"""Progress bars for long work (evaluation, calibration, RTL simulation, sweeps): rich bars with the
time left, shown only on a terminal and only while `enabled` — the command line turns them off
under --json and --quiet. Work running inside another bar (an evaluation inside a training epoch)
shows none of its own: a terminal holds one live display at a time."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar

from rich.errors import LiveError
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

_ENABLED: ContextVar[bool] = ContextVar("bitsmith_progress", default=True)


def enable(on: bool) -> None:
    """Allow (the default) or forbid progress bars in this context."""
    _ENABLED.set(on)


@contextlib.contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Bars allowed (or not) inside the block only (a job run with --quiet, --json)."""
    token = _ENABLED.set(on)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def shown() -> bool:
    return _ENABLED.get() and sys.stdout.isatty()


@contextlib.contextmanager
def bar(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A transient bar `label` over `total` steps (None: unknown); yields `advance(n)`."""
    if not shown():
        yield lambda n: None
        return
    progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                        TimeRemainingColumn(), transient=True)
    try:
        progress.start()
    except LiveError:  # another bar is on screen: this work is part of it
        yield lambda n: None
        return
    try:
        task = progress.add_task("", total=total)
        yield lambda n: progress.update(task, advance=n)
    finally:
        progress.stop()


def steps(items: Iterable, label: str, total: int | None = None) -> Iterator:
    """`items`, advancing a bar by one per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(label, total) as advance:
        for item in items:
            yield item
            advance(1)
