"""QAT benchmark: every bitsmith method against Brevitas at W8A8, W4A4 and W2A2, in one run.

    .venv/bin/python benchmarks/qat.py [--run RUN_DIR] [--out DIR] [--methods lsq,pact] > qat.json

From one LeNet-5 / Fashion-MNIST float run (by default trained once into runs/bench/lenet5-fp32,
8 epochs, reused afterwards) this measures, in one process and with the same data, the same
2 QAT epochs and the same optimiser schedule (bitsmith's QATTrainConfig defaults: SGD lr 0.02,
Nesterov, cosine, cross-entropy; the same loss for Brevitas):

* for each bitsmith method (bitsmith.quant.qat.METHODS) × W8A8 / W4A4 / W2A2 (and the same with
  first/last layers kept at 8 bits): fake-quant accuracy, integer-engine accuracy, agreement
  on the 10,000 test images, seconds per QAT epoch and its ratio to the float epoch;
* epoch time, measured interleaved: a float epoch is timed before the first QAT epoch and after
  every QAT epoch (F Q F Q F), in the same process, with the same data pipeline, batch size,
  optimiser (SGD Nesterov, cosine lr) and per-step bookkeeping (lr update, loss.item(), accuracy
  count) as the QAT loop, and the same torch thread count. Each QAT epoch is paired with the
  mean of the two float epochs around it; a method's `epoch_time_vs_fp` is the median of those
  paired ratios (raw seconds are in the JSON). Consecutive runs share a float epoch (F Q F Q F Q F
  …). Interleaving matters: a float epoch timed once drifted by 15% within one run even on an
  idle machine. The load averages at start and end are recorded;
* the peer, Brevitas 0.13 (a benchmark-only dependency: `pip install brevitas==0.13.4`), LeNet-5
  built from brevitas.nn layers with their default quantizers (Int8WeightPerTensorFloat,
  Int8ActPerTensorFloat input, Uint8ActPerTensorFloat after ReLUs) at the same bit widths,
  initialised with the float weights: accuracy and seconds per epoch (interleaved with float
  epochs the same way). Skipped (and said so in the JSON) when Brevitas is not installed.

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bitsmith.data import iterate_batches, load_dataset
from bitsmith.evaluate import accuracy
from bitsmith.pipeline import qat_run
from bitsmith.quant.api import QATConfig
from bitsmith.quant.qat import METHODS, QATTrainConfig
from bitsmith.quant.qat.train import _distillation, teacher_logits
from bitsmith.runs import CHECKPOINT_FILE, load_run
from bitsmith.train import SGD_MOMENTUM, TrainConfig, cosine_lr, train

DEFAULT_RUN = Path("runs/bench/lenet5-fp32")
DEFAULT_TRAIN = TrainConfig("lenet5", "fashion-mnist", epochs=8)
BITS = {"W8A8": (8, 8), "W4A4": (4, 4), "W2A2": (2, 2)}
QAT = QATTrainConfig()  # the defaults: 2 epochs, SGD lr 0.02, cross-entropy (no distillation)
EPOCH_TIME_TARGET = 1.5  # issue "QAT": QAT epoch time ≤ 1.5× the float epoch time


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


class FloatEpochs:
    """Float training epochs timed the way qat_train times a QAT epoch: a copy of the float model,
    the same batches (shuffled, drop_last, QAT batch size), SGD Nesterov with QAT's cosine lr, and
    the same per-step work outside the model (lr update, loss.item() check, accuracy count)."""

    def __init__(self, run, train_ds) -> None:
        self.model = copy.deepcopy(run.model).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=QAT.lr, momentum=SGD_MOMENTUM, nesterov=True,
                                   weight_decay=QAT.weight_decay)
        self.train_ds, self.shape = train_ds, tuple(run.model.input_shape)
        self.gen = torch.Generator().manual_seed(QAT.seed + 1)
        self.steps = len(train_ds) // QAT.batch_size
        self.epoch = 0
        self.seconds: list[float] = []  # every float epoch timed, in order

    def warm_up(self, steps: int = 50) -> None:
        """A few untimed steps: the process's first batches are slower (allocator, oneDNN set-up)."""
        self.model.train()
        for i, (x, y) in enumerate(iterate_batches(self.train_ds, QAT.batch_size, self.shape, shuffle=True,
                                                   generator=torch.Generator().manual_seed(0), drop_last=True)):
            if i == steps:
                break
            F.cross_entropy(self.model(x), y).backward()
        self.opt.zero_grad(set_to_none=True)

    def __call__(self) -> float:
        total = self.steps * QAT.epochs
        first = (self.epoch % QAT.epochs) * self.steps  # the lr follows QAT's schedule, epoch after epoch
        self.model.train()
        start = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for i, (x, y) in enumerate(iterate_batches(self.train_ds, QAT.batch_size, self.shape, shuffle=True,
                                                   generator=self.gen, drop_last=True)):
            for group in self.opt.param_groups:
                group["lr"] = cosine_lr(QAT.lr, first + i, total)
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            value = loss.item()
            if not math.isfinite(value):
                raise RuntimeError(f"float epoch diverged: loss {value}")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            loss_sum += value * len(y)
            correct += (logits.argmax(dim=1) == y).sum().item()
            seen += len(y)
        seconds = time.perf_counter() - start
        self.epoch += 1
        self.seconds.append(seconds)
        return seconds


def interleaved(float_epochs: FloatEpochs, run_qat) -> dict:
    """Time float and QAT epochs interleaved, F Q F Q … F: `run_qat(between)` trains, calling
    `between(seconds_of_that_qat_epoch)` after each epoch. Each QAT epoch's ratio is to the mean
    of the float epochs just before and after it; returns the raw seconds and the median ratio."""
    fp = [float_epochs.seconds[-1] if float_epochs.seconds else float_epochs()]  # the F just before
    qat: list[float] = []

    def between(seconds: float) -> None:
        qat.append(seconds)
        fp.append(float_epochs())

    result = run_qat(between)
    ratios = [q / ((a + b) / 2) for q, a, b in zip(qat, fp, fp[1:])]
    return {"result": result, "qat_epoch_seconds": [round(q, 3) for q in qat],
            "float_epoch_seconds": [round(f, 3) for f in fp], "paired_ratios": [round(r, 3) for r in ratios],
            "epoch_time_vs_fp": round(statistics.median(ratios), 3)}


# -- the peer ------------------------------------------------------------------------------------


def brevitas_lenet(fp: nn.Module, wbits: int, abits: int) -> nn.Module:
    """LeNet-5 from brevitas.nn with default quantizers at (wbits, abits), float weights loaded."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFloat

    def conv(i, o):
        return qnn.QuantConv2d(i, o, 5, bias=False, weight_bit_width=wbits)

    model = nn.Sequential(
        qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, bit_width=8, return_quant_tensor=False),
        conv(1, 6), qnn.QuantReLU(bit_width=abits), nn.MaxPool2d(2),
        conv(6, 16), qnn.QuantReLU(bit_width=abits), nn.MaxPool2d(2),
        conv(16, 120), qnn.QuantReLU(bit_width=abits), nn.Flatten(),
        qnn.QuantLinear(120, 84, bias=False, weight_bit_width=wbits), qnn.QuantReLU(bit_width=abits),
        qnn.QuantLinear(84, 10, bias=False, weight_bit_width=wbits),
    )
    float_layers = [m for m in fp.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    quant_layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for q, f in zip(quant_layers, float_layers):
            q.weight.copy_(f.weight)
    return model


def brevitas_qat(run, train_ds, test, wbits: int, abits: int, between=lambda seconds: None) -> dict:
    """The same 2 epochs as bitsmith (SGD, cosine; distillation from cached float logits if QAT.distill);
    `between(seconds)` runs after each epoch, outside the timing."""
    shape = tuple(run.model.input_shape)
    model = brevitas_lenet(run.model, wbits, abits)
    with torch.no_grad():  # calibrate the activation scales' statistics on one batch
        model.train()(next(iterate_batches(train_ds, 256, shape))[0])
    opt = torch.optim.SGD(model.parameters(), lr=QAT.lr, momentum=SGD_MOMENTUM, nesterov=True)
    steps = len(train_ds) // QAT.batch_size
    total = steps * QAT.epochs
    start = time.perf_counter()
    cached = teacher_logits(run.model, train_ds, shape) if QAT.distill > 0 else None
    indexed = type(train_ds)(train_ds.info, train_ds.images, torch.arange(len(train_ds)))
    gen = torch.Generator().manual_seed(QAT.seed + 1)
    setup = time.perf_counter() - start
    seconds = 0.0
    for epoch in range(QAT.epochs):
        model.train()
        start = time.perf_counter()
        for i, (x, idx) in enumerate(iterate_batches(indexed, QAT.batch_size, shape, shuffle=True, generator=gen,
                                                     drop_last=True)):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(QAT.lr, epoch * steps + i, total)
            logits = model(x)
            loss = F.cross_entropy(logits, train_ds.labels[idx])
            if cached is not None:
                loss = (1 - QAT.distill) * loss + QAT.distill * _distillation(logits, cached[idx], QAT.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        epoch_seconds = time.perf_counter() - start + setup / QAT.epochs
        seconds += epoch_seconds
        between(epoch_seconds)
    model.eval()
    return {"accuracy": round(accuracy(model, test, shape), 4), "seconds_per_epoch": round(seconds / QAT.epochs, 3)}


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="float LeNet-5 run (default: train/reuse one)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/qat"))
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated bitsmith methods")
    parser.add_argument("--bits", default=",".join(BITS), help="comma-separated from W8A8,W4A4,W2A2")
    parser.add_argument("--no-keep", action="store_true", help="skip the first/last-8-bit variants")
    parser.add_argument("--no-brevitas", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    run_dir = args.run or DEFAULT_RUN
    if args.run is None and not (run_dir / CHECKPOINT_FILE).is_file():
        log(f"training the float run into {run_dir} (8 epochs, once)")
        train(DEFAULT_TRAIN, run_dir, resume=True, quiet=True)
    run = load_run(run_dir)
    dataset = run.meta["dataset"]
    train_ds = load_dataset(dataset, "train", run.meta.get("data_dir"))
    test = load_dataset(dataset, "test", run.meta.get("data_dir"))
    fp_accuracy = accuracy(run.model, test, run.model.input_shape)
    load_start = os.getloadavg()
    float_epochs = FloatEpochs(run, train_ds)
    float_epochs.warm_up()
    log(f"float: {fp_accuracy:.2f}%; torch threads {torch.get_num_threads()}, load {load_start[0]:.2f}")

    results = []
    variants = [False] if args.no_keep else [False, True]
    for label in args.bits.split(","):
        wbits, abits = BITS[label]
        for method in args.methods.split(","):
            for keep in variants:
                if label == "W8A8" and (keep or method in ("binary", "ternary")):
                    continue  # nothing to keep at 8 bits; binary/ternary weights have no 8-bit form
                out = args.out / f"{method}-{label}{'-keep8' if keep else ''}"
                timing = interleaved(float_epochs, lambda between: qat_run(
                    run_dir, out, QATConfig(method, wbits=wbits, abits=abits, keep_first_last_8bit=keep,
                                            **QAT.__dict__),
                    quiet=True, on_epoch=lambda record: between(record["seconds"])))
                m = timing.pop("result")
                rec = {"system": "bitsmith", "method": method, "bits": label, "first_last_8bit": keep,
                       "accuracy": m["accuracy"], "integer_accuracy": m["integer_accuracy"],
                       "agreement": m["agreement"], "disagreements": m["disagreements"],
                       "seconds_per_epoch": m["seconds_per_epoch"], **timing}
                log(json.dumps(rec))
                results.append(rec)

    peer: dict = {}
    if args.no_brevitas:
        peer = {"skipped": "--no-brevitas"}
    else:
        try:
            import brevitas

            peer = {"version": brevitas.__version__, "results": []}
            for label in args.bits.split(","):
                timing = interleaved(float_epochs, lambda between: brevitas_qat(run, train_ds, test, *BITS[label],
                                                                                between=between))
                r = timing.pop("result") | {"bits": label, **timing}
                log("brevitas", json.dumps(r))
                peer["results"].append(r)
        except ImportError:
            peer = {"skipped": "brevitas is not installed (pip install brevitas==0.13.4)"}

    def best(label: str) -> dict | None:
        rows = [r for r in results if r["bits"] == label]
        return max(rows, key=lambda r: r["integer_accuracy"]) if rows else None

    acceptance = {}
    for label, margin in (("W4A4", 0.3), ("W2A2", 3.0)):
        b = best(label)
        if b is not None:
            acceptance[f"best_{label}"] = {**b, "target": round(fp_accuracy - margin, 4),
                                           "met": b["integer_accuracy"] >= fp_accuracy - margin}
    ratios = [r["epoch_time_vs_fp"] for r in results]
    acceptance["max_epoch_time_vs_fp"] = max(ratios) if ratios else None
    acceptance["epoch_time_target"] = EPOCH_TIME_TARGET
    acceptance["epoch_time_met"] = bool(ratios) and max(ratios) <= EPOCH_TIME_TARGET
    acceptance["all_agree"] = all(r["disagreements"] == 0 for r in results)
    fp_seconds = float_epochs.seconds
    print(json.dumps({
        "float": {"run": str(run_dir), "accuracy": round(fp_accuracy, 4),
                  "epoch_seconds": [round(f, 3) for f in fp_seconds],
                  "median_epoch_seconds": round(statistics.median(fp_seconds), 3) if fp_seconds else None},
        "qat_config": QAT.__dict__, "bitsmith": results, "brevitas": peer, "acceptance": acceptance,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads(), "load_average_start": [round(v, 2) for v in load_start],
                    "load_average_end": [round(v, 2) for v in os.getloadavg()]},
    }, indent=2))


if __name__ == "__main__":
    main()
