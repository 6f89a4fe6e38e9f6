"""The integer spine: IntegerGraph IR, its arithmetic, the engine, and lowering."""

from bitsmith.integer.graph import IntegerGraph, Node, TensorSpec, load


def lower(qmodel, **kwargs) -> IntegerGraph:
    """Lower a fake-quantized model (from bitsmith.quantize) to an IntegerGraph."""
    from bitsmith.integer.lower import lower as _lower

    return _lower(qmodel, **kwargs)


__all__ = ["IntegerGraph", "Node", "TensorSpec", "load", "lower"]
