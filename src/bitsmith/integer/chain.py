"""An IntegerGraph as hardware layers: a pass over the IR that every layer-sequential back end (the
accelerator compiler, the HLS export) runs, so it lives with the IR, not in one of them.

Those back ends run one layer at a time out of on-chip activation memory: QuantizeInput happens on
the host, Flatten is free (activations are CHW, the order Flatten produces: its output is the same
bytes as its input), and each accumulating op (Conv2d, Linear, AvgPool2d, Add) is fused with the
Requant that consumes its accumulator. What is left are *steps*:

  Conv2d / Linear / AvgPool2d / Add + its Requant   (a Conv2d / Linear alone only as the graph output:
                                                      raw 32-bit accumulators out)
  MaxPool2d, Reorg, Concat                          (codes in, codes out)
  Requant of codes                                  (a lone Requant whose input is codes, e.g. one
                                                      Concat input brought onto the Concat's grid)

`layer_steps` returns them in graph order with the tensors each reads, so a back end may run any
DAG (residual Adds, Concat skips). `layer_chain` is the single-chain special case for back ends that
keep one activation buffer. What does not fit is an AcceleratorError naming the node.

Which ops a back end computes is its `Emitters` table (bitsmith.integer.ops): the walk asks the table
for every node that is not part of the walk's own structure (QuantizeInput, Flatten, a fused
Requant), so an op the back end lacks is reported with the back end's name, the node and the op,
before any other work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from bitsmith.errors import AcceleratorError, UnsupportedOpError
from bitsmith.integer.graph import IntegerGraph, Node
from bitsmith.integer.ops import ACCUMULATING_OPS, Emitters

#: Ops the walk itself handles: on the host, fused into the layer before, or free.
STRUCTURAL_OPS = ("QuantizeInput", "Requant", "Flatten")


@dataclass(frozen=True)
class ChainStep:
    node: Node                 # Conv2d / Linear / AvgPool2d / Add / MaxPool2d / Reorg / Concat / a lone Requant
    requant: Optional[Node]    # the Requant fused after an accumulating op; None otherwise and for a raw output
    inputs: tuple[str, ...] = ()  # the tensors it reads: the input codes or earlier steps' outputs (Flatten
                                  # resolved to the tensor whose bytes it is)

    @property
    def output(self) -> str:
        """The tensor this step leaves in activation memory."""
        return self.requant.output if self.requant is not None else self.node.output


def layer_steps(graph: IntegerGraph, emitters: Emitters) -> tuple[str, list[ChainStep]]:
    """(the quantized input tensor, the steps in graph order) of any graph of supported ops.

    `emitters` is the back end's table of step ops; its name prefixes error messages (e.g.
    "HLS export: "). Requant nodes that are not fused need "Requant" in the table.
    """
    who = f"{emitters.backend}: "
    consumers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for name in node.inputs:
            consumers.setdefault(name, []).append(node)
    nodes = list(graph.nodes)
    if not nodes or nodes[0].op != "QuantizeInput" or any(n.op == "QuantizeInput" for n in nodes[1:]):
        raise AcceleratorError(f"{who}the graph must start with its one QuantizeInput (codes arrive from the host)")
    requant_of: dict[str, Node] = {}  # accumulating node name -> the Requant fused after it
    for node in nodes:
        if node.op in ACCUMULATING_OPS:
            requant = _fused_requant(graph, node, consumers, who)
            if requant is not None:
                requant_of[node.name] = requant
    fused = {r.name for r in requant_of.values()}
    # Name every unsupported op before any other complaint: layer ops first (a lone Requant exists
    # because of the layer it feeds, e.g. a Concat input), then lone Requants.
    for node in sorted(nodes[1:], key=lambda n: n.op == "Requant"):
        if node.op != "Flatten" and node.name not in fused:
            check_supported(emitters, node)

    alias: dict[str, str] = {nodes[0].output: nodes[0].output}  # tensor -> the tensor whose bytes it is
    steps: list[ChainStep] = []
    for node in nodes[1:]:
        if node.name in fused:
            continue
        if node.op == "Flatten":
            alias[node.output] = alias[node.inputs[0]]
            continue
        step = ChainStep(node, requant_of.get(node.name), tuple(alias[i] for i in node.inputs))
        if any(_is_raw(steps, i) for i in step.inputs):
            raise AcceleratorError(f"{who}layer {node.name}: reads a raw 32-bit accumulator; only the graph "
                                   "output may be one")
        steps.append(step)
        alias[node.output] = node.output
        alias[step.output] = step.output
    if not steps:
        raise AcceleratorError(f"{who}the graph has no layer to compute")
    if alias.get(graph.outputs[0]) not in {s.output for s in steps}:
        raise AcceleratorError(f"{who}graph output {graph.outputs[0]!r} is not a layer's output")
    return nodes[0].output, steps


def layer_chain(graph: IntegerGraph, emitters: Emitters) -> tuple[str, list[ChainStep]]:
    """`layer_steps` for a back end with one activation buffer: each step must read the previous
    step's output (the first: the input codes), and nothing else may read it."""
    input_name, steps = layer_steps(graph, emitters)
    readers: dict[str, int] = {}
    for step in steps:
        for name in step.inputs:
            readers[name] = readers.get(name, 0) + 1
    current = input_name
    for step in steps:
        if step.inputs != (current,) or readers[current] != 1:
            raise AcceleratorError(
                f"{emitters.backend}: layer {step.node.name}: only a single chain of layers runs; {step.node.op} "
                f"reads {list(step.inputs)} while the activation buffer holds {current!r} "
                f"(read by {readers.get(current, 0)} layers)")
        current = step.output
    if steps[-1].output != current:
        raise AcceleratorError(f"{emitters.backend}: the graph output is not the last layer's output")
    return input_name, steps


def check_supported(emitters: Emitters, node: Node) -> None:
    """AcceleratorError naming the back end, the layer and the op when `emitters` lacks the op."""
    try:
        emitters.lookup(node)
    except UnsupportedOpError as e:
        raise AcceleratorError(
            f"{emitters.backend}: layer {node.name}: op {node.op} is not supported (it runs "
            f"{', '.join(emitters.supported())}, Requant after an accumulator, Flatten)") from e


def _fused_requant(graph: IntegerGraph, node: Node, consumers: dict[str, list[Node]], who: str) -> Optional[Node]:
    """The Requant that consumes `node`'s accumulator, or None for a raw (graph-output) Conv/Linear."""
    users = consumers.get(node.output, [])
    if len(users) == 1 and users[0].op == "Requant":
        return users[0]
    if not users and node.op in ("Conv2d", "Linear") and node.output == graph.outputs[0]:
        return None
    what = (f"{node.op} must be followed by a Requant" if node.op in ("AvgPool2d", "Add") else
            "a Conv/Linear accumulator must feed exactly one Requant (or be the graph output)")
    raise AcceleratorError(f"{who}layer {node.name}: {what}; it feeds {[u.name for u in users]}")


def _is_raw(steps: list[ChainStep], name: str) -> bool:
    """Is `name` a raw accumulator output of an earlier step (a Conv/Linear without Requant)?"""
    return any(s.output == name and s.requant is None and s.node.op in ("Conv2d", "Linear") for s in steps)
