"""`bitsmith sparsity`: per-layer density and format sizes of a graph, and an honest whole-model total."""

from __future__ import annotations

import json

import pytest
import torch

from bitsmith.integer.sparse import FORMATS, HEADER_BITS, decode, encode
from bitsmith.integer.sparsity import FLOAT_BITS, graph_sparsity
from tests.helpers import golden, invoke


def _pruned(name: str, keep_every: int):
    """A golden graph with all but every `keep_every`-th weight code set to 0 (a pruned graph)."""
    g = golden(name)
    for node in g.nodes:
        if node.op in ("Conv2d", "Linear"):
            w = g.params[node.params["weight"]]
            mask = torch.zeros(w.numel(), dtype=torch.bool)
            mask[::keep_every] = True
            g.params[node.params["weight"]] = torch.where(mask.reshape(w.shape), w, torch.zeros_like(w))
    return g


def test_sizes_are_the_encoded_lengths_and_the_best_is_the_smallest():
    g = _pruned("lenet5_w4a4_pc", 10)
    report = graph_sparsity(g)
    for row, node in zip(report["layers"], [n for n in g.nodes if n.op in ("Conv2d", "Linear")]):
        codes = g.weight_codes(node).reshape(g.weight_codes(node).shape[0], -1).numpy()
        assert row["nnz"] == int((codes != 0).sum()) and row["density"] == pytest.approx(row["nnz"] / codes.size)
        for fmt in FORMATS:
            enc = encode(codes, fmt, row["weight_bits"])
            assert row["formats"][fmt] == enc.length_bits + HEADER_BITS, (row["name"], fmt)
            assert (decode(enc) == codes).all()
        assert row["stored_bits"] == min(row["formats"].values())
    assert report["density"] == pytest.approx(0.1, abs=0.01)
    assert report["stored_bits"] == report["weight_bits_stored"] + report["other_bits"]
    weights = sum(r["weights"] for r in report["layers"])
    assert report["fp32_bits"] >= weights * FLOAT_BITS


def test_pruning_makes_a_graph_smaller_and_dense_graphs_pick_dense():
    dense = graph_sparsity(golden("lenet5_w8a8"))
    sparse = graph_sparsity(_pruned("lenet5_w8a8", 20))
    assert all(r["best"] == "dense" for r in dense["layers"])
    assert all(r["best"] != "dense" for r in sparse["layers"] if r["weights"] > 100)
    assert sparse["compression"] > 2 * dense["compression"]
    assert dense["compression"] == pytest.approx(dense["fp32_bits"] / dense["stored_bits"])


def test_codebook_layers_count_their_indices_and_codebook():
    report = graph_sparsity(golden("lenet5_clipq"))
    book = [r for r in report["layers"] if r["best"] == "codebook"]
    assert len(book) == 4
    for r in book:
        assert r["stored_bits"] == r["weights"] * 2 + 4 * r["weight_bits"]


def test_cli_prints_a_table_and_json(tmp_path):
    path = tmp_path / "g"
    _pruned("lenet5_mixed", 4).save(path)
    result = invoke("sparsity", path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert 0.15 < report["density"] <= 0.26 and report["compression"] > 1  # kept codes may be 0 too (2-bit conv1)
    table = invoke("sparsity", path, "--run-bits", "3")
    assert table.exit_code == 0 and "compression" in table.output and "run-length" in table.output


def test_activation_zeros_are_counted_on_each_layers_input():
    from bitsmith.integer import engine
    from bitsmith.integer.sparsity import activation_sparsity

    g = golden("lenet5_bias_asym")   # the input has a zero point != 0: "zero" means code == zero point
    x = torch.randn(3, *g.input_spec.shape, generator=torch.Generator().manual_seed(0))
    rows = activation_sparsity(g, x)
    outputs = engine.run(g, x, return_all=True)
    assert [r["layer"] for r in rows] == [n.output for n in g.nodes if n.op in ("Conv2d", "Linear")]
    for r in rows:
        codes, zp = outputs[r["input"]], g.tensors[r["input"]].zero_point
        assert r["zero_fraction"] == pytest.approx(float((codes == zp).float().mean()))
    zero_image = torch.zeros(1, *g.input_spec.shape)   # 0.0 quantizes to the zero point exactly
    assert activation_sparsity(g, zero_image)[0]["zero_fraction"] == 1.0
