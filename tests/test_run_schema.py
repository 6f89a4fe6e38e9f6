"""A run checkpoint's metadata goes through one schema (`bitsmith.runs._parse_meta`): every field of
the wrong type or out of range is a CheckpointError naming the file and the field, never a traceback."""

from __future__ import annotations

import json
import shutil

import pytest

from bitsmith.errors import CheckpointError
from bitsmith.runs import CHECKPOINT_FILE, load_run, read_checkpoint
from bitsmith.storage import load_tensors, save_tensors_atomic
from bitsmith.train import TrainConfig, train

TINY = TrainConfig(model="lenet5", dataset="synthetic", epochs=1, batch_size=32, limit_train=64, limit_test=32)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(TINY, out, quiet=True)
    return out


def _with_meta(tiny_run, tmp_path, change):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    tensors, header = load_tensors(out / CHECKPOINT_FILE)
    meta = json.loads(header["bitsmith"])
    change(meta)
    save_tensors_atomic(out / CHECKPOINT_FILE, tensors, {"bitsmith": json.dumps(meta)})
    return out


def test_the_tiny_run_fits_its_schema(tiny_run):
    assert read_checkpoint(tiny_run).meta["epoch"] == 1
    assert load_run(tiny_run).model.spec["name"] == "lenet5"


@pytest.mark.parametrize("change, fragments", [
    (lambda m: m.update(epoch=-1), ["epoch: -1; allowed: an integer ≥ 0"]),
    (lambda m: m.update(epoch=1.0), ["epoch: 1.0"]),
    (lambda m: m.update(epoch=True), ["epoch: True"]),
    (lambda m: m.pop("epoch"), ["missing key 'epoch'"]),
    (lambda m: m.pop("optimizer"), ["missing key 'optimizer'"]),
    (lambda m: m.update(model="lenet5"), ["model: must be an object, not a JSON string"]),
    (lambda m: m["model"].pop("name"), ["model.name: missing key 'name'"]),
    (lambda m: m["model"].update(num_classes=0), ["model.num_classes: 0"]),
    (lambda m: m["model"].update(input_shape=[1, 32]), ["model.input_shape", "at least 3"]),
    (lambda m: m["model"].update(kwargs=[]), ["model.kwargs: must be an object"]),
    (lambda m: m.update(dataset=5), ["dataset: 5"]),
    (lambda m: m.update(data_dir=["x"]), ["data_dir"]),
    (lambda m: m.update(metrics=[]), ["metrics: must be an object"]),
    (lambda m: m["metrics"].update(history={}), ["metrics.history: must be a list"]),
    (lambda m: m["optimizer"].update(param_groups={}), ["optimizer.param_groups: must be a list"]),
    (lambda m: m["optimizer"]["param_groups"][0].update(lr="fast"), ["optimizer.param_groups[0].lr: 'fast'"]),
    (lambda m: m["optimizer"]["param_groups"][0].update(lr=float("nan")), ["lr: nan"]),
    (lambda m: m["optimizer"]["param_groups"][0].pop("num_params"), ["num_params: missing key"]),
    (lambda m: m["optimizer"].update(state_values={"x": {}}), ["optimizer.state_values"]),
    (lambda m: m["optimizer"].update(state_values={"0": 1}), ["optimizer.state_values.0: must be an object"]),
    (lambda m: m["environment"].update(num_threads=0), ["environment.num_threads: 0"]),
    (lambda m: m.update(surprise=1), ["unknown key 'surprise'"]),
    (lambda m: m.update(version=True), ["version True"]),
])
def test_metadata_violations_name_the_field(tiny_run, tmp_path, change, fragments):
    out = _with_meta(tiny_run, tmp_path, change)
    with pytest.raises(CheckpointError) as e:
        load_run(out)
    text = str(e.value)
    assert str(out / CHECKPOINT_FILE) in text
    for fragment in fragments:
        assert fragment in text, text


@pytest.mark.parametrize("change", [lambda m: m["model"].update(num_classes=1 << 31),
                                    lambda m: m["model"].update(input_shape=[100_000, 32, 32]),
                                    lambda m: m["model"].update(input_shape=[1, 1 << 20, 32])])
def test_a_model_spec_cannot_ask_for_terabytes(tiny_run, tmp_path, change):
    """Found by the fuzzer: num_classes 2^31 made load_run allocate the classifier before comparing it
    with the checkpoint's tensors."""
    with pytest.raises(CheckpointError, match="allowed"):
        load_run(_with_meta(tiny_run, tmp_path, change))
