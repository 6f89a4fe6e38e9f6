"""HLS export in the DeepBurning-MixQ format: config.h, weights.hpp, config_simd_pe.txt.

docs/hls.md is the contract. The modules, one concern each:

- `layers`: the graph as `HlsLayer`s (DAG walk, SIMD/PE folding, the exact requant fold);
- `render`: the three files as text; `parse`: the files back to integers;
- `model`: the parsed layers computed in numpy; `reference`: the g++-compiled C++ reference.

    export_hls(graph, out_dir)                   # write the files + the C++ reference sources
    read_hls(out_dir)                            # the layers, parsed back
    run_hls(graph, codes, out_dir)               # export, compile, run: every layer's outputs
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from bitsmith.integer.graph import IntegerGraph
from bitsmith.storage import write_bytes_atomic

from .layers import EMIT, HlsLayer, fold_requant, graph_io, hls_layers, signed_width
from .model import hls_requant, run_hls_layers
from .parse import read_hls, unpack_lanes
from .reference import compile_reference, reference_sources, run_reference
from .render import CONFIG_FILE, SIMD_PE_FILE, WEIGHTS_FILE, pack_lanes, render_config, render_simd_pe, render_weights

__all__ = ["EMIT", "HlsLayer", "compile_reference", "export_hls", "fold_requant", "graph_io", "hls_layers",
           "hls_requant", "pack_lanes", "read_hls", "run_hls", "run_hls_layers", "run_reference", "signed_width",
           "unpack_lanes"]


def export_hls(graph: IntegerGraph, out_dir: str | os.PathLike, simd: int = 8, pe: int = 8,
               layers: Optional[dict] = None, source: str = "") -> list[HlsLayer]:
    """Write config.h, weights.hpp, config_simd_pe.txt and the C++ reference into `out_dir`."""
    hls = hls_layers(graph, simd, pe, layers)
    input_name, input_size, output_name = graph_io(graph)
    out = Path(out_dir)
    write_bytes_atomic(out / WEIGHTS_FILE, render_weights(hls).encode())
    write_bytes_atomic(out / SIMD_PE_FILE, render_simd_pe(hls).encode())
    write_bytes_atomic(out / CONFIG_FILE, render_config(hls, input_name, input_size, output_name, source).encode())
    for name, data in reference_sources().items():  # the folder compiles on its own: g++ -std=c++17 hls_reference.cpp
        write_bytes_atomic(out / name, data)
    return hls


def run_hls(graph: IntegerGraph, codes, out_dir: str | os.PathLike, simd: int = 8, pe: int = 8,
            layers: Optional[dict] = None) -> list[tuple[HlsLayer, np.ndarray]]:
    """Export `graph` into `out_dir`, compile the C++ reference with g++ and run it on input codes
    [N, C, H, W] (the graph's QuantizeInput output). Every layer as parsed back from the files (in
    execution order), with its outputs [N, och, rows, cols]; ConfigError when g++ is missing."""
    export_hls(graph, out_dir, simd=simd, pe=pe, layers=layers)
    parsed = read_hls(out_dir)
    binary = compile_reference(out_dir)
    return list(zip(parsed, run_reference(binary, out_dir, codes, parsed)))
