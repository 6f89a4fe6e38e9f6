"""Float training: run files, load_run, exact resume after SIGKILL, checkpoint and config errors."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pytest
import torch

from bitsmith.data import load_dataset
from bitsmith.errors import CheckpointError, ConfigError
from bitsmith.evaluate import accuracy, predictions
from bitsmith.runs import CHECKPOINT_FILE, load_run, read_checkpoint
from bitsmith.storage import load_tensors, save_tensors_atomic, sha256_file
from bitsmith.train import TrainConfig, cosine_lr, train

SHORT = TrainConfig(model="lenet5", dataset="synthetic", epochs=2, batch_size=64, limit_train=512, limit_test=200)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """One tiny finished run shared by the read-only tests; the others copy it before changing it."""
    out = tmp_path_factory.mktemp("runs") / "short"
    records = []
    metrics = train(SHORT, out, quiet=True, progress=records.append)
    return out, metrics, records


def _copy_run(short_run, tmp_path):
    src, _, _ = short_run
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def test_short_run_writes_checkpoint_run_and_metrics(short_run):
    out, metrics, records = short_run
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.safetensors", "metrics.json", "run.json"]

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert records == metrics["history"]  # the progress callback saw every epoch
    assert metrics["accuracy"] == metrics["history"][-1]["test_acc"] > 50.0  # synthetic data is learnable

    tensors, header = load_tensors(out / CHECKPOINT_FILE)
    meta = json.loads(header["bitsmith"])
    view = json.loads((out / "run.json").read_text())
    assert view.pop("checkpoint_sha256") == sha256_file(out / CHECKPOINT_FILE)  # run.json names its checkpoint
    assert meta == view
    assert (meta["format"], meta["version"], meta["epoch"]) == ("bitsmith.run", 1, 2)
    spec = {"name": "lenet5", "num_classes": 10, "input_shape": [1, 32, 32], "kwargs": {"bias": False}}
    assert meta["model"] == spec
    assert meta["train_config"]["lr"] == 0.05  # the resolved default, not None
    assert meta["optimizer"]["type"] == "SGD" and "params" not in meta["optimizer"]["param_groups"][0]
    assert {"model.conv1.weight", "optim.0.momentum_buffer", "rng.torch", "rng.data"} <= set(tensors)
    assert tensors["rng.torch"].dtype == tensors["rng.data"].dtype == torch.uint8


def test_load_run_rebuilds_identical_model(short_run):
    out, metrics, _ = short_run
    run = load_run(out)
    assert not run.model.training
    assert run.path == out and run.meta["epoch"] == 2
    tensors, _ = load_tensors(out / CHECKPOINT_FILE)
    for name, value in run.model.state_dict().items():
        assert torch.equal(value, tensors[f"model.{name}"]), name
    # Same weights, same evaluation: the stored test accuracy is reproduced exactly.
    test = load_dataset("synthetic", "test", limit=SHORT.limit_test)
    assert accuracy(run.model, test, run.model.input_shape) == metrics["accuracy"]


def test_train_restores_callers_global_state(tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    train(replace(SHORT, epochs=1, limit_train=128, limit_test=50), tmp_path / "r", quiet=True)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def _run_in_subprocess(config: TrainConfig, out, stall_marker=None) -> subprocess.Popen:
    """Train in a child process. With `stall_marker`, the child stops in the middle of epoch 2
    (after 20 training batches), writes the marker file and waits to be killed: the kill lands
    mid-epoch whatever the machine's load, and the batches themselves are untouched."""
    stall = ""
    if stall_marker is not None:
        stall = (
            "import pathlib, time, bitsmith.train as T\n"
            "original, calls = T.iterate_batches, [0]\n"
            "def stalling(*args, **kwargs):\n"
            "    calls[0] += 1\n"
            "    for i, batch in enumerate(original(*args, **kwargs)):\n"
            "        if calls[0] == 2 and i == 20:\n"
            f"            pathlib.Path({str(stall_marker)!r}).write_text('epoch 2, batch 20')\n"
            "            time.sleep(600)\n"
            "        yield batch\n"
            "T.iterate_batches = stalling\n"
        )
    code = stall + (
        "from bitsmith.train import TrainConfig, train\n"
        f"train(TrainConfig(**{asdict(config)!r}), {str(out)!r}, quiet=True)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_resume_after_sigkill_mid_epoch_is_bit_identical(tmp_path):
    config = TrainConfig(model="lenet5", dataset="synthetic", epochs=3, batch_size=16)
    reference, killed, marker = tmp_path / "reference", tmp_path / "killed", tmp_path / "stalled"

    proc = _run_in_subprocess(config, reference)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()

    proc = _run_in_subprocess(config, killed, stall_marker=marker)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the child never reached epoch 2"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert read_checkpoint(killed).meta["epoch"] == 1, "the kill did not land in epoch 2"

    metrics = train(config, killed, resume=True, quiet=True)
    assert metrics["epochs_completed"] == 3

    want, want_header = load_tensors(reference / CHECKPOINT_FILE)
    got, got_header = load_tensors(killed / CHECKPOINT_FILE)
    assert sorted(got) == sorted(want)
    for name in want:
        assert torch.equal(got[name], want[name]), f"{name} differs after resume"
    # Same per-epoch losses and accuracies too (only the timings differ).
    history = lambda header: json.loads(header["bitsmith"])["metrics"]["history"]
    untimed = lambda header: [{k: v for k, v in r.items() if k != "seconds"} for r in history(header)]
    assert untimed(got_header) == untimed(want_header)


def test_resume_when_finished_returns_stored_metrics(short_run, tmp_path):
    out = _copy_run(short_run, tmp_path)
    mtime = (out / CHECKPOINT_FILE).stat().st_mtime_ns
    assert train(SHORT, out, resume=True, quiet=True) == short_run[1]
    assert (out / CHECKPOINT_FILE).stat().st_mtime_ns == mtime  # nothing was retrained or rewritten


def test_existing_run_without_resume_is_refused(short_run):
    out, _, _ = short_run
    with pytest.raises(ConfigError, match="--resume"):
        train(SHORT, out, quiet=True)


@pytest.mark.parametrize(
    "change, field",
    [({"seed": 1}, "seed"), ({"batch_size": 32}, "batch_size"), ({"model": "nin"}, "model"),
     ({"epochs": 3}, "epochs"), ({"optimizer": "adam"}, "optimizer")],
)
def test_resume_with_different_config_names_the_field(short_run, change, field):
    out, _, _ = short_run
    with pytest.raises(ConfigError, match=rf"cannot resume .*: {field} is"):
        train(replace(SHORT, **change), out, resume=True, quiet=True)


def test_truncated_checkpoint_raises_checkpoint_error(short_run, tmp_path):
    out = _copy_run(short_run, tmp_path)
    path = out / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_run(out)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train(SHORT, out, resume=True, quiet=True)


def _rewrite(path, edit_tensors=None, edit_meta=None):
    """Replace a run's checkpoint with an edited copy (and drop run.json, which described the old one)."""
    (path.parent / "run.json").unlink(missing_ok=True)
    tensors, header = load_tensors(path)
    meta = json.loads(header["bitsmith"])
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    save_tensors_atomic(path, tensors, {"bitsmith": json.dumps(meta)})


def test_inconsistent_checkpoints_raise_checkpoint_error(short_run, tmp_path):
    out = _copy_run(short_run, tmp_path)
    path = out / CHECKPOINT_FILE
    original = path.read_bytes()

    _rewrite(path, edit_meta=lambda m: m.update(version=99))
    with pytest.raises(CheckpointError, match="version 99"):
        load_run(out)

    path.write_bytes(original)
    _rewrite(path, edit_tensors=lambda t: t.update({"model.fc2.weight": torch.zeros(3, 84)}))
    with pytest.raises(CheckpointError, match=r"model.fc2.weight has shape \[3, 84\]"):
        load_run(out)

    path.write_bytes(original)
    _rewrite(path, edit_tensors=lambda t: t.pop("model.conv2.weight"))
    with pytest.raises(CheckpointError, match="missing: \\['conv2.weight'\\]"):
        load_run(out)

    save_tensors_atomic(path, {"x": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="not a bitsmith run"):
        load_run(out)

    with pytest.raises(CheckpointError, match="run folder not found"):
        load_run(tmp_path / "nowhere")
    path.unlink()
    with pytest.raises(CheckpointError, match="run checkpoint not found"):
        load_run(out)


class _Stop(Exception):
    pass


def _stop_after_epoch_1(record):
    if record["epoch"] == 1:
        raise _Stop


def test_adam_run_interrupted_between_epochs_resumes_exactly(tmp_path):
    config = replace(SHORT, optimizer="adam", limit_train=256, limit_test=50)
    with pytest.raises(_Stop):
        train(config, tmp_path / "a", quiet=True, progress=_stop_after_epoch_1)
    assert read_checkpoint(tmp_path / "a").meta["epoch"] == 1
    train(config, tmp_path / "a", resume=True, quiet=True)
    train(config, tmp_path / "b", quiet=True)
    want, _ = load_tensors(tmp_path / "b" / CHECKPOINT_FILE)
    got, _ = load_tensors(tmp_path / "a" / CHECKPOINT_FILE)
    assert {"optim.0.exp_avg", "optim.0.exp_avg_sq", "optim.0.step"} <= set(got)
    assert sorted(got) == sorted(want)
    for name in want:
        assert torch.equal(got[name], want[name]), f"{name} differs after resume"


def test_cosine_schedule():
    assert cosine_lr(0.05, 0, 100) == 0.05
    assert math.isclose(cosine_lr(0.05, 50, 100), 0.025)
    assert cosine_lr(0.05, 99, 100) < 1e-4


def test_predictions_and_accuracy_of_any_predict_fn():
    test = load_dataset("synthetic", "test", limit=100)
    always_3 = lambda x: torch.nn.functional.one_hot(torch.full((len(x),), 3), 10).float()
    pred = predictions(always_3, test, (1, 28, 28), batch_size=32)
    assert pred.dtype == torch.int64 and pred.tolist() == [3] * 100
    assert accuracy(always_3, test, (1, 28, 28)) == 100.0 * (test.labels == 3).sum().item() / 100


def test_bad_config_values_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="optimizer"):
        train(replace(SHORT, optimizer="rmsprop"), tmp_path / "x", quiet=True)
    with pytest.raises(ConfigError, match="batch_size 4096 is larger"):
        train(replace(SHORT, batch_size=4096), tmp_path / "x", quiet=True)
