"""Hardware-aware fine-tuning (bitsmith.cim_aware, docs/cim-aware.md) on a tiny PACT/DoReFa QAT run:
the straight-through forward carries the crossbar simulator's accumulator element by element, the
gradients are the ideal path's, fine-tuning is reproducible with a seed, its before/after figures
are those of `bitsmith cim run`, and runs or configs with nothing to fine-tune are refused."""

import json

import pytest
import torch

from bitsmith.artifacts import QAT_GRAPH, folder_kind
from bitsmith.cim import CIMConfig, run as cim_run
from bitsmith.cim_aware import attach, cim_finetune, detach, graph_difference, load_qat_model
from bitsmith.data import iterate_batches, load_dataset
from bitsmith.errors import ConfigError
from bitsmith.integer import load
from bitsmith.pipeline import cim_evaluate, qat_run, quantize_run
from bitsmith.quant import QuantConfig
from bitsmith.quant.api import QATConfig
from bitsmith.storage import load_tensors
from tests.helpers import invoke
from tests.quantized import tiny_float_run

#: Every layer on crossbars, a coarse ADC and 10% variation: far from the integer engine.
NOISY = CIMConfig(cell_bits=1, adc_bits=3, variation=0.1, digital="none", seed=3)
TINY = dict(images=128, batch_size=32, eval_images=64)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def qat(tmp_path_factory):
    root = tmp_path_factory.mktemp("aware")
    torch.manual_seed(0)
    qat_run(tiny_float_run(root / "fp"), root / "qat", QATConfig("pact", epochs=1, batch_size=32), quiet=True,
            train_limit=256)
    return root / "qat"


def _images(n=32):
    return next(iterate_batches(load_dataset("synthetic", "test", limit=n), n, (1, 32, 32)))[0]


def _layer_input(graph, node, codes):
    spec = graph.tensors[node.inputs[0]]
    return ((codes - spec.zero_point).to(torch.float64) * spec.scale).to(torch.float32)


def test_the_forward_carries_the_crossbar_accumulator(qat):
    qmodel, graph, _ = load_qat_model(qat)
    assert graph_difference(graph, load(qat)) is None
    every = cim_run(graph, _images(), NOISY, return_all=True)   # the simulator on the lowered graph
    layers = attach(qmodel, graph, NOISY)
    nodes = {n.name: n for n in graph.nodes}
    assert set(layers) == {n.name for n in graph.nodes if n.op in ("Conv2d", "Linear")}
    differs = False
    qmodel.train()
    for name, layer in layers.items():
        node = nodes[name]
        x = _layer_input(graph, node, every[node.inputs[0]])
        with torch.no_grad():
            y = layer._linear_op(x, layer.weight_quantizer(layer.weight), layer.quantized_bias())
        _, w_scale = layer.quantize_weight()
        view = (1, -1) + (1,) * (y.dim() - 2)
        acc = y.to(torch.float64) / (w_scale.reshape(view).to(torch.float64) * layer.qat_input[0])
        assert (acc - acc.round()).abs().max() < 0.02, name
        assert torch.equal(acc.round().to(torch.int64), every[node.output]), name   # element by element
        crossbar, exact = layer.crossbar_twin.accumulators(layer, x)
        differs |= bool((crossbar != exact).any())
    assert differs   # the hardware's error is really in the forward pass
    detach(layers)
    assert all(not hasattr(layer, "crossbar_twin") or layer.crossbar_twin is None for layer in layers.values())


def test_gradients_are_those_of_the_ideal_path(qat):
    qmodel, graph, _ = load_qat_model(qat)
    layers = attach(qmodel, graph, NOISY)
    qmodel.train()
    node = next(n for n in graph.nodes if n.name in layers)
    layer = layers[node.name]
    codes = cim_run(graph, _images(), NOISY, return_all=True)[node.inputs[0]]
    x = _layer_input(graph, node, codes).requires_grad_()

    def grads():
        layer.weight.grad, x.grad = None, None
        y = layer._linear_op(x, layer.weight_quantizer(layer.weight), layer.quantized_bias())
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        return y.detach(), layer.weight.grad.clone(), x.grad.clone()

    y_aware, w_aware, x_aware = grads()
    twin, layer.crossbar_twin = layer.crossbar_twin, None
    y_ideal, w_ideal, x_ideal = grads()
    layer.crossbar_twin = twin
    assert not torch.equal(y_aware, y_ideal)                      # the forward differs …
    assert w_aware.abs().sum() > 0 and torch.equal(w_aware, w_ideal)   # … the gradients do not
    assert torch.equal(x_aware, x_ideal)
    # and through the whole model every trained parameter gets a gradient
    x, y = next(iterate_batches(load_dataset("synthetic", "train", limit=32), 32, (1, 32, 32)))
    torch.nn.functional.cross_entropy(qmodel(x), y).backward()
    assert all(layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0 for layer in layers.values())


def test_fine_tuning_is_reproducible_and_measured_as_cim_run(qat, tmp_path):
    first = cim_finetune(qat, tmp_path / "a", NOISY, seed=1, **TINY)
    result = invoke("cim", "finetune", qat, "--out", tmp_path / "b", "--cell-bits", 1, "--adc-bits", 3,
                    "--variation", 0.1, "--digital", "none", "--seed", 3, "--train-seed", 1, "--images", 128,
                    "--batch-size", 32, "--eval-images", 64, "--json")
    assert result.exit_code == 0, result.output
    second = json.loads(result.output)
    for doc in (first, second):
        doc.pop("seconds"), doc.pop("graph")
        for when in ("before", "after"):
            doc[when].pop("cim_seconds")
        for record in doc["history"]:
            record.pop("seconds")
    assert first == second
    for name in ("tensors.safetensors", "qat_weights.safetensors"):
        assert load_tensors(tmp_path / "a" / name)[0].keys() == load_tensors(tmp_path / "b" / name)[0].keys()
        a, b = load_tensors(tmp_path / "a" / name)[0], load_tensors(tmp_path / "b" / name)[0]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert graph_difference(load(tmp_path / "a"), load(qat)) is not None   # the weights moved
    cim_finetune(qat, tmp_path / "c", NOISY, seed=2, **TINY)
    assert graph_difference(load(tmp_path / "a"), load(tmp_path / "c")) is not None   # … as the seed says
    assert folder_kind(tmp_path / "a") is QAT_GRAPH
    assert first["mapped_layers"] and first["images"] == 128 and first["test_images"] == 64
    # before and after are what `bitsmith cim run` measures for the two graphs (same config: the same chip)
    for when, graph in (("before", qat), ("after", tmp_path / "a")):
        reference = cim_evaluate(graph, NOISY, limit=64)
        assert first[when]["cim_accuracy"] == reference["cim_accuracy"], when
        assert first[when]["integer_accuracy"] == reference["integer_accuracy"], when
        assert first[when]["agreement"] == reference["agreement"], when
    # the fine-tuned run is a QAT run again: it rebuilds and lowers to its own graph
    load_qat_model(tmp_path / "a")


def test_nothing_to_fine_tune_is_refused(qat, tmp_path):
    with pytest.raises(ConfigError, match="nothing .* to recover"):
        cim_finetune(qat, tmp_path / "o", CIMConfig(digital="none"), **TINY)
    ptq = tmp_path / "ptq"
    quantize_run(qat.parent / "fp", ptq, QuantConfig(weight_bits=4, act_bits=4))
    with pytest.raises(ConfigError, match="not a QAT run"):
        cim_finetune(ptq, tmp_path / "o", NOISY, **TINY)
    with pytest.raises(ConfigError, match="not a QAT run"):
        cim_finetune(qat.parent / "fp", tmp_path / "o", NOISY, **TINY)   # a float run
    with pytest.raises(ConfigError, match="not nodes of the graph"):
        cim_finetune(qat, tmp_path / "o", CIMConfig(adc_bits=3, digital=("conv9",)), **TINY)
    with pytest.raises(ConfigError, match="images"):
        cim_finetune(qat, tmp_path / "o", NOISY, images=0)
    with pytest.raises(ConfigError, match="calibrated"):
        cim_finetune(qat, tmp_path / "o", CIMConfig(adc_bits=3, adc_range="calibrated"), **TINY)
    assert not (tmp_path / "o").exists()
    result = invoke("cim", "finetune", qat, "--out", tmp_path / "o", "--digital", "none")
    assert result.exit_code != 0 and "nothing" in result.output + str(result.exception)
