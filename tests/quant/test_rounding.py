"""Fake-quant rounds as the integer graph does: QuantizeInput half to even, every Requant half up.

Under power-of-two and Q-format scales the Requant's real value is often exactly halfway, so a
fake-quant that rounded half to even everywhere disagreed with the engine (0.95–0.999 agreement).
"""

from __future__ import annotations

import pytest
import torch

from bitsmith.integer import engine
from bitsmith.models import build_model
from bitsmith.quant import QuantConfig, lower, quantize
from bitsmith.quant.fake_quant import round_half_up, round_ste


def test_round_half_up_is_exact_near_one_half():
    x = torch.tensor([0.49999997, 0.5, 1.5, 2.5, -0.5, -1.5, -0.50000006, 7.4999995], dtype=torch.float32)
    assert round_half_up(x).tolist() == [0.0, 1.0, 2.0, 3.0, 0.0, -1.0, -1.0, 7.0]
    assert round_ste(x, "half_even").tolist() == torch.round(x).tolist()


@pytest.mark.parametrize("config", [
    QuantConfig(scale_mode="pot"),
    QuantConfig(scale_mode="pot", weight_bits=4, act_bits=4, per_channel=True),
    QuantConfig(scale_mode="qformat", weight_qformat="Q1.7", act_qformat="Q4.4"),
    QuantConfig(),
], ids=["pot", "pot-w4a4", "qformat", "float"])
def test_fake_quant_outputs_equal_the_engine_under_every_scale_mode(config):
    torch.manual_seed(0)
    model = build_model("lenet5", bias=True).eval()
    gen = torch.Generator().manual_seed(1)
    qmodel = quantize(model, [torch.randn(64, 1, 32, 32, generator=gen) for _ in range(2)], config)
    graph = lower(qmodel)
    x = torch.randn(256, 1, 32, 32, generator=gen)
    with torch.no_grad():
        fake = qmodel(x)
    integer = engine.predict(graph, x)
    if config.scale_mode == "float":
        # Float scales: the dyadic multiplier may differ from S_in/S_out in its last bit, so equality
        # of every logit is not promised; the class must agree.
        assert torch.equal(fake.argmax(1), integer.argmax(1))
    else:
        assert torch.equal(fake, integer)  # every logit of every image, bit for bit


def test_fake_quant_equals_the_engine_on_every_fashion_mnist_test_image():
    """Issue 11's acceptance, on real pictures: all 10,000 Fashion-MNIST test images, min-max, pot and
    Q-format graphs of a LeNet-5 (seeded weights, calibrated on real training batches)."""
    from bitsmith.data import load_dataset
    from bitsmith.evaluate import predictions
    from bitsmith.quant.calibration import calibration_batches

    test = load_dataset("fashion-mnist", "test")
    torch.manual_seed(0)
    model = build_model("lenet5", bias=True).eval()
    shape = tuple(model.input_shape)
    calib = calibration_batches("fashion-mnist", shape, batches=2)
    for config in (QuantConfig(), QuantConfig(scale_mode="pot"),
                   QuantConfig(scale_mode="qformat", weight_qformat="Q1.7", act_qformat="Q4.4")):
        qmodel = quantize(model, calib, config)
        graph = lower(qmodel)
        fake = predictions(qmodel, test, shape)
        integer = predictions(lambda x: engine.predict(graph, x), test, shape)
        assert len(fake) == 10_000
        assert torch.equal(fake, integer), (config.scale_mode, int((fake != integer).sum()))
