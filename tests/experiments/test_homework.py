"""The classroom flow runs end to end (on the synthetic set here; docs/homework.md has the real figures)."""

import json

from bitsmith.experiments.homework import ROWS, run_homework


def test_homework_flow_on_synthetic_data(tmp_path):
    results = run_homework(tmp_path, epochs=1, quiet=True, datasets=[("synthetic", None)])
    row = results["datasets"]["synthetic"]
    for _, key in ROWS:
        assert 0.0 <= row[key] <= 100.0
    assert row["fp32"] > 50  # learnable data: far above chance
    assert abs(row["int8_weights_activations"] - row["fp32"]) <= 2.0
    assert json.loads((tmp_path / "homework.json").read_text()) == results
    table = (tmp_path / "homework.md").read_text()
    assert "power-of-two" in table and "synthetic" in table
    assert (tmp_path / "synthetic-ranges" / "ranges.csv").is_file()
