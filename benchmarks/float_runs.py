"""The float runs the benchmarks share (mixed.py, prune.py, cim.py): trained once into runs/bench/…,
reused afterwards, so every benchmark measures from the same starting point."""

from __future__ import annotations

import sys
from pathlib import Path

from bitsmith.runs import CHECKPOINT_FILE
from bitsmith.train import TrainConfig, train

BENCH = Path("runs/bench")
LENET_EPOCHS = 8
DATASET = "fashion-mnist"


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def run_dir(model: str, vgg_width: float, dataset: str = DATASET) -> Path:
    """runs/bench/lenet5-fp32, or runs/bench/vgg_tiny-w025-fp32 for VGG-tiny (or vgg7) at width
    0.25; another data set than Fashion-MNIST is named: runs/bench/vgg7-w1-cifar10-fp32."""
    name = "lenet5" if model == "lenet5" else f"{model}-w{vgg_width:g}".replace(".", "")
    if dataset != DATASET:
        name += "-" + dataset.replace("-", "")
    return BENCH / f"{name}-fp32"


def float_run(model: str, vgg_width: float, vgg_epochs: int, dataset: str = DATASET,
              data_dir: str | None = None) -> Path:
    """The float run of `model` (LeNet-5: 8 epochs; VGG-tiny, VGG7: `vgg_width`, `vgg_epochs`) on
    all of `dataset` (Fashion-MNIST by default), trained if it is not there yet."""
    out = run_dir(model, vgg_width, dataset)
    if (out / CHECKPOINT_FILE).is_file():
        return out
    options = {} if model == "lenet5" else {"width": vgg_width}
    epochs = LENET_EPOCHS if model == "lenet5" else vgg_epochs
    log(f"training {model} ({options or 'default'}) on {dataset} for {epochs} epochs into {out}")
    train(TrainConfig(model, dataset, epochs=epochs, data_dir=data_dir, model_kwargs=options), out, quiet=True)
    return out
