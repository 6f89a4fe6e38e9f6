"""graph.json's schema (bitsmith.integer.schema), the int64 proof (bitsmith.integer.bounds) and the
empty batch: every malformed graph is a GraphError naming the file, the object and the field, never a
traceback; a graph whose arithmetic could leave int64 is refused by layer on every path."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from bitsmith.errors import BitsmithError, GraphError
from bitsmith.integer import IntegerGraph, Node, TensorSpec, engine, load
from bitsmith.integer.bounds import INT64_LIMIT, check_int64, layer_bounds
from bitsmith.integer.schema import check_document, json_schema
from tests.helpers import golden, golden_path, save_tensors_tied


@pytest.fixture
def folder(tmp_path):
    """A private copy of the golden single_layer graph (QuantizeInput → Conv2d)."""
    dst = tmp_path / "g"
    shutil.copytree(golden_path("single_layer"), dst)
    return dst


def edit(path, change):
    doc = json.loads((path / "graph.json").read_text())
    change(doc)
    (path / "graph.json").write_text(json.dumps(doc))


def refused(path, *fragments):
    with pytest.raises(GraphError) as e:
        load(path)
    text = str(e.value)
    assert str(path / "graph.json") in text, text
    for fragment in fragments:
        assert fragment in text, text
    return text


# -- the tracebacks of issue 11, each a GraphError now ------------------------------------------

def test_a_graph_json_that_is_a_list(folder):
    doc = json.loads((folder / "graph.json").read_text())
    (folder / "graph.json").write_text(json.dumps([doc]))
    refused(folder, "not a bitsmith integer graph", "array")


@pytest.mark.parametrize("bits", [8.0, "8", True, None, [8]])
def test_non_integer_bits(folder, bits):
    edit(folder, lambda d: d["tensors"][1].update(bits=bits))
    refused(folder, "tensor 'input_quant'", "bits", "an integer from 1 to 32")


@pytest.mark.parametrize("stride", [0, [1, 0], [1], [1, 1, 1], True, 1.0, "1", [True, 1]])
def test_stride_zero_and_other_bad_strides(folder, stride):
    edit(folder, lambda d: d["nodes"][1]["attrs"].update(stride=stride))
    refused(folder, "node 'q_0' (Conv2d)", "attrs.stride", "an integer from 1 to 65536, or a list of two")


@pytest.mark.parametrize("bits", [0, 1, 33, 64, True, 32.0])
def test_multiplier_bits_out_of_the_spec(bits, tmp_path):
    path = tmp_path / "g"
    shutil.copytree(golden_path("lenet5_bias_w8a8"), path)

    def change(d):
        node = next(n for n in d["nodes"] if n["op"] == "Requant")
        node["attrs"]["multiplier_bits"] = bits
    edit(path, change)
    refused(path, "(Requant)", "attrs.multiplier_bits", "an integer from 2 to 32")


def test_the_issues_multiplier_bits_64_example_cannot_load(tmp_path):
    """multiplier_bits 64 with every multiplier scaled by 2^32 (the same real M): v·m overflowed int64
    and `bitsmith eval` said 7.5 % instead of 89.5 %. The schema refuses it before any parameter is read."""
    path = tmp_path / "g"
    shutil.copytree(golden_path("lenet5_bias_w8a8"), path)
    doc = json.loads((path / "graph.json").read_text())
    params = load_file(path / "tensors.safetensors")
    for node in doc["nodes"]:
        if node["op"] == "Requant":
            node["attrs"]["multiplier_bits"] = 64
            params[node["params"]["multiplier"]] = params[node["params"]["multiplier"]].to(torch.int64) << 31
            params[node["params"]["shift"]] = (params[node["params"]["shift"]].to(torch.int64) + 31).clamp(max=62)
    (path / "graph.json").write_text(json.dumps(doc))
    save_tensors_tied(path, params)
    refused(path, "multiplier_bits: 64; allowed: an integer from 2 to 32")


@pytest.mark.parametrize("metadata", [[1], "x", 3, None, {"dataset": 5}, {"model": "lenet5"}, {"data_dir": []}])
def test_metadata_of_the_wrong_type(folder, metadata):
    edit(folder, lambda d: d.update(metadata=metadata))
    refused(folder, "metadata")


@pytest.mark.parametrize("clamp", [1.5, 0.0, "0", True, None, 2**40])
def test_a_float_or_otherwise_bad_clamp(clamp, tmp_path):
    path = tmp_path / "g"
    shutil.copytree(golden_path("lenet5_bias_w8a8"), path)

    def change(d):
        next(n for n in d["nodes"] if n["op"] == "Requant")["attrs"]["clamp_min"] = clamp
    edit(path, change)
    refused(path, "(Requant)", "attrs.clamp_min", "an integer from -2147483648 to 4294967295")


def test_weight_bits_1_is_below_the_spec(folder):
    # docs/arithmetic.md §3: 2 ≤ wb ≤ 16 (a signed code needs a sign bit and one more); the code says so too.
    edit(folder, lambda d: d["nodes"][1]["attrs"].update(weight_bits=1))
    refused(folder, "attrs.weight_bits: 1; allowed: an integer from 2 to 16")


@pytest.mark.parametrize("change, fragments", [
    (lambda d: d["nodes"][1].update(op=["Conv2d"]), ["unknown op", "known ops: QuantizeInput"]),
    (lambda d: d["nodes"][1].update(op="Conv3d"), ["node 'q_0'", "unknown op 'Conv3d'"]),
    (lambda d: d["nodes"][1].pop("op"), ["missing key 'op'"]),
    (lambda d: d["nodes"][1].update(params=[]), ["params: must be an object, not a JSON array"]),
    (lambda d: d["nodes"][1].update(attrs=[]), ["attrs: must be an object, not a JSON array"]),
    (lambda d: d["nodes"][1]["params"].update(weight=3), ["params.weight", "is not a name"]),
    (lambda d: d["nodes"][1]["params"].update(extra="q_0.bias"), ["parameter role 'extra'"]),
    (lambda d: d["nodes"][1]["params"].pop("weight"), ["missing parameter 'weight'"]),
    (lambda d: d["nodes"][1]["attrs"].pop("groups"), ["missing attribute 'groups'", "1 to 1048576"]),
    (lambda d: d["nodes"][1]["attrs"].update(index_bits=2), ["'index_bits' does not belong to a dense Conv2d"]),
    (lambda d: d["nodes"][1]["attrs"].update(weight_format="sparse"), ["weight_format", "'dense', 'codebook'"]),
    (lambda d: d["nodes"][1]["attrs"].update(weight_format="codebook", index_bits=2), ["parameter role 'weight' is not one of this Conv2d's: bias, codebook, weight_index"]),
    (lambda d: d["nodes"][1].update(inputs=[]), ["inputs", "at least 1"]),
    (lambda d: d["nodes"][1].update(inputs=["input_quant", "input_quant"]), ["inputs", "at most 1"]),
    (lambda d: d["nodes"][1].update(name="a/b"), ["'a/b' is not a name"]),
    (lambda d: d["nodes"][1].update(extra=1), ["unknown key 'extra'"]),
    (lambda d: d["tensors"][1].update(shape=5), ["shape: must be a list"]),
    (lambda d: d["tensors"][1].update(shape=[2, 0, 6]), ["shape[1]: 0; allowed: an integer from 1"]),
    (lambda d: d["tensors"][1].update(shape=[]), ["shape", "at least 1"]),
    (lambda d: d["tensors"][1].update(signed=1), ["signed: 1; allowed: true or false"]),
    (lambda d: d["tensors"][1].update(scale=True), ["scale: True; allowed: a finite number > 0"]),
    (lambda d: d["tensors"][1].update(scale=float("nan")), ["scale: nan"]),
    (lambda d: d["tensors"][1].update(scale=[1.0]), ["1 per-channel scales for 2 channels"]),
    (lambda d: d["tensors"][1].update(zero_point=128), ["zero_point 128 outside the signed 8-bit code range",
                                                         "-128 to 127"]),
    (lambda d: d["tensors"][1].update(zero_point=False), ["zero_point: False; allowed: an integer"]),
    (lambda d: d["tensors"][1].update(dtype="int8"), ["dtype: 'int8'; allowed: 'int' or 'float32'"]),
    (lambda d: d["tensors"][1].pop("bits"), ["missing bits"]),
    (lambda d: d["tensors"][0].update(bits=8), ["a float32 tensor has no bits"]),
    (lambda d: d["tensors"].append(dict(d["tensors"][1])), ["tensor name 'input_quant' appears twice"]),
    (lambda d: d.update(inputs="input"), ["inputs: must be a list"]),
    (lambda d: d.update(outputs=["q_0", "q_0"]), ["outputs", "at most 1"]),
    (lambda d: d.update(nodes={}), ["nodes: must be a list"]),
    (lambda d: d.update(extra=1), ["unknown key 'extra'"]),
    (lambda d: d.update(version=True), ["version True"]),
    (lambda d: d.update(format=None), ["format field is None"]),
])
def test_schema_violations_name_the_object_the_field_and_what_is_allowed(folder, change, fragments):
    edit(folder, change)
    refused(folder, *fragments)


@pytest.mark.parametrize("change, fragments", [
    (lambda d: d.update(outputs=["input"]), ["graph output 'input' is never produced by a node"]),
    (lambda d: d.update(inputs=["nowhere"]), ["graph input 'nowhere' is not a declared tensor"]),
    (lambda d: d["tensors"].__setitem__(2, {"name": "q_0", "shape": [3, 4, 4], "dtype": "float32"}),
     ["only the graph input is float32"]),
    (lambda d: d["tensors"][1].update(scale=[0.03, 0.03]), ["needs one scale, not one per channel"]),
    (lambda d: d["tensors"][1].update(scale=1e-50), ["0 or infinite as a float32"]),
    (lambda d: d["nodes"].reverse(), ["is not produced by an earlier node"]),
])
def test_semantic_violations_are_graph_errors_too(folder, change, fragments):
    edit(folder, change)
    refused(folder, *fragments)


def test_the_schema_checks_graphs_built_in_memory_as_well():
    g = golden("single_layer")
    g.nodes[1].attrs["groups"] = True  # a bool is never an integer
    with pytest.raises(GraphError, match="attrs.groups: True"):
        g.validate()
    g = golden("single_layer")
    g.nodes[1].attrs["stride"] = (1, 1)  # a tuple is written as a list: fine
    g.validate()
    g.metadata["note"] = object()
    with pytest.raises(GraphError, match="cannot be written as JSON"):
        g.validate()


def test_every_golden_graph_fits_the_schema_and_it_exports_as_json_schema():
    from tests.helpers import GOLDEN

    for folder in sorted(p for p in GOLDEN.iterdir() if (p / "graph.json").is_file()):
        check_document(json.loads((folder / "graph.json").read_text()), str(folder))
    schema = json_schema()
    assert schema["properties"]["format"]["const"] == "bitsmith.integer_graph"
    assert "Conv2dNode" in json.dumps(schema)


def test_check_document_reports_how_many_problems_there_are(folder):
    doc = json.loads((folder / "graph.json").read_text())
    doc["tensors"][1]["bits"] = 0
    doc["tensors"][2]["bits"] = 0
    with pytest.raises(GraphError, match=r"and 1 more problem\)"):
        check_document(doc)


# -- the int64 proof --------------------------------------------------------------------------

def _graph(tensors, nodes, params) -> IntegerGraph:
    g = IntegerGraph({t.name: t for t in tensors}, nodes, params, ["input"], [nodes[-1].output])
    g.validate()  # passes the schema and the semantic checks: only the int64 proof refuses it
    return g


def wide_linear(k: int) -> IntegerGraph:
    """32-bit unsigned input codes, 16-bit weights of full magnitude, K inputs per output."""
    return _graph(
        [TensorSpec("input", (k,), "float32"), TensorSpec("q", (k,), "int", 32, False, 1.0, 0),
         TensorSpec("acc", (1,), "int", 32, True, 1.0, 0)],
        [Node("QuantizeInput", "q", ["input"], "q"), Node("Linear", "acc", ["q"], "acc", {"weight_bits": 16},
                                                          {"weight": "acc.weight"})],
        {"acc.weight": torch.full((1, k), 32767, dtype=torch.int16)})


def wide_requant(m: int, s: int) -> IntegerGraph:
    """A Requant straight after 32-bit unsigned input codes: max|v| = 2^32 − 1."""
    return _graph(
        [TensorSpec("input", (1,), "float32"), TensorSpec("q", (1,), "int", 32, False, 1.0, 0),
         TensorSpec("out", (1,), "int", 8, True, 1.0, 0)],
        [Node("QuantizeInput", "q", ["input"], "q"),
         Node("Requant", "out", ["q"], "out", {"clamp_min": -128, "clamp_max": 127, "multiplier_bits": 32},
              {"multiplier": "out.multiplier", "shift": "out.shift"})],
        {"out.multiplier": torch.tensor([m]), "out.shift": torch.tensor([s])})


def _refused_everywhere(g, layer, x, tmp_path):
    with pytest.raises(GraphError, match=f"layer '{layer}'.*beyond int64"):
        engine.run(g, x)
    with pytest.raises(GraphError, match=f"layer '{layer}'.*beyond int64"):
        engine.run(g, x, return_all=True)
    from bitsmith.onnx.export import export_onnx

    with pytest.raises(BitsmithError):  # the ONNX export has tighter limits of its own (8-bit MACs, int32 sums)
        export_onnx(g, tmp_path / "m.onnx")


def test_a_linear_whose_partial_sums_could_leave_int64_is_refused_by_name(tmp_path):
    k = 65_600  # K · 32767 · (2^32 − 1) ≥ 2^63
    g = wide_linear(k)
    assert max(b.bound for b in layer_bounds(g)) >= INT64_LIMIT
    _refused_everywhere(g, "acc", torch.zeros(1, k), tmp_path)
    check_int64(wide_linear(1000))  # a thousand terms fit easily


def test_a_requant_whose_product_could_leave_int64_is_refused_by_name(tmp_path):
    # (2^32 − 1)·(2^31 − 1) < 2^63, but adding the rounding term 2^61 of s = 62 does not fit.
    g = wide_requant((1 << 31) - 1, 62)
    _refused_everywhere(g, "out", torch.zeros(1, 1), tmp_path)
    ok = wide_requant((1 << 31) - 1, 30)
    x = torch.tensor([[4.0e9]])
    assert torch.equal(engine.run(ok, x), engine.run(ok, x, return_all=True)["out"])


def test_unchecked_accumulators_are_bounded_by_their_computed_range():
    """With check_overflow=False an accumulator is not held to its declared width, so the Requant after
    it is bounded by what the layer can compute; 16-bit weights and codes with a 32-bit multiplier
    exceed int64 then, and only then."""
    k = 512
    g = _graph(
        [TensorSpec("input", (k,), "float32"), TensorSpec("q", (k,), "int", 16, True, 1.0, 0),
         TensorSpec("acc", (1,), "int", 32, True, 1.0, 0), TensorSpec("out", (1,), "int", 8, True, 1.0, 0)],
        [Node("QuantizeInput", "q", ["input"], "q"),
         Node("Linear", "acc", ["q"], "acc", {"weight_bits": 16}, {"weight": "acc.weight"}),
         Node("Requant", "out", ["acc"], "out", {"clamp_min": -128, "clamp_max": 127, "multiplier_bits": 32},
              {"multiplier": "out.multiplier", "shift": "out.shift"})],
        {"acc.weight": torch.full((1, k), 32767, dtype=torch.int16), "out.multiplier": torch.tensor([(1 << 31) - 1]),
         "out.shift": torch.tensor([62])})
    x = torch.randn(3, k)
    assert torch.equal(engine.run(g, x), engine.run(g, x, return_all=True)["out"])
    for return_all in (False, True):
        with pytest.raises(GraphError, match="layer 'out'.*unchecked"):
            engine.run(g, x, return_all=return_all, check_overflow=False)


def test_every_golden_graph_is_proved_int64_safe():
    from tests.helpers import GOLDEN

    for folder in sorted(p for p in GOLDEN.iterdir() if (p / "graph.json").is_file()):
        bounds = layer_bounds(golden(folder.name))
        assert max(b.bound for b in bounds) < 1 << 62, folder.name


# -- the empty batch --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["single_layer", "lenet5_clipq", "ultranet_bypass_32x64", "avgpool_small",
                                  "mixed_small"])
def test_an_empty_batch_gives_empty_codes_on_every_path(name, tmp_path):
    from bitsmith.onnx.export import export_onnx, run_onnx

    g = golden(name)
    x = torch.zeros(0, *g.input_spec.shape)
    shape = (0, *g.output_spec.shape)
    fast = engine.run(g, x)
    every = engine.run(g, x, return_all=True)
    assert fast.shape == shape and fast.dtype == torch.int64
    assert all(every[n.output].shape == (0, *g.tensors[n.output].shape) for n in g.nodes)
    assert every[g.outputs[0]].dtype == torch.int64
    onnx_out = run_onnx(export_onnx(g, tmp_path / "m.onnx"), x.numpy())
    assert onnx_out.shape == shape and str(onnx_out.dtype) == "int64"
    assert engine.predict(g, x).shape == shape


def test_the_graph_input_check_does_not_change_a_document():
    # check_document validates; it never rewrites what it reads (load builds from the same document).
    doc = json.loads((golden_path("single_layer") / "graph.json").read_text())
    before = copy.deepcopy(doc)
    check_document(doc)
    assert doc == before


def test_input_codes_wider_than_24_bits_clamp_exactly_on_every_path(tmp_path):
    """2^25 − 1 is not a float32: clamping a 25-bit input code in float32 gave 2^25, one past the code
    range (found by tests/integer/test_arithmetic_properties.py). The engine and ONNX clamp such codes in
    float64."""
    from bitsmith.onnx.export import export_onnx, run_onnx

    g = _graph(
        [TensorSpec("input", (1,), "float32"), TensorSpec("q", (1,), "int", 25, False, 1.0, 0),
         TensorSpec("out", (1,), "int", 32, True, 1.0, 0)],
        [Node("QuantizeInput", "q", ["input"], "q"),
         Node("Requant", "out", ["q"], "out", {"clamp_min": -(1 << 31), "clamp_max": (1 << 31) - 1,
                                               "multiplier_bits": 32},
              {"multiplier": "out.multiplier", "shift": "out.shift"})],
        {"out.multiplier": torch.tensor([1]), "out.shift": torch.tensor([0])})
    x = torch.tensor([[33554432.0], [1e30], [33554430.0], [-5.0]])
    want = [[(1 << 25) - 1], [(1 << 25) - 1], [33554430], [0]]
    assert engine.run(g, x).tolist() == want
    assert engine.run(g, x, return_all=True)["q"].tolist() == want
    assert run_onnx(export_onnx(g, tmp_path / "m.onnx"), x.numpy()).tolist() == want


@pytest.mark.parametrize("digest, ok", [("0" * 64, True), ("A" * 64, False), ("0" * 63, False), (None, False),
                                        (5, False)])
def test_the_tensors_digest_field_has_its_form_checked(folder, digest, ok):
    # Its value against the file is the loader's integrity check; the schema checks its form.
    edit(folder, lambda d: d.update(tensors_sha256=digest))
    if ok:
        check_document(json.loads((folder / "graph.json").read_text()))
    else:
        refused(folder, "tensors_sha256", "64 lowercase hexadecimal digits")


@pytest.mark.parametrize("shape", [(1, 1), (), (1, 1, 1)])
def test_a_multiplier_and_shift_must_be_1d(shape, tmp_path):
    """Found by the fuzzer: both stored 2-D (or 0-D) passed every check and crashed the fast path."""
    path = tmp_path / "g"
    shutil.copytree(golden_path("lenet5_bias_w8a8"), path)
    doc = json.loads((path / "graph.json").read_text())
    params = load_file(path / "tensors.safetensors")
    node = next(n for n in doc["nodes"] if n["op"] == "Requant")
    for role in ("multiplier", "shift"):
        params[node["params"][role]] = params[node["params"][role]].reshape(shape)
    save_tensors_tied(path, params)
    refused(path, "(Requant)", "each must be 1-D with 1 or")
