"""Memory-file folders verify themselves: program.json records the sha256 of every file it lists
and the readers (and the RTL generator) check the files they read."""

import json
import shutil

import pytest

from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.config import AccelConfig
from bitsmith.accel.memory import PROGRAM_FILE, export_memory, read_expected, read_program, verify_memory_folder
from bitsmith.errors import BitsmithWarning, DataError
from bitsmith.storage import sha256_file
from bitsmith.verify import verification_inputs
from tests.helpers import golden

CONFIG = AccelConfig(pe=4, simd=4)


def _compile(name, out):
    graph = golden(name)
    export_memory(graph, verification_inputs(graph, 1, "random").x, out, CONFIG)
    return graph


def test_program_json_records_every_file_it_lists(tmp_path):
    _compile("single_layer", tmp_path / "m")
    doc = json.loads((tmp_path / "m" / PROGRAM_FILE).read_text())
    assert sorted(doc["sha256"]) == sorted(doc["files"])
    assert all(doc["sha256"][name] == sha256_file(tmp_path / "m" / name) for name in doc["files"])
    assert verify_memory_folder(tmp_path / "m") == doc
    read_program(tmp_path / "m")
    read_expected(tmp_path / "m", 0)


def test_a_changed_word_is_refused_naming_the_file(tmp_path):
    _compile("single_layer", tmp_path / "m")
    path = tmp_path / "m" / "W8.hex"
    text = path.read_text()
    path.write_text(("1" if text[0] != "1" else "2") + text[1:])
    with pytest.raises(DataError, match=f"{path} does not match .*program.json.*hw compile"):
        read_program(tmp_path / "m")
    expected = tmp_path / "m" / "expected" / "L00.hex"
    expected.write_text(expected.read_text() + "00\n")
    with pytest.raises(DataError, match="L00.hex does not match"):
        read_expected(tmp_path / "m", 0)


def test_files_of_another_compilation_are_refused(tmp_path):
    _compile("single_layer", tmp_path / "a")
    _compile("single_group_full", tmp_path / "b")
    shutil.copy(tmp_path / "b" / "param.hex", tmp_path / "a" / "param.hex")
    with pytest.raises(DataError, match="param.hex does not match"):
        verify_memory_folder(tmp_path / "a")


def test_the_rtl_generator_checks_the_memory_folder(tmp_path):
    from bitsmith.rtl.generate import generate_rtl

    graph = _compile("single_layer", tmp_path / "m")
    program = compile_graph(graph, CONFIG)
    (tmp_path / "m" / "In8.hex").write_text("00" * 8 + "\n")
    with pytest.raises(DataError, match="In8.hex does not match"):
        generate_rtl(program, tmp_path / "rtl", memory_dir=tmp_path / "m")


def test_program_json_without_digests_reads_with_a_warning(tmp_path):
    _compile("single_layer", tmp_path / "m")
    doc = json.loads((tmp_path / "m" / PROGRAM_FILE).read_text())
    del doc["sha256"]  # as bitsmith wrote it before
    (tmp_path / "m" / PROGRAM_FILE).write_text(json.dumps(doc))
    with pytest.warns(BitsmithWarning, match="records no sha256"):
        read_program(tmp_path / "m")


@pytest.mark.parametrize("old", [1, 2])
def test_a_folder_of_an_older_layout_is_refused(tmp_path, old):
    """Version 1 laid W8.hex out group by group and had no LS.hex; version 2's descriptors held
    groups in word 21 where version 3 holds in_ch / groups: read as version 3 either would come back
    scrambled, so it is refused with the way out."""
    _compile("single_layer", tmp_path / "m")
    doc = json.loads((tmp_path / "m" / PROGRAM_FILE).read_text())
    assert doc["version"] == 3 and "LS.hex" in doc["files"]
    doc["version"] = old
    (tmp_path / "m" / PROGRAM_FILE).write_text(json.dumps(doc))
    with pytest.raises(DataError, match=rf"memory-folder version {old}, .*version 3.*Re-create the folder with bitsmith hw compile"):
        read_program(tmp_path / "m")
