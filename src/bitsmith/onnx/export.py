"""`export_onnx` writes an IntegerGraph as an ONNX model; `run_onnx` runs one in onnxruntime.

Two flavours:

* the integer model (default): float images in, the graph's integer output codes (int64) out,
  bit for bit what `engine.run(graph, x)` returns (see `bitsmith.onnx.integer`);
* the QDQ model (`qdq=True`): QuantizeLinear/DequantizeLinear around float operators, dequantized
  floats out, for runtimes that build their own integer kernels (see `bitsmith.onnx.qdq`).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from bitsmith.errors import CheckpointError, ConfigError, GraphError
from bitsmith.integer.graph import IntegerGraph
from bitsmith.onnx import integer as integer_model
from bitsmith.onnx import qdq as qdq_model
from bitsmith.onnx.builder import BATCH, INPUT_NAME, OnnxBuilder, metadata_props
from bitsmith.storage import write_bytes_atomic


def export_onnx(graph: IntegerGraph, path: str | os.PathLike, *, qdq: bool = False,
                intermediates: bool = False) -> Path:
    """Write `graph` to `path` as an ONNX model (opset 21, IR 10), atomically; returns the path.

    The model's input is "input", float32 [N, C, H, W] with a dynamic batch N. The integer model
    (default) returns the graph's output codes as int64; with `qdq=True` it returns their real
    values as float32. Graph metadata (model, dataset, quant_config, …) becomes metadata_props.
    Raises ConfigError when a layer cannot be expressed (the integer model needs ≤ 8-bit codes),
    GraphError for an invalid graph.

    `intermediates=True` (integer model only) also makes every other tensor of the graph a model
    output, int64 under its graph name, so a verifier can compare each layer (bitsmith.verify).
    """
    graph.validate()
    flavour = "qdq" if qdq else "integer"
    b = OnnxBuilder()
    if graph.inputs[0] != INPUT_NAME:
        b.op("Identity", [INPUT_NAME], graph.inputs[0])
    (qdq_model if qdq else integer_model).build(graph, b)
    out = graph.output_spec
    extra = {
        "bitsmith.export": flavour,
        "bitsmith.output": out.name,
        "bitsmith.output_scale": out.scale,
        "bitsmith.output_zero_point": out.zero_point,
        "bitsmith.output_bits": out.bits,
    }
    model = b.model(
        f"bitsmith_{_model_name(graph)}_{flavour}",
        tuple(graph.input_spec.shape),
        out.name,
        tuple(out.shape),
        TensorProto.FLOAT if qdq else TensorProto.INT64,
        metadata_props(graph.metadata, extra),
    )
    if intermediates:
        if qdq:
            raise ConfigError("ONNX export: intermediate outputs exist for the integer model only, not --qdq")
        _add_intermediate_outputs(graph, model)
    data = model.SerializeToString()
    _check_onnxruntime_loads(data, flavour, graph)
    path = Path(path)
    write_bytes_atomic(path, data)
    return path


def _check_onnxruntime_loads(data: bytes, flavour: str, graph: IntegerGraph) -> None:
    """Refuse, before anything is written, a model onnxruntime will not load at its default settings.

    onnx.checker is not enough: ORT's graph optimisations (on by default) can reject a valid model —
    e.g. its QDQ propagation around a MaxPool of signed codes builds a QuantizeLinear whose output
    type contradicts its zero point — and a kernel the ONNX standard allows may be missing from its
    CPU provider (a dtype it does not implement for an op). A user must never be handed a file their
    runtime refuses; the error names the graph layer the refused ONNX node comes from."""
    try:
        ort.InferenceSession(data, ort.SessionOptions(), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's load errors (Fail, InvalidGraph, …) share no narrower base
        hint = (" The integer export (without --qdq) represents this graph exactly." if flavour == "qdq" else "")
        layer = _refused_layer(graph, str(e))
        raise ConfigError(f"ONNX export ({flavour}): onnxruntime {ort.__version__} refuses the model at its "
                          f"default settings{layer}, so no file was written: {e}.{hint}") from None


#: How onnxruntime names the node it refuses: "Node (name) Op (…)", "node with name 'name'", "node (name)".
_ORT_NODE = re.compile(r"[Nn]ode \(([^)]+)\)|node with name '([^']+)'|node name \(([^)]+)\)")


def _refused_layer(graph: IntegerGraph, message: str) -> str:
    """" (layer 'x', Op)" for the graph node an onnxruntime error's ONNX node comes from, or "".

    Every ONNX node the export writes is called `<layer>` or `<layer>/<step>`, and onnxruntime names
    the nodes its optimisations insert after the node they follow (`<layer>_q`, `<layer>/<step>_q`):
    the layer is the longest graph node name the ONNX name starts with, followed by "/", "_" or nothing."""
    match = _ORT_NODE.search(message)
    if match is None:
        return ""
    onnx_name = next(g for g in match.groups() if g)
    found = [n for n in graph.nodes
             if onnx_name == n.name or onnx_name.startswith(n.name + "/") or onnx_name.startswith(n.name + "_")]
    if not found:
        return ""
    node = max(found, key=lambda n: len(n.name))
    return f" (layer {node.name!r}, {node.op})"


def _add_intermediate_outputs(graph: IntegerGraph, model: onnx.ModelProto) -> None:
    """Every node output but the graph output as an extra int64 model output (the integer model
    carries each IntegerGraph tensor as an int64 value of the same name)."""
    for node in graph.nodes:
        if node.output in graph.outputs:
            continue
        spec = graph.tensors[node.output]
        model.graph.output.append(helper.make_tensor_value_info(node.output, TensorProto.INT64,
                                                                [BATCH, *spec.shape]))
    onnx.checker.check_model(model, full_check=True)


def _model_name(graph: IntegerGraph) -> str:
    spec = graph.metadata.get("model")  # the zoo model spec, when the pipeline recorded it
    return str(spec.get("name", "graph")) if isinstance(spec, dict) else "graph"


def run_onnx(path: str | os.PathLike, x: torch.Tensor | np.ndarray, *, all_outputs: bool = False):
    """Run an exported model on the onnxruntime CPU provider; returns its (first) output, or with
    `all_outputs=True` a dict of every model output by name.

    `x` is float images [N, C, H, W] (or one image [C, H, W]), converted to float32 as the
    integer engine does. The session is cached per file (path, size, modification time).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX model not found: {path}")
    stat = path.stat()
    session = _session(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    values = session.run(None, {INPUT_NAME: _as_input(session, path, x)})
    if all_outputs:
        return {o.name: v for o, v in zip(session.get_outputs(), values)}
    return values[0]


@lru_cache(maxsize=4)
def _session(path: str, size: int, mtime_ns: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's load errors (Fail, InvalidGraph, …) share no narrower base
        raise CheckpointError(f"onnxruntime cannot load {path}: {e}. Re-export it with bitsmith.") from None


def _as_input(session: ort.InferenceSession, path: Path, x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise GraphError(f"{path}: input must be float images, got a {x.dtype} tensor")
        x = x.detach().cpu().to(torch.float32).numpy()
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise GraphError(f"{path}: input must be float images, got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    shape = session.get_inputs()[0].shape[1:]
    if x.ndim == len(shape):
        x = x[None]
    if list(x.shape[1:]) != list(shape):
        raise GraphError(f"{path}: input of shape {list(x.shape)} does not fit the model input "
                         f"[N, {', '.join(map(str, shape))}]")
    if not np.isfinite(x).all():  # the engine rejects these too; a Cast of NaN is undefined
        raise GraphError(f"{path}: input contains NaN or infinity")
    return x
