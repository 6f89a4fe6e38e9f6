"""The float runs the benchmarks share (mixed.py, prune.py): trained once into runs/bench/…, reused
afterwards, so every benchmark measures from the same starting point."""

from __future__ import annotations

import sys
from pathlib import Path

from bitsmith.runs import CHECKPOINT_FILE
from bitsmith.train import TrainConfig, train

BENCH = Path("runs/bench")
LENET_EPOCHS = 8


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def run_dir(model: str, vgg_width: float) -> Path:
    """runs/bench/lenet5-fp32, or runs/bench/vgg_tiny-w025-fp32 for VGG-tiny at width 0.25."""
    return BENCH / ("lenet5-fp32" if model == "lenet5" else f"{model}-w{vgg_width:g}-fp32".replace(".", ""))


def float_run(model: str, vgg_width: float, vgg_epochs: int) -> Path:
    """The float run of `model` (LeNet-5: 8 epochs; VGG-tiny: `vgg_width`, `vgg_epochs`) on all of
    Fashion-MNIST, trained if it is not there yet."""
    out = run_dir(model, vgg_width)
    if (out / CHECKPOINT_FILE).is_file():
        return out
    options = {"width": vgg_width} if model == "vgg_tiny" else {}
    epochs = LENET_EPOCHS if model == "lenet5" else vgg_epochs
    log(f"training {model} ({options or 'default'}) for {epochs} epochs into {out}")
    train(TrainConfig(model, "fashion-mnist", epochs=epochs, model_kwargs=options), out, quiet=True)
    return out
