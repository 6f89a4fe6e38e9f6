"""The bitsmith accelerator (docs/hardware.md): configuration, compiler to a layer program and
`$readmemh` memory files, cycle-level model, cost model, design-space sweep, fault injection.
Other designs' formats (DeepBurning-MixQ HLS, CLIP-Q hex files) are targets: `bitsmith.targets`."""

from .config import AccelConfig

__all__ = ["AccelConfig"]
