"""The classroom LeNet-5 quantization flow (docs/homework.md) as one reproducible experiment.

    bitsmith homework --out runs/homework [--mnist-dir DIR]

For each data set: train LeNet-5 without and with bias (same seed and schedule), then measure
FP32; int8 weights only (activations left float); int8 weights + activations (integer engine);
int8 with bias (integer engine, bias at int32 scale S_w·S_in); power-of-two scales (integer
engine, requantization by shifts only). Per-layer min–max vs 3σ ranges go to ranges.csv/json.
Finished float runs are reused, so a second call only re-measures. The output folder is published
whole or not at all (bitsmith.artifacts).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bitsmith.artifacts import HOMEWORK, copy_folder, publishing
from bitsmith.data import load_dataset
from bitsmith.evaluate import accuracy
from bitsmith.pipeline import quantize_run
from bitsmith.quant.calibration import calibration_batches
from bitsmith.quant import QuantConfig, quantize
from bitsmith.quant.fake_quant import FakeQuantize
from bitsmith.quant.ranges import layer_ranges, write_ranges
from bitsmith.runs import CHECKPOINT_FILE, load_run
from bitsmith.storage import write_bytes_atomic, write_json_atomic
from bitsmith.train import TrainConfig, train


def _run_name(dataset: str, bias: bool) -> str:
    return f"{dataset}-lenet5{'-bias' if bias else ''}-fp32"


def _float_run(out: Path, dataset: str, data_dir: str | None, bias: bool, epochs: int, quiet: bool) -> Path:
    config = TrainConfig(model="lenet5", dataset=dataset, epochs=epochs, data_dir=data_dir,
                         model_kwargs={"bias": bias})
    run_dir = out / _run_name(dataset, bias)
    train(config, run_dir, resume=(run_dir / CHECKPOINT_FILE).is_file(), quiet=quiet)
    return run_dir


def weight_only_accuracy(run_dir: Path, config: QuantConfig, data_dir: str | None = None) -> float:
    """Fake-quant accuracy with quantized weights and every activation quantizer switched off."""
    run = load_run(run_dir)
    dataset = run.meta["dataset"]
    shape = tuple(run.model.input_shape)
    qmodel = quantize(run.model, calibration_batches(dataset, shape, data_dir or run.meta.get("data_dir")), config)
    for m in qmodel.modules():
        if isinstance(m, FakeQuantize):
            m.enabled = False
    return accuracy(qmodel, load_dataset(dataset, "test", data_dir or run.meta.get("data_dir")), shape)


def run_homework(out_dir: str | os.PathLike = "runs/homework", *, epochs: int = 8, mnist_dir: str | None = None,
                 fashion_dir: str | None = None, quiet: bool = False,
                 datasets: list[tuple[str, str | None]] | None = None, force: bool = False) -> dict[str, Any]:
    """Run the flow on Fashion-MNIST (and MNIST when `mnist_dir` is given), or on `datasets`
    [(name, data_dir), ...]; writes homework.json and homework.md in `out_dir`.

    Everything is written into a temporary sibling folder that replaces `out_dir` at the end (a
    failure leaves `out_dir` as it was); the float runs of an earlier homework in `out_dir` are
    copied in and reused. `out_dir` may be absent, empty or an earlier homework folder; any other
    folder is refused (OutputError) unless `force`.
    """
    final = Path(out_dir)
    if datasets is None:
        datasets = [("fashion-mnist", fashion_dir)] + ([("mnist", mnist_dir)] if mnist_dir else [])
    results: dict[str, Any] = {"epochs": epochs, "datasets": {}}
    w8a8 = QuantConfig(weight_bits=8, act_bits=8)
    with publishing(final, HOMEWORK, force=force, command="bitsmith homework") as stage:
        out = stage.path
        for dataset, _ in datasets:
            for bias in (False, True):
                name = _run_name(dataset, bias)
                if (final / name / CHECKPOINT_FILE).is_file():
                    copy_folder(final / name, out / name)
        for dataset, data_dir in datasets:
            plain = _float_run(out, dataset, data_dir, bias=False, epochs=epochs, quiet=quiet)
            with_bias = _float_run(out, dataset, data_dir, bias=True, epochs=epochs, quiet=quiet)
            q_plain = quantize_run(plain, out / f"{dataset}-w8a8", w8a8)
            q_bias = quantize_run(with_bias, out / f"{dataset}-bias-w8a8", w8a8)
            q_pot = quantize_run(plain, out / f"{dataset}-w8a8-pot",
                                 QuantConfig(weight_bits=8, act_bits=8, scale_mode="pot"))
            run = load_run(plain)
            rows = layer_ranges(run.model, calibration_batches(dataset, tuple(run.model.input_shape), data_dir))
            write_ranges(rows, out / f"{dataset}-ranges")
            results["datasets"][dataset] = {
                "fp32": q_plain["fp32_accuracy"],
                "int8_weights_only": weight_only_accuracy(plain, w8a8, data_dir),
                "int8_weights_activations": q_plain["integer_accuracy"],
                "fp32_with_bias": q_bias["fp32_accuracy"],
                "int8_with_bias": q_bias["integer_accuracy"],
                "int8_power_of_two_scales": q_pot["integer_accuracy"],
                "agreement_fake_quant_vs_integer": q_plain["agreement"],
                "ranges": str(final / f"{dataset}-ranges"),
            }
        write_json_atomic(out / "homework.json", results)
        write_bytes_atomic(out / "homework.md", homework_table(results).encode())
    return results


ROWS = [
    ("FP32 (no bias)", "fp32"),
    ("int8 weights only", "int8_weights_only"),
    ("int8 weights + activations (integer engine)", "int8_weights_activations"),
    ("FP32 with bias", "fp32_with_bias"),
    ("int8 with bias (integer engine)", "int8_with_bias"),
    ("int8, power-of-two scales (integer engine)", "int8_power_of_two_scales"),
]


def homework_table(results: dict[str, Any]) -> str:
    names = list(results["datasets"])
    lines = ["| step | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key in ROWS:
        lines.append(f"| {label} | " + " | ".join(f"{results['datasets'][n][key]:.2f}%" for n in names) + " |")
    return "\n".join(lines) + "\n"
