"""bitsmith: from float CNN training to bit-exact integer hardware."""

from bitsmith.errors import BitsmithError

__version__ = "0.1.0"
__all__ = ["BitsmithError", "__version__"]
