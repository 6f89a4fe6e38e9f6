"""Hardware-aware fine-tuning for compute-in-memory (issue 15, point 6; docs/cim-aware.md).

A QAT run is rebuilt (its float run, QAT config and trained tensors) and trained on with the
crossbar in the loop: every layer the CIMConfig maps (`bitsmith.cim.mapping.mapped_nodes`) has
its pre-activation replaced, straight through, by

    y = y_qat + ((acc_crossbar − acc_exact) · s_x · s_w).detach()     (s_w per output channel)

acc_exact is the IR's accumulator Σ (x − z)·w of the layer's current codes (the reference
interpreter's op), acc_crossbar the simulator's (`bitsmith.cim.simulate.crossbar_layer`) on the
same codes, with devices programmed from the current weight codes by `map_layer` with the
layer's index in the lowered graph: the same cells, so the same variation draws, on every step
and at evaluation — one chip. The forward pass sees the hardware's error, the gradients flow
through the ideal QAT path. Quantizer parameters (PACT α, LSQ steps) stay fixed: the grids the
crossbar's inputs lie on do not move.

It sits on floor 3 (docs/architecture.md) because it joins the QAT front end and the CIM back
end. Floor-3 modules are independent, so the before/after evaluation is written here with the
pieces `pipeline.cim_evaluate` uses (the tests check that the two agree).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from bitsmith.artifacts import QAT_GRAPH, public_path, publishing
from bitsmith.cim.config import CIMConfig
from bitsmith.cim.mapping import map_graph, map_layer, mapped_nodes
from bitsmith.cim.simulate import crossbar_layer, run as cim_run
from bitsmith.data import ArrayDataset, iterate_batches, load_dataset
from bitsmith.errors import ConfigError, GraphError
from bitsmith.evaluate import predictions
from bitsmith.integer import engine
from bitsmith.integer.exactness import float32_gemm_is_ieee
from bitsmith.integer.graph import GRAPH_FILE, IntegerGraph, Node, load
from bitsmith.integer.reference import REFERENCE
from bitsmith.prune.job import pruned_run_masks
from bitsmith.quant import lower
from bitsmith.quant.api import QATConfig
from bitsmith.quant.calibration import dataset_batches
from bitsmith.quant.modules import QuantLayer
from bitsmith.quant.prepare import module_of
from bitsmith.quant.qat.prepare import qat_prepare, quantizer_parameters, sync_input_scales
from bitsmith.quant.qat.train import METRICS_FILE, QAT_WEIGHTS_FILE, save_qat_weights
from bitsmith.runs import load_run
from bitsmith.storage import load_tensors, write_json_atomic
from bitsmith.train import SGD_MOMENTUM, cosine_lr

#: Fine-tuning defaults: a subset (one crossbar pass of the quarter-width VGG7 costs seconds per 100
#: images), one epoch, a small learning rate (the QAT weights are already good).
DEFAULT_IMAGES = 2000
DEFAULT_LR = 0.002
DEFAULT_BATCH_SIZE = 100

#: Offset of the training's read-noise generator from the config's seed (reads are drawn anew on
#: every step; only the devices must be those of the simulated chip).
TRAIN_READ_NOISE_STREAM = 424_243


# -- the QAT model of a run ------------------------------------------------------------------------

def load_qat_model(run_dir: str | os.PathLike, *, data_dir: str | None = None,
                   train: ArrayDataset | None = None) -> tuple[fx.GraphModule, IntegerGraph, QATConfig]:
    """The QAT model of a `bitsmith qat` run folder, rebuilt from its float run and config and
    loaded with its trained tensors, with the run's graph and config. Lowering the rebuilt model
    must give the run's graph back (else GraphError): what is fine-tuned is what was measured.
    `train`: the float run's training set, if already loaded (its calibration draw only starts
    the quantizers, which the saved tensors then overwrite)."""
    run_dir = Path(run_dir)
    graph = qat_run_graph(run_dir)
    qat = graph.metadata["qat"]
    source = graph.metadata.get("source_run")
    if not source:
        raise ConfigError(f"{run_dir}: the graph does not name its float run (metadata 'source_run')")
    run = load_run(source)
    if pruned_run_masks(run.meta, run.model) is not None:
        raise ConfigError(f"{run_dir} comes from a pruned run; hardware-aware fine-tuning does not keep pruning masks")
    config = QATConfig(**{k: v for k, v in qat.items() if k != "kind"})
    shape = tuple(run.model.input_shape)
    if train is None:
        train = run.dataset("train", data_dir or graph.metadata.get("data_dir"), limit=DEFAULT_IMAGES)
    qmodel = qat_prepare(run.model, dataset_batches(train, shape), config.spec)
    tensors, _ = load_tensors(run_dir / QAT_WEIGHTS_FILE, "QAT weights")
    missing, unexpected = qmodel.load_state_dict(tensors, strict=False)
    state = qmodel.state_dict()
    missing = [k for k in missing if state[k].numel() > 0]  # empty placeholders are not saved
    if missing or unexpected:
        raise GraphError(f"{run_dir}/{QAT_WEIGHTS_FILE} does not fit the QAT model of its config: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    sync_input_scales(qmodel)
    qmodel.eval()
    difference = graph_difference(lower(qmodel, metadata=graph.metadata), graph)
    if difference:
        raise GraphError(f"{run_dir}: the rebuilt QAT model does not lower to the run's graph ({difference})")
    return qmodel, graph, config


def qat_run_graph(run_dir: str | os.PathLike) -> IntegerGraph:
    """The graph of a QAT run folder; anything else (a float run, a PTQ graph, a CLIP-Q run) is
    refused: fine-tuning needs the trained QAT model."""
    run_dir = Path(run_dir)
    what = (f"{run_dir} is not a QAT run (a `bitsmith qat` output: graph.json, {QAT_WEIGHTS_FILE} and the QAT "
            "config in the graph's metadata); hardware-aware fine-tuning needs the trained QAT model")
    if not (run_dir / GRAPH_FILE).is_file() or not (run_dir / QAT_WEIGHTS_FILE).is_file():
        raise ConfigError(what)
    graph = load(run_dir)
    qat = graph.metadata.get("qat")
    if not isinstance(qat, dict):
        raise ConfigError(what)
    if qat.get("kind") != "qat":
        raise ConfigError(f"{run_dir} is a {qat.get('kind')!r} run; hardware-aware fine-tuning takes a QAT run "
                          "(lsq, pact, dorefa, …)")
    return graph


def graph_difference(a: IntegerGraph, b: IntegerGraph) -> str | None:
    """Where two graphs differ (nodes, tensor specs, parameters), or None if they are the same."""
    if [n.to_json() for n in a.nodes] != [n.to_json() for n in b.nodes]:
        return "nodes"
    if {k: v.to_json() for k, v in a.tensors.items()} != {k: v.to_json() for k, v in b.tensors.items()}:
        return "tensor specs"
    if a.params.keys() != b.params.keys():
        return "parameter names"
    for key in a.params:
        if not torch.equal(a.params[key].to(torch.int64), b.params[key].to(torch.int64)):
            return f"parameter {key!r}"
    return None


def layer_nodes(qmodel: fx.GraphModule) -> dict[str, QuantLayer]:
    """{graph node name: QAT layer}: the node lowering makes of each QuantLayer (`quant/lower.py`:
    `<fx name>_acc` when the layer has an output quantizer, else the fx name)."""
    out = {}
    for node in qmodel.graph.nodes:
        m = module_of(qmodel, node)
        if isinstance(m, QuantLayer):
            out[f"{node.name}_acc" if m.act_quant is not None else node.name] = m
    return out


# -- the crossbar in the loop ------------------------------------------------------------------------

class CrossbarTwin:
    """One mapped layer's crossbar, fed the QAT layer's current codes.

    A one-layer IntegerGraph holds the node (attributes as lowered) and its input tensor spec; its
    weight is replaced by the layer's current codes on every call and programmed by `map_layer`
    with the node's index in the full graph, so the devices' random draws are those of the chip
    that `bitsmith.cim.run` simulates for the lowered graph."""

    def __init__(self, graph: IntegerGraph, node: Node, index: int, config: CIMConfig,
                 noise: torch.Generator) -> None:
        self.node = Node(node.op, node.name, list(node.inputs), node.output, dict(node.attrs), {"weight": "weight"})
        self.input = graph.tensors[node.inputs[0]]
        self.output = graph.tensors[node.output]
        self.index, self.config, self.noise = index, config, noise
        self.ieee = float32_gemm_is_ieee()

    def graph(self, codes: torch.Tensor) -> IntegerGraph:
        return IntegerGraph({self.input.name: self.input, self.output.name: self.output}, [self.node],
                            {"weight": codes.to(torch.int64)}, [self.input.name], [self.output.name])

    def input_codes(self, layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
        """The integer codes of the layer's fake-quant input x = (q − z)·S_in."""
        scale, zero_point = layer.qat_input
        q = torch.round(x.detach() / torch.tensor(scale, dtype=torch.float32)).to(torch.int64) + zero_point
        if q.numel() and (int(q.min()) < self.input.qmin or int(q.max()) > self.input.qmax):
            raise GraphError(f"layer {self.node.name!r}: its input codes leave [{self.input.qmin}, {self.input.qmax}]")
        return q

    def accumulators(self, layer: QuantLayer, x: torch.Tensor,
                     codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(crossbar, exact) accumulators Σ (x − z)·w (int64, the IR's shape, no bias) of the
        layer's weight codes (by default its current ones) on the codes of `x`."""
        if codes is None:
            codes, _ = layer.quantize_weight()
        graph = self.graph(codes)
        q = self.input_codes(layer, x)
        crossbar = crossbar_layer(graph, map_layer(graph, self.node, self.config, self.index), q, self.config,
                                  self.noise)
        exact = REFERENCE.lookup(self.node)(graph, self.node, [q], self.ieee)
        return crossbar, exact

    def error(self, layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
        """(acc_crossbar − acc_exact) · s_x · s_w, in the layer's float units (s_w per channel)."""
        with torch.no_grad():
            codes, w_scale = layer.quantize_weight()
            crossbar, exact = self.accumulators(layer, x, codes)
            scale = w_scale.reshape(-1).to(torch.float64) * layer.qat_input[0]
            view = (1, -1) + (1,) * (crossbar.dim() - 2)
            return ((crossbar - exact).to(torch.float64) * scale.reshape(view)).to(torch.float32)


class CrossbarAware:
    """Mixin for a QAT layer: in training, its pre-activation gains the crossbar's error (straight
    through: the error is a constant of the backward pass). Eval mode is untouched (the exact
    integer path of `quant/qat/exact.py`)."""

    crossbar_twin: CrossbarTwin | None = None

    def _linear_op(self, x, w, b):
        y = super()._linear_op(x, w, b)
        if self.crossbar_twin is None:
            return y
        return y + self.crossbar_twin.error(self, x)


_AWARE_CLASSES: dict[type, type] = {}  # QAT layer class → its crossbar-aware subclass


def attach(qmodel: fx.GraphModule, graph: IntegerGraph, config: CIMConfig) -> dict[str, QuantLayer]:
    """Put the crossbar in the loop of every layer `config` maps in `graph` (the model's lowered
    graph); returns {node name: layer}. `detach` undoes it."""
    layers = layer_nodes(qmodel)
    noise = torch.Generator().manual_seed(config.seed * 1_000_003 + TRAIN_READ_NOISE_STREAM)
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    attached = {}
    for node in mapped_nodes(graph, config):
        layer = layers.get(node.name)
        if layer is None:
            raise GraphError(f"mapped layer {node.name!r} is not a layer of the QAT model")
        cls = type(layer)
        if cls not in _AWARE_CLASSES:
            _AWARE_CLASSES[cls] = type(f"CrossbarAware{cls.__name__}", (CrossbarAware, cls), {})
        layer.__class__ = _AWARE_CLASSES[cls]
        layer.crossbar_twin = CrossbarTwin(graph, node, index[node.name], config, noise)
        attached[node.name] = layer
    return attached


def detach(layers: dict[str, QuantLayer]) -> None:
    for layer in layers.values():
        del layer.crossbar_twin
        layer.__class__ = next(plain for plain, aware in _AWARE_CLASSES.items() if aware is type(layer))


# -- training ------------------------------------------------------------------------------------------

def fine_tune(qmodel: fx.GraphModule, train: ArrayDataset, *, epochs: int, lr: float, batch_size: int, seed: int,
              on_step: Callable[[float, float], None] | None = None) -> list[dict[str, Any]]:
    """Train the weights (and biases) of `qmodel` in place, quantizer parameters fixed: SGD with
    Nesterov momentum, cosine learning rate, cross-entropy, batches drawn from `seed`. Returns one
    record per epoch; `on_step(loss, accuracy)` after every step."""
    steps_per_epoch = len(train.labels) // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {batch_size} is larger than the {len(train.labels)} training images")
    frozen = {id(p) for p in quantizer_parameters(qmodel)}
    weights = [p for p in qmodel.parameters() if p.requires_grad and id(p) not in frozen]
    opt = torch.optim.SGD(weights, lr=lr, momentum=SGD_MOMENTUM, nesterov=True)
    total = steps_per_epoch * epochs
    shape = tuple(qmodel.input_shape)
    history = []
    qmodel.train()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed + 1)
            for epoch in range(epochs):
                start = time.perf_counter()
                loss_sum, correct, seen = 0.0, 0, 0
                batches = iterate_batches(train, batch_size, shape, shuffle=True, augment=train.info.augment,
                                          generator=gen, drop_last=True)
                for i, (x, y) in enumerate(batches):
                    for group in opt.param_groups:
                        group["lr"] = cosine_lr(lr, epoch * steps_per_epoch + i, total)
                    logits = qmodel(x)
                    loss = F.cross_entropy(logits, y)
                    value = loss.item()
                    if not math.isfinite(value):
                        raise ConfigError(f"fine-tuning diverged (loss {value}); lower the learning rate")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    hits = int((logits.argmax(1) == y).sum())
                    loss_sum, correct, seen = loss_sum + value * len(y), correct + hits, seen + len(y)
                    if on_step is not None:
                        on_step(value, 100.0 * hits / len(y))
                history.append({"epoch": epoch + 1, "train_loss": round(loss_sum / seen, 6),
                                "train_acc": round(100.0 * correct / seen, 4),
                                "seconds": round(time.perf_counter() - start, 3)})
    finally:
        qmodel.eval()
    return history


# -- the job ---------------------------------------------------------------------------------------------

def crossbar_accuracy(graph: IntegerGraph, config: CIMConfig, test: ArrayDataset) -> dict[str, Any]:
    """Integer-engine and crossbar accuracy of `graph` on `test` (the devices programmed once), as
    `bitsmith.pipeline.cim_evaluate` measures them."""
    shape = tuple(graph.input_spec.shape)
    labels = torch.as_tensor(test.labels, dtype=torch.int64)
    int_pred = predictions(partial(engine.predict, graph), test, shape)
    start = time.perf_counter()
    layers = map_graph(graph, config)
    cim_pred = predictions(lambda x: graph.dequantize(cim_run(graph, x, config, layers=layers)), test, shape)
    return {"integer_accuracy": round(100 * float((int_pred == labels).double().mean()), 4),
            "cim_accuracy": round(100 * float((cim_pred == labels).double().mean()), 4),
            "agreement": float((cim_pred == int_pred).double().mean()),
            "crossbars": sum(layer.plan.crossbars for layer in layers.values()),
            "cim_seconds": round(time.perf_counter() - start, 3)}


def check_config(config: CIMConfig) -> None:
    if not isinstance(config, CIMConfig):
        raise ConfigError(f"cim_finetune takes a CIMConfig, got {type(config).__name__}")
    if config.exact:
        raise ConfigError("the CIM config is ideal (adc_bits None and ideal devices): the crossbar equals the integer "
                          "engine, so there is nothing for hardware-aware fine-tuning to recover; give --adc-bits "
                          "and/or a device non-ideality (--variation, …)")
    if config.adc_range == "calibrated":
        raise ConfigError("fine-tuning with a calibrated ADC range is not built (the ranges would move with the "
                          "weights); use adc_range 'per-call' or 'full-scale'")


def cim_finetune(run_dir: str | os.PathLike, out_dir: str | os.PathLike, config: CIMConfig, *,
                 images: int = DEFAULT_IMAGES, epochs: int = 1, lr: float = DEFAULT_LR,
                 batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0, eval_images: int | None = None,
                 data_dir: str | None = None, force: bool = False,
                 on_step: Callable[[float, float], None] | None = None) -> dict[str, Any]:
    """Hardware-aware fine-tuning of the QAT run `run_dir` for the crossbar `config`, on its first
    `images` training images; writes to `out_dir` (whole or not at all) the fine-tuned QAT run —
    graph.json + tensors.safetensors, qat_weights.safetensors, metrics.json — and returns the
    metrics: the run's and the fine-tuned graph's integer-engine and crossbar accuracy (same
    config and seed: the same chip) on the first `eval_images` test images (all by default), the
    settings and the training history. `on_step(loss, accuracy)` after every training step."""
    check_config(config)
    for name, value in (("images", images), ("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive number, got {lr!r}")
    if eval_images is not None and (isinstance(eval_images, bool) or not isinstance(eval_images, int)
                                    or eval_images < 1):
        raise ConfigError(f"eval_images must be a positive integer or None, got {eval_images!r}")
    start = time.perf_counter()
    graph = qat_run_graph(run_dir)
    map_graph(graph, config)  # refuses a config the graph cannot take (cell bits, digital names), naming the layer
    source_data = data_dir or graph.metadata.get("data_dir")
    dataset = graph.metadata.get("dataset")
    if not dataset:
        raise ConfigError(f"{run_dir}: the graph records no data set (metadata 'dataset')")
    train = load_dataset(dataset, "train", source_data, limit=images)
    test = load_dataset(dataset, "test", source_data, limit=eval_images)
    with publishing(out_dir, QAT_GRAPH, force=force, command="bitsmith cim finetune") as stage:
        qmodel, graph, qat = load_qat_model(run_dir, data_dir=data_dir, train=train)
        before = crossbar_accuracy(graph, config, test)
        layers = attach(qmodel, graph, config)
        try:
            history = fine_tune(qmodel, train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                                on_step=on_step)
        finally:
            detach(layers)
        sync_input_scales(qmodel)
        settings = {"cim": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
                    "images": len(train.labels), "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
                    "mapped_layers": list(layers), "source_qat_run": str(public_path(Path(run_dir).resolve()))}
        tuned = lower(qmodel, metadata={**graph.metadata, "cim_finetune": settings})
        tuned = load(tuned.save(stage.path))  # what is measured is what was written, read back and checked
        save_qat_weights(qmodel, stage.path / QAT_WEIGHTS_FILE, qat.to_json())
        after = crossbar_accuracy(tuned, config, test)
        metrics = {"model": graph.metadata.get("model", {}).get("name"), "dataset": dataset, **settings,
                   "test_images": len(test.labels), "before": before, "after": after,
                   "recovered_pp": round(after["cim_accuracy"] - before["cim_accuracy"], 4),
                   "history": history, "seconds": round(time.perf_counter() - start, 2),
                   "graph": str(public_path(Path(out_dir)))}
        write_json_atomic(stage.path / METRICS_FILE, metrics)
    return metrics
