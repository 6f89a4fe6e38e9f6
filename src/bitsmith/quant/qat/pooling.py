"""Training speed: quantize after max-pools in a training-only view of the QAT graph.

Fake quantization is monotone non-decreasing, so max-pooling then quantizing gives exactly the
values of quantizing then pooling — on a quarter of the elements. LeNet-5's conv1 output is the
largest tensor of the network, so this is most of the activation quantizers' cost.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from bitsmith.quant.modules import QuantLayer
from bitsmith.quant.prepare import module_of
from bitsmith.quant.qat.activations import QATActivation


class _AfterPool(nn.Module):
    """Training only: a layer's output quantizer applied after the max-pool that follows it."""

    def __init__(self, quantizer: QATActivation, features: int) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer.quantize(x, self.features) if self.quantizer.enabled else x


def training_view(qmodel: fx.GraphModule) -> tuple[fx.GraphModule, list[QATActivation]]:
    """A GraphModule sharing `qmodel`'s modules that quantizes after max-pools, for training speed.

    Fake quantization is monotone non-decreasing, so max-pooling then quantizing gives exactly the
    values of quantizing then pooling, on a quarter of the elements (LeNet's conv1 output is the
    largest tensor of the network). The gradients are those of the original placement too, except
    that a pooling window whose maximum is tied after rounding sends its gradient to the float
    maximum instead of the first of the tied codes. Returns the view and the quantizers to mark
    `deferred` (skipped inside their layer) while it is used.
    """
    ShapeProp(qmodel).propagate(torch.zeros((1,) + tuple(qmodel.input_shape)))
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(qmodel.graph, env)
    graph.output(out)
    modules = {n.target: qmodel.get_submodule(n.target) for n in qmodel.graph.nodes if n.op == "call_module"}
    deferred = []
    for node in qmodel.graph.nodes:
        layer = module_of(qmodel, node)
        users = list(node.users)
        if not (isinstance(layer, QuantLayer) and isinstance(layer.act_quant, QATActivation) and len(users) == 1
                and isinstance(module_of(qmodel, users[0]), nn.MaxPool2d)):
            continue
        pool = env[users[0]]
        name = f"{node.target}_after_pool"
        modules[name] = _AfterPool(layer.act_quant, int(torch.Size(node.meta["tensor_meta"].shape[1:]).numel()))
        with graph.inserting_after(pool):
            new = graph.call_module(name, (pool,))
        pool.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
        deferred.append(layer.act_quant)
    graph.lint()
    view = fx.GraphModule(modules, graph)
    return view, deferred
