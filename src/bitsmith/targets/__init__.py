"""Targets: formats that other people's tools read, written from an IntegerGraph.

A target is an output for a design outside bitsmith (an HLS project, a third-party accelerator's
weight files): it writes files in that design's own format, reads them back, and, where the
format can compute, has a reference that runs the files so the harness (bitsmith.verify) can
compare every layer with the integer engine. bitsmith's own accelerator lives in `bitsmith.accel`
(compiler, memory files, cycle model) and `bitsmith.rtl` (its Verilog); back ends such as these
import only the IR (`bitsmith.integer`), errors, storage and, for the shared chain walk,
`bitsmith.integer.chain`.

- `targets.hls`: DeepBurning-MixQ HLS headers (config.h, weights.hpp, config_simd_pe.txt) and the
  g++-compiled C++ reference (docs/hls.md);
- `targets.clipq_hex`: the CLIP-Q accelerator's W2.hex / W8.hex weight files (docs/clipq-hex.md).
"""
