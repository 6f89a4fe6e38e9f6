"""Accelerator back ends (docs/hardware.md): configuration, compiler to a layer program and
`$readmemh` images, cycle-level model, cost model, HLS export, CLIP-Q hex files."""

from .config import AccelConfig

__all__ = ["AccelConfig"]
