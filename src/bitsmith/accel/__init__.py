"""Accelerator back ends: memory images and exports for hardware (see docs/clipq-hex.md)."""
