"""Small helpers for reading a torch.fx graph of modules."""

from __future__ import annotations

import torch.fx as fx
from torch import nn


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The module a call_module node calls, None for any other node."""
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def only_user(node: fx.Node) -> fx.Node | None:
    """The one node that reads `node`, or None when there are none or several."""
    return next(iter(node.users)) if len(node.users) == 1 else None
