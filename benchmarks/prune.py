"""Pruning benchmark (issue 14): every pruning method of `bitsmith prune` through quantization to the
integer engine, the storage formats and the accelerator's cycles, beside the peers at the same
sparsity and fine-tuning budget.

    .venv/bin/python benchmarks/prune.py [--models lenet5,vgg_tiny] [--out runs/bench/prune] > prune.json

Float runs (trained once into runs/bench/…, reused): LeNet-5 8 epochs, VGG-tiny at --vgg-width 0.25
4 epochs, both on all 60,000 Fashion-MNIST images (VGG-tiny on 32×32 padded inputs).

Per point, what a user runs: `bitsmith prune` (prune_run: the method, then --prune-epochs of
fine-tuning, lr 0.01, cosine) → quantization of the pruned run with its zeros kept (LeNet-5: LSQ
W4A4 QAT, --qat-epochs; VGG-tiny: 8-bit PTQ, to fit the machine) → the integer graph, and:
integer-engine accuracy on the 10,000 test images; density and stored size in each format and in
the best (`bitsmith sparsity`: biases, multipliers, shifts and scales counted), compression against
FP32; MACs per image; engine wall time on the test set (best of 3); accelerator cycles per image
at 8×8 without and with zero-skipping (weights; weights and ReLU zeros on 100 test images); and
engine == ONNX Runtime == cycle model element by element on 100 test images.

Points: LeNet-5 unstructured magnitude (global, AGP) at --sparsities, channels (L1 filter norm) at
--channel-ratios, 2:4; VGG-tiny pattern 4-of-9 (library 8), 2:4, 90% unstructured and 50% channels
(--vgg-prune-epochs 3 at lr 0.01 on all images; --vgg-train-limit N for fewer). Two controls per
model: the dense float run quantized as is, and the dense run fine-tuned with the same budget and
quantized ("-finetuned", sparsity 0), against which each point's drop is also given (what pruning
costs, apart from what extra epochs give an under-trained float run).

Peers (float accuracy after the same fine-tuning loop and budget; LeNet-5): torch.nn.utils.prune's
global L1 unstructured at each sparsity, Torch-Pruning's MagnitudePruner (L1, the classifier kept)
at each channel ratio.

Prints one JSON object on stdout; progress goes to stderr. Full-size VGG-tiny: --vgg-width 1
--vgg-train-limit 0.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.utils.prune as torch_prune
import torch_pruning as tp
from torch import nn

from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.config import AccelConfig
from bitsmith.accel.simulate import simulate
from bitsmith.accel.timing import layer_densities, program_cycles
from bitsmith.data import load_dataset
from bitsmith.evaluate import accuracy
from bitsmith.integer import engine, load
from bitsmith.integer.sparsity import activation_sparsity, graph_sparsity
from bitsmith.models import model_summary
from bitsmith.pipeline import qat_run, quantize_run
from bitsmith.prune.job import PruneConfig, prune_run
from bitsmith.prune.magnitude import finetune, prunable_layers
from bitsmith.quant import QuantConfig
from bitsmith.quant.api import QATConfig
from bitsmith.runs import CHECKPOINT_FILE, load_run
from bitsmith.verify import verification_inputs, verify_all

sys.path.insert(0, str(Path(__file__).resolve().parent))
from float_runs import float_run, log, run_dir  # noqa: E402  (benchmarks/float_runs.py: the shared float runs)

VERIFY_IMAGES = 100
VGG_FLOAT_EPOCHS = 4


def engine_seconds(graph, test, shape) -> float:
    """Best of 3 wall times of the integer engine over the whole test set (input quantization included)."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        accuracy(partial(engine.predict, graph), test, shape)
        times.append(time.perf_counter() - start)
    return round(min(times), 3)


def hardware(graph, inputs) -> dict:
    """Cycles per image at 8×8 without and with zero-skipping, and the back ends' agreement: "weights"
    exact from the codes; "both" exact (the cycle model's mean over the test images) and the
    timing model's estimate from the layers' activation densities."""
    cycles = {mode: program_cycles(compile_graph(graph, AccelConfig(zero_skip=mode)))["total"]
              for mode in ("none", "weights")}
    program = compile_graph(graph, AccelConfig(zero_skip="both"))
    images = inputs.x[:inputs.real]
    codes = engine.run(graph, images, return_all=True)[program.input_name]
    per_image = simulate(program, codes).cycles["images"]
    cycles["both"] = round(sum(per_image) / len(per_image), 1)
    densities = layer_densities(graph, program, activation_sparsity(graph, images))
    cycles["both_estimate"] = program_cycles(program, densities)["total"]
    reports = verify_all(graph, ["onnx", "accel"], inputs)
    agree = {name: r.passed for name, r in reports.items()}
    return {"cycles": cycles, "zero_skip_speedup": round(cycles["none"] / cycles["both"], 3), "backends_agree": agree}


def measure(graph_dir: Path, test, shape, fp32: float) -> dict:
    graph = load(graph_dir)
    storage = graph_sparsity(graph)
    int_acc = accuracy(partial(engine.predict, graph), test, shape)  # dequantized: per-channel logits
    return {"integer_accuracy": int_acc, "drop_vs_fp32_pp": round(fp32 - int_acc, 2),
            "density": round(storage["density"], 4), "stored_kb": round(storage["stored_kb"], 2),
            "fp32_kb": round(storage["fp32_kb"], 2), "compression": round(storage["compression"], 2),
            "best_formats": {r["name"]: r["best"] for r in storage["layers"]},
            "format_kb": {fmt: round(sum(r["formats"].get(fmt, r["formats"]["dense"]) for r in storage["layers"])
                                     / 8192, 2) for fmt in storage["layers"][0]["formats"]},
            "engine_seconds": engine_seconds(graph, test, shape), **hardware(graph, verification_inputs(graph, VERIFY_IMAGES))}


def control(points: list[dict]) -> list[dict]:
    """Each point's drop against the dense model fine-tuned with the same budget (the "-finetuned" point,
    sparsity 0): pruning's own cost, apart from what the extra epochs give the float run."""
    base = next(p for p in points if p["point"].endswith("-finetuned"))["integer_accuracy"]
    return [{**p, "drop_vs_finetuned_dense_pp": round(base - p["integer_accuracy"], 2)} for p in points]


def macs(model: nn.Module) -> int:
    return sum(r.macs for r in model_summary(model, tuple(model.input_shape)))


def point(name: str, source: Path, out: Path, config: PruneConfig, quantize, test, shape, fp32: float,
          train_limit: int | None) -> dict:
    start = time.perf_counter()
    pruned_dir, graph_dir = out / name, out / f"{name}-int"
    pruned = prune_run(source, pruned_dir, config, quiet=True, force=True, train_limit=train_limit)
    quantize(pruned_dir, graph_dir)
    record = {"point": name, "prune": config.to_json(), "float_pruned_accuracy": pruned["accuracy"],
              "sparsity": round(pruned["sparsity"], 4), "macs": pruned["macs_after"],
              **measure(graph_dir, test, shape, fp32), "seconds": round(time.perf_counter() - start, 1)}
    log(f"  {name}: float pruned {record['float_pruned_accuracy']:.2f}%, integer {record['integer_accuracy']:.2f}% "
        f"(FP32 {fp32:.2f}%), {record['stored_kb']} KB = {record['compression']}x, MACs {record['macs']:,}, "
        f"engine {record['engine_seconds']} s, cycles {record['cycles']}, agree {record['backends_agree']}")
    return record


def dense_point(name: str, source: Path, out: Path, quantize, test, shape, fp32: float) -> dict:
    graph_dir = out / f"{name}-int"
    quantize(source, graph_dir)
    record = {"point": name, "sparsity": 0.0, "macs": macs(load_run(source).model),
              **measure(graph_dir, test, shape, fp32)}
    log(f"  {name}: integer {record['integer_accuracy']:.2f}%, {record['stored_kb']} KB, "
        f"engine {record['engine_seconds']} s, cycles {record['cycles']}")
    return record


def torch_unstructured_peer(model: nn.Module, sparsity: float, train_ds, test, shape, epochs: int) -> dict:
    """torch.nn.utils.prune.global_unstructured (L1) on every Conv2d/Linear weight, then the same fine-tuning."""
    peer = copy.deepcopy(model)
    params = [(m, "weight") for m in prunable_layers(peer).values()]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    for m, _ in params:   # the hook recomputes `weight` every forward; a detached copy lets the loop deepcopy it
        m.weight = m.weight.detach()
    tuned, _ = finetune(peer, train_ds, shape, epochs=epochs, lr=0.01)
    for m, _ in params:
        torch_prune.remove(dict(tuned.named_modules())[_name_of(peer, m)], "weight")
    zeros = sum(int((m.weight == 0).sum()) for m in prunable_layers(tuned).values())
    total = sum(m.weight.numel() for m in prunable_layers(tuned).values())
    return {"peer": "torch.nn.utils.prune global L1", "sparsity": round(zeros / total, 4),
            "float_accuracy": accuracy(tuned, test, shape)}


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def torch_pruning_peer(model: nn.Module, ratio: float, train_ds, test, shape, epochs: int) -> dict:
    """Torch-Pruning's MagnitudePruner (L1 importance, the last Linear kept), then the same fine-tuning."""
    peer = copy.deepcopy(model).eval()
    last = [m for m in peer.modules() if isinstance(m, nn.Linear)][-1]
    example = torch.zeros(1, *shape)
    pruner = tp.pruner.MagnitudePruner(peer, example, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=[last])
    pruner.step()
    tuned, _ = finetune(peer, train_ds, shape, epochs=epochs, lr=0.01)
    return {"peer": "Torch-Pruning MagnitudePruner (L1)", "ratio": ratio, "macs": macs(tuned),
            "float_accuracy": accuracy(tuned, test, shape)}


def lenet(args, out: Path) -> dict:
    source = float_run("lenet5", args.vgg_width, VGG_FLOAT_EPOCHS)
    run = load_run(source)
    shape = tuple(run.model.input_shape)
    train_ds, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    fp32 = accuracy(run.model, test, shape)
    log(f"lenet5: FP32 {fp32:.2f}%")
    qat = QATConfig("lsq", wbits=4, abits=4, epochs=args.qat_epochs)

    def quantize(source: Path, graph_dir: Path) -> None:
        qat_run(source, graph_dir, qat, quiet=True, force=True)

    common = {"epochs": args.prune_epochs, "lr": 0.01, "batch_size": 64}
    points = [dense_point("lenet5-dense", source, out, quantize, test, shape, fp32),
              point("lenet5-finetuned", source, out, PruneConfig("magnitude", sparsity=0.0, **common), quantize, test,
                    shape, fp32, None)]
    peers = []
    for s in args.sparsities:
        config = PruneConfig("magnitude", sparsity=s, schedule="agp", **common)
        points.append(point(f"lenet5-magnitude-{s}", source, out, config, quantize, test, shape, fp32,
                            None))
        if args.peers:
            peers.append({"sparsity": s, **torch_unstructured_peer(run.model, s, train_ds, test, shape,
                                                                     args.prune_epochs)})
            log(f"  peer {peers[-1]}")
    for r in args.channel_ratios:
        config = PruneConfig("channel", sparsity=r, criterion="l1", **common)
        points.append(point(f"lenet5-channel-{r}", source, out, config, quantize, test, shape, fp32,
                            None))
        if args.peers:
            peers.append(torch_pruning_peer(run.model, r, train_ds, test, shape, args.prune_epochs))
            log(f"  peer {peers[-1]}")
    points.append(point("lenet5-2of4", source, out, PruneConfig("nm", n=2, m=4, **common), quantize, test, shape,
                        fp32, None))
    return {"model": "lenet5", "fp32_accuracy": fp32, "quantization": "LSQ W4A4 QAT", "points": control(points),
            "peers": peers}


def vgg(args, out: Path) -> dict:
    source = float_run("vgg_tiny", args.vgg_width, VGG_FLOAT_EPOCHS)
    run = load_run(source)
    shape = tuple(run.model.input_shape)
    test = load_dataset("fashion-mnist", "test")
    fp32 = accuracy(run.model, test, shape)
    log(f"vgg_tiny: FP32 {fp32:.2f}%")
    limit = args.vgg_train_limit or None

    def quantize(source: Path, graph_dir: Path) -> None:
        quantize_run(source, graph_dir, QuantConfig(), force=True)

    common = {"epochs": args.vgg_prune_epochs, "lr": args.vgg_lr, "batch_size": 64}
    points = [dense_point("vgg_tiny-dense", source, out, quantize, test, shape, fp32)]
    for label, config in (("finetuned", PruneConfig("magnitude", sparsity=0.0, **common)),
                          ("pattern4", PruneConfig("pattern", pattern_k=4, library_size=8, **common)),
                          ("2of4", PruneConfig("nm", n=2, m=4, **common)),
                          ("magnitude-0.9", PruneConfig("magnitude", sparsity=0.9, schedule="agp", **common)),
                          ("channel-0.5", PruneConfig("channel", sparsity=0.5, **common))):
        points.append(point(f"vgg_tiny-{label}", source, out, config, quantize, test, shape, fp32,
                            limit))
    return {"model": "vgg_tiny", "options": {"width": args.vgg_width}, "fp32_accuracy": fp32,
            "quantization": "8-bit PTQ", "train_limit": limit, "points": control(points)}


def timing_only(args) -> dict:
    """Engine wall time (best of 3 over the test set) of every graph an earlier run left in --out, with its
    MACs: run on a quiet machine, after the full benchmark, so that no training shares the cores."""
    test = load_dataset("fashion-mnist", "test")
    rows = []
    for graph_dir in sorted(args.out.glob("*-int")):
        name = graph_dir.name[:-len("-int")]
        model = name.split("-")[0]
        if model not in args.models.split(","):
            continue
        source = args.out / name
        if not (source / CHECKPOINT_FILE).is_file():   # the dense baseline: its source run
            source = run_dir(model, args.vgg_width)
        graph = load(graph_dir)
        rows.append({"point": name, "macs": macs(load_run(source).model),
                     "engine_seconds": engine_seconds(graph, test, tuple(graph.input_spec.shape))})
        log(f"  {rows[-1]}")
    return {"benchmark": "pruning: engine time", "threads": torch.get_num_threads(), "points": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet5,vgg_tiny")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/prune"))
    parser.add_argument("--sparsities", type=lambda t: [float(v) for v in t.split(",")], default="0.5,0.75,0.9,0.95")
    parser.add_argument("--channel-ratios", type=lambda t: [float(v) for v in t.split(",")], default="0.25,0.5")
    parser.add_argument("--prune-epochs", type=int, default=2)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--vgg-width", type=float, default=0.25)
    parser.add_argument("--vgg-prune-epochs", type=int, default=3)
    parser.add_argument("--vgg-lr", type=float, default=0.01)
    parser.add_argument("--vgg-train-limit", type=int, default=0, help="fine-tune VGG-tiny on the first N images "
                                                                       "(0: all 60,000)")
    parser.add_argument("--no-peers", dest="peers", action="store_false")
    parser.add_argument("--timing-only", action="store_true", help="only re-time the engine on the graphs in --out")
    args = parser.parse_args()
    if args.timing_only:
        print(json.dumps(timing_only(args), indent=1))
        return
    start = time.perf_counter()
    results = []
    for model in args.models.split(","):
        results.append(lenet(args, args.out) if model == "lenet5" else vgg(args, args.out))
    print(json.dumps({"benchmark": "pruning", "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
                      "machine": platform.processor() or platform.machine(),
                      "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                      "models": results, "seconds": round(time.perf_counter() - start, 1)}, indent=1))


if __name__ == "__main__":
    main()
