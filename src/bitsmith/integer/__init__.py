"""The integer spine: IntegerGraph IR, its arithmetic, the engine, and lowering."""

from bitsmith.integer.graph import IntegerGraph, Node, TensorSpec, load
from bitsmith.integer.lowering import lower

__all__ = ["IntegerGraph", "Node", "TensorSpec", "load", "lower"]
