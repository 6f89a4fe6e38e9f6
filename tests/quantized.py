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


def exact_lowering_logits(qmodel, graph, x):
    """Check that `graph` (lowered from the QAT model `qmodel`) is exact on images `x`: the fast engine
    equals the reference interpreter on every integer tensor, and the fake-quant model in exact eval
    equals the engine's dequantized logits bit for bit (on more than one predicted class, so the
    comparison could fail). Returns (the plain float fake-quant path's logits, the engine's)."""
    import numpy as np

    from bitsmith.integer import engine
    from bitsmith.quant.qat import set_exact_eval
    from tests.oracle import reference_run

    got = engine.run(graph, x, return_all=True)
    for tensor, value in reference_run(graph, x).items():
        if graph.tensors[tensor].dtype == "int":
            np.testing.assert_array_equal(got[tensor].numpy(), value, err_msg=tensor)
    with torch.no_grad():
        fq_logits = qmodel.eval()(x)
        set_exact_eval(qmodel, False)
        float_logits = qmodel(x)
        set_exact_eval(qmodel, True)
    int_logits = engine.predict(graph, x)
    assert torch.equal(fq_logits, int_logits)
    assert len(torch.unique(int_logits.argmax(1))) > 1
    return float_logits, int_logits


def synthetic_images(n=64):
    """The first `n` synthetic test images as one 1×32×32 batch."""
    from bitsmith.data import iterate_batches, load_dataset

    return next(iterate_batches(load_dataset("synthetic", "test", limit=n), n, (1, 32, 32)))[0]
