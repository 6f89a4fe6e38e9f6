"""End-to-end jobs over the Python API: quantize a float run (PTQ, QAT, CLIP-Q), evaluate a run or
graph, the demo.

Each job returns a plain dict of figures (what `--json` prints) and publishes its output folder
whole or not at all (bitsmith.artifacts), so the command line stays a thin layer over these
functions.
"""

from __future__ import annotations

from functools import partial
import os
import time
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from bitsmith import distributed, progress
from bitsmith.artifacts import (CIM_SWEEP, DEMO, INTEGER_GRAPH, QAT_GRAPH, check_target, copy_folder, public_path,
                                publishing)
from bitsmith.data import iterate_batches, load_dataset
from bitsmith.errors import BitsmithWarning, ConfigError
from bitsmith.detection import AnchorHead, detection_head, mean_iou
from bitsmith.evaluate import detection_iou, predicted_boxes, predictions
from bitsmith.integer.graph import load
from bitsmith.integer.graph import GRAPH_FILE
from bitsmith.quant import QuantConfig, lower
from bitsmith.quant.api import ClipQConfig, QATConfig, quantize
from bitsmith.quant.modules import QuantLayer
from bitsmith.quant.prepare import quantizable_layers
from bitsmith.quant.qat.exact import set_exact_eval
from bitsmith.quant.qat.train import METRICS_FILE, QAT_WEIGHTS_FILE, QATTrainConfig, save_qat_weights
from bitsmith.quant.calibration import CALIBRATION_BATCH_SIZE, CALIBRATION_BATCHES, calibration_batches
from bitsmith.runs import CHECKPOINT_FILE, load_run
from bitsmith.storage import load_tensors, write_json_atomic
from bitsmith.train import TrainConfig, score_text, task_objective, train
from bitsmith.integer import engine
from bitsmith.integer.sparsity import graph_sparsity
from bitsmith.prune.job import pruned_run_masks
from bitsmith.prune.magnitude import quantize_pruned

def _fraction_equal(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of images on which two predictions (classes [N], or boxes [N, 4]) are equal."""
    return float((~_differs(a, b)).double().mean())


def _percent(a: torch.Tensor, labels: torch.Tensor) -> float:
    return round(100 * _fraction_equal(a, labels), 4)


def _differs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image: do two predictions (classes [N], or boxes [N, 4]) differ at all?"""
    return (a != b).reshape(len(a), -1).any(dim=1)


def _head_of(model_spec: dict[str, Any], test) -> AnchorHead | None:
    """The detection head to decode with, on a detection data set (None: classification)."""
    return detection_head(model_spec["name"]) if test.info.task == "detect" else None


def _measure_boxes(float_model, qmodel, graph, test, shape, head: AnchorHead):
    """`_measure` for a detector: mean IoU of the decoded boxes of the float model, the fake-quant
    model and the integer engine (its head codes dequantized and decoded on the host), and the
    fraction of test images on which the fake-quant and integer boxes are identical."""
    fp = predicted_boxes(float_model, test, shape, head)
    fq = predicted_boxes(qmodel, test, shape, head)
    integer = predicted_boxes(partial(engine.predict, graph), test, shape, head)
    figures = {"fp32_iou": round(mean_iou(fp, test.labels), 6), "iou": round(mean_iou(fq, test.labels), 6),
               "integer_iou": round(mean_iou(integer, test.labels), 6),
               "agreement": _fraction_equal(fq, integer),
               "box_max_abs_diff": float((fq - integer).abs().max())}
    return figures, fq, integer


def _measure(float_model, qmodel, graph, test, shape) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Test-set figures of a quantized run: the float model, the fake-quant model and the integer
    graph, and how often the last two agree; also (fake-quant, integer) predictions (detection:
    boxes and IoU, `_measure_boxes`)."""
    head = _head_of(float_model.spec, test)
    if head is not None:
        return _measure_boxes(float_model, qmodel, graph, test, shape, head)
    labels = torch.as_tensor(test.labels, dtype=torch.int64)
    fp_pred = predictions(float_model, test, shape)
    fq_pred = predictions(qmodel, test, shape)
    int_pred = predictions(partial(engine.predict, graph), test, shape)
    figures = {"fp32_accuracy": _percent(fp_pred, labels), "accuracy": _percent(fq_pred, labels),
               "integer_accuracy": _percent(int_pred, labels), "agreement": _fraction_equal(fq_pred, int_pred)}
    return figures, fq_pred, int_pred


def quantize_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, config: QuantConfig | None = None, *,
                 data_dir: str | None = None, calib_batches: int = CALIBRATION_BATCHES,
                 force: bool = False) -> dict[str, Any]:
    """PTQ of a float run: calibrate, lower, save the IntegerGraph, measure it on the test set.

    Returns (and writes to `out_dir/metrics.json`): fp32_accuracy, accuracy (fake-quant),
    integer_accuracy (percent) and agreement (fraction of test images on which the fake-quant
    model and the integer engine predict the same class).

    `out_dir` is written whole or not at all (bitsmith.artifacts.publishing): a failure leaves it
    as it was. It may be absent, empty or an earlier integer graph; any other folder is refused
    (OutputError) unless `force`.
    """
    config = config or QuantConfig()
    with publishing(out_dir, INTEGER_GRAPH, force=force, command="bitsmith quantize") as stage:
        return _quantize_into(run_dir, stage.path, config, data_dir, calib_batches)


def _quantize_into(run_dir: str | os.PathLike, out_dir: Path, config: QuantConfig, data_dir: str | None,
                   calib_batches: int) -> dict[str, Any]:
    run = load_run(run_dir)
    dataset, data_dir = run.meta["dataset"], run.data_dir(data_dir)
    shape = tuple(run.model.input_shape)
    qmodel = quantize(run.model, calibration_batches(dataset, shape, data_dir, calib_batches), config)
    graph = lower(qmodel, metadata={
        "model": run.model.spec, "dataset": dataset, "data_dir": data_dir,
        "source_run": str(public_path(Path(run_dir).resolve()).absolute()),
        "calibration": {"batches": calib_batches, "batch_size": CALIBRATION_BATCH_SIZE},
    })
    graph = load(graph.save(out_dir))  # what is measured is what was written, read back and checked

    test = run.dataset("test", data_dir)
    figures, _, _ = _measure(run.model, qmodel, graph, test, shape)
    metrics = {
        "model": run.model.spec["name"], "dataset": dataset, "quant_config": config.to_json(), **figures,
        "test_images": len(test.labels),
        "graph": str(public_path(out_dir)),
    }
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics


def qat_config(run_dir: str | os.PathLike, method: str, *, wbits: int = 4, abits: int = 4, epochs: int = 2,
               bitw: str | None = None, bita: str | None = None, keep_first_last_8bit: bool = False,
               p: float = 0.4, clipq_bits: int = 2, q35: bool = False, lr: float | None = None,
               outlier_fraction: float = 0.01, outlier_bits: int = 8) -> QATConfig | ClipQConfig:
    """The config `bitsmith qat` options describe: a QATConfig, or for method "clipq" a ClipQConfig
    (8-bit PTQ activations, codebook weights, fine-tuned `epochs` epochs with QAT's training)."""
    train = {"epochs": epochs, **({"lr": lr} if lr is not None else {})}
    if method != "clipq":
        return QATConfig(method, wbits=wbits, abits=abits, bitw=bitw, bita=bita,
                         keep_first_last_8bit=keep_first_last_8bit, outlier_fraction=outlier_fraction,
                         outlier_bits=outlier_bits, **train)
    skip: tuple[str, ...] = ()
    if keep_first_last_8bit:
        names = quantizable_layers(load_run(run_dir).model)
        skip = (names[0], names[-1])
    return ClipQConfig(p=p, bits=clipq_bits, q35=q35, skip=skip, finetune=QATTrainConfig(**train))


def qat_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, config: QATConfig | ClipQConfig, *,
            data_dir: str | None = None, quiet: bool = False,
            on_epoch: Callable[[dict[str, Any]], None] | None = None, force: bool = False,
            train_limit: int | None = None) -> dict[str, Any]:
    """QAT (or CLIP-Q) of a float run: quantize with `config`, train, lower, measure on the test set.
    `train_limit`: train on the first N training images only (benchmarks on small machines).

    `on_epoch(record)` runs after each training epoch, outside its timing (benchmarks/qat.py times
    a float epoch there, so float and QAT epochs interleave).

    Writes to `out_dir`: the IntegerGraph (graph.json + tensors.safetensors), the trained model's
    tensors (qat_weights.safetensors) and metrics.json, which it also returns: fp32_accuracy,
    accuracy (fake-quant), integer_accuracy (percent), agreement (fraction of test images on which
    fake-quant and integer engine predict the same class), seconds_per_epoch (training pass) and
    fp_seconds_per_epoch (the float run's recorded epochs, which include its test evaluation).

    `out_dir` is written whole or not at all (bitsmith.artifacts.publishing); it may be absent,
    empty or an earlier QAT graph; any other folder is refused (OutputError) unless `force`.

    Under torchrun (bitsmith.distributed) every rank trains; rank 0 alone writes and measures, and
    the others return {"history": …} once it has finished.
    """
    if not isinstance(config, (QATConfig, ClipQConfig)):
        raise ConfigError(f"qat_run takes a QATConfig or ClipQConfig, got {type(config).__name__}")
    ctx = distributed.context()
    if ctx.distributed:  # a refused --out stops every rank, not only rank 0
        distributed.on_main(lambda: check_target(out_dir, QAT_GRAPH, force=force, command="bitsmith qat"))
    if not ctx.is_main:
        metrics = _qat_into(run_dir, None, config, data_dir, True, on_epoch, train_limit)
    else:
        with publishing(out_dir, QAT_GRAPH, force=force, command="bitsmith qat") as stage:
            metrics = _qat_into(run_dir, stage.path, config, data_dir, quiet, on_epoch, train_limit)
    distributed.barrier()
    return metrics


def _qat_into(run_dir: str | os.PathLike, out_dir: Path | None, config: QATConfig | ClipQConfig, data_dir: str | None,
              quiet: bool, on_epoch: Callable[[dict[str, Any]], None] | None,
              train_limit: int | None = None) -> dict[str, Any]:
    train_config = config.train if isinstance(config, QATConfig) else config.finetune
    method = config.method if isinstance(config, QATConfig) else "clipq"
    run = load_run(run_dir)
    dataset, data_dir = run.meta["dataset"], run.data_dir(data_dir)
    shape = tuple(run.model.input_shape)
    train_ds, test = run.dataset("train", data_dir, limit=train_limit), run.dataset("test", data_dir)
    history: list[dict[str, Any]] = []

    objective = task_objective(run.model.spec["name"], train_ds.info)

    def report(record: dict[str, Any]) -> None:
        history.append(record)
        if not quiet:
            score = score_text(objective, record[f"train_{objective.metric}"])
            print(f"qat {method} epoch {record['epoch']}/{train_config.epochs}  loss {record['train_loss']:.4f}  "
                  f"train {score}  {record['seconds']:.1f} s", flush=True)
        if on_epoch is not None:
            on_epoch(record)

    masks = pruned_run_masks(run.meta, run.model)
    with progress.enabled(not quiet):
        if masks is None:
            qmodel = quantize(run.model, train_ds, config, on_epoch=report, objective=objective)
        elif isinstance(config, ClipQConfig):
            raise ConfigError(f"{run_dir} is a pruned run: CLIP-Q prunes by its own rule and would not keep its "
                              "zeros; run CLIP-Q on the unpruned run, or QAT (lsq, pact, hwgq) on this one")
        elif not objective.percent:
            raise ConfigError(f"{run_dir} is a pruned run: QAT of pruned detectors is not supported")
        else:  # a pruned run's zeros stay zero through QAT (bitsmith.prune)
            qmodel = quantize_pruned(run.model, train_ds, config, masks, on_epoch=report)
    if out_dir is None:  # a rank other than 0 under torchrun: rank 0 lowers, writes and measures
        return {"history": history}
    graph = lower(qmodel, metadata={
        "model": run.model.spec, "dataset": dataset, "data_dir": data_dir,
        "source_run": str(public_path(Path(run_dir).resolve()).absolute()), "qat": config.to_json(),
        "calibration": {"batches": CALIBRATION_BATCHES, "batch_size": CALIBRATION_BATCH_SIZE},
    })
    graph = load(graph.save(out_dir))  # what is measured is what was written, read back and checked
    save_qat_weights(qmodel, out_dir / QAT_WEIGHTS_FILE, config.to_json())
    load_tensors(out_dir / QAT_WEIGHTS_FILE, "QAT weights")

    figures, fq_pred, int_pred = _measure(run.model, qmodel, graph, test, shape)  # QAT layers evaluate exactly
    head = _head_of(run.model.spec, test)
    set_exact_eval(qmodel, False)
    # the plain float fake-quant path, for comparison
    float_pred = predictions(qmodel, test, shape) if head is None else predicted_boxes(qmodel, test, shape, head)
    set_exact_eval(qmodel, True)
    if head is None:
        labels = torch.as_tensor(test.labels, dtype=torch.int64)
        float_figures = {"float_fake_quant_accuracy": _percent(float_pred, labels),
                         "float_fake_quant_agreement": _fraction_equal(float_pred, int_pred)}
    else:
        float_figures = {"float_fake_quant_iou": round(mean_iou(float_pred, test.labels), 6),
                         "float_fake_quant_agreement": _fraction_equal(float_pred, int_pred)}
    fp_history = run.meta.get("metrics", {}).get("history", [])
    fp_seconds = (sum(r["seconds"] for r in fp_history) / len(fp_history)) if fp_history else None
    seconds = sum(r["seconds"] for r in history) / len(history) if history else None
    metrics = {
        "model": run.model.spec["name"], "dataset": dataset, "method": method, "config": config.to_json(),
        "weight_bits": [m.code_bits for m in qmodel.modules() if isinstance(m, QuantLayer)], **figures,
        "disagreements": int(_differs(fq_pred, int_pred).sum()), **float_figures,
        "test_images": len(test), "train_images": len(train_ds),
        "seconds_per_epoch": None if seconds is None else round(seconds, 3),
        "fp_seconds_per_epoch": None if fp_seconds is None else round(fp_seconds, 3),
        "history": history,
        "graph": str(public_path(out_dir)),
    }
    if masks is not None:
        storage = graph_sparsity(graph)
        metrics["pruned"] = {"density": storage["density"], "stored_kb": storage["stored_kb"],
                             "compression": storage["compression"]}
    collapsed = _collapsed(metrics, len(test))
    if collapsed:
        metrics["warning"] = collapsed
        warnings.warn(collapsed, BitsmithWarning, stacklevel=3)
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    return metrics


#: A QAT result this far below its float run has not learned the task: say so, do not just report it.
COLLAPSE_POINTS = 30.0


def _collapsed(metrics: dict[str, Any], test_images: int) -> str | None:
    fp, acc = metrics.get("fp32_accuracy"), metrics.get("integer_accuracy")
    if fp is None or acc is None or test_images < 100 or fp - acc < COLLAPSE_POINTS:
        return None
    return (f"QAT ended at {acc:.2f}% against the float run's {fp:.2f}%: training diverged (or the widths are too "
            f"narrow for this model). Try a lower learning rate (--lr, e.g. 0.005; BatchNorm-folded weights train "
            f"at a higher effective rate) or more bits.")


def evaluate_path(path: str | os.PathLike, *, data_dir: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """Test-set accuracy (detection data sets: mean IoU) of a float run folder or an integer graph folder."""
    path = Path(path)
    if (path / GRAPH_FILE).is_file() or path.name == GRAPH_FILE:
        graph = load(path)
        dataset = graph.metadata.get("dataset")
        if dataset is None:
            raise ConfigError(f"{path}: the graph does not record its dataset, so it cannot be evaluated")
        test = load_dataset(dataset, "test", data_dir or graph.metadata.get("data_dir"), limit=limit)
        if test.info.task == "detect":
            head = detection_head((graph.metadata.get("model") or {}).get("name", ""))
            iou = detection_iou(partial(engine.predict, graph), test, graph.input_spec.shape, head)
            return {"kind": "integer_graph", "path": str(path), "dataset": dataset, "test_images": len(test),
                    "integer_iou": round(iou, 6)}
        pred = predictions(partial(engine.predict, graph), test, graph.input_spec.shape)
        return {"kind": "integer_graph", "path": str(path), "dataset": dataset, "test_images": len(test),
                "integer_accuracy": _percent(pred, test.labels)}
    if (path / CHECKPOINT_FILE).is_file():
        run = load_run(path)
        dataset = run.meta["dataset"]
        test = run.dataset("test", data_dir, limit=limit)
        if test.info.task == "detect":
            iou = detection_iou(run.model, test, run.model.input_shape, detection_head(run.model.spec["name"]))
            return {"kind": "float_run", "path": str(path), "dataset": dataset, "epoch": run.meta.get("epoch"),
                    "test_images": len(test), "mean_iou": round(iou, 6)}
        pred = predictions(run.model, test, run.model.input_shape)
        return {"kind": "float_run", "path": str(path), "dataset": dataset, "epoch": run.meta.get("epoch"),
                "test_images": len(test), "accuracy": _percent(pred, test.labels)}
    raise ConfigError(f"{path} is neither a float run (no {CHECKPOINT_FILE}) nor an integer graph (no {GRAPH_FILE})")


# -- the main job ---------------------------------------------------------------------------

DEMO_TRAIN = TrainConfig(model="lenet5", dataset="fashion-mnist", epochs=8)


def demo(out_dir: str | os.PathLike = "runs/demo", *, quiet: bool = False, fresh: bool = False,
         data_dir: str | None = None, force: bool = False) -> dict[str, Any]:
    """Train LeNet-5 on Fashion-MNIST, quantize it W8A8, check the integer engine.

    Writes `out_dir/fp32/` (float run), `out_dir/int8/` (IntegerGraph) and `out_dir/summary.json`,
    all of it into a temporary sibling folder that replaces `out_dir` at the end (a failure leaves
    `out_dir` as it was). A float run in `out_dir/fp32` is copied in and reused (resumed if it
    was interrupted) unless `fresh`. `out_dir` may be absent, empty or an earlier demo; any other
    folder is refused (OutputError) unless `force`.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    config = TrainConfig(**{**DEMO_TRAIN.__dict__, "data_dir": data_dir})
    with publishing(out_dir, DEMO, force=force, command="bitsmith demo") as stage:
        fp_dir, int_dir = stage.path / "fp32", stage.path / "int8"
        if not fresh and (out_dir / "fp32" / CHECKPOINT_FILE).is_file():
            copy_folder(out_dir / "fp32", fp_dir)
        resume = (fp_dir / CHECKPOINT_FILE).is_file()
        train_metrics = train(config, fp_dir, resume=resume, quiet=quiet)
        q = quantize_run(fp_dir, int_dir, QuantConfig(weight_bits=8, act_bits=8), data_dir=data_dir)
        summary = {
            "model": "lenet5", "dataset": "fashion-mnist", "epochs": config.epochs,
            "fp32_accuracy": q["fp32_accuracy"],
            "fake_quant_accuracy": q["accuracy"],
            "integer_accuracy": q["integer_accuracy"],
            "agreement": q["agreement"],
            "integer_minus_fp32_pp": round(q["integer_accuracy"] - q["fp32_accuracy"], 4),
            "train_seconds": train_metrics.get("train_seconds"),
            "reused_float_run": resume,
            "seconds": round(time.perf_counter() - start, 2),
            "fp32_run": str(out_dir / "fp32"), "int8_graph": str(out_dir / "int8"),
        }
        write_json_atomic(stage.path / "summary.json", summary)
    return summary


#: Training images a calibrated ADC range is measured on (docs/cim.md).
CIM_CALIBRATION_IMAGES = 512
#: Images per crossbar batch: a per-call ADC range is the min / max over one batch (docs/cim.md).
CIM_BATCH_SIZE = 1000


def cim_sweep(graph_dir: str | os.PathLike, out_dir: str | os.PathLike, *, adc_bits: list[int | None],
              cell_bits: list[int], variation: list[float], base: dict[str, Any] | None = None,
              limit: int | None = 1000, data_dir: str | None = None, force: bool = False,
              quiet: bool = True, calibration_images: int = CIM_CALIBRATION_IMAGES,
              batch_size: int = CIM_BATCH_SIZE, on_images: Callable[[int], None] | None = None) -> dict[str, Any]:
    """`cim_evaluate` over every (cell bits, variation, ADC bits) of the lists, the other CIMConfig
    fields from `base`; writes cim_sweep.json (every point) and cim_sweep.png (accuracy against ADC
    bits per cell width, and against variation) to `out_dir`, whole or not at all. All settings
    are checked before any image runs; the graph, the images and the engine's predictions are
    read once, and the devices programmed once per (cell bits, variation): ADC widths reuse them."""
    from bitsmith.cim import CIMConfig
    from bitsmith.cim.plots import sweep_figure

    base = dict(base or {})
    configs = [CIMConfig(**{**base, "cell_bits": c, "variation": v, "adc_bits": a})
               for c in cell_bits for v in variation for a in adc_bits]
    if not configs:
        raise ConfigError("the sweep is empty: give at least one ADC width, cell width and variation")
    with publishing(out_dir, CIM_SWEEP, force=force, command="bitsmith cim sweep") as stage:
        bench = _CIMBench(graph_dir, limit, data_dir, calibration_images, batch_size)
        points = []
        for config in configs:
            result = bench.evaluate(config, on_images)
            points.append({"cell_bits": config.cell_bits, "variation": config.variation, "adc_bits": config.adc_bits,
                           "cim_accuracy": result["cim_accuracy"], "agreement": result["agreement"],
                           "crossbars": result["crossbars"], "seconds": result["cim_seconds"]})
            if not quiet:
                print(f"cells {config.cell_bits}, variation {config.variation:g}, ADC {config.adc_bits}: "
                      f"{result['cim_accuracy']:.2f}% (engine {bench.integer_accuracy:.2f}%)", flush=True)
        doc = {"format": "bitsmith.cim_sweep", "graph": str(graph_dir), "images": len(bench.labels),
               "batch_size": batch_size,
               "integer_accuracy": bench.integer_accuracy,
               "base": {k: v for k, v in vars(configs[0]).items() if k not in ("cell_bits", "variation", "adc_bits")},
               "points": points}
        write_json_atomic(stage.path / "cim_sweep.json", doc)
        sweep_figure(doc, stage.path / "cim_sweep.png")
    return doc


class _CIMBench:
    """A graph, its test images and the integer engine's predictions on them, read once; crossbar
    passes against them, each programming of the devices made once and reused (`programming_key`)."""

    def __init__(self, graph_dir: str | os.PathLike, limit: int | None, data_dir: str | None,
                 calibration_images: int = CIM_CALIBRATION_IMAGES, batch_size: int = CIM_BATCH_SIZE) -> None:
        for name, value in (("calibration_images", calibration_images), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.batch_size = batch_size
        self.graph_dir = graph_dir
        self.data_dir = data_dir
        self.calibration_images = calibration_images
        self.graph = load(graph_dir)
        dataset = self.graph.metadata.get("dataset")
        if not dataset:
            raise ConfigError(f"{graph_dir}: the graph records no data set to evaluate on (metadata 'dataset')")
        self.dataset = dataset
        self.test = load_dataset(dataset, "test", data_dir or self.graph.metadata.get("data_dir"), limit=limit)
        self.shape = tuple(self.graph.input_spec.shape)
        self.labels = torch.as_tensor(self.test.labels, dtype=torch.int64)
        start = time.perf_counter()
        self.int_pred = predictions(partial(engine.predict, self.graph), self.test, self.shape)
        self.engine_seconds = time.perf_counter() - start
        self.integer_accuracy = _percent(self.int_pred, self.labels)
        self._programmed: dict[tuple, dict] = {}

    def evaluate(self, config, on_images: Callable[[int], None] | None = None) -> dict[str, Any]:
        from bitsmith.cim import map_graph, run as cim_run
        from bitsmith.cim.mapping import programming_key

        graph = self.graph
        start = time.perf_counter()
        key = programming_key(config)
        if key not in self._programmed:
            self._programmed[key] = map_graph(graph, config)
        layers = self._programmed[key]
        if config.adc_range == "calibrated" and config.adc_bits is not None:
            self._calibrate(config, layers)
        def crossbar(x):
            scores = graph.dequantize(cim_run(graph, x, config, layers=layers))
            if on_images is not None:
                on_images(len(x))
            return scores

        cim_pred = predictions(crossbar, self.test, self.shape, batch_size=self.batch_size)
        cim_seconds = time.perf_counter() - start
        return {"graph": str(self.graph_dir), "dataset": self.dataset, "images": len(self.labels),
                "batch_size": self.batch_size,
                "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
                "exact": config.exact, "integer_accuracy": self.integer_accuracy,
                "cim_accuracy": _percent(cim_pred, self.labels), "agreement": _fraction_equal(cim_pred, self.int_pred),
                "mapped_layers": {name: {"crossbars": layer.plan.crossbars, "weight_bits": layer.weight_bits}
                                  for name, layer in layers.items()},
                "crossbars": sum(layer.plan.crossbars for layer in layers.values()),
                "engine_seconds": round(self.engine_seconds, 3), "cim_seconds": round(cim_seconds, 3),
                **({"calibration_images": self.calibration_images} if config.adc_range == "calibrated" else {})}

    def _calibrate(self, config, layers) -> None:
        """Static ADC ranges from the first `calibration_images` training images (not the test
        images the accuracy is measured on), unless these layers hold them for these ADC settings."""
        from bitsmith.cim import calibrate
        from bitsmith.cim.simulate import calibration_key

        if all(layer.calibrated_with == calibration_key(config) for layer in layers.values()):
            return
        train = load_dataset(self.dataset, "train", self.data_dir or self.graph.metadata.get("data_dir"),
                             limit=self.calibration_images)
        batches = (x for x, _ in iterate_batches(train, CALIBRATION_BATCH_SIZE, self.shape, shuffle=False,
                                                 augment=False))
        calibrate(self.graph, batches, config, layers)


def cim_cost(graph_dir: str | os.PathLike, config, model, *, activity: float = 0.5, images: int | None = None,
             data_dir: str | None = None):
    """The cost estimate (`bitsmith.cim.estimate`, docs/cim-cost.md) of the graph at `graph_dir`
    mapped with `config`, priced with `model`: with one input-bit `activity` for every layer, or —
    with `images` — each layer's activity measured on the first `images` test images of the
    graph's data set. Returns (the CostReport, the measured activities or None)."""
    from bitsmith.cim import estimate, input_bit_activity, map_graph

    graph = load(graph_dir)
    layers = map_graph(graph, config)
    measured = None
    if images is not None:
        dataset = graph.metadata.get("dataset")
        if not dataset:
            raise ConfigError("the graph records no data set (metadata 'dataset'): give --activity instead of --images")
        test = load_dataset(dataset, "test", data_dir or graph.metadata.get("data_dir"), limit=images)
        x = torch.cat([xb for xb, _ in iterate_batches(test, 256, tuple(graph.input_spec.shape))])
        measured = input_bit_activity(graph, x, layers)
    report = estimate(graph, layers, config, model, activity=measured if measured is not None else activity)
    return report, measured


def cim_evaluate(graph_dir: str | os.PathLike, config, *, limit: int | None = None,
                 data_dir: str | None = None, calibration_images: int = CIM_CALIBRATION_IMAGES,
                 batch_size: int = CIM_BATCH_SIZE, on_images: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The integer graph at `graph_dir` on the crossbar simulator (`bitsmith.cim`, docs/cim.md) with
    `config` (a CIMConfig), against the integer engine, on the first `limit` test images (all by
    default) of the graph's data set: accuracies, agreement, the mapped layers and their crossbars,
    and both wall times. The devices are programmed once for the whole pass (one seed); a calibrated
    ADC range is measured on the first `calibration_images` training images first. Images run in
    batches of `batch_size`: per-call ADC ranges depend on it (the seed's oracle, docs/cim.md).
    `on_images(n)` is called after each batch of n images has run on the crossbars (progress)."""
    return _CIMBench(graph_dir, limit, data_dir, calibration_images, batch_size).evaluate(config, on_images)


def export_graph(graph, path: Path, *, format: str = "onnx", qdq: bool = False, check: int = 64) -> tuple[dict[str, Any], bool]:
    """`bitsmith export`'s work: write `graph` as `format` at `path` (the ONNX file, or the CLIP-Q hex
    folder, read back), then (onnx, check > 0) compare the file with the integer engine on `check`
    random input codes. Returns (figures, passed): the QDQ model is not bit-exact by design, so its
    agreement is a figure, not a verdict."""
    from bitsmith.verify import RANDOM, compare, qdq_agreement, verification_inputs, verify

    if format == "clipq-hex":
        from bitsmith.targets.clipq_hex import read_clipq_hex, write_clipq_hex

        manifest = write_clipq_hex(graph, path)
        read_clipq_hex(path)
        return {"format": format, "manifest": manifest}, True
    from bitsmith.onnx import export_onnx, run_onnx

    written = export_onnx(graph, path, qdq=qdq)
    figures: dict[str, Any] = {"format": "onnx-qdq" if qdq else "onnx-integer"}
    if not check:
        return figures, True
    inputs = verification_inputs(graph, check, data=RANDOM)
    if qdq:
        return {**figures, **qdq_agreement(graph, written, inputs)}, True
    report = verify(graph, "onnx", inputs)
    _, wrong, _ = compare(run_onnx(written, inputs.x), engine.run(graph, inputs.x))  # the file itself
    passed = report.passed and wrong == 0
    figures.update({"checked_images": report.images, "inputs": report.inputs,
                    "mismatched_elements": report.mismatches + wrong, "first_mismatch": report.first_mismatch,
                    "layers_checked": len(report.layers), "error": report.error, "matches_engine": passed})
    return figures, passed
