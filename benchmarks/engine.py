"""Integer-engine speed against its peers: throughput at batch 1000 and latency at batch 1.

    .venv/bin/python benchmarks/engine.py [--models lenet5,vgg_tiny] [--vgg-width 0.25] [--repeats 5] > engine.json

For LeNet-5 and VGG-tiny (width 0.25 by default; `--vgg-width 1` for the full network), each
trained on Fashion-MNIST (benchmarks/float_runs.py: trained once into runs/bench/…, reused) and
quantized W8A8 min-max, this measures in one process, the systems interleaved pass by pass so
that machine load hits them alike:

* FP32 eager PyTorch (eval, no_grad), torch.ao eager PTQ int8 (x86 backend, conv+BN+ReLU fused,
  calibrated on the same batches), ONNX Runtime on bitsmith's integer model and on its QDQ
  model, and the bitsmith integer engine (`engine.run(graph, x)`);
* throughput: images per second over 10 test batches of 1000 (one warm-up pass excluded; best
  and median of `--repeats` passes);
* latency: seconds per single image (batch 1) over `--latency-images` test images per pass,
  median of `--repeats` passes;
* exactness: the engine's fast path against its literal path (the reference interpreter) on the
  whole test set, element by element, and the ONNX integer model against the engine;
* the share of the CPUs other processes used while timing (figures are noisy above ~10%).

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import onnxruntime as ort
import torch

from bitsmith.data import iterate_batches, load_dataset
from bitsmith.integer import engine, int8_gemm, load
from bitsmith.integer.reference import run_reference
from bitsmith.onnx import export_onnx
from bitsmith.pipeline import quantize_run
from bitsmith.quant import QuantConfig
from bitsmith.quant.calibration import CALIBRATION_BATCHES, calibration_batches
from bitsmith.runs import load_run
from float_runs import BENCH, float_run
from ptq import _busy_cpu_seconds, _other_cpu_share, _own_cpu_seconds, machine, torch_ao_int8

THROUGHPUT_BATCH = 1000
THROUGHPUT_BATCHES = 10
VGG_EPOCHS = 4


def log(msg: str) -> None:
    print(f"[engine] {msg}", file=sys.stderr, flush=True)


def ort_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as the torch systems
    options.log_severity_level = 3
    # ONNX Runtime's idle threads otherwise spin after each run and slow whatever runs next in the
    # interleaved timing (the other systems and ORT's own other model).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_runner(session: ort.InferenceSession):
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def systems_for(run, graph, work: Path) -> dict:
    """name -> (callable, takes numpy input)."""
    shape = tuple(run.model.input_shape)
    calib = calibration_batches(run.meta["dataset"], shape, run.meta.get("data_dir"), CALIBRATION_BATCHES)
    export_onnx(graph, work / "int.onnx")
    export_onnx(graph, work / "qdq.onnx", qdq=True)
    return {
        "fp32": (run.model.eval(), False),
        "torch_ao_int8": (torch_ao_int8(run.model, calib), False),
        "ort_integer": (ort_runner(ort_session(work / "int.onnx")), True),
        "ort_qdq": (ort_runner(ort_session(work / "qdq.onnx")), True),
        "engine": (lambda x, g=graph: engine.run(g, x), False),
    }


def timed(systems: dict, inputs: dict[str, list]) -> dict:
    """Seconds per image of each system over its inputs, one after the other (warm-up excluded)."""
    seconds: dict[str, float] = {}
    images = sum(len(x) for x in inputs["torch"])
    busy, own, wall = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
    with torch.no_grad():
        for name, (fn, numpy_input) in systems.items():
            for x in inputs["numpy" if numpy_input else "torch"][:3]:
                fn(x)  # warm-up: allocator, weight packing, plan compilation
        for name, (fn, numpy_input) in systems.items():
            start = time.perf_counter()
            for x in inputs["numpy" if numpy_input else "torch"]:
                fn(x)
            seconds[name] = (time.perf_counter() - start) / images
    return {"seconds_per_image": seconds, "other_processes_cpu_share": _other_cpu_share(busy, own, wall)}


def exactness(graph, run_onnx, test_batches: list[torch.Tensor]) -> dict:
    """Mismatching codes of the fast path against the literal path, and of ONNX against the engine."""
    fast_vs_literal, onnx_vs_engine, images = 0, 0, 0
    for x in test_batches:
        fast = engine.run(graph, x)
        literal = run_reference(graph, x)[graph.outputs[0]]
        fast_vs_literal += int((fast != literal).sum())
        onnx_vs_engine += int((torch.from_numpy(run_onnx(x.numpy())[0]).to(torch.int64) != fast).sum())
        images += len(x)
    return {"images": images, "fast_vs_literal_mismatches": fast_vs_literal, "onnx_vs_engine_mismatches": onnx_vs_engine}


def bench_model(model: str, vgg_width: float, repeats: int, latency_images: int) -> dict:
    run_dir = float_run(model, vgg_width, VGG_EPOCHS)
    name = run_dir.name.removesuffix("-fp32")
    graph_dir = BENCH / "engine" / f"{name}-w8a8"
    log(f"{name}: quantize W8A8 min-max into {graph_dir}")
    metrics = quantize_run(run_dir, graph_dir, QuantConfig(observer="minmax", weight_bits=8, act_bits=8), force=True)
    run = load_run(run_dir)
    graph = load(graph_dir)
    shape = tuple(run.model.input_shape)
    test = load_dataset(run.meta["dataset"], "test", run.meta.get("data_dir"))
    test_batches = [x for x, _ in iterate_batches(test, THROUGHPUT_BATCH, shape)]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        work = Path(tmp)
        systems = systems_for(run, graph, work)
        log(f"{name}: exactness on {len(test.labels)} test images")
        exact = exactness(graph, systems["ort_integer"][0], test_batches)
        big = test_batches[:THROUGHPUT_BATCHES]
        singles = [x[None] for x in torch.cat(big)[:latency_images]]
        inputs_big = {"torch": big, "numpy": [x.numpy() for x in big]}
        inputs_one = {"torch": singles, "numpy": [x.numpy() for x in singles]}
        passes = {"throughput": [], "latency": []}
        for r in range(repeats):
            t = timed(systems, inputs_big)
            l1 = timed(systems, inputs_one)
            passes["throughput"].append(t)
            passes["latency"].append(l1)
            log(f"{name} pass {r + 1}/{repeats}: " + ", ".join(
                f"{n} {1 / t['seconds_per_image'][n]:.0f} img/s {1e6 * l1['seconds_per_image'][n]:.0f} µs"
                for n in systems))
    names = list(systems)
    per_image = {n: [p["seconds_per_image"][n] for p in passes["throughput"]] for n in names}
    latency = {n: [p["seconds_per_image"][n] for p in passes["latency"]] for n in names}
    median_ips = {n: round(1 / statistics.median(v), 1) for n, v in per_image.items()}
    median_latency_us = {n: round(1e6 * statistics.median(v), 1) for n, v in latency.items()}
    shares = [p["other_processes_cpu_share"] for k in passes for p in passes[k] if p["other_processes_cpu_share"] is not None]
    return {
        "model": model, "run": str(run_dir), "options": run.model.spec.get("kwargs", {}), "graph": str(graph_dir),
        "integer_accuracy": metrics["integer_accuracy"],
        "exactness": exact,
        "throughput_batch": THROUGHPUT_BATCH, "throughput_images": THROUGHPUT_BATCH * len(big),
        "latency_images": len(singles),
        "img_per_s_median": median_ips,
        "img_per_s_best": {n: round(1 / min(v), 1) for n, v in per_image.items()},
        "latency_us_median": median_latency_us,
        "latency_us_best": {n: round(1e6 * min(v), 1) for n, v in latency.items()},
        "ratios": {
            "engine_vs_torch_ao_throughput": round(median_ips["engine"] / median_ips["torch_ao_int8"], 3),
            "engine_vs_fp32_throughput": round(median_ips["engine"] / median_ips["fp32"], 3),
            "engine_vs_ort_integer_throughput": round(median_ips["engine"] / median_ips["ort_integer"], 3),
            "engine_latency_vs_torch_ao": round(median_latency_us["engine"] / median_latency_us["torch_ao_int8"], 3),
            "engine_latency_vs_ort_integer": round(median_latency_us["engine"] / median_latency_us["ort_integer"], 3),
        },
        "other_processes_cpu_share_max": max(shares) if shares else None,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="lenet5,vgg_tiny", help="comma-separated: lenet5, vgg_tiny")
    p.add_argument("--vgg-width", type=float, default=0.25, help="VGG-tiny channel width (1 = the full network)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed passes (medians reported)")
    p.add_argument("--latency-images", type=int, default=300, help="single images per latency pass")
    args = p.parse_args(argv)
    start = time.perf_counter()
    results = [bench_model(m.strip(), args.vgg_width, args.repeats, args.latency_images)
               for m in args.models.split(",") if m.strip()]
    acceptance = {}
    for r in results:
        ratios = r["ratios"]
        acceptance[r["model"]] = {
            "throughput_vs_torch_ao_ge_1.2": ratios["engine_vs_torch_ao_throughput"] >= 1.2,
            "latency_le_torch_ao": ratios["engine_latency_vs_torch_ao"] <= 1.0,
            "latency_le_ort_integer": ratios["engine_latency_vs_ort_integer"] <= 1.0,
            "bit_identical_to_literal": r["exactness"]["fast_vs_literal_mismatches"] == 0,
        }
    # The engine's int8 kernels: oneDNN's with VNNI/AMX, bitsmith's AVX2 kernel otherwise, None: the
    # float program runs.
    hardware = {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "engine_int8_kernels": int8_gemm.backend()}
    return {"benchmark": "engine", "results": results, "acceptance": acceptance, "machine": machine() | hardware,
            "seconds": round(time.perf_counter() - start, 1)}


if __name__ == "__main__":
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON object only
        result = main()
    print(json.dumps(result, indent=2), file=real_stdout)
