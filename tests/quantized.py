"""Graphs made fresh by the front end, for the tests of the front end and of the engine on every
zoo model (tests/quant/, tests/integer/). Back-end tests read the golden graphs instead
(tests/golden/, `tests.helpers.golden`)."""

import torch

from bitsmith.models import build_model
from bitsmith.quant import QuantConfig, lower, quantize


def randomised(model):
    """Random BN statistics so that folding is exercised with non-trivial values."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
    return model.eval()


def quantized_graph(name, config=QuantConfig(), **kwargs):
    torch.manual_seed(0)
    model = randomised(build_model(name, **kwargs))
    shape = model.input_shape
    calib = [torch.randn(4, *shape) for _ in range(2)]
    return lower(quantize(model, calib, config)), shape


#: The smallest float run the end-to-end tests train: LeNet-5, one epoch on 256 synthetic images.
TINY_RUN = dict(model="lenet5", dataset="synthetic", epochs=1, batch_size=64, limit_train=256, limit_test=64)


def tiny_float_run(out):
    """Train TINY_RUN into `out` (quietly) and return `out`."""
    from bitsmith.train import TrainConfig, train

    train(TrainConfig(**TINY_RUN), out, quiet=True)
    return out
