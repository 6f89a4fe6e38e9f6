"""The command line end to end on the synthetic data set: train → quantize → eval, --json, errors."""

import json
import subprocess
import sys

import pytest


def bitsmith(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "bitsmith.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"bitsmith {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def last_json(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "fp32"
    result = last_json(bitsmith("train", "--model", "lenet5", "--dataset", "synthetic", "--epochs", "2",
                                "--out", out, "--json"))
    assert result["accuracy"] > 50  # the synthetic set is learnable: well above 10% chance
    return out


def test_quantize_and_eval_json(float_run, tmp_path):
    graph = tmp_path / "int8"
    q = last_json(bitsmith("quantize", float_run, "--wbits", "8", "--abits", "8", "--out", graph, "--json"))
    for key in ("fp32_accuracy", "accuracy", "integer_accuracy", "agreement"):
        assert key in q
    assert q["agreement"] >= 0.99
    assert abs(q["integer_accuracy"] - q["fp32_accuracy"]) <= 2.0
    assert (graph / "graph.json").is_file() and (graph / "tensors.safetensors").is_file()
    assert json.loads((graph / "metrics.json").read_text())["integer_accuracy"] == q["integer_accuracy"]

    e = last_json(bitsmith("eval", graph, "--json"))
    assert e["integer_accuracy"] == q["integer_accuracy"]
    f = last_json(bitsmith("eval", float_run, "--json"))
    assert f["accuracy"] == q["fp32_accuracy"]


def test_human_output_is_a_table(float_run):
    proc = bitsmith("eval", float_run)
    assert "accuracy" in proc.stdout and "float_run" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--wbits", "1"], "allowed: 2 to 16"),
    (["--abits", "33"], "allowed: 2 to 16"),
])
def test_bad_settings_give_a_clear_error(float_run, tmp_path, args, message):
    proc = bitsmith("quantize", float_run, "--out", tmp_path / "x", *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_names_and_paths(tmp_path):
    proc = bitsmith("train", "--model", "resnet", "--dataset", "synthetic", "--out", tmp_path / "r", check=False)
    assert proc.returncode == 2 and "lenet5" in proc.stderr and "Traceback" not in proc.stderr
    proc = bitsmith("eval", tmp_path, check=False)
    assert proc.returncode == 2 and "neither a float run" in proc.stderr


def test_summary_json():
    s = last_json(bitsmith("summary", "lenet5", "--json"))
    assert (s["params"], s["macs"]) == (61470, 416520)


def test_export_onnx_integer_and_qdq(float_run, tmp_path):
    graph = tmp_path / "int8"
    bitsmith("quantize", float_run, "--out", graph)
    e = last_json(bitsmith("export", graph, "--format", "onnx", "--out", tmp_path / "m.onnx", "--json"))
    assert e["matches_engine"] is True and e["mismatched_elements"] == 0
    q = last_json(bitsmith("export", graph, "--out", tmp_path / "q.onnx", "--qdq", "--json"))
    assert q["argmax_agreement"] >= 0.95
    bad = bitsmith("export", graph, "--format", "tflite", "--out", tmp_path / "x", check=False)
    assert bad.returncode == 2 and "allowed: onnx, clipq-hex" in bad.stderr


def test_per_channel_accuracy_ranks_dequantized_outputs(float_run, tmp_path):
    # Per-channel output scales: raw accumulator codes of different classes are on different grids;
    # integer accuracy must rank the dequantized values (a raw argmax lost ~3 pp here once).
    q = last_json(bitsmith("quantize", float_run, "--wbits", "4", "--abits", "8", "--per-channel",
                           "--out", tmp_path / "pc", "--json"))
    assert q["agreement"] >= 0.98
    assert abs(q["integer_accuracy"] - q["accuracy"]) <= 1.0


def test_ranges_writes_csv_and_json(float_run, tmp_path):
    r = last_json(bitsmith("ranges", float_run, "--out", tmp_path / "rg", "--json"))
    names = [row["layer"] for row in r["layers"]] if "layer" in r["layers"][0] else None
    assert (tmp_path / "rg" / "ranges.csv").is_file() and (tmp_path / "rg" / "ranges.json").is_file()
    assert len(r["layers"]) == 6  # the input and LeNet-5's five Conv/Linear layers
    assert names is None or names[0] == "input"


def test_quantize_options_reach_the_graph(float_run, tmp_path):
    q = last_json(bitsmith("quantize", float_run, "--scale-mode", "pot", "--observer", "mse",
                           "--layers", '{"conv1": {"weight_bits": 6}}', "--out", tmp_path / "pot", "--json"))
    assert q["quant_config"]["scale_mode"] == "pot" and q["quant_config"]["observer"] == "mse"
    graph = json.loads((tmp_path / "pot" / "graph.json").read_text())
    assert graph["nodes"][1]["attrs"]["weight_bits"] == 6
    bad = bitsmith("quantize", float_run, "--layers", '{"pool1": {"per_channel": true}}', "--out", tmp_path / "b", check=False)
    assert bad.returncode == 2 and "per-channel" in bad.stderr


def test_export_clipq_hex(tmp_path):
    import torch

    from bitsmith.integer import load
    from bitsmith.targets.clipq_hex import read_clipq_hex
    from tests.helpers import golden

    # a CLIP-Q graph whose codebook layers are not all written: 2-bit conv1, conv2, fc1; 3-bit conv3; dense fc2
    golden("lenet5_clipq_3bit").save(tmp_path / "g")
    e = last_json(bitsmith("export", tmp_path / "g", "--format", "clipq-hex", "--out", tmp_path / "hex", "--json"))
    assert e["format"] == "clipq-hex"
    back = read_clipq_hex(tmp_path / "hex")
    g = load(tmp_path / "g")
    assert back, "no layer written"
    for name, layer in back.items():
        node = next(n for n in g.nodes if n.name == name)
        assert torch.equal(layer["weight_index"].to(torch.int64), g.params[node.params["weight_index"]].to(torch.int64))


def test_qat_command(float_run, tmp_path):
    r = last_json(bitsmith("qat", float_run, "--method", "lsq", "--wbits", "4", "--abits", "4", "--epochs", "1",
                           "--out", tmp_path / "lsq", "--json"))
    assert r["agreement"] == 1.0 and r["integer_accuracy"] == r["accuracy"]
    assert (tmp_path / "lsq" / "graph.json").is_file()
    bad = bitsmith("qat", float_run, "--method", "magic", "--out", tmp_path / "x", check=False)
    assert bad.returncode == 2 and "lsq" in bad.stderr
    bad = bitsmith("qat", float_run, "--method", "lsq", "--bitw", "8229", "--out", tmp_path / "y", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
