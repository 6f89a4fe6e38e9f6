"""A small ONNX graph builder: nodes and constants named after the IntegerGraph node they implement.

Every ONNX node and helper value an IntegerGraph node expands to is called `<node>/<step>`, and
the value it finally produces carries the IntegerGraph tensor's own name, so a mismatch found in
onnxruntime points straight at the node in graph.json.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bitsmith.errors import GraphError
from bitsmith.version import __version__

#: ai.onnx opset 21 (ONNX 1.16) has int16 Q/DQ and per-axis Q/DQ of int32 biases; IR version 10
#: is the lowest that carries opset 21, and onnxruntime 1.31 loads it.
OPSET = 21
IR_VERSION = 10

INPUT_NAME = "input"
BATCH = "N"


class OnnxBuilder:
    """Collects nodes and initializers; `model()` turns them into a checked ModelProto."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def const(self, name: str, value: np.ndarray) -> str:
        """Add an initializer (exactly the array's dtype and shape); returns its name."""
        self._claim(name)
        # np.array(order="C"), not np.ascontiguousarray: that one turns a 0-d scalar into shape [1].
        self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, name: str | None = None, **attrs: Any) -> str:
        """Add one node computing `output`; the node is named `name` (default: `output`)."""
        self._claim(output)
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name or output, **attrs))
        return output

    def _claim(self, name: str) -> None:
        if name in self._names:
            raise GraphError(f"ONNX export: value name {name!r} is used twice; rename the graph tensor of that name")
        self._names.add(name)

    def model(
        self,
        graph_name: str,
        input_shape: tuple[int, ...],
        output: str,
        output_shape: tuple[int, ...],
        output_type: int,
        metadata: dict[str, str],
    ) -> onnx.ModelProto:
        """The model with one float32 input [N, *input_shape] and one output, checked by onnx.checker."""
        inp = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH, *input_shape])
        out = helper.make_tensor_value_info(output, output_type, [BATCH, *output_shape])
        graph = helper.make_graph(self.nodes, graph_name, [inp], [out], self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="bitsmith",
            producer_version=__version__,
        )
        helper.set_model_props(model, metadata)
        onnx.checker.check_model(model, full_check=True)
        return model


def metadata_props(graph_metadata: dict[str, Any], extra: dict[str, Any]) -> dict[str, str]:
    """ONNX metadata_props are strings: strings stay as they are, everything else becomes JSON."""
    merged = {**graph_metadata, **extra}
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in merged.items()}

