"""The DAC-SDC detection flow end to end (issue 19), one JSON object on stdout.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/detection.py [--out runs/bench/det] [--size 64x128] > det.json

Stages (each reuses its output folder when it is already complete, so an interrupted run resumes):

1. data: seconds to generate 10,000 `dacsdc-synthetic` images at 160 x 320 and at `--size`, and the
   SHA-256 of the first 1,000 (twice: the same bytes);
2. UltraNet float run at `--size` (`--epochs`, Adam, batch 64): mean IoU on the 1,000 test images
   and its training seconds (the 15-minute budget of the issue);
3. QAT (LSQ) with the seed's bit strings: UltraNet_BJTU (bitw 444444444, bita 844444444) and
   UltraNet_iSmart (844444448 / 844444444): fake-quant, integer-engine and float IoU, and on how
   many test images the integer boxes equal the fake-quant boxes;
3a. a searched UltraNet: `bitsmith search --method hessian` (traces on the detection loss) at the
   DSP count of iSmart's widths, then the same QAT;
4. UltraNet-Bypass and SkyNet: a short float run and W4A4 QAT through the same path
   (`--small-train` images), their IoU;
5. every QAT graph: `bitsmith hw hls --check` (g++ reference against the engine) and `bitsmith hw
   compile` (cycles per image and frames/s at the accelerator's configured clock).

Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bitsmith.data.detection import make_detection, object_items
from bitsmith.pipeline import qat_run
from bitsmith.quant.api import QATConfig
from bitsmith.train import TrainConfig, train

BITS = {  # DeepBurning-MixQ's DAC-SDC bit strings (weights / input activations per layer)
    "bjtu": ("444444444", "844444444"),
    "ismart": ("844444448", "844444444"),
}


# The accelerator's activation memory: the default 128 KiB does not hold the first maps at 64 x 128
# (SkyNet's pw1 output alone is 48 x 64 x 128 = 384 KiB); 1 MiB does. The clock is the default 200 MHz.
ACT_BUFFER_BYTES = 1_048_576


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def data_figures(size: tuple[int, int]) -> dict:
    items = object_items("train")
    out = {}
    for hw in ((160, 320), size):
        start = time.perf_counter()
        make_detection(10_000, 0, hw, items=items)
        out[f"{hw[0]}x{hw[1]}_10k_seconds"] = round(time.perf_counter() - start, 2)
        log(f"data {hw}: {out[f'{hw[0]}x{hw[1]}_10k_seconds']} s for 10k images")
    digests = [hashlib.sha256(b"".join(t.numpy().tobytes() for t in make_detection(1000, 0, size, items=items)))
               .hexdigest() for _ in range(2)]
    out["sha256_1000"] = digests[0]
    out["deterministic"] = digests[0] == digests[1]
    return out


def float_run(out: Path, model: str, dataset: str, epochs: int, limit: int | None, lr: float) -> dict:
    metrics_file = out / "metrics.json"
    if metrics_file.is_file() and json.loads(metrics_file.read_text()).get("epochs_completed") == epochs:
        log(f"{model}: reusing {out}")
        return json.loads(metrics_file.read_text())
    log(f"{model}: float training into {out}")
    config = TrainConfig(model=model, dataset=dataset, epochs=epochs, batch_size=64, optimizer="adam", lr=lr,
                         limit_train=limit)
    return train(config, out, resume=True, quiet=True)


def qat(run: Path, out: Path, bitw: str, bita: str, epochs: int, limit: int | None) -> dict:
    if (out / "metrics.json").is_file():
        log(f"QAT: reusing {out}")
        return json.loads((out / "metrics.json").read_text())
    log(f"QAT {bitw}/{bita} of {run} into {out}")
    config = QATConfig("lsq", bitw=bitw, bita=bita, epochs=epochs, optimizer="adam", lr=5e-4, batch_size=64)
    return qat_run(run, out, config, quiet=False, force=True, train_limit=limit)


def cli(*args: str) -> dict:
    command = [sys.executable, "-m", "bitsmith", *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-2000:] or done.stdout.strip()[-2000:], "returncode": done.returncode}
    return json.loads(done.stdout)


def hardware(graph: Path, out: Path) -> dict:
    hls = cli("hw", "hls", str(graph), "--out", str(out / "hls"), "--check", "--images", "4", "--force")
    compiled = cli("hw", "compile", str(graph), "--out", str(out / "mem"), "--images", "1", "--force",
                   "--act-buffer-bytes", str(ACT_BUFFER_BYTES))
    return {"hls_matches_engine": hls.get("matches_engine"), "hls_mismatched_elements": hls.get("mismatched_elements"),
            "hls_error": hls.get("error"), "cycles_per_image": compiled.get("cycles_per_image"),
            "fps": compiled.get("fps"), "compile_error": compiled.get("error")}


def qat_figures(metrics: dict) -> dict:
    keys = ("fp32_iou", "iou", "integer_iou", "float_fake_quant_iou", "agreement", "disagreements",
            "box_max_abs_diff", "test_images", "train_images", "seconds_per_epoch")
    out = {k: metrics.get(k) for k in keys}
    if out["fp32_iou"] is not None and out["integer_iou"] is not None:
        out["integer_minus_fp32"] = round(out["integer_iou"] - out["fp32_iou"], 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/det"))
    parser.add_argument("--size", default="64x128", help="the quick input size HxW")
    parser.add_argument("--epochs", type=int, default=5, help="UltraNet float epochs")
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--qat-train", type=int, default=4000, help="QAT trains on the first N training images")
    parser.add_argument("--small-train", type=int, default=2000, help="Bypass / SkyNet training images")
    parser.add_argument("--search-train", type=int, default=128, help="Hessian traces on the first N training images")
    parser.add_argument("--search-iterations", type=int, default=10, help="Hutchinson iterations at most")
    parser.add_argument("--stages", default="data,ultranet,searched,others",
                        help="comma-separated: data, ultranet (float + BJTU + iSmart), searched (Hessian search "
                             "at iSmart's DSP count + QAT), others (Bypass, SkyNet)")
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    dataset = f"dacsdc-synthetic-{h}x{w}"
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                "load_start": os.getloadavg()}, "size": [h, w]}
    stages = set(args.stages.split(","))
    if "data" in stages:
        result["data"] = data_figures((h, w))
    if "ultranet" in stages:
        ultranet(args, dataset, result)
    if "searched" in stages:
        searched(args, result)
    if "others" in stages:
        others(args, dataset, result)
    result["machine"]["load_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))


def ultranet(args, dataset: str, result: dict) -> None:
    fp = float_run(args.out / "ultranet-fp", "ultranet", dataset, args.epochs, None, 2e-3)
    result["ultranet_float"] = {"mean_iou": fp["mean_iou"], "train_seconds": fp["train_seconds"],
                                "epochs": fp["epochs"], "history": [round(r["test_iou"], 4) for r in fp["history"]]}
    for name, (bitw, bita) in BITS.items():
        graph = args.out / f"ultranet-{name}"
        result[f"ultranet_{name}"] = {"bitw": bitw, "bita": bita,
                                      **qat_figures(qat(args.out / "ultranet-fp", graph, bitw, bita,
                                                        args.qat_epochs, args.qat_train))}
        result[f"ultranet_{name}"] |= hardware(graph, args.out / f"hw-ultranet-{name}")


def searched(args, result: dict) -> None:
    """UltraNet with bit strings from the Hessian search (traces on the detection loss), at the DSP
    count of UltraNet_iSmart's widths (first and last layers at 8/8, as the search keeps them)."""
    from bitsmith.accel.config import AccelConfig
    from bitsmith.runs import load_run
    from bitsmith.search.job import search_run
    from bitsmith.search.space import build_space

    run = args.out / "ultranet-fp"
    accel = AccelConfig(act_buffer_bytes=ACT_BUFFER_BYTES)
    model = load_run(run).model
    space = build_space(model, tuple(model.input_shape), config=accel)
    bitw, bita = BITS["ismart"]
    budget = space.exact([int(b) for b in bitw], [int(b) for b in bita])["dsp"]
    folder = args.out / "ultranet-search"
    if (folder / "search.json").is_file():
        doc = json.loads((folder / "search.json").read_text())
    else:
        log(f"Hessian search of {run} at {budget} DSPs")
        doc = search_run(run, folder, method="hessian", budgets={"dsp": budget}, accel=accel,
                         train_limit=args.search_train, max_iterations=args.search_iterations, quiet=False, force=True)
    graph = args.out / "ultranet-searched"
    result["ultranet_searched"] = {"bitw": doc["bitw"], "bita": doc["bita"], "budget_dsp": budget,
                                   "search_seconds": doc["seconds"], "predicted": doc["predicted"],
                                   **qat_figures(qat(run, graph, doc["bitw"], doc["bita"], args.qat_epochs,
                                                     args.qat_train))}
    result["ultranet_searched"] |= hardware(graph, args.out / "hw-ultranet-searched")


def others(args, dataset: str, result: dict) -> None:
    for model in ("ultranet_bypass", "skynet"):
        run = args.out / f"{model}-fp"
        fp = float_run(run, model, dataset, 2, args.small_train, 2e-3)
        layers = 9 if model == "ultranet_bypass" else 13
        bits = "4" * layers
        metrics = qat(run, args.out / f"{model}-w4a4", bits, "8" + bits[1:], 1, args.small_train)
        result[model] = {"float_mean_iou": fp["mean_iou"], "float_train_seconds": fp["train_seconds"],
                         "bitw": bits, "bita": "8" + bits[1:], **qat_figures(metrics),
                         **hardware(args.out / f"{model}-w4a4", args.out / f"hw-{model}")}


if __name__ == "__main__":
    main()
