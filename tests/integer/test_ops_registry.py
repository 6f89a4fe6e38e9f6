"""One definition per op: every back end's table registers against `bitsmith.integer.ops.OPS` and
names what it lacks."""

from __future__ import annotations

import pytest

from bitsmith.errors import GraphError, UnsupportedOpError
from bitsmith.integer.graph import Node
from bitsmith.integer.ops import OPS, Emitters


def _tables():
    from bitsmith.accel.compiler import EMIT as accel
    from bitsmith.integer.engine import FAST
    from bitsmith.integer.reference import REFERENCE
    from bitsmith.onnx.integer import EMIT as onnx_integer
    from bitsmith.onnx.qdq import EMIT as onnx_qdq
    from bitsmith.targets.hls.layers import EMIT as hls

    return {"reference": REFERENCE, "fast": FAST, "onnx": onnx_integer, "qdq": onnx_qdq, "accel": accel, "hls": hls}


def test_the_golden_model_the_engine_and_onnx_implement_every_op():
    tables = _tables()
    for name in ("reference", "fast", "onnx", "qdq"):
        assert tables[name].missing() == (), name


def test_hardware_back_ends_name_the_ops_they_lack():
    tables = _tables()
    for name in ("accel", "hls"):
        assert set(tables[name].supported()) | set(tables[name].missing()) == set(OPS), name
    # accel: every op but the walk's own structure (any DAG, docs/hardware.md §2).
    assert set(tables["accel"].missing()) == {"QuantizeInput", "Flatten"}
    # hls: every op but the walk's own structure (QuantizeInput on the host, Flatten free; a fused Requant
    # is part of its layer, a lone one is registered).
    assert set(tables["hls"].missing()) == {"QuantizeInput", "Flatten"}


def test_an_unknown_op_cannot_be_registered_and_a_missing_one_is_named():
    table = Emitters("test back end")
    with pytest.raises(GraphError, match="unknown op 'Softmax'"):
        table.register("Softmax")
    table.register("Conv2d")(lambda *a: None)
    with pytest.raises(ValueError, match="registered twice"):
        table.register("Conv2d")(lambda *a: None)
    node = Node("Reorg", "yolo_reorg", ["x"], "y", {"stride": 2})
    with pytest.raises(UnsupportedOpError, match=r"test back end: node 'yolo_reorg': op Reorg is not supported"):
        table.lookup(node)


def test_every_op_has_a_shape_rule_a_check_and_a_one_line_meaning():
    for name, d in OPS.items():
        assert d.name == name and callable(d.shape) and callable(d.check) and d.doc
