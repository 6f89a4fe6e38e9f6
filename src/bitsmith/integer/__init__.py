"""The integer spine: the IntegerGraph IR, its arithmetic, its ops, the reference interpreter and
the fast engine. It imports nothing of bitsmith but errors and storage (docs/architecture.md);
the names below load on first use, so importing the package is cheap."""

from importlib import import_module

_LAZY = {
    "IntegerGraph": "bitsmith.integer.graph",
    "Node": "bitsmith.integer.graph",
    "TensorSpec": "bitsmith.integer.graph",
    "load": "bitsmith.integer.graph",
    "run": "bitsmith.integer.engine",
    "predict": "bitsmith.integer.engine",
    "run_reference": "bitsmith.integer.reference",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bitsmith.integer' has no attribute {name!r}")
