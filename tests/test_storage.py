"""bitsmith.storage: self-verifying safetensors files, deterministic bytes, modes from the umask,
write errors that name the path."""

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from bitsmith.errors import CheckpointError, OutputError
from bitsmith.storage import (DIGEST_KEY, current_umask, load_tensors, read_tensors, save_tensors_atomic,
                              sha256_file, tensors_bytes, write_bytes_atomic, write_json_atomic)

TENSORS = {"conv.weight": torch.arange(-8, 8, dtype=torch.int8).reshape(2, 8), "bias": torch.tensor([1, -2], dtype=torch.int32),
           "scale": torch.tensor([0.5, 0.25])}


def _header_length(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def test_saved_file_verifies_itself_and_reads_back(tmp_path):
    path = tmp_path / "t.safetensors"
    digest = save_tensors_atomic(path, TENSORS, {"format": "x", "config": "{}"})
    assert digest == sha256_file(path)  # the return value is the sha256 of the file's bytes
    f = read_tensors(path)
    assert f.self_verified and f.sha256 == digest
    assert f.metadata == {"format": "x", "config": "{}"}  # the digest key is not part of the metadata
    assert all(torch.equal(f.tensors[k], v) for k, v in TENSORS.items())
    assert load_file(path).keys() == TENSORS.keys()  # still a plain safetensors file for other tools
    header = json.loads(path.read_bytes()[8:_header_length(path.read_bytes())])
    assert len(header["__metadata__"][DIGEST_KEY]) == 64


@pytest.mark.parametrize("where", ["data", "tensor name", "metadata value", "shape"])
def test_a_flipped_byte_anywhere_is_refused_naming_the_file(tmp_path, where):
    path = tmp_path / "ckpt.safetensors"
    save_tensors_atomic(path, TENSORS, {"format": "x"})
    data = bytearray(path.read_bytes())
    head = _header_length(data)
    text = bytes(data[:head])
    if where == "data":
        index = len(data) - 3
    elif where == "tensor name":
        index = text.index(b"conv.weight") + 2
    elif where == "metadata value":
        index = text.index(b'"format":"x"') + len('"format":"')
    else:
        index = text.index(b'"shape":[2,8]') + len('"shape":[')
    data[index] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path).replace("\\", "\\\\") + ".*(corrupt|truncated)"):
        load_tensors(path, "run checkpoint")


def test_files_without_a_digest_still_load(tmp_path):
    path = tmp_path / "old.safetensors"
    save_file(TENSORS, path, metadata={"format": "x"})  # as bitsmith wrote them before
    f = read_tensors(path)
    assert not f.self_verified and f.metadata == {"format": "x"}


def test_same_tensors_and_metadata_give_the_same_bytes_in_every_process():
    # safetensors writes metadata keys in a random order per process; bitsmith sorts them.
    code = ("import hashlib, torch; from bitsmith.storage import tensors_bytes; "
            "print(hashlib.sha256(tensors_bytes({'a': torch.arange(4), 'b': torch.ones(2)}, "
            "{'format': 'x', 'config': '{}', 'bitsmith': '1', 'z': '2'})).hexdigest())")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
               for _ in range(2)}
    assert len(digests) == 1
    assert tensors_bytes(TENSORS, {"b": "1", "a": "2"}) == tensors_bytes(TENSORS, {"a": "2", "b": "1"})


def test_write_errors_name_the_path(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"cannot write .*file/sub/a.json.*a part of that path is a file"):
        write_json_atomic(tmp_path / "file" / "sub" / "a.json", {})
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(OutputError, match=r"cannot write .*folder.json"):
        write_json_atomic(tmp_path / "folder.json", {})
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.raises(OutputError, match=r"cannot write .*b.bin: Permission denied; it \(or its folder\) is not writable"):
        write_bytes_atomic(tmp_path / "b.bin", b"x")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder_is_an_output_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            write_bytes_atomic(folder / "x", b"x")
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        write_json_atomic(tmp_path / "a.json", {})
        save_tensors_atomic(tmp_path / "t.safetensors", TENSORS)
    finally:
        os.umask(old)
    for name in ("a.json", "t.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
