"""Every error bitsmith raises on purpose is a BitsmithError.

Messages name the file / layer / value at fault and say what to do, so the command line can
print them as they are, without a traceback.
"""


class BitsmithError(Exception):
    """Base class: a problem with the user's input, files or settings."""


class DataError(BitsmithError):
    """A dataset file is missing, corrupt or of the wrong format."""


class CheckpointError(BitsmithError):
    """A checkpoint or saved artifact is missing, truncated or inconsistent."""


class ConfigError(BitsmithError):
    """A setting (model name, bit width, option combination) is not allowed."""


class OutputError(ConfigError):
    """An output path cannot be written: its parent is not writable or cannot be created, it is a
    file where a folder is expected (or the reverse), or it holds another kind of folder (or a
    non-bitsmith one) and --force was not given. The message names the path and says what to do."""


class GraphError(BitsmithError):
    """An IntegerGraph is malformed: schema, dtype, shape or value range."""


class AccumulatorOverflowError(GraphError):
    """An integer value left the width its tensor declares (e.g. a 32-bit accumulator)."""


class AcceleratorError(BitsmithError):
    """A graph or layer cannot run on the configured accelerator (docs/hardware.md): an
    unsupported op or kernel, or a buffer too small. The message names the layer and the limit."""


class UnsupportedOpError(BitsmithError):
    """A back end has no emitter for an op of the graph. The message names the back end, the node,
    the op and the ops that back end does support."""


class BitsmithWarning(UserWarning):
    """Something bitsmith can work with but cannot check (e.g. a graph saved before graph.json
    recorded the digest of its tensors). The message names the file and how to bring it up to date."""
