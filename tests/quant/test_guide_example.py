"""The worked example of docs/user-guide.md ("Bring your own model") runs as written: its model
quantizes, lowers to the ops the guide describes, and every back end (ONNX, the accelerator's
cycle model, the HLS files and the RTL in Icarus) matches the engine layer by layer."""

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "user-guide.md"


def _example() -> str:
    text = GUIDE.read_text()
    section = text[text.index("## Bring your own model"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_the_guide_s_worked_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_example(), str(GUIDE), "exec"), scope)
    graph, reports = scope["graph"], scope["reports"]
    ops = [n.op for n in graph.nodes]
    assert ops.count("Add") == 2 and ops.count("AvgPool2d") == 1
    depthwise = [n for n in graph.nodes if n.op == "Conv2d" and n.attrs["groups"] == 16]
    assert len(depthwise) == 2
    pool = next(n for n in graph.nodes if n.op == "AvgPool2d")
    assert pool.attrs["kernel"] == [14, 14]
    assert (tmp_path / "runs" / "mynet-w8a8" / "graph.json").is_file()
    assert "agree on 100.0%" in capsys.readouterr().out
    assert set(reports) == {"onnx", "accel", "hls", "rtl"}
    for name, report in reports.items():  # every back end runs Add, depthwise convs and the 14x14 pool
        assert report.passed, (name, report.error or report.first_mismatch)

