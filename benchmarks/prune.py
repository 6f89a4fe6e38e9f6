"""Pruning benchmark, first part (issue 14, open): LeNet-5 on Fashion-MNIST, unstructured magnitude
pruning (AGP) + LSQ QAT, measured on the integer engine, with the whole-graph storage of
`bitsmith sparsity`. No peers yet (torch.nn.utils.prune and Torch-Pruning come with the rest of the
issue); the numbers are a preview of the acceptance point "90% unstructured + 4-bit within 1.0 pp of
FP, ≥ 30× smaller".

    .venv/bin/python benchmarks/prune.py [--sparsities 0.5,0.9] [--bits 4] > prune.json   # ~6 min

From the float run runs/bench/lenet5-fp32 (trained by benchmarks/qat.py or benchmarks/mixed.py if
missing: 8 epochs): per sparsity, `prune_finetune` (global, AGP over 4 events, --prune-epochs epochs,
lr 0.01), then `quantize_pruned` with LSQ W{bits}A{bits} (--qat-epochs, the QAT defaults), lowered;
accuracy of the integer engine on the 10,000 test images, the graph's density, stored KB and
compression against FP32 (biases, multipliers, shifts and scales counted), and its best format.
Prints one JSON object; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch

from bitsmith.data import load_dataset
from bitsmith.evaluate import accuracy
from bitsmith.integer import engine
from bitsmith.integer.sparsity import graph_sparsity
from bitsmith.prune import current_masks, prune_finetune, quantize_pruned
from bitsmith.quant import QATConfig, lower
from bitsmith.runs import CHECKPOINT_FILE, load_run
from bitsmith.train import TrainConfig, train

RUN = Path("runs/bench/lenet5-fp32")


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsities", default="0.5,0.9")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--prune-epochs", type=int, default=2)
    parser.add_argument("--qat-epochs", type=int, default=2)
    args = parser.parse_args()
    if not (RUN / CHECKPOINT_FILE).is_file():
        log(f"training {RUN}")
        train(TrainConfig("lenet5", "fashion-mnist", epochs=8), RUN, quiet=True)
    run = load_run(RUN)
    shape = tuple(run.model.input_shape)
    train_ds, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    fp32 = accuracy(run.model, test, shape)
    points = []
    for s in (float(v) for v in args.sparsities.split(",")):
        start = time.perf_counter()
        pruned, history = prune_finetune(run.model, train_ds, shape, sparsity=s, schedule="agp",
                                         epochs=args.prune_epochs, batch_size=128, lr=0.01)
        pruned_acc = accuracy(pruned, test, shape)
        masks = current_masks(pruned)
        config = QATConfig("lsq", wbits=args.bits, abits=args.bits, epochs=args.qat_epochs)
        graph = lower(quantize_pruned(pruned, train_ds, config))
        int_acc = accuracy(partial(engine.predict, graph), test, shape)  # dequantized: per-channel logits
        storage = graph_sparsity(graph)
        point = {"sparsity": s, "float_pruned_accuracy": pruned_acc, "integer_accuracy": int_acc,
                 "drop_vs_fp32_pp": round(fp32 - int_acc, 2), "density": storage["density"],
                 "pruned_weights": sum(int((~m).sum()) for m in masks.values()),
                 "stored_kb": round(storage["stored_kb"], 2), "fp32_kb": round(storage["fp32_kb"], 2),
                 "compression": round(storage["compression"], 2),
                 "best_formats": {r["name"]: r["best"] for r in storage["layers"]},
                 "seconds": round(time.perf_counter() - start, 1)}
        log(f"sparsity {s}: float pruned {pruned_acc:.2f}%, W{args.bits}A{args.bits} integer {int_acc:.2f}% "
            f"(FP32 {fp32:.2f}%), {point['stored_kb']} KB vs {point['fp32_kb']} KB: {point['compression']}x")
        points.append(point)
    print(json.dumps({"benchmark": "pruning (preview)", "date": time.strftime("%Y-%m-%d"), "fp32_accuracy": fp32,
                      "threads": torch.get_num_threads(), "settings": vars(args), "points": points}, indent=1))


if __name__ == "__main__":
    main()
