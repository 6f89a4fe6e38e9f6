"""CLIP-Q benchmark: vectorised quantization speed, and (optionally) QAT accuracy on LeNet-5.

    .venv/bin/python benchmarks/clipq.py [--repeats 7] [--accuracy RUN_DIR] > clipq.json

Speed: CLIP-Q of one 1M-weight tensor (normal weights, p = 0.4) with
`bitsmith.quant.clipq.clipq_codebook` (vectorised) and `clipq_codebook_loop` (the same
thresholds, then a Python loop over the bins: a mask and a mean per bin), for b = 2 and b = 8,
plus the full layer quantizer (`ClipQWeightQuantizer.codebook_weights`, integer codebook
included); median and best of `--repeats` runs, interleaved, after one warm-up each.

Accuracy (`--accuracy RUN_DIR`, a float run such as the 8-epoch LeNet-5 Fashion-MNIST one):
PTQ W8A8 (calibration as `bitsmith quantize`), then CLIP-Q p = 0.4, b = 2 on the weights of the
layers not in `--skip` (default: first and last layer stay 8-bit PTQ), 2 QAT epochs with
bitsmith.quant.qat's `qat_train` (default QATTrainConfig: SGD Nesterov, cosine lr 0.01,
distillation from the float model), lowered; fake-quant and integer-engine test accuracy and their
agreement on the whole test set.

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from bitsmith.quant.clipq import ClipQWeightQuantizer, clipq_codebook, clipq_codebook_loop
from bitsmith.integer import engine

NUMEL = 1_000_000
P = 0.4


def _timings(fns: dict, repeats: int) -> dict:
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: {"median_ms": round(statistics.median(t), 2), "best_ms": round(min(t), 2)} for name, t in times.items()}


def speed(repeats: int) -> dict:
    w = torch.randn(NUMEL, generator=torch.Generator().manual_seed(0)) * 0.05
    result = {}
    for bits in (2, 8):
        # Same answer first: the comparison is between two implementations of one definition.
        (i1, c1), (i2, c2) = clipq_codebook(w, P, bits), clipq_codebook_loop(w, P, bits)
        assert torch.equal(i1, i2) and torch.allclose(c1, c2, rtol=1e-12, atol=0)
        q = ClipQWeightQuantizer(P, bits)
        t = _timings({"vectorised": lambda: clipq_codebook(w, P, bits),
                      "per_bin_loop": lambda: clipq_codebook_loop(w, P, bits),
                      "layer_quantizer": lambda: q.codebook_weights(w)}, repeats)
        t["speedup_median"] = round(t["per_bin_loop"]["median_ms"] / t["vectorised"]["median_ms"], 2)
        result[f"b{bits}"] = t
        print(f"b={bits}: {t}", file=sys.stderr)
    return result


def accuracy(run_dir: str, skip: list[str], epochs: int, q35: bool) -> dict:
    from bitsmith.data import load_dataset
    from bitsmith.evaluate import predictions
    from bitsmith.quant import lower
    from bitsmith.quant.calibration import calibration_batches
    from bitsmith.quant import QuantConfig, quantize
    from bitsmith.quant.clipq import apply_clipq
    from bitsmith.quant.qat.train import QATTrainConfig, qat_train
    from bitsmith.runs import load_run

    run = load_run(run_dir)
    dataset, data_dir = run.meta["dataset"], run.meta.get("data_dir")
    shape = tuple(run.model.input_shape)
    test = load_dataset(dataset, "test", data_dir)
    labels = torch.as_tensor(test.labels, dtype=torch.int64)

    def pct(pred):
        return round(100 * float((pred == labels).double().mean()), 2)

    torch.manual_seed(0)
    qmodel = quantize(run.model, calibration_batches(dataset, shape, data_dir), QuantConfig())
    layers = apply_clipq(qmodel, P, 2, q35=q35, skip=skip)
    before = pct(predictions(qmodel, test, shape))
    print(f"CLIP-Q on {layers}, before QAT {before}%", file=sys.stderr)
    config = QATTrainConfig(epochs=epochs)
    start = time.perf_counter()
    history = qat_train(qmodel, run.model, load_dataset(dataset, "train", data_dir), config,
                        on_epoch=lambda r: print(r, file=sys.stderr))
    seconds = time.perf_counter() - start
    graph = lower(qmodel)
    fp, fq, integer = (predictions(f, test, shape) for f in (run.model, qmodel, lambda x: engine.predict(graph, x)))
    return {"run": run_dir, "p": P, "bits": 2, "q35": q35, "clipq_layers": layers, "ptq_8bit_layers": skip,
            "epochs": epochs, "train_config": config.__dict__, "fp32_accuracy": pct(fp),
            "before_qat_accuracy": before, "accuracy": pct(fq), "integer_accuracy": pct(integer),
            "integer_equals_fake_quant": bool(torch.equal(fq, integer)), "disagreements": int((fq != integer).sum()),
            "qat_seconds": round(seconds, 1), "history": history,
            "acceptance_fp_minus_1.5": bool(pct(fq) >= pct(fp) - 1.5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--accuracy", metavar="RUN_DIR", help="also measure CLIP-Q QAT accuracy from this float run")
    ap.add_argument("--skip", default="conv1,fc2", help="layers left at 8-bit PTQ (comma-separated, '' for none)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--q35", action="store_true", help="Q3.5 fixed-point codebook (the source's rounding)")
    args = ap.parse_args()
    out = {"benchmark": "clipq", "numel": NUMEL, "p": P, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "speed": speed(args.repeats)}
    if args.accuracy:
        out["accuracy"] = accuracy(args.accuracy, [s for s in args.skip.split(",") if s], args.epochs, args.q35)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
