"""PTQ benchmark: bitsmith observers × bit widths against torch.ao int8, and engine throughput.

    .venv/bin/python benchmarks/ptq.py [--run RUN_DIR] [--out DIR] [--repeats 3] > ptq.json

From one LeNet-5 / Fashion-MNIST float run (by default trained once into runs/bench/lenet5-fp32,
8 epochs, reused afterwards) this measures, in one process:

* for every observer in bitsmith.quant.config.OBSERVERS (read at run time) and each of W8A8,
  W4A8 per-channel, W4A4 per-channel: fake-quant and integer-engine test accuracy;
* the peer, torch.ao eager-mode PTQ int8 (x86 backend, default qconfig, conv(+BN)+relu fused),
  calibrated on the same batches: its test accuracy;
* throughput at batch 1000 over the same 10 test batches (warm-up excluded, best and median of
  `--repeats` passes, the three systems interleaved so that machine load hits them alike):
  FP32 PyTorch, torch.ao int8 and the bitsmith integer engine (W8A8 min-max graph);
* the acceptance lines of the "PTQ complete" issue, and the machine.

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import torch
from torch import nn

from bitsmith.data import iterate_batches, load_dataset
from bitsmith.errors import BitsmithError
from bitsmith.evaluate import accuracy
from bitsmith.integer import engine, load
from bitsmith.pipeline import quantize_run
from bitsmith.quant.calibration import CALIBRATION_BATCHES, calibration_batches
from bitsmith.quant import QuantConfig
from bitsmith.runs import CHECKPOINT_FILE, load_run
from bitsmith.train import TrainConfig, train

DEFAULT_RUN = Path("runs/bench/lenet5-fp32")
DEFAULT_TRAIN = TrainConfig("lenet5", "fashion-mnist", epochs=8)
BIT_CONFIGS = {
    "W8A8": dict(weight_bits=8, act_bits=8),
    "W4A8-per-channel": dict(weight_bits=4, act_bits=8, per_channel=True),
    "W4A4-per-channel": dict(weight_bits=4, act_bits=4, per_channel=True),
}
THROUGHPUT_BATCH = 1000
THROUGHPUT_BATCHES = 10


def log(msg: str) -> None:
    print(f"[ptq] {msg}", file=sys.stderr, flush=True)


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "torch_threads": torch.get_num_threads()}


# -- the peer: torch.ao eager-mode PTQ ----------------------------------------------------------

class _QuantWrapper(nn.Module):
    def __init__(self, model: nn.Module, quant_stub: nn.Module, dequant_stub: nn.Module):
        super().__init__()
        self.quant, self.model, self.dequant = quant_stub, model, dequant_stub

    def forward(self, x):
        return self.dequant(self.model(self.quant(x)))


def fusable_groups(model: nn.Module) -> list[list[str]]:
    """Runs of children torch.ao fuses: Conv2d/Linear, then an optional BatchNorm, then an optional ReLU."""
    children = list(model.named_children())
    groups = []
    for i, (name, module) in enumerate(children):
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        group = [name]
        follow = children[i + 1:i + 3]
        if follow and isinstance(follow[0][1], (nn.BatchNorm2d, nn.BatchNorm1d)):
            group.append(follow.pop(0)[0])
        if follow and isinstance(follow[0][1], nn.ReLU):
            group.append(follow[0][0])
        if len(group) > 1:
            groups.append(group)
    return groups


def torch_ao_int8(model: nn.Module, calib: list[torch.Tensor]) -> nn.Module:
    """torch.ao eager PTQ, x86 backend: QuantStub/DeQuantStub, fuse conv/linear + ReLU, calibrate, convert.

    torch.ao.quantization is deprecated on torch 2.13 and warns; the warnings are silenced here only.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization as tq

        torch.backends.quantized.engine = "x86"
        inner = copy.deepcopy(model).eval()
        tq.fuse_modules(inner, fusable_groups(inner), inplace=True)
        wrapped = _QuantWrapper(inner, tq.QuantStub(), tq.DeQuantStub()).eval()
        wrapped.qconfig = tq.get_default_qconfig("x86")
        tq.prepare(wrapped, inplace=True)
        with torch.no_grad():
            for x in calib:
                wrapped(x)
        tq.convert(wrapped, inplace=True)
    return wrapped


# -- measurements -----------------------------------------------------------------------------

def ptq_grid(run_dir: Path, out_dir: Path) -> list[dict]:
    from bitsmith.quant.config import OBSERVERS  # read now: the set of observers grows

    rows = []
    for observer in OBSERVERS:
        for name, bits in BIT_CONFIGS.items():
            log(f"quantize {name} observer={observer}")
            row = {"config": name, "observer": observer, **bits}
            try:
                m = quantize_run(run_dir, out_dir / f"{name}-{observer}", QuantConfig(observer=observer, **bits))
                row.update(accuracy=m["accuracy"], integer_accuracy=m["integer_accuracy"], agreement=m["agreement"],
                           fp32_accuracy=m["fp32_accuracy"], graph=m["graph"])
            except BitsmithError as e:
                row["error"] = f"{type(e).__name__}: {e}"
            rows.append(row)
    return rows


def throughput(systems: dict, batches: list[torch.Tensor], repeats: int) -> dict:
    """Images per second of each system over `batches`: warm-up pass excluded, interleaved repeats."""
    images = sum(len(x) for x in batches)
    times: dict[str, list[float]] = {name: [] for name in systems}
    busy_before, own_before, wall_before = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
    with torch.no_grad():
        for fn in systems.values():
            fn(batches[0])  # warm-up: allocator, weight packing, plan compilation
        for r in range(repeats):
            for name, fn in systems.items():
                start = time.perf_counter()
                for x in batches:
                    fn(x)
                times[name].append(time.perf_counter() - start)
            log(f"throughput pass {r + 1}/{repeats}: " + ", ".join(f"{n} {images / t[-1]:.0f} img/s" for n, t in times.items()))
    other_share = _other_cpu_share(busy_before, own_before, wall_before)
    if other_share is not None and other_share > 0.1:
        log(f"warning: other processes used {100 * other_share:.0f}% of the CPUs while timing; figures are noisy")
    return {
        "img_per_s": {n: round(images / min(t), 1) for n, t in times.items()},
        "median_img_per_s": {n: round(images / statistics.median(t), 1) for n, t in times.items()},
        "seconds": {n: [round(v, 4) for v in t] for n, t in times.items()},
        "other_processes_cpu_share": other_share,
    }


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), or None."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _other_cpu_share(busy_before: float | None, own_before: float, wall_before: float) -> float | None:
    """Share of the machine's CPU time other processes used since the *_before readings."""
    busy = _busy_cpu_seconds()
    if busy is None or busy_before is None:
        return None
    other = (busy - busy_before) - (_own_cpu_seconds() - own_before)
    capacity = (time.perf_counter() - wall_before) * (os.cpu_count() or 1)
    return round(min(max(other / capacity, 0.0), 1.0), 3)


def _check(value: float, threshold: float) -> dict:
    return {"value": round(value, 4), "threshold": round(threshold, 4), "pass": value >= threshold}


def acceptance(rows: list[dict], fp32: float, ao: float, ratio_fp32: float) -> dict:
    ok = {(r["config"], r["observer"]): r for r in rows if "integer_accuracy" in r}
    default = QuantConfig().observer
    out: dict = {}
    w8 = ok.get(("W8A8", default))
    if w8:
        out["w8a8_integer_vs_torch_ao"] = {"observer": default, **_check(w8["integer_accuracy"], ao - 0.05)}
        out["w8a8_integer_vs_fp32"] = {"observer": default, **_check(w8["integer_accuracy"], fp32 - 0.1)}
    minmax = ok.get(("W4A4-per-channel", "minmax"))
    rivals = {o: ok[("W4A4-per-channel", o)]["integer_accuracy"] for o in ("mse", "kl") if ("W4A4-per-channel", o) in ok}
    if minmax and rivals:
        best = max(rivals, key=rivals.get)
        out["w4a4_per_channel_mse_or_kl_beats_minmax"] = {
            "minmax": minmax["integer_accuracy"], **rivals, "best": best, "pass": rivals[best] > minmax["integer_accuracy"]}
    else:
        out["w4a4_per_channel_mse_or_kl_beats_minmax"] = {
            "pass": None, "reason": "the mse/kl observers are not available in bitsmith.quant.config.OBSERVERS"}
    out["engine_vs_fp32_throughput"] = _check(ratio_fp32, 1.0)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=None, help=f"float run folder (default: train {DEFAULT_RUN})")
    p.add_argument("--out", type=Path, default=Path("runs/bench/ptq"), help="where the quantized graphs go")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per system (best and median reported)")
    args = p.parse_args(argv)
    start = time.perf_counter()

    run_dir = args.run
    if run_dir is None:
        run_dir = DEFAULT_RUN
        log(f"float run: {run_dir} ({'reusing' if (run_dir / CHECKPOINT_FILE).is_file() else 'training'})")
        train(DEFAULT_TRAIN, run_dir, resume=True, quiet=True)
    run = load_run(run_dir)
    dataset, data_dir = run.meta["dataset"], run.meta.get("data_dir")
    shape = tuple(run.model.input_shape)

    rows = ptq_grid(run_dir, args.out)
    fp32_acc = next((r["fp32_accuracy"] for r in rows if "fp32_accuracy" in r), None)

    log("torch.ao eager PTQ int8 (x86)")
    calib = calibration_batches(dataset, shape, data_dir, CALIBRATION_BATCHES)
    ao_model = torch_ao_int8(run.model, calib)
    test = load_dataset(dataset, "test", data_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao_acc = round(accuracy(ao_model, test, shape), 4)

    log("throughput")
    batches = [x for x, _ in iterate_batches(test, THROUGHPUT_BATCH, shape)][:THROUGHPUT_BATCHES]
    graph = load(next(r["graph"] for r in rows if r["config"] == "W8A8" and r["observer"] == "minmax"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        speed = throughput({"fp32": run.model.eval(), "torch_ao_int8": ao_model, "engine": partial(engine.run, graph)},
                           batches, args.repeats)
    best = speed["img_per_s"]
    speed.update(
        batch_size=THROUGHPUT_BATCH, batches=len(batches), repeats=args.repeats, threads=torch.get_num_threads(),
        engine_graph="W8A8 minmax",
        ratio={"engine_vs_fp32": round(best["engine"] / best["fp32"], 3),
               "engine_vs_torch_ao": round(best["engine"] / best["torch_ao_int8"], 3),
               "torch_ao_vs_fp32": round(best["torch_ao_int8"] / best["fp32"], 3)},
    )
    from bitsmith.quant.config import OBSERVERS

    return {
        "benchmark": "ptq", "model": run.model.spec["name"], "dataset": dataset, "run": str(run_dir),
        "test_images": len(test.labels), "calibration": {"batches": CALIBRATION_BATCHES, "source": "train split, seed 0"},
        "observers": list(OBSERVERS),
        "fp32_accuracy": fp32_acc,
        "torch_ao_int8": {"accuracy": ao_acc, "backend": "x86", "qconfig": "get_default_qconfig('x86')"},
        "ptq": rows,
        "throughput": speed,
        "acceptance": acceptance(rows, fp32_acc, ao_acc, speed["ratio"]["engine_vs_fp32"]),
        "machine": machine(),
        "seconds": round(time.perf_counter() - start, 1),
    }


if __name__ == "__main__":
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON object only
        result = main()
    print(json.dumps(result, indent=2), file=real_stdout)
