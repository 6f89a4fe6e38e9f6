"""An IntegerGraph as a chain of hardware layers: a pass over the IR that every layer-sequential
back end (the accelerator compiler, the HLS export) runs, so it lives with the IR, not in one of them.

Both back ends run layer after layer from one activation buffer: QuantizeInput happens on the host,
Flatten is free (activations are CHW, the order Flatten produces), and each Conv2d / Linear /
AvgPool2d is fused with the Requant that consumes its accumulator. A Conv2d / Linear without a
Requant is allowed only as the graph's last layer (raw 32-bit accumulators out). What does not fit
this shape is an AcceleratorError naming the node.

Which layer ops a back end computes is its `Emitters` table (bitsmith.integer.ops): the walk asks
the table for every node that is not part of the chain's own structure (QuantizeInput, Requant,
Flatten), so an op the back end lacks is reported with the back end's name, the node and the op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from bitsmith.errors import AcceleratorError, UnsupportedOpError
from bitsmith.integer.graph import IntegerGraph, Node
from bitsmith.integer.ops import ACCUMULATING_OPS, Emitters

#: Ops the chain walk itself handles: on the host, fused into the layer before, or free.
STRUCTURAL_OPS = ("QuantizeInput", "Requant", "Flatten")


@dataclass(frozen=True)
class ChainStep:
    node: Node                 # Conv2d / Linear / AvgPool2d / MaxPool2d
    requant: Optional[Node]    # the Requant fused after it; None for MaxPool2d and a raw last layer

    @property
    def output(self) -> str:
        """The tensor this step leaves in the activation buffer."""
        return self.requant.output if self.requant is not None else self.node.output


def layer_chain(graph: IntegerGraph, emitters: Emitters) -> tuple[str, list[ChainStep]]:
    """(the quantized input tensor, the steps) of a single-chain graph.

    `emitters` is the back end's table of layer ops (a subset of Conv2d, Linear, AvgPool2d,
    MaxPool2d); its name prefixes error messages (e.g. "HLS export: ").
    """
    who = f"{emitters.backend}: "
    consumers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for name in node.inputs:
            consumers.setdefault(name, []).append(node)
    nodes = list(graph.nodes)
    for node in nodes:  # name an unsupported op (Concat, Reorg) before any branching it causes
        if node.op not in STRUCTURAL_OPS:
            check_supported(emitters, node)
    if not nodes or nodes[0].op != "QuantizeInput":
        raise AcceleratorError(f"{who}the graph must start with QuantizeInput (codes arrive from the host)")

    steps: list[ChainStep] = []
    current = nodes[0].output   # the tensor held in the activation buffer
    fused: set[str] = set()     # Requant nodes already merged into the step before them
    for node in nodes[1:]:
        if node.name in fused:
            continue
        if node.inputs != [current] or len(consumers.get(current, [])) != 1:
            raise AcceleratorError(
                f"{who}layer {node.name}: only a single chain of layers runs; {node.op} reads "
                f"{node.inputs} while the activation buffer holds {current!r} "
                f"(consumed by {len(consumers.get(current, []))} nodes)")
        if node.op == "Flatten":
            current = node.output
            continue
        if node.op == "Requant":
            raise AcceleratorError(f"{who}layer {node.name}: a Requant must follow a Conv2d, Linear or AvgPool2d")
        if steps and steps[-1].requant is None and steps[-1].node.op != "MaxPool2d":
            raise AcceleratorError(f"{who}layer {steps[-1].node.name}: a layer without requant (32-bit output) "
                                   f"must be the last layer, but {node.name} follows it")
        requant = _fused_requant(graph, node, consumers, who) if node.op in ACCUMULATING_OPS else None
        if requant is not None:
            fused.add(requant.name)
        steps.append(ChainStep(node, requant))
        current = steps[-1].output
    if not steps:
        raise AcceleratorError(f"{who}the graph has no layer to compute")
    if not _same_data(graph, current, graph.outputs[0]):
        raise AcceleratorError(f"{who}graph output {graph.outputs[0]!r} is not the last layer's output {current!r}")
    return nodes[0].output, steps


def check_supported(emitters: Emitters, node: Node) -> None:
    """AcceleratorError naming the back end, the layer and the op when `emitters` lacks the op."""
    try:
        emitters.lookup(node)
    except UnsupportedOpError as e:
        raise AcceleratorError(
            f"{emitters.backend}: layer {node.name}: op {node.op} is not supported (it runs "
            f"{', '.join(emitters.supported())}, Requant after an accumulator, Flatten)") from e


def _fused_requant(graph: IntegerGraph, node: Node, consumers: dict[str, list[Node]], who: str) -> Optional[Node]:
    """The Requant that consumes `node`'s accumulator, or None for a raw (last-layer) output."""
    users = consumers.get(node.output, [])
    if len(users) == 1 and users[0].op == "Requant":
        return users[0]
    if not users and node.op != "AvgPool2d" and node.output == graph.outputs[0]:
        return None
    what = "AvgPool2d must be followed by a Requant" if node.op == "AvgPool2d" else \
        "a Conv/Linear accumulator must feed exactly one Requant (or be the graph output)"
    raise AcceleratorError(f"{who}layer {node.name}: {what}; it feeds {[u.name for u in users]}")


def _same_data(graph: IntegerGraph, a: str, b: str) -> bool:
    """True when tensor b is a (chain of) Flatten(s) of a, i.e. the same bytes in CHW order."""
    while b != a:
        node = graph.node_producing(b)
        if node is None or node.op != "Flatten":
            return False
        b = node.inputs[0]
    return True
