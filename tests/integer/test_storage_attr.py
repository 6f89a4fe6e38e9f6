"""The IR's storage attributes: weight_storage (+ field widths) and the outlier split. They are
validated like every attribute, survive save/load, never change arithmetic, and `annotate` sets them."""

from __future__ import annotations

import pytest
import torch

from bitsmith.errors import ConfigError, GraphError
from bitsmith.integer import engine, load
from bitsmith.integer.ops import outlier_parts, weight_storage
from bitsmith.integer.sparse import HEADER_BITS, best_format, encode
from bitsmith.integer.sparsity import annotate, graph_sparsity
from tests.helpers import golden

WEIGHTED = ("Conv2d", "Linear")


def _pruned(name: str, keep_every: int):
    g = golden(name)
    for node in g.nodes:
        if node.op in WEIGHTED:
            w = g.params[node.params["weight"]]
            mask = (torch.arange(w.numel()) % keep_every == 0).reshape(w.shape)
            g.params[node.params["weight"]] = torch.where(mask, w, torch.zeros_like(w))
    return g


def _first_conv(g):
    return next(n for n in g.nodes if n.op == "Conv2d")


def test_old_graphs_load_and_read_as_dense():
    g = golden("lenet5_w8a8")
    assert all("weight_storage" not in n.attrs for n in g.nodes)
    assert all(weight_storage(n) == ("dense", {}) for n in g.nodes if n.op in WEIGHTED)


def test_annotate_best_picks_each_layers_smallest_and_keeps_arithmetic(tmp_path):
    g = _pruned("lenet5_w4a4_pc", 10)
    a = annotate(g, "best", run_bits=3)
    for node, orig in zip(a.nodes, g.nodes):
        if node.op not in WEIGHTED:
            assert node.attrs == orig.attrs
            continue
        codes = g.weight_codes(orig).reshape(g.weight_codes(orig).shape[0], -1).numpy()
        assert node.attrs["weight_storage"] == best_format(codes, 4, run_bits=3)[0]
        assert "weight_storage" not in orig.attrs  # the input graph is untouched
    report = graph_sparsity(a, run_bits=3)
    assert [r["storage"] for r in report["layers"]] == [r["best"] for r in report["layers"]]
    assert all(r["storage_bits"] == r["stored_bits"] for r in report["layers"])
    x = torch.rand(3, 1, 32, 32)
    assert torch.equal(engine.run(a, x), engine.run(g, x))
    a.save(tmp_path / "g")
    back = load(tmp_path / "g")
    assert [n.attrs for n in back.nodes] == [n.attrs for n in a.nodes]
    assert torch.equal(engine.run(back, x), engine.run(g, x))


def test_annotate_one_format_or_per_node():
    g = _pruned("lenet5_w4a4_pc", 4)
    every = annotate(g, "relative", index_bits=6)
    convs = [n for n in every.nodes if n.op in WEIGHTED]
    assert all(weight_storage(n) == ("relative", {"index_bits": 6}) for n in convs)
    one = annotate(every, {convs[0].name: "csr"})
    assert weight_storage(one.nodes[[n.name for n in one.nodes].index(convs[0].name)]) == ("csr", {})
    node = next(n for n in one.nodes if n.name == convs[0].name)
    assert "storage_index_bits" not in node.attrs  # the old format's field width goes with it
    report = graph_sparsity(one)
    row = report["layers"][0]
    codes = g.weight_codes(convs[0]).reshape(g.weight_codes(convs[0]).shape[0], -1).numpy()
    assert row["storage"] == "csr" and row["storage_bits"] == encode(codes, "csr", 4).length_bits + HEADER_BITS
    assert report["layers"][1]["storage_bits"] == encode(
        g.weight_codes(convs[1]).reshape(g.weight_codes(convs[1]).shape[0], -1).numpy(), "relative", 4,
        index_bits=6).length_bits + HEADER_BITS


@pytest.mark.parametrize("formats, message", [
    ("zip", "unknown format 'zip'"),
    ({"nope": "csr"}, "'nope' is not a Conv2d / Linear node"),
    (3, "formats must be"),
])
def test_annotate_refuses_bad_requests(formats, message):
    with pytest.raises(ConfigError, match=message):
        annotate(golden("lenet5_w8a8"), formats)


def test_annotate_leaves_codebook_layers_alone_and_refuses_to_name_them():
    g = golden("lenet5_clipq")
    a = annotate(g, "best")
    for node in a.nodes:
        if node.op in WEIGHTED:
            assert ("weight_storage" in node.attrs) == (node.attrs.get("weight_format", "dense") == "dense")
    book = next(n for n in g.nodes if n.attrs.get("weight_format") == "codebook")
    with pytest.raises(ConfigError, match="store their own indices"):
        annotate(g, {book.name: "bitmask"})


@pytest.mark.parametrize("attrs, message", [
    ({"weight_storage": "zip"}, r"attrs.weight_storage: 'zip'; allowed: 'dense', 'bitmask'"),
    ({"weight_storage": "bitmask", "storage_run_bits": 4}, "'storage_run_bits' is the field width of weight_storage "
                                                          "'run-length'"),
    ({"weight_storage": "run-length", "storage_run_bits": 0}, "storage_run_bits: 0; allowed: an integer from 1 to 16"),
    ({"storage_index_bits": 5}, "field width of weight_storage 'relative'; this node's is 'dense'"),
    ({"outlier": {"low_bits": 4, "shift": 2}}, "attrs.outlier"),
    ({"outlier": {"low_bits": 4, "shift": True, "outlier_bits": 8}}, "attrs.outlier"),
    ({"outlier": {"low_bits": 6, "shift": 4, "outlier_bits": 8}}, r"low_bits \+ shift \(10\)"),
])
def test_bad_storage_attrs_are_graph_errors_naming_node_and_field(attrs, message):
    g = golden("lenet5_w8a8")
    node = _first_conv(g)
    node.attrs.update(attrs)
    with pytest.raises(GraphError, match=message) as e:
        g.validate()
    assert repr(node.name) in str(e.value)


def test_storage_attrs_on_codebook_weights_are_refused():
    g = golden("lenet5_clipq")
    node = next(n for n in g.nodes if n.attrs.get("weight_format") == "codebook")
    node.attrs["weight_storage"] = "csr"
    with pytest.raises(GraphError, match="describes dense weight codes"):
        g.validate()


def _outlier_graph():
    """lenet5_w8a8 whose first conv's codes are 4-bit codes · 2^2 except three wide outliers."""
    g = golden("lenet5_w8a8")
    node = _first_conv(g)
    w = g.params[node.params["weight"]]
    low = torch.clamp(torch.round(w.double() / 4), -7, 7).to(w.dtype)   # narrow: |l| ≤ 7
    q = (low * 4).reshape(-1).clone()
    q[[0, 7, 40]] = torch.tensor([101, -93, 127], dtype=q.dtype)
    g.params[node.params["weight"]] = q.reshape(w.shape)
    node.attrs["outlier"] = {"low_bits": 4, "shift": 2, "outlier_bits": 8}
    g.validate()
    return g, node


def test_outlier_split_is_exact_and_counted_as_low_codes_plus_sparse_outliers():
    g, node = _outlier_graph()
    codes = g.weight_codes(node)
    low, outliers = outlier_parts(node, codes)
    assert torch.equal(low * 4 + outliers, codes.to(torch.int64))
    assert int((outliers != 0).sum()) == 3 and int(low.abs().max()) <= 7
    row = graph_sparsity(g)["layers"][0]
    flat = lambda t: t.reshape(t.shape[0], -1).numpy()   # noqa: E731
    want = (best_format(flat(low), 4)[1] + HEADER_BITS) + (best_format(flat(outliers), 8)[1] + HEADER_BITS)
    assert row["formats"]["outlier"] == row["outlier"]["stored_bits"] == want
    assert row["outlier"]["outliers"]["nnz"] == 3
    assert want < row["formats"]["dense"]
    best = min(row["formats"], key=row["formats"].get)       # the outlier split competes with the plain formats
    assert row["best"] == best and row["stored_bits"] == row["formats"][best] <= want
    x = torch.rand(2, 1, 32, 32)
    plain = golden("lenet5_w8a8")
    plain.params = g.params
    assert torch.equal(engine.run(g, x), engine.run(plain, x))  # the split never changes arithmetic


def test_outlier_codes_must_fit_outlier_bits():
    g, node = _outlier_graph()
    node.attrs["outlier"] = {"low_bits": 4, "shift": 2, "outlier_bits": 6}   # 101 needs 8 bits
    with pytest.raises(GraphError, match=r"outlier codes .* outside the allowed \[-32, 31\]"):
        g.validate()
