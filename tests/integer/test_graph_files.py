"""graph.json and tensors.safetensors are tied: graph.json records the sha256 of the tensors file,
which verifies itself too, so a mixed folder or a flipped byte is refused naming the file."""

import json
import warnings

import pytest

from bitsmith.errors import BitsmithWarning, GraphError
from bitsmith.integer import load
from bitsmith.storage import sha256_file
from tests.helpers import golden


@pytest.fixture
def saved(tmp_path):
    return golden("lenet5_w8a8").save(tmp_path / "g")


def test_graph_json_records_the_sha256_of_its_tensors(saved):
    doc = json.loads((saved / "graph.json").read_text())
    assert list(doc)[:3] == ["format", "version", "tensors_sha256"]
    assert doc["tensors_sha256"] == sha256_file(saved / "tensors.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a tied graph loads without a warning
        load(saved)


def test_tensors_of_another_graph_are_refused_naming_the_file(saved, tmp_path):
    other = golden("lenet5_w8a8")
    key = next(k for k in other.params if k.endswith("weight"))
    other.params[key] = -other.params[key].clamp(min=-127)  # a valid graph with the same names and shapes
    other.save(tmp_path / "other")
    (saved / "tensors.safetensors").write_bytes((tmp_path / "other" / "tensors.safetensors").read_bytes())
    load(tmp_path / "other")  # each file is fine on its own
    with pytest.raises(GraphError) as e:
        load(saved)
    message = str(e.value)
    assert message.startswith(f"{saved / 'tensors.safetensors'} does not belong to {saved / 'graph.json'}")
    assert "bitsmith quantize" in message


def test_a_flipped_byte_in_the_tensors_is_refused(saved):
    path = saved / "tensors.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(GraphError, match=f"{path}.* is corrupt: its content does not match the sha256 recorded"):
        load(saved)


def test_graph_without_a_digest_loads_with_a_warning(saved):
    doc = json.loads((saved / "graph.json").read_text())
    del doc["tensors_sha256"]  # as bitsmith wrote graphs before
    (saved / "graph.json").write_text(json.dumps(doc))
    with pytest.warns(BitsmithWarning, match=f"{saved / 'graph.json'} records no sha256 of tensors.safetensors"):
        graph = load(saved)
    assert graph.nodes


def test_malformed_digest_is_refused(saved):
    doc = json.loads((saved / "graph.json").read_text())
    doc["tensors_sha256"] = "ABC"
    (saved / "graph.json").write_text(json.dumps(doc))
    with pytest.raises(GraphError, match="tensors_sha256.*64 lowercase hexadecimal digits"):
        load(saved)
