"""Mixed-precision benchmark (issue 13): uniform widths against DNAS and Hessian + ILP searches, on the
accelerator's own cost, every point trained with the same QAT recipe and checked on the back ends.

    .venv/bin/python benchmarks/mixed.py [--models lenet5,vgg_tiny] [--out runs/bench/mixed] > mixed.json

Per model (LeNet-5 and VGG-tiny on Fashion-MNIST; VGG-tiny on 32×32 padded inputs), from one float
run (trained once into runs/bench/…, reused afterwards):

Sizes (2-core machine): VGG-tiny at --vgg-width 0.25 (16-16-M-32-32-M-64-64-M: 1/16 of the MACs),
float-trained 4 epochs on all 60,000 images, QAT and searches on the first --vgg-train-limit 20,000;
LeNet-5 on all 60,000. --vgg-width 1 --vgg-train-limit 0 is the full size.

* uniform W8A8, W4A4, W3A3, W2A2 (every Conv2d/Linear at those widths, the image input 8 bits);
* DNAS (`bitsmith search --method dnas --cost dsp`) at each --cds value;
* Hessian + ILP (`bitsmith search --method hessian --budget-dsp B`) at budgets B = f × uniform
  W4A4's DSPs, f ∈ --budget-fractions (0.5, 0.7, 1.0: the acceptance asks about 0.7×); one trace
  computation, reused for the other budgets;

then every point the same QAT (LSQ, --qat-epochs, QATTrainConfig defaults but the learning rate: 0.02
for LeNet-5, 0.005 for VGG-tiny, whose BN-folded weights diverge at 0.02 in W8A8) → integer graph, and
per point: integer-engine accuracy on the 10,000 test images, DSPs (the dataflow design of
bitsmith.accel.precision), cycles per image at R×C = 8×8 (the timing model), weight KB, search
wall time. Checks, recorded per point: the cost function's predicted cycles and DSPs (search.json)
equal those of the realised graph compiled for the accelerator, and engine == ONNX Runtime ==
cycle model element by element on 100 test images (and 100 random-code images, the one input
policy). The DNAS search epochs of the first --cds value are timed interleaved with float epochs
(F S F S F …, as benchmarks/qat.py does for QAT). pareto.png: accuracy against DSPs and cycles.

Prints one JSON object on stdout; progress goes to stderr. Full-size VGG-tiny: --vgg-width 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from float_runs import float_run, log  # noqa: E402  (benchmarks/float_runs.py: the shared float runs)
from qat import FloatEpochs  # noqa: E402  (benchmarks/qat.py: float epochs timed like training epochs)

from bitsmith.accel.compiler import compile_graph  # noqa: E402
from bitsmith.accel.config import AccelConfig  # noqa: E402
from bitsmith.accel.precision import assignment_cost  # noqa: E402
from bitsmith.data import load_dataset  # noqa: E402
from bitsmith.integer import load  # noqa: E402
from bitsmith.pipeline import qat_run  # noqa: E402
from bitsmith.quant.api import QATConfig  # noqa: E402
from bitsmith.runs import load_run  # noqa: E402
from bitsmith.search.job import search_run  # noqa: E402
from bitsmith.search.plots import pareto_figure  # noqa: E402
from bitsmith.verify import verification_inputs, verify_all  # noqa: E402

UNIFORM = (8, 4, 3, 2)
VERIFY_IMAGES = 100


def realised(graph_dir: Path) -> dict:
    """The realised graph's exact cost at 8×8 and the back-end agreement on 100 test images."""
    graph = load(graph_dir)
    program = compile_graph(graph, AccelConfig())
    cost = assignment_cost(program)
    reports = verify_all(graph, ["onnx", "accel"], verification_inputs(graph, VERIFY_IMAGES))
    return {"dsp": cost["dsp"], "cycles": cost["cycles"], "weight_kb": round(cost["weight_kb"], 3),
            "bitops": cost["bitops"], "array_dsp": cost["array_dsp"], "wbits": cost["wbits"], "abits": cost["abits"],
            "verify": {b: {"images": r.images, "mismatches": r.mismatches, "passed": r.passed, "error": r.error,
                           "cycles_per_image": sorted(set(r.cycles_per_image or []))}
                       for b, r in reports.items()}}


def _reusable(path: Path, wanted: dict, args) -> dict | None:
    """With --reuse: the JSON at `path` when it records exactly `wanted` (else None: compute anew)."""
    if not args.reuse or not path.is_file():
        return None
    doc = json.loads(path.read_text())
    return doc if all(doc.get(k) == v for k, v in wanted.items()) else None


def qat_point(run: Path, out: Path, label: str, kind: str, args, **bits) -> dict:
    config = QATConfig("lsq", epochs=args.qat_epochs, lr=args.qat_lr, **bits)
    start = time.perf_counter()
    metrics = _reusable(out / "metrics.json", {"config": config.to_json(), "train_images": args.train_limit or 60000},
                        args)
    if metrics is None:
        metrics = qat_run(run, out, config, quiet=True, force=True, train_limit=args.train_limit)
    point = {"label": label, "kind": kind, "accuracy": metrics["integer_accuracy"],
             "fake_quant_accuracy": metrics["accuracy"], "agreement": metrics["agreement"],
             "qat_seconds": round(time.perf_counter() - start, 1), **realised(out)}
    log(f"  {label}: {point['accuracy']:.2f}%  DSP {point['dsp']}  cycles {point['cycles']:,}  "
        f"{point['weight_kb']:.1f} KB  onnx/accel mismatches "
        f"{point['verify']['onnx']['mismatches']}/{point['verify']['accel']['mismatches']}")
    return point


def searched_point(run: Path, out: Path, label: str, kind: str, doc: dict, args) -> dict:
    point = qat_point(run, out / "qat", label, kind, args, bitw=doc["bitw"], bita=doc["bita"])
    point.update(bitw=doc["bitw"], bita=doc["bita"], search_seconds=doc["seconds"],
                 predicted={k: doc["predicted"][k] for k in ("dsp", "cycles", "weight_kb", "bram18")},
                 prediction_holds=doc["predicted"]["dsp"] == point["dsp"] and doc["predicted"]["cycles"] == point["cycles"])
    return point


def search_or_reuse(run: Path, out: Path, args, **options) -> dict:
    """search_run, or with --reuse an earlier search.json that answered the same question."""
    wanted = {"method": options["method"], "train_limit": args.train_limit,
              **({"cd": options["cd"], "epochs": args.search_epochs} if options["method"] == "dnas"
                 else {"budgets": options["budgets"]})}
    doc = _reusable(out / "search.json", wanted, args)
    if doc is not None and doc["space"]["searched"][0] == args.search_first_last:
        return doc
    if options["method"] == "dnas":
        options["epochs"] = args.search_epochs
    return search_run(run, out, train_limit=args.train_limit, quiet=True, force=True,
                      search_first_last=args.search_first_last, **options)


def timed_dnas(run: Path, out: Path, cd: float, args) -> tuple[dict, dict]:
    """The DNAS search with a float epoch timed before and after each search epoch."""
    info = load_run(run)
    train_ds = load_dataset(info.meta["dataset"], "train", limit=args.train_limit)
    floats = FloatEpochs(info, train_ds)
    floats.warm_up()
    fp = [floats()]
    searched: list[float] = []

    def between(record: dict) -> None:
        searched.append(record["seconds"])
        fp.append(floats())

    doc = search_run(run, out, method="dnas", cost="dsp", cd=cd, epochs=args.search_epochs, seed=0,
                     train_limit=args.train_limit, quiet=True, force=True, on_epoch=between,
                     search_first_last=args.search_first_last)
    ratios = [s / ((a + b) / 2) for s, a, b in zip(searched, fp, fp[1:])]
    return doc, {"search_epoch_seconds": [round(s, 3) for s in searched], "float_epoch_seconds": [round(f, 3) for f in fp],
                 "paired_ratios": [round(r, 3) for r in ratios], "median_ratio": round(statistics.median(ratios), 3),
                 "search_seconds": doc["seconds"]}


def bench_model(model: str, run: Path, out: Path, args) -> dict:
    log(f"== {model}: {run}")
    points = []
    for b in UNIFORM:
        points.append(qat_point(run, out / f"uniform-w{b}a{b}", f"W{b}A{b}", "uniform", args, wbits=b, abits=b))
    timing = None
    for i, cd in enumerate(args.cds):
        folder = out / f"dnas-cd{cd:g}"
        if i == 0 and _reusable(folder / "search" / "search.json", {"cd": cd}, args) is None:
            doc, timing = timed_dnas(run, folder / "search", cd, args)
        else:
            doc = search_or_reuse(run, folder / "search", args, method="dnas", cost="dsp", cd=cd)
        log(f"  dnas cd {cd:g}: bitw {doc['bitw']} bita {doc['bita']} predicted DSP {doc['predicted']['dsp']} "
            f"({doc['seconds']:.0f} s)")
        points.append(searched_point(run, folder, f"dnas {cd:g}", "dnas", doc, args))
    w4a4 = next(p for p in points if p["label"] == "W4A4")
    first = None
    for f in args.budget_fractions:
        budget = float(int(w4a4["dsp"] * f))
        folder = out / f"hessian-w4a4x{f:g}"
        doc = search_or_reuse(run, folder / "search", args, method="hessian", budgets={"dsp": budget}, traces_from=first,
                       max_iterations=args.hessian_iterations)
        first = first or folder / "search"
        log(f"  hessian budget {budget:g} DSP ({f:g}× W4A4): bitw {doc['bitw']} bita {doc['bita']} "
            f"predicted DSP {doc['predicted']['dsp']} ({doc['seconds']:.0f} s)")
        point = searched_point(run, folder, f"hessian {f:g}×", "hessian", doc, args)
        point["budget_dsp"] = budget
        points.append(point)
    searched = [p for p in points if p["kind"] != "uniform"]
    winners = [p["label"] for p in searched if p["accuracy"] >= w4a4["accuracy"] and p["dsp"] <= 0.7 * w4a4["dsp"]]
    pareto_figure(points, out / "pareto.png", f"{model} on Fashion-MNIST: integer accuracy vs DSP48E2 and cycles "
                                              f"(LSQ QAT {args.qat_epochs} epochs)")
    return {"run": str(run), "train_images": args.train_limit or 60000, "search_first_last": args.search_first_last,
            "cds": args.cds, "qat_lr": args.qat_lr, "points": points, "dnas_epoch_timing": timing,
            "acceptance": {"w4a4_accuracy": w4a4["accuracy"], "w4a4_dsp": w4a4["dsp"],
                           "searched_at_least_w4a4_accuracy_within_0.7x_dsp": winners,
                           "every_prediction_holds": all(p["prediction_holds"] for p in searched),
                           "every_backend_agrees": all(v["passed"] for p in points for v in p["verify"].values())},
            "figure": str(out / "pareto.png")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet5,vgg_tiny")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/mixed"))
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--search-epochs", type=int, default=3)
    parser.add_argument("--lenet-cds", default="1e-3,3e-3,1e-2", help="LeNet-5: DNAS cost weights")
    parser.add_argument("--vgg-cds", default="5e-5,1.5e-4,5e-4", help="VGG-tiny: DNAS cost weights (its DSP "
                                                                       "counts are ~18x LeNet-5's)")
    parser.add_argument("--budget-fractions", default="0.5,0.7,1.0",
                        help="Hessian DSP budgets as fractions of uniform W4A4's DSPs")
    parser.add_argument("--reuse", action="store_true", help="keep points whose folders already hold the same "
                                                             "QAT or search (same settings), recompute the rest")
    parser.add_argument("--lenet-train-limit", type=int, default=None, help="LeNet-5: first N training images "
                                                                             "(QAT and search; default all 60,000)")
    parser.add_argument("--vgg-train-limit", type=int, default=20000, help="VGG-tiny: first N training images "
                                                                           "(QAT and search; 0: all)")
    parser.add_argument("--vgg-width", type=float, default=0.25, help="VGG-tiny channel multiplier (1: full size)")
    parser.add_argument("--vgg-float-epochs", type=int, default=4)
    parser.add_argument("--lenet-qat-lr", type=float, default=0.02, help="LeNet-5: QAT learning rate (the default)")
    parser.add_argument("--vgg-qat-lr", type=float, default=0.005,
                        help="VGG-tiny: QAT learning rate; its BN-folded weights diverge at 0.02 in W8A8")
    parser.add_argument("--hessian-iterations", type=int, default=100, help="Hutchinson iterations at most")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--timing-only", action="store_true", help="only the interleaved DNAS epoch timing "
                                                                   "(first cd), on an otherwise idle machine")
    args = parser.parse_args()
    args.budget_fractions = [float(r) for r in args.budget_fractions.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    load_start = os.getloadavg()[0]
    results = {}
    for model in args.models.split(","):
        run = float_run(model, args.vgg_width, args.vgg_float_epochs)
        lenet = model == "lenet5"
        per_model = {"train_limit": args.lenet_train_limit if lenet else (args.vgg_train_limit or None),
                     "cds": [float(c) for c in (args.lenet_cds if lenet else args.vgg_cds).split(",")],
                     # LeNet-5's first layer alone at 8/8 takes 32 of uniform W4A4's 55 DSPs: searched too.
                     "search_first_last": lenet, "qat_lr": args.lenet_qat_lr if lenet else args.vgg_qat_lr}
        model_args = argparse.Namespace(**vars(args), **per_model)
        if args.timing_only:
            doc, timing = timed_dnas(run, args.out / model / "timing" / "search", model_args.cds[0], model_args)
            results[model] = {"run": str(run), "dnas_epoch_timing": timing, "bitw": doc["bitw"], "bita": doc["bita"]}
            continue
        results[model] = bench_model(model, run, args.out / model, model_args)
    print(json.dumps({"benchmark": "mixed-precision search", "date": time.strftime("%Y-%m-%d"),
                      "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                  "torch": torch.__version__, "threads": torch.get_num_threads(),
                                  "load_start": load_start, "load_end": os.getloadavg()[0]},
                      "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                      "wall_seconds": round(time.time() - started, 1), "models": results}, indent=1))


if __name__ == "__main__":
    main()
