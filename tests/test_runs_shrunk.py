"""Shrunk runs: a structurally pruned model saved as a float run reloads with the stored widths
(bitsmith.runs "Shrunk layers"), quantizes through the unchanged `bitsmith quantize` path, and any
width or shape the spec does not explain is still a CheckpointError."""

import json
import shutil

import pytest
import torch

from bitsmith.errors import CheckpointError, ConfigError
from bitsmith.integer import load as load_graph
from bitsmith.models import build_model
from bitsmith.pipeline import quantize_run
from bitsmith.prune.structured import channel_prune, save_pruned_run
from bitsmith.runs import CHECKPOINT_FILE, RUN_FILE, RunInfo, load_run
from bitsmith.storage import read_tensors, save_tensors_atomic


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def shrunk(tmp_path_factory):
    """vgg_tiny (width 0.25, synthetic 1×32×32) with 50% of its channels removed, saved as a run."""
    torch.manual_seed(0)
    model = build_model("vgg_tiny", input_shape=(1, 32, 32), width=0.25).eval()
    pruned, report = channel_prune(model, 0.5)
    source = RunInfo(model=model, meta={"dataset": "synthetic"}, path=tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("runs") / "pruned"
    save_pruned_run(out, pruned, source, pruning={"method": "channel", "ratio": 0.5}, metrics={"accuracy": 1.0})
    return out, pruned, report


def _rewrite_spec(run_dir, change):
    """Re-write the checkpoint with its model spec changed by `change(spec)` (run.json removed: the
    checkpoint is the source of truth)."""
    path = run_dir / CHECKPOINT_FILE
    stored = read_tensors(path)
    meta = json.loads(stored.metadata["bitsmith"])
    change(meta["model"])
    save_tensors_atomic(path, stored.tensors, {"bitsmith": json.dumps(meta)})
    (run_dir / RUN_FILE).unlink()


def test_a_shrunk_run_reloads_with_its_widths_and_the_same_outputs(shrunk):
    out, pruned, report = shrunk
    assert report.macs_after < report.macs_before / 3  # every conv keeps half its filters: ~1/4 of the MACs
    info = load_run(out)
    assert info.model.spec == pruned.spec and info.model.spec["shrunk"]["conv1"]["out_channels"] == 8
    assert info.model.conv6.out_channels == 32 and info.model.fc.in_features == 32 * 4 * 4
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(info.model(x), pruned(x))
    assert info.meta["pruning"]["method"] == "channel"


def test_an_existing_run_is_replaced_only_with_force(shrunk, tmp_path):
    out, pruned, _ = shrunk
    source = RunInfo(model=pruned, meta={"dataset": "synthetic"}, path=tmp_path)
    with pytest.raises(ConfigError, match="already holds a float run"):
        save_pruned_run(out, pruned, source, pruning={})
    copy = shutil.copytree(out, tmp_path / "copy")
    save_pruned_run(copy, pruned, source, pruning={"note": "again"}, force=True)
    assert load_run(copy).meta["pruning"]["note"] == "again"


def test_a_shrunk_run_quantizes_with_the_unchanged_quantize_path(shrunk, tmp_path):
    out, pruned, _ = shrunk
    metrics = quantize_run(out, tmp_path / "graph", calib_batches=1)
    graph = load_graph(tmp_path / "graph")
    convs = [n for n in graph.nodes if n.op == "Conv2d"]
    assert [graph.params[n.params["weight"]].shape[0] for n in convs] == [8, 8, 16, 16, 32, 32]
    fc = next(n for n in graph.nodes if n.op == "Linear")
    assert tuple(graph.params[fc.params["weight"]].shape) == (10, 32 * 4 * 4)
    assert 0 <= metrics["integer_accuracy"] <= 100


@pytest.mark.parametrize("change, message", [
    (lambda s: s["shrunk"]["conv3"].update(out_channels=15), r"model\.conv3\.weight has shape \[16, 8, 3, 3\]"),
    (lambda s: s["shrunk"].pop("conv2"), r"model\.conv2\.weight has shape \[8, 8, 3, 3\]"),
    (lambda s: s["shrunk"]["conv1"].update(out_channels=17), r"never wider than the model builds it"),
    (lambda s: s["shrunk"].update(conv9={"num_features": 4}), r"'conv9' is no module"),
    (lambda s: s["shrunk"].update(conv1_relu={"num_features": 4}), r"a ReLU, which cannot be resized"),
    (lambda s: s["shrunk"].update(conv1_bn={"in_features": 4}), r"records \['in_features'\], expected"),
    (lambda s: s["shrunk"]["conv1"].update(colour=3), r"metadata"),
    (lambda s: s["shrunk"]["conv1"].update(out_channels=True), r"metadata"),
])
def test_a_tampered_shrunk_spec_is_a_checkpoint_error(shrunk, tmp_path, change, message):
    out = shutil.copytree(shrunk[0], tmp_path / "run")
    _rewrite_spec(out, change)
    with pytest.raises(CheckpointError, match=message):
        load_run(out)


def test_a_reshaped_tensor_outside_the_spec_still_errors(shrunk, tmp_path):
    out = shutil.copytree(shrunk[0], tmp_path / "run")
    path = out / CHECKPOINT_FILE
    stored = read_tensors(path)
    tensors = dict(stored.tensors)
    tensors["model.fc.bias"] = torch.zeros(9)
    save_tensors_atomic(path, tensors, stored.metadata)
    (out / RUN_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"model\.fc\.bias has shape \[9\]"):
        load_run(out)
