#!/usr/bin/env python
"""Make the golden IntegerGraphs in tests/golden/ that the back-end tests read.

The back-end tests (ONNX, accelerator, RTL, HLS and CLIP-Q hex targets, verify) do not quantize:
they load small saved graphs from tests/golden/<name>/ (graph.json + tensors.safetensors), so a
change in the front end (quant/) cannot break an RTL test. This script is the one place those
graphs come from. Each builder below is deterministic: fixed seeds (torch.manual_seed, seeded
generators), random float weights, synthetic calibration batches (torch.randn; no data set, nothing
from runs/), the public API only (bitsmith.quantize, bitsmith.lower, bitsmith.QuantConfig,
bitsmith.ClipQConfig), one CPU thread (so float sums do not depend on the core count).

    .venv/bin/python scripts/make_golden_graphs.py            # (re)write every graph
    .venv/bin/python scripts/make_golden_graphs.py --check    # compare, write nothing; exit 1 if stale
    .venv/bin/python scripts/make_golden_graphs.py lenet5_w8a8 vgg_tiny_bn   # only these

When to re-run: after a deliberate change of quantization or lowering (quant/) or of the graph
format (integer/graph.py), when tests/quant/test_golden_graphs.py says a golden graph is stale.
Re-running changes the bytes only if quantization changed; review the diff (git diff --stat
tests/golden, and the graph.json changes) as you would review a change of expected values, then
run the back-end tests on the new graphs. To add a graph: add a builder to GRAPHS, run the script
for its name, describe it in tests/golden/README.md.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import bitsmith
from bitsmith.integer import IntegerGraph
from bitsmith.models import Reorg, build_model

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"

W8A8 = bitsmith.QuantConfig()
ASYM = bitsmith.QuantConfig(act_symmetric=False)
W4A4_PC = bitsmith.QuantConfig(weight_bits=4, act_bits=4, per_channel=True)
MIXED_LAYERS = {"conv1": {"weight_bits": 2, "act_bits": 3}, "conv2": {"weight_bits": 5, "act_bits": 6},
                "conv3": {"weight_bits": 3, "act_bits": 2}, "fc1": {"weight_bits": 7, "act_bits": 4},
                "fc2": {"weight_bits": 8}}


# -- recipes ----------------------------------------------------------------------------------

def _calib(shape: tuple[int, ...], batches: int = 2, n: int = 8) -> list[torch.Tensor]:
    """Synthetic calibration batches from the global generator (seeded by the caller)."""
    return [torch.randn(n, *shape) for _ in range(batches)]


def _lenet(config: bitsmith.QuantConfig | bitsmith.ClipQConfig = W8A8, bias: bool = False) -> IntegerGraph:
    """LeNet-5 (1x32x32) with its random initial weights, calibrated on two random batches of 8."""
    torch.manual_seed(0)
    model = build_model("lenet5", bias=bias).eval()
    return bitsmith.lower(bitsmith.quantize(model, _calib(model.input_shape), config))


def _zoo(name: str, config: bitsmith.QuantConfig = W8A8, **kwargs) -> IntegerGraph:
    """A zoo model with random weights and random BatchNorm running statistics (folded by quantize)."""
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
    return bitsmith.lower(bitsmith.quantize(model, _calib(model.input_shape, n=4), config))


def _vgg_tiny_bn() -> IntegerGraph:
    """VGG-tiny, random weights, non-trivial BatchNorm (statistics and affine), asymmetric activations."""
    torch.manual_seed(0)
    model = build_model("vgg_tiny").eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return bitsmith.lower(bitsmith.quantize(model, _calib(model.input_shape), ASYM))


def _seq(layers: Callable[[], list[nn.Module]], shape: tuple[int, int, int], config: bitsmith.QuantConfig = W8A8,
         seed: int = 0) -> IntegerGraph:
    """A small nn.Sequential of `layers()` (made after seeding: their random weights depend on the seed
    only), calibrated on two random batches of 8."""
    torch.manual_seed(seed)
    model = nn.Sequential(*layers()).eval()
    return bitsmith.lower(bitsmith.quantize(model, _calib(shape), config), input_shape=shape)


class _Concat(nn.Module):
    """Two convs of one input, concatenated along channels (an op the accelerator refuses)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3)
        self.flat, self.fc = nn.Flatten(), nn.Linear(4 * 10 * 10, 3)

    def forward(self, x):
        return self.fc(self.flat(torch.cat([self.a(x), self.b(x)], 1)))


def _concat() -> IntegerGraph:
    torch.manual_seed(0)
    model = _Concat().eval()
    return bitsmith.lower(bitsmith.quantize(model, _calib((1, 12, 12), batches=1), W8A8), input_shape=(1, 12, 12))


# -- the golden graphs --------------------------------------------------------------------------

@dataclass(frozen=True)
class Golden:
    what: str
    build: Callable[[], IntegerGraph]


GRAPHS: dict[str, Golden] = {
    # LeNet-5 (1x32x32)
    "lenet5_w8a8": Golden("LeNet-5 without bias, W8A8 per-tensor, symmetric, raw int32 logits",
                          lambda: _lenet()),
    "lenet5_bias_w8a8": Golden("LeNet-5 with bias, W8A8", lambda: _lenet(bias=True)),
    "lenet5_bias_asym": Golden("LeNet-5 with bias, W8A8, asymmetric activations (input zero point != 0)",
                               lambda: _lenet(ASYM, bias=True)),
    "lenet5_asym_requant_output": Golden(
        "LeNet-5 without bias, asymmetric activations, 8-bit requantized output",
        lambda: _lenet(bitsmith.QuantConfig(act_symmetric=False, requantize_output=True))),
    "lenet5_w4a4_pc": Golden("LeNet-5 with bias, 4-bit per-channel weights, 4-bit activations",
                             lambda: _lenet(W4A4_PC, bias=True)),
    "lenet5_w4a4_pc_requant_output": Golden(
        "LeNet-5 with bias, W4A4 per-channel, 4-bit requantized output",
        lambda: _lenet(bitsmith.QuantConfig(weight_bits=4, act_bits=4, per_channel=True, requantize_output=True),
                       bias=True)),
    "lenet5_w4a4_pc_asym": Golden(
        "LeNet-5 with bias, W4A4 per-channel, asymmetric activations",
        lambda: _lenet(bitsmith.QuantConfig(weight_bits=4, act_bits=4, per_channel=True, act_symmetric=False),
                       bias=True)),
    "lenet5_w12a10": Golden(
        "LeNet-5 with bias, 12-bit weights, 10-bit activations, 16-bit multipliers, requantized output",
        lambda: _lenet(bitsmith.QuantConfig(weight_bits=12, act_bits=10, multiplier_bits=16, requantize_output=True),
                       bias=True)),
    "lenet5_mixed": Golden(
        "LeNet-5 with bias, per-layer widths as a mixed-precision search gives them (weights 2/5/3/7/8, "
        "activations 8 in, 3/6/2/4 out), per-channel",
        lambda: _lenet(bitsmith.QuantConfig(per_channel=True, layers=MIXED_LAYERS), bias=True)),
    "lenet5_w12": Golden("LeNet-5 without bias, 12-bit weights, 8-bit activations",
                         lambda: _lenet(bitsmith.QuantConfig(weight_bits=12))),
    "lenet5_qformat": Golden("LeNet-5 without bias, Q-format scales (weights Q1.7, activations Q4.4): pure shifts",
                             lambda: _lenet(bitsmith.QuantConfig(scale_mode="qformat", weight_qformat="Q1.7",
                                                                 act_qformat="Q4.4"))),
    "lenet5_clipq": Golden("LeNet-5 with bias, CLIP-Q p=0.4 2-bit codebooks on conv1..fc1, dense int8 fc2",
                           lambda: _lenet(bitsmith.ClipQConfig(p=0.4, bits=2, skip=("fc2",)), bias=True)),
    "lenet5_clipq_all": Golden("LeNet-5 with bias, CLIP-Q p=0.4 2-bit codebooks on all five layers",
                               lambda: _lenet(bitsmith.ClipQConfig(p=0.4, bits=2), bias=True)),
    "lenet5_clipq_3bit": Golden(
        "LeNet-5 without bias, CLIP-Q 2-bit codebooks, conv3 3-bit (p=0.2), dense fc2",
        lambda: _lenet(bitsmith.ClipQConfig(p=0.4, bits=2, layers={"conv3": (0.2, 3)}, skip=("fc2",)))),
    # zoo models with BatchNorm
    "vgg_tiny_bn": Golden("VGG-tiny (3x32x32), random weights and BatchNorm, asymmetric activations",
                          _vgg_tiny_bn),
    "nin_bn": Golden("NIN (3x32x32), random weights and BatchNorm statistics, W8A8 (max and average pools)",
                     lambda: _zoo("nin")),
    "vgg7_narrow_w4a4": Golden("VGG7 at width 0.125 (16-16-M-32-32-M-64-64-M, FC 1024->128->10) on 1x32x32, random "
                               "BatchNorm, W4A4 per-tensor: the compute-in-memory seed's network, narrowed",
                               lambda: _zoo("vgg7", bitsmith.QuantConfig(weight_bits=4, act_bits=4),
                                            input_shape=(1, 32, 32), width=0.125)),
    "vgg_tiny_narrow": Golden("VGG-tiny at width 0.125 (8-8-M-16-16-M-32-32-M), random BatchNorm, W8A8",
                              lambda: _zoo("vgg_tiny", width=0.125)),
    "ultranet_bypass_32x64": Golden("UltraNet with bypass at 3x32x64 (Reorg + Concat), random BatchNorm, W8A8",
                                    lambda: _zoo("ultranet_bypass", input_shape=(3, 32, 64))),
    "skynet_32x64": Golden("SkyNet at 3x32x64 (depthwise-separable blocks: depthwise 3x3 convs with groups = channels), "
                           "random BatchNorm statistics, W8A8", lambda: _zoo("skynet", input_shape=(3, 32, 64))),
    # small models (accelerator)
    "strided_padded": Golden(
        "1x16x16: conv stride 2 pad 1, conv 5x5 stride (1,2) pad (2,1), maxpool (2,1), linear; asymmetric",
        lambda: _seq(lambda: [nn.Conv2d(1, 5, 3, stride=2, padding=1), nn.ReLU(),
                      nn.Conv2d(5, 9, 5, stride=(1, 2), padding=(2, 1)), nn.ReLU(),
                      nn.MaxPool2d((2, 1)), nn.Flatten(), nn.Linear(9 * 4 * 3, 4)], (1, 16, 16), ASYM)),
    "avgpool": Golden(
        "2x14x14: three average pools (2x2, 3x3 stride 1, global 4x4 of a signed raw conv output)",
        lambda: _seq(lambda: [nn.Conv2d(2, 6, 3), nn.ReLU(), nn.AvgPool2d(2),
                      nn.Conv2d(6, 12, 1, bias=True), nn.ReLU(), nn.AvgPool2d(3, stride=1),
                      nn.Conv2d(12, 5, 1), nn.AvgPool2d(4), nn.Flatten()], (2, 14, 14))),
    "maxpool5": Golden("1x12x12: conv 3x3, maxpool 5x5, linear (kernel limit and exact buffer fit)",
                       lambda: _seq(lambda: [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(5), nn.Flatten(),
                                     nn.Linear(2 * 2 * 2, 3)], (1, 12, 12))),
    "grouped_conv": Golden("2x12x12: grouped conv (groups=2), which the accelerator refuses",
                           lambda: _seq(lambda: [nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(),
                                         nn.Linear(4 * 10 * 10, 3)], (2, 12, 12))),
    "dilated_conv": Golden("1x12x12: dilated conv (dilation=2), which the accelerator refuses",
                           lambda: _seq(lambda: [nn.Conv2d(1, 2, 3, dilation=2), nn.ReLU(), nn.Flatten(),
                                         nn.Linear(2 * 8 * 8, 3)], (1, 12, 12))),
    "reorg": Golden("1x12x12: conv, Reorg(2), linear (Reorg: an op the accelerator refuses)",
                    lambda: _seq(lambda: [nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), Reorg(2), nn.Flatten(),
                                  nn.Linear(8 * 6 * 6, 3)], (1, 12, 12))),
    "concat": Golden("1x12x12: two convs concatenated, linear (Concat: an op the accelerator refuses)", _concat),
    # small models (RTL, through bitsmith.verify)
    "mixed_small": Golden(
        "3x16x16: stride, padding, max and average pools, 6 and 5 channels (partial groups on R=4), raw "
        "Linear output; bias, per-channel weights, asymmetric activations",
        lambda: _seq(lambda: [nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(20, 7)],
                     (3, 16, 16), bitsmith.QuantConfig(act_symmetric=False, per_channel=True), seed=1)),
    "single_layer": Golden("2x6x6: one conv, raw output (first and last layer at once)",
                           lambda: _seq(lambda: [nn.Conv2d(2, 3, 3)], (2, 6, 6), seed=1)),
    "single_group_full": Golden("1x5x5: conv 1->4 pad 2, conv 1x1 4->4 (one full channel group on R=4)",
                                lambda: _seq(lambda: [nn.Conv2d(1, 4, 3, padding=2), nn.ReLU(), nn.Conv2d(4, 4, 1)],
                                             (1, 5, 5), seed=1)),
    "one_pixel": Golden("12x1x1: flatten, linear 12->9, relu, linear 9->5 (1x1 maps only)",
                        lambda: _seq(lambda: [nn.Flatten(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 5)], (12, 1, 1),
                                     seed=1)),
    # small models (the FSM unit test of the RTL)
    "fsm_one_layer": Golden("2x5x5: one conv 2->3, raw output; asymmetric",
                            lambda: _seq(lambda: [nn.Conv2d(2, 3, 3)], (2, 5, 5), ASYM)),
    "fsm_single_group": Golden("1x10x10: conv 1->4, maxpool, linear 64->4 (every layer one group on R=4); asymmetric",
                               lambda: _seq(lambda: [nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                             nn.Linear(64, 4)], (1, 10, 10), ASYM)),
    "fsm_partial_rows": Golden(
        "3x8x8: conv 3->6 pad 1, avgpool, conv 6->5, maxpool (partial last groups on R=4); asymmetric",
        lambda: _seq(lambda: [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(6, 5, 2), nn.ReLU(),
                      nn.MaxPool2d(2)], (3, 8, 8), ASYM)),
    # small models (bitsmith.verify)
    "all_backends_small": Golden(
        "2x8x8: conv pad 1, maxpool, conv, raw linear; bias, asymmetric (every back end runs it)",
        lambda: _seq(lambda: [nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU(),
                      nn.Flatten(), nn.Linear(24, 5)], (2, 8, 8), ASYM, seed=1)),
    "avgpool_small": Golden("2x8x8: conv, avgpool, linear (the HLS format has no average pool)",
                            lambda: _seq(lambda: [nn.Conv2d(2, 4, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                                          nn.Linear(36, 3)], (2, 8, 8), seed=1)),
}


@contextmanager
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def build(name: str) -> IntegerGraph:
    """The golden graph `name`, built in memory."""
    with _one_thread():
        return GRAPHS[name].build()


def differences(name: str, folder: Path = GOLDEN) -> list[str]:
    """How the saved graph folder/<name> differs from a fresh build ([] if byte-identical)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = build(name).save(Path(tmp) / name)
        saved = folder / name
        return [f"{name}/{f.name} differs" if (saved / f.name).is_file() else f"{name}/{f.name} missing"
                for f in sorted(fresh.iterdir()) if not ((saved / f.name).is_file() and
                                                         filecmp.cmp(f, saved / f.name, shallow=False))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"graphs to make (default: all {len(GRAPHS)})")
    parser.add_argument("--out", type=Path, default=GOLDEN, help="folder of the graphs (default: tests/golden)")
    parser.add_argument("--check", action="store_true", help="compare with the saved graphs, write nothing")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(GRAPHS))
    if unknown:
        parser.error(f"unknown graph(s) {', '.join(unknown)}; known: {', '.join(GRAPHS)}")
    names = args.names or list(GRAPHS)
    if args.check:
        stale = [d for name in names for d in differences(name, args.out)]
        print("\n".join(stale) if stale else f"{len(names)} golden graphs up to date")
        return 1 if stale else 0
    for name in names:
        path = build(name).save(args.out / name)
        size = sum(f.stat().st_size for f in path.iterdir())
        print(f"{name:32s} {size / 1024:8.1f} KiB  {GRAPHS[name].what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
