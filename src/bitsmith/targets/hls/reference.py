"""The C++ reference: `hls_reference.cpp` (with `hls_shim.h`, no vendor headers) compiled by g++
against an exported folder's config.h / weights.hpp, run on input codes, every layer read back."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from bitsmith.errors import AcceleratorError, ConfigError
from bitsmith.storage import write_bytes_atomic

from .layers import HlsLayer

REFERENCE_SOURCES = ("hls_reference.cpp", "hls_shim.h")
REFERENCE_BINARY = "hls_reference"


def reference_sources() -> dict[str, bytes]:
    """The C++ reference's files, to copy next to the headers (the folder then compiles on its own)."""
    here = Path(__file__).parent
    return {name: (here / name).read_bytes() for name in REFERENCE_SOURCES}


# -- the C++ reference ---------------------------------------------------------------------------

def compile_reference(out_dir: str | os.PathLike) -> Path:
    """g++ -O2 -std=c++17 the folder's hls_reference.cpp against its config.h / weights.hpp."""
    out = Path(out_dir)
    gxx = shutil.which("g++")
    if gxx is None:
        raise ConfigError("HLS check: g++ not found on PATH; install g++ (Debian: apt-get install g++) "
                          "or run without --check")
    binary = out / REFERENCE_BINARY
    cmd = [gxx, "-O2", "-std=c++17", "-Wall", "-I", str(out), "-o", str(binary), str(out / REFERENCE_SOURCES[0])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise AcceleratorError(f"HLS check: g++ failed on {out / REFERENCE_SOURCES[0]} (exit {done.returncode}):\n"
                               + done.stderr[-3000:])
    return binary


def run_reference(binary: str | os.PathLike, out_dir: str | os.PathLike, input_codes,
                  layers: list[HlsLayer]) -> list[np.ndarray]:
    """Run the compiled reference on images (codes, CHW per image); every layer's [N, ...] outputs."""
    out = Path(out_dir)
    codes = np.asarray(input_codes, dtype=np.int64)
    n = codes.shape[0]
    run_dir = out / "reference_run"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(run_dir / "input.txt", ("\n".join(str(v) for v in codes.reshape(-1).tolist()) + "\n").encode())
    done = subprocess.run([str(binary), str(run_dir / "input.txt"), str(run_dir)], capture_output=True, text=True)
    if done.returncode != 0:
        raise AcceleratorError(f"HLS check: {binary} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    results = []
    for i, layer in enumerate(layers):
        path = run_dir / f"L{i:02d}.txt"
        values = np.array(path.read_text().split(), dtype=np.int64)
        expected = n * layer.out_elements
        if values.size != expected:
            raise AcceleratorError(f"HLS check: {path} holds {values.size} values, expected {expected}")
        results.append(values.reshape(n, layer.ofm_ch, layer.ofm_row, layer.ofm_col))
    return results
