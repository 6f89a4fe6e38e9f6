"""Compute-in-memory back end: a crossbar simulator that reads only the IntegerGraph
(docs/cim.md). `CIMConfig` describes the crossbar, `map_graph` places each mapped Conv2d /
Linear on sub-arrays, `run` executes a graph with those layers computed the crossbar way and every
other node by the IR's reference interpreter; `estimate` prices it (docs/cim-cost.md)."""

from bitsmith.cim.config import CIMConfig
from bitsmith.cim.cost import CostModel, CostReport, LayerCost, estimate, input_bit_activity
from bitsmith.cim.mapping import MappedLayer, TilePlan, decompose, map_graph, slice_unsigned
from bitsmith.cim.simulate import calibrate, run

__all__ = ["CIMConfig", "MappedLayer", "TilePlan", "calibrate", "decompose", "map_graph", "run", "slice_unsigned",
           "CostModel", "CostReport", "LayerCost", "estimate", "input_bit_activity"]
