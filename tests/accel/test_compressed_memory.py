"""The compressed weight stream WS.hex (docs/hardware.md §6): each dense conv layer's codes in its IR
storage format, read back to exactly the dense image's words; corrupt streams are DataErrors and a
failed write leaves nothing behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bitsmith.accel import AccelConfig
from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.cost import cost_report
from bitsmith.accel.memory import (RECORD_HEADER_BYTES, WEIGHT_STREAM_FILE, build_memory, export_memory,
                                   read_layer_weights, read_memory, read_program, write_memory)
from bitsmith.accel.simulate import simulate
from bitsmith.errors import ConfigError, DataError
from bitsmith.integer import engine
from bitsmith.integer.sparse import FORMATS, HEADER_BITS, encode
from bitsmith.integer.sparsity import annotate
from bitsmith.storage import sha256_file
from tests.helpers import golden, invoke


def _pruned(name: str = "lenet5_w4a4_pc", keep: float = 0.2):
    torch.manual_seed(0)
    g = golden(name)
    for node in g.nodes:
        if node.op in ("Conv2d", "Linear") and "weight" in node.params:
            w = g.params[node.params["weight"]]
            g.params[node.params["weight"]] = torch.where(torch.rand(w.shape) < keep, w, torch.zeros_like(w))
    return g


def _same_as_dense(graph, tmp_path, config=AccelConfig(), weight_stream="ir"):
    """Write the dense and the compressed image; the compressed one reads back to the dense words,
    the rebuilt program has the same weights, and the cycle model on it equals the engine."""
    x = torch.rand(3, *graph.input_spec.shape, generator=torch.Generator().manual_seed(1))
    dense = export_memory(graph, x, tmp_path / "dense", config)
    packed = export_memory(graph, x, tmp_path / "packed", config, weight_stream=weight_stream)
    assert "W8.hex" in dense["files"] and WEIGHT_STREAM_FILE not in dense["files"]
    assert "W8.hex" not in packed["files"] and WEIGHT_STREAM_FILE in packed["files"]
    _, want = read_memory(tmp_path / "dense")
    _, got = read_memory(tmp_path / "packed")
    assert got.w8 == want.w8 and got.param == want.param and got.w2 == want.w2
    program = read_program(tmp_path / "packed")
    for a, b in zip(program.layers, read_program(tmp_path / "dense").layers):
        if a.kind == "conv":
            np.testing.assert_array_equal(a.weights, b.weights)
    outputs = engine.run(graph, x, return_all=True)
    result = simulate(program, outputs[program.input_name], memory=got)
    for layer in program.layers:
        np.testing.assert_array_equal(result.outputs[layer.name], outputs[layer.name].numpy())
    return packed


def test_best_formats_round_trip_and_are_smaller(tmp_path):
    g = annotate(_pruned())
    doc = _same_as_dense(g, tmp_path)
    records = [layer["weight_stream"] for layer in doc["layers"] if "weight_stream" in layer]
    convs = [n for n in g.nodes if n.op in ("Conv2d", "Linear")]
    assert [r["format"] for r in records] == [n.attrs["weight_storage"] for n in convs]
    bus_bytes = doc["config"]["bus_bits"] // 8
    for record, node in zip(records, convs):
        codes = g.weight_codes(node).reshape(g.weight_codes(node).shape[0], -1).numpy()
        enc = encode(codes, record["format"], 4, run_bits=4)
        assert record["bits"] == 8 * RECORD_HEADER_BYTES + HEADER_BITS + enc.length_bits
        assert record["words"] == -(-(RECORD_HEADER_BYTES + len(enc.to_bytes())) // bus_bytes)
    # W8.hex stores these 4-bit codes at 4 bits (§6): the stream of 20 % of them is under half of it
    assert (tmp_path / "packed" / WEIGHT_STREAM_FILE).stat().st_size < (tmp_path / "dense" / "W8.hex").stat().st_size / 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips(tmp_path, fmt):
    _same_as_dense(_pruned(), tmp_path, weight_stream=fmt)


@pytest.mark.parametrize("bus_bits", [32, 96, 128])
def test_other_bus_widths(tmp_path, bus_bits):
    _same_as_dense(annotate(_pruned(keep=0.5), "relative", index_bits=3), tmp_path, AccelConfig(bus_bits=bus_bits))


def test_codebook_layers_stay_in_W2_and_dense_ones_go_to_the_stream(tmp_path):
    doc = _same_as_dense(golden("lenet5_clipq"), tmp_path, weight_stream="best")
    assert "W2.hex" in doc["files"] and "CB8.hex" in doc["files"]
    kinds = [(layer["codebook"] is not None, "weight_stream" in layer) for layer in doc["layers"] if layer["kind"] == "conv"]
    assert all(book != streamed for book, streamed in kinds) and any(streamed for _, streamed in kinds)


def test_grouped_conv_round_trips(tmp_path):
    _same_as_dense(golden("grouped_conv"), tmp_path, weight_stream="bitmask")


def _stream_folder(tmp_path):
    g = annotate(_pruned(), "best")
    program = compile_graph(g, AccelConfig())
    codes = engine.run(g, torch.rand(1, 1, 32, 32), return_all=True)[program.input_name]
    write_memory(program, codes, tmp_path / "m", weight_stream=True)
    return program, tmp_path / "m"


def _rewrite(folder, words: list[str]) -> None:
    """Replace WS.hex and record its new sha256, so only the stream's own checks can object."""
    path = folder / WEIGHT_STREAM_FILE
    path.write_text("".join(w + "\n" for w in words))
    doc = json.loads((folder / "program.json").read_text())
    doc["sha256"][WEIGHT_STREAM_FILE] = sha256_file(path)
    (folder / "program.json").write_text(json.dumps(doc))


def test_a_changed_stream_fails_its_digest(tmp_path):
    _, folder = _stream_folder(tmp_path)
    lines = (folder / WEIGHT_STREAM_FILE).read_text().split()
    lines[3] = f"{int(lines[3], 16) ^ 1:016x}"
    (folder / WEIGHT_STREAM_FILE).write_text("".join(w + "\n" for w in lines))
    with pytest.raises(DataError, match="does not match"):
        read_memory(folder)


@pytest.mark.parametrize("damage, message", [
    (lambda w: w[:-5], "truncated"),
    (lambda w: [f"{int(w[0], 16) ^ 0x10000:016x}"] + w[1:], "is not a record of layer 0"),
    (lambda w: [f"{int(w[0], 16) ^ (1 << 40):016x}"] + w[1:], "record says"),   # the byte length
    (lambda w: w[:7] + [f"{int(w[7], 16) | 1 << 63:016x}"] + w[8:], "padding after the record"),
    (lambda w: w[:1] + [f"{int(w[1], 16) ^ 0x0f:016x}"] + w[2:], "format id|holds"),  # the sparse header's format
    (lambda w: w[:3] + [f"{int(w[3], 16) ^ 1:016x}"] + w[4:], "payload is 32 bytes; length_bits = 257"),
])
def test_a_corrupt_stream_is_a_data_error(tmp_path, damage, message):
    # Structural damage (cut, record header, sparse header, padding). A flipped bit inside a code can
    # decode to another valid code: only the sha256 in program.json catches that (test above).
    _, folder = _stream_folder(tmp_path)
    _rewrite(folder, damage((folder / WEIGHT_STREAM_FILE).read_text().split()))
    with pytest.raises(DataError, match=message):
        read_memory(folder)


def test_read_layer_weights_reads_one_record(tmp_path):
    program, folder = _stream_folder(tmp_path)
    doc, memory = read_memory(folder)
    for layer, info in zip(program.layers, doc["layers"]):
        if "weight_stream" in info:
            got = read_layer_weights(layer, program.config, memory.ws, info["weight_stream"]["base"], stream=True)
            np.testing.assert_array_equal(got, layer.weights)
    first = next(i for i in doc["layers"] if "weight_stream" in i)
    with pytest.raises(DataError, match="not a record of layer"):   # another layer's record
        read_layer_weights(program.layers[first["index"]], program.config, memory.ws, 8, stream=True)


def test_a_failed_write_leaves_no_folder(tmp_path):
    g = annotate(_pruned(), "csr")
    program = compile_graph(g, AccelConfig())
    program.layers[2].weights = program.layers[2].weights.copy()
    program.layers[2].weights[0, 0] = 99   # not a 4-bit code: encoding fails after layer 0's record
    with pytest.raises(ConfigError, match="cannot be stored as csr"):
        write_memory(program, np.zeros((1, 1, 32, 32), dtype=np.int64), tmp_path / "m", weight_stream=True)
    assert not (tmp_path / "m").exists()
    with pytest.raises(ConfigError, match="weight stream 'zip'"):
        export_memory(g, torch.rand(1, 1, 32, 32), tmp_path / "m", weight_stream="zip")
    assert not (tmp_path / "m").exists()


def test_the_cost_model_counts_indices_and_headers():
    g = annotate(_pruned(), "best")
    program = compile_graph(g, AccelConfig())
    report = cost_report(program)
    for row, layer in zip(report["layers"], program.layers):
        if layer.kind != "conv":
            assert row["weight_memory"] is None
            continue
        m = row["weight_memory"]
        enc = encode(layer.weights, layer.weight_storage, layer.weight_bits, **layer.storage_fields)
        assert m["stored_bits"] == enc.length_bits + HEADER_BITS
        assert m["dense_bits"] == layer.weights.size * layer.weight_bits + HEADER_BITS
        assert m["index_bits"] == enc.length_bits - enc.nnz * layer.weight_bits
    total = report["weight_memory"]
    assert total["stored_bits"] < total["dense_bits"] / 2 and total["stored_bram18"] < total["dense_bram18"]
    dense = cost_report(compile_graph(_pruned(), AccelConfig()))["weight_memory"]
    assert dense["stored_bits"] == dense["dense_bits"] == total["dense_bits"]


def test_cli_compile_writes_the_stream_and_report_shows_both_figures(tmp_path):
    g = annotate(_pruned(), "best")
    g.save(tmp_path / "g")
    result = invoke("hw", "compile", str(tmp_path / "g"), "--out", str(tmp_path / "m"), "--images", "0",
                    "--weight-stream", "ir", "--json")
    assert result.exit_code == 0, result.output
    assert WEIGHT_STREAM_FILE in json.loads(result.stdout)["files"]
    np.testing.assert_array_equal(read_memory(tmp_path / "m")[1].w8,
                                  build_memory(compile_graph(g, AccelConfig())).w8)
    report = json.loads(invoke("hw", "report", str(tmp_path / "g"), "--json").stdout)
    assert report["weight_memory"]["stored_bits"] < report["weight_memory"]["dense_bits"]
    assert report["zero_skip"]["weights"]["cycles"] <= report["cycles"]
    text = invoke("hw", "report", str(tmp_path / "g")).stdout
    assert "weight memory, IR storage formats" in text and "zero weights skipped" in text
    bad = invoke("hw", "compile", str(tmp_path / "g"), "--out", str(tmp_path / "bad"), "--images", "0",
                 "--weight-stream", "zip")
    assert bad.exit_code != 0 and not (tmp_path / "bad").exists()
