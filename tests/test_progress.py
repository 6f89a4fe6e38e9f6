"""Progress bars: every item still comes through, bars stay off when not wanted, and work inside
another bar (an evaluation inside a training epoch) runs without a second live display."""

import subprocess
import sys

import pytest

from bitsmith import progress


def test_steps_yields_every_item_with_or_without_a_bar(monkeypatch):
    assert list(progress.steps(range(5), "off")) == [0, 1, 2, 3, 4]
    monkeypatch.setattr(progress, "shown", lambda: True)
    assert list(progress.steps(iter(range(7)), "on", total=7)) == list(range(7))


def test_a_bar_inside_a_bar_does_not_fail(monkeypatch):
    monkeypatch.setattr(progress, "shown", lambda: True)
    seen = []
    with progress.bar("outer", 2) as advance:
        for i in progress.steps(range(3), "inner"):  # rich allows one live display: the inner is silent
            seen.append(i)
        advance(1)
    assert seen == [0, 1, 2]


def test_bars_are_off_when_disabled_or_not_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    progress.enable(False)
    try:
        assert not progress.shown()
    finally:
        progress.enable(True)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert not progress.shown()


@pytest.mark.parametrize("flag", ["--json", "--quiet"])
def test_the_command_line_turns_bars_off_for_json_and_quiet(flag):
    code = ("import sys; from bitsmith import cli, progress; sys.argv = ['bitsmith', 'x', '%s'];"
            "sys.stdout.isatty = lambda: True; cli.app = lambda: print(progress.shown()); cli.main()" % flag)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
