"""Float run folders: the checkpoint verifies itself, run.json names the checkpoint it describes,
and a run interrupted between the two writes still reads and resumes (bitsmith.runs)."""

import json
import shutil
from dataclasses import replace

import pytest

import bitsmith.runs
from bitsmith.errors import CheckpointError
from bitsmith.runs import CHECKPOINT_FILE, RUN_FILE, load_run, read_checkpoint
from bitsmith.storage import sha256_file
from bitsmith.train import TrainConfig, train

TINY = TrainConfig(model="lenet5", dataset="synthetic", epochs=2, batch_size=64, limit_train=128, limit_test=32)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    train(TINY, out, quiet=True)
    return out


def _copy(src, tmp_path, name="run"):
    return shutil.copytree(src, tmp_path / name)


def test_run_json_records_the_checkpoint_sha256(run):
    assert json.loads((run / RUN_FILE).read_text())["checkpoint_sha256"] == sha256_file(run / CHECKPOINT_FILE)


def test_a_flipped_byte_in_the_checkpoint_is_refused(run, tmp_path):
    out = _copy(run, tmp_path)
    path = out / CHECKPOINT_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"run checkpoint {path} is corrupt"):
        load_run(out)


def test_interrupted_between_checkpoint_and_run_json_still_reads_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = bitsmith.runs.write_json_atomic

    def killed_at_epoch_2(path, obj):
        if path.name == RUN_FILE and obj.get("epoch") == 2:
            raise KeyboardInterrupt  # the process dies after the checkpoint, before run.json
        return real(path, obj)

    monkeypatch.setattr(bitsmith.runs, "write_json_atomic", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, out, quiet=True)
    monkeypatch.undo()
    assert json.loads((out / RUN_FILE).read_text())["epoch"] == 1  # one write behind its checkpoint
    assert read_checkpoint(out).meta["epoch"] == 2
    metrics = train(replace(TINY, epochs=2), out, resume=True, quiet=True)
    assert metrics["epochs_completed"] == 2
    load_run(out)


def test_run_json_of_another_run_is_refused(run, tmp_path):
    out = _copy(run, tmp_path)
    train(replace(TINY, seed=7), tmp_path / "other", quiet=True)
    shutil.copy(tmp_path / "other" / RUN_FILE, out / RUN_FILE)
    with pytest.raises(CheckpointError, match=f"{out / RUN_FILE} does not describe {out / CHECKPOINT_FILE}.*mixes"):
        load_run(out)
    with pytest.raises(CheckpointError, match="mixes files of two runs"):
        train(TINY, out, resume=True, quiet=True)


def test_run_json_ahead_of_its_checkpoint_is_refused_and_old_run_json_is_not_checked(run, tmp_path):
    out = _copy(run, tmp_path)
    view = json.loads((out / RUN_FILE).read_text())
    view.update(epoch=3, checkpoint_sha256="0" * 64)
    (out / RUN_FILE).write_text(json.dumps(view))
    with pytest.raises(CheckpointError, match="does not describe"):
        read_checkpoint(out)
    del view["checkpoint_sha256"]  # run.json as bitsmith wrote it before
    (out / RUN_FILE).write_text(json.dumps(view))
    assert read_checkpoint(out).meta["epoch"] == 2
