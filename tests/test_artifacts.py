"""Output folders are published whole or not at all, carry their kind, and honour the umask
(bitsmith.artifacts); every writing command goes through it (docs/guarantees.md).

The command tests run the CLI in process (tests.helpers.invoke) on a tiny synthetic float run and
on golden graphs: a failing command must leave an existing output byte for byte as it was, with
no temporary sibling behind.
"""

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bitsmith import artifacts
from bitsmith.artifacts import (CLIPQ_HEX, DEMO, FLOAT_RUN, HLS_EXPORT, HOMEWORK, INTEGER_GRAPH, MEMORY_FILES,
                                ONNX_MODEL, QAT_GRAPH, RANGES, RTL_WORK, SWEEP, UNKNOWN, VERIFY_WORK, check_target,
                                clean_stale, folder_kind, public_path, publishing, publishing_file)
from bitsmith.errors import BitsmithError, CheckpointError, ConfigError, GraphError, OutputError
from bitsmith.storage import write_json_atomic
from tests.helpers import golden, golden_path, invoke
from tests.quantized import TINY_RUN


def tree(path) -> dict:
    """Every file under `path` (or the file itself) with its sha256, and every folder."""
    path = Path(path)
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


def temporaries(parent) -> list[str]:
    return sorted(p.name for p in Path(parent).iterdir() if p.name.startswith("."))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- publishing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_publishing_replaces_a_folder_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    with publishing(out, RANGES) as stage:
        assert stage.path.parent == tmp_path and stage.path.name.startswith(".out.tmp-") and not out.exists()
        write_json_atomic(stage.path / "ranges.json", {"sigma_k": 3, "layers": [1]})
    assert folder_kind(out) is RANGES and temporaries(tmp_path) == []
    with publishing(out, RANGES) as stage:  # its own kind: replaced without force
        write_json_atomic(stage.path / "ranges.json", {"sigma_k": 3, "layers": [2]})
        (stage.path / "extra.csv").write_text("x\n")
    assert json.loads((out / "ranges.json").read_text())["layers"] == [2] and (out / "extra.csv").is_file()
    assert temporaries(tmp_path) == []


def test_publishing_leaves_the_old_folder_on_an_exception_or_discard(tmp_path):
    out = tmp_path / "out"
    with publishing(out, RANGES) as stage:
        write_json_atomic(stage.path / "ranges.json", {"sigma_k": 3, "layers": [1]})
    before = tree(out)
    with pytest.raises(ZeroDivisionError):
        with publishing(out, RANGES) as stage:
            write_json_atomic(stage.path / "ranges.json", {"sigma_k": 3, "layers": [2]})
            1 / 0
    with publishing(out, RANGES) as stage:
        write_json_atomic(stage.path / "ranges.json", {"sigma_k": 3, "layers": [3]})
        stage.discard()
    assert tree(out) == before and temporaries(tmp_path) == []


def test_a_killed_writer_leaves_the_old_folder_and_the_next_writer_cleans_up(tmp_path):
    out = tmp_path / "out"
    with publishing(out, RANGES) as stage:
        write_json_atomic(stage.path / "ranges.json", {"sigma_k": 3, "layers": [1]})
    before = tree(out)
    code = ("import os, signal; from bitsmith.artifacts import publishing, RANGES\n"
            "from bitsmith.storage import write_json_atomic\n"
            f"with publishing({str(out)!r}, RANGES) as stage:\n"
            "    write_json_atomic(stage.path / 'ranges.json', {'sigma_k': 3, 'layers': [2]})\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env)
    assert proc.returncode == -signal.SIGKILL
    assert tree(out) == before and len(temporaries(tmp_path)) == 1  # the dead writer's folder
    clean_stale(out)
    assert temporaries(tmp_path) == []


def test_the_previous_version_set_aside_by_a_cut_short_swap_is_restored(tmp_path):
    out = tmp_path / "out"
    aside = tmp_path / f".out.old-{dead_pid()}-abcd"
    aside.mkdir()
    (aside / "ranges.json").write_text('{"sigma_k": 3, "layers": []}')
    clean_stale(out)  # `out` is missing: the old copy comes back
    assert folder_kind(out) is RANGES and temporaries(tmp_path) == []
    live = tmp_path / f".out.tmp-{os.getppid()}-abcd"  # a live process's temporary folder is left alone
    live.mkdir()
    clean_stale(out)
    assert live.is_dir()


def test_single_file_publishing(tmp_path):
    out = tmp_path / "m.onnx"
    with publishing_file(out, ONNX_MODEL) as stage:
        stage.path.write_bytes(b"\x08\x0a\x12\x08bitsmith rest")
    assert out.read_bytes().startswith(b"\x08\x0a\x12\x08bitsmith") and folder_kind(tmp_path) is UNKNOWN
    with pytest.raises(RuntimeError):
        with publishing_file(out, ONNX_MODEL) as stage:
            stage.path.write_bytes(b"half")
            raise RuntimeError
    assert out.read_bytes().endswith(b"rest") and temporaries(tmp_path) == []


def test_public_path_and_relocate(tmp_path):
    with publishing(tmp_path / "demo", DEMO) as outer:
        with publishing(outer.path / "int8", INTEGER_GRAPH) as inner:
            assert public_path(inner.path / "graph.json") == tmp_path / "demo" / "int8" / "graph.json"
            assert inner.relocate({"a": [str(inner.path / "x")]}) == {"a": [str(outer.path / "int8" / "x")]}
        outer.discard()
    assert public_path(tmp_path / "x") == tmp_path / "x"


# -- kinds and paths -----------------------------------------------------------------------------

def test_each_kind_is_told_from_the_files_bitsmith_writes(tmp_path):
    golden("lenet5_w8a8").save(tmp_path / "graph")
    assert folder_kind(tmp_path / "graph") is INTEGER_GRAPH
    golden("lenet5_w8a8").save(tmp_path / "qat")
    (tmp_path / "qat" / "qat_weights.safetensors").write_bytes(b"")
    assert folder_kind(tmp_path / "qat") is QAT_GRAPH
    cases = {
        FLOAT_RUN: {"checkpoint.safetensors": ""},
        MEMORY_FILES: {"program.json": '{"format": "bitsmith.accel_images"}'},
        RTL_WORK: {"memory/program.json": '{"format": "bitsmith.accel_images"}', "rtl/tb_bitsmith.v": ""},
        HLS_EXPORT: {"config.h": "", "weights.hpp": ""},
        CLIPQ_HEX: {"manifest.json": '{"format": "bitsmith.clipq_hex"}'},
        RANGES: {"ranges.json": '{"sigma_k": 3, "layers": []}'},
        SWEEP: {"sweep.json": '{"points": [], "pareto": []}'},
        HOMEWORK: {"homework.json": '{"datasets": {}}'},
        DEMO: {"summary.json": '{"fp32_run": "a", "int8_graph": "b"}'},
        VERIFY_WORK: {"onnx/model.onnx": "", "hls/config.h": ""},
        UNKNOWN: {"notes.txt": "mine"},
    }
    for kind, files in cases.items():
        folder = tmp_path / kind.key
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        assert folder_kind(folder) is kind, kind.key
    (tmp_path / "empty").mkdir()
    assert folder_kind(tmp_path / "empty") is None and folder_kind(tmp_path / "absent") is None


def test_kind_names_match_the_writers():
    from bitsmith.accel.memory import FORMAT as MEMORY_FORMAT, PROGRAM_FILE
    from bitsmith.integer.graph import FORMAT as GRAPH_FORMAT, GRAPH_FILE
    from bitsmith.runs import CHECKPOINT_FILE, FORMAT as RUN_FORMAT, RUN_FILE
    from bitsmith.targets.clipq_hex import MANIFEST
    from bitsmith.targets.hls.render import CONFIG_FILE, WEIGHTS_FILE

    text = Path(artifacts.__file__).read_text()
    for literal in (MEMORY_FORMAT, PROGRAM_FILE, GRAPH_FORMAT, GRAPH_FILE, RUN_FORMAT, RUN_FILE, CHECKPOINT_FILE,
                    MANIFEST, CONFIG_FILE, WEIGHTS_FILE, "bitsmith.clipq_hex"):
        assert f'"{literal}"' in text, literal


def test_another_kind_is_refused_unless_force(tmp_path):
    golden("lenet5_w8a8").save(tmp_path / "g")
    with pytest.raises(OutputError, match=r"g is an integer graph folder; bitsmith hw compile writes accelerator "
                                          r"memory files. Choose another --out, or pass --force to replace it."):
        check_target(tmp_path / "g", MEMORY_FILES, command="bitsmith hw compile")
    assert check_target(tmp_path / "g", MEMORY_FILES, force=True) is INTEGER_GRAPH
    assert check_target(tmp_path / "g", INTEGER_GRAPH) is INTEGER_GRAPH
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="mine is not empty and is not a bitsmith output folder"):
        check_target(tmp_path / "mine", INTEGER_GRAPH)


def test_output_path_errors_name_the_path(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"file is a file; bitsmith quantize writes a folder \(an integer graph\)"):
        check_target(tmp_path / "file", INTEGER_GRAPH, command="bitsmith quantize")
    with pytest.raises(OutputError, match=r"cannot create .*file/sub/g: .*file is a file, not a folder"):
        check_target(tmp_path / "file" / "sub" / "g", INTEGER_GRAPH)
    with pytest.raises(OutputError, match=r"is a folder; bitsmith export writes a file \(an ONNX model\)"):
        check_target(tmp_path, ONNX_MODEL, command="bitsmith export")
    with pytest.raises(OutputError, match="exists and is not an ONNX model written by bitsmith"):
        check_target(tmp_path / "file", ONNX_MODEL)
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # as a non-root user sees a read-only folder
    with pytest.raises(OutputError, match=r"cannot write .*new/g: .* is not writable"):
        check_target(tmp_path / "new" / "g", INTEGER_GRAPH)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_published_folders_and_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with publishing(tmp_path / "g", INTEGER_GRAPH) as stage:
            golden("single_layer").save(stage.path)
            (stage.path / "sub").mkdir()
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "g") == 0o777 & ~umask and mode(tmp_path / "g" / "sub") == 0o777 & ~umask
    for name in ("graph.json", "tensors.safetensors"):
        assert mode(tmp_path / "g" / name) == 0o666 & ~umask


def test_umask_in_a_fresh_process(tmp_path):
    code = ("import os; os.umask(0o027); from bitsmith.artifacts import publishing, RANGES\n"
            "from bitsmith.storage import write_json_atomic\n"
            f"with publishing({str(tmp_path / 'r')!r}, RANGES) as stage:\n"
            "    write_json_atomic(stage.path / 'ranges.json', {'sigma_k': 3, 'layers': []})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert stat.S_IMODE((tmp_path / "r").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "r" / "ranges.json").stat().st_mode) == 0o640


# -- the commands ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    from tests.quantized import tiny_float_run

    return tiny_float_run(tmp_path_factory.mktemp("artifacts") / "fp32")


@pytest.fixture(scope="module")
def int8_graph(float_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts") / "int8"
    result = invoke("quantize", float_run, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_failing_quantize_leaves_the_graph_as_it_was(int8_graph, float_run, tmp_path):
    graph = _copy(int8_graph, tmp_path / "int8")
    before = tree(graph)
    r = invoke("quantize", float_run, "--wbits", "16", "--abits", "16", "--out", graph)  # overflows the accumulator
    assert isinstance(r.exception, GraphError) and "32-bit accumulator" in str(r.exception)
    assert tree(graph) == before and temporaries(tmp_path) == []


def test_quantize_replaces_its_own_graph_and_refuses_other_kinds(int8_graph, float_run, tmp_path):
    graph = _copy(int8_graph, tmp_path / "int8")
    r = invoke("quantize", float_run, "--wbits", "4", "--out", graph)
    assert r.exit_code == 0, r.output
    assert json.loads((graph / "metrics.json").read_text())["quant_config"]["weight_bits"] == 4
    run = _copy(float_run, tmp_path / "fp32")
    before = tree(run)
    r = invoke("quantize", run, "--out", run)
    assert isinstance(r.exception, OutputError) and str(r.exception) == (
        f"{run} is a float run folder; bitsmith quantize writes an integer graph. "
        "Choose another --out, or pass --force to replace it.")
    assert tree(run) == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = invoke("quantize", run, "--out", tmp_path / "mine")
    assert isinstance(r.exception, OutputError) and "not a bitsmith output folder" in str(r.exception)
    r = invoke("quantize", run, "--out", tmp_path / "mine", "--force")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["graph.json", "metrics.json", "tensors.safetensors"]
    assert temporaries(tmp_path) == []


def test_quantize_output_path_errors(float_run, tmp_path):
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file; bitsmith quantize writes a folder"),
                         (tmp_path / "file" / "g", "is a file, not a folder")):
        r = invoke("quantize", float_run, "--out", out)
        assert isinstance(r.exception, OutputError) and message in str(r.exception) and str(out) in str(r.exception)
    assert (tmp_path / "file").read_text() == "x"


def test_same_run_quantized_twice_gives_the_same_bytes(int8_graph, float_run, tmp_path):
    r = invoke("quantize", float_run, "--out", tmp_path / "again")
    assert r.exit_code == 0, r.output
    for name in ("graph.json", "tensors.safetensors"):
        assert (tmp_path / "again" / name).read_bytes() == (int8_graph / name).read_bytes()


def test_failing_train_leaves_the_run_as_it_was(float_run, tmp_path, monkeypatch):
    from bitsmith import train as train_module

    run = _copy(float_run, tmp_path / "fp32")
    before = tree(run)
    args = ["train", "--model", "lenet5", "--dataset", "synthetic", "--epochs", "1", "--out", run]
    r = invoke(*args)
    assert isinstance(r.exception, ConfigError) and "--resume" in str(r.exception) and "--force" in str(r.exception)
    r = invoke(*args, "--force", "--batch-size", "100000")  # fails after the folder check, before training
    assert isinstance(r.exception, ConfigError) and "batch_size 100000 is larger" in str(r.exception)
    assert tree(run) == before and temporaries(tmp_path) == []

    def broken_epoch(*a, **k):
        raise CheckpointError("injected failure in the middle of the run")

    monkeypatch.setattr(train_module, "_train_epoch", broken_epoch)
    r = invoke(*args, "--force")
    assert isinstance(r.exception, CheckpointError) and "injected" in str(r.exception)
    assert tree(run) == before and temporaries(tmp_path) == []


def test_train_force_replaces_a_run_and_other_kinds_only_when_finished(float_run, tmp_path):
    from bitsmith.runs import read_checkpoint
    from bitsmith.train import TrainConfig, train

    run = _copy(float_run, tmp_path / "fp32")
    train(TrainConfig(**{**TINY_RUN, "seed": 5}), run, quiet=True, force=True)
    assert read_checkpoint(run).meta["train_config"]["seed"] == 5
    golden("single_layer").save(tmp_path / "g")
    with pytest.raises(OutputError, match="g is an integer graph folder; bitsmith train writes a float run"):
        train(TrainConfig(**TINY_RUN), tmp_path / "g", quiet=True)
    with pytest.raises(OutputError, match="integer graph folder"):
        train(TrainConfig(**TINY_RUN), tmp_path / "g", quiet=True, resume=True)
    train(TrainConfig(**TINY_RUN), tmp_path / "g", quiet=True, force=True)
    assert folder_kind(tmp_path / "g") is FLOAT_RUN and not (tmp_path / "g" / "graph.json").exists()
    assert temporaries(tmp_path) == []


def test_failing_export_leaves_the_file_as_it_was(int8_graph, tmp_path, monkeypatch):
    import bitsmith.onnx
    import bitsmith.verify

    model = tmp_path / "m.onnx"
    assert invoke("export", int8_graph, "--out", model, "--check", "4").exit_code == 0
    qdq = tmp_path / "q.onnx"
    assert invoke("export", int8_graph, "--out", qdq, "--qdq", "--check", "4").exit_code == 0
    before_model, before_qdq = tree(model), tree(qdq)

    def refuses(*a, **k):
        raise CheckpointError("onnxruntime cannot load the model (injected)")

    monkeypatch.setattr(bitsmith.verify, "qdq_agreement", refuses)
    r = invoke("export", int8_graph, "--out", qdq, "--qdq", "--check", "4")
    assert isinstance(r.exception, CheckpointError)
    real = bitsmith.onnx.export.run_onnx

    def off_by_one(path, x, all_outputs=False):  # the written file disagrees with the engine
        return real(path, x, all_outputs=True) if all_outputs else real(path, x) + 1

    monkeypatch.setattr(bitsmith.onnx, "run_onnx", off_by_one)
    r = invoke("export", int8_graph, "--out", model, "--check", "4", "--json")
    # (the console wraps the message at its width, which depends on the path's length: read it unwrapped)
    assert r.exit_code == 1 and "not written" in " ".join(r.output.split())
    assert next(json.loads(line) for line in r.output.splitlines() if line.startswith("{"))["written"] is False
    assert tree(model) == before_model and tree(qdq) == before_qdq and temporaries(tmp_path) == []


def test_export_refuses_a_foreign_file_and_a_folder(int8_graph, tmp_path):
    (tmp_path / "notes.onnx").write_text("mine")
    r = invoke("export", int8_graph, "--out", tmp_path / "notes.onnx", "--check", "0")
    assert isinstance(r.exception, OutputError) and "pass --force" in str(r.exception)
    assert (tmp_path / "notes.onnx").read_text() == "mine"
    assert invoke("export", int8_graph, "--out", tmp_path / "notes.onnx", "--check", "0", "--force").exit_code == 0
    r = invoke("export", int8_graph, "--out", tmp_path, "--check", "0")
    assert isinstance(r.exception, OutputError) and "is a folder" in str(r.exception)


def test_mixed_graph_folder_is_refused_naming_the_file(tmp_path):
    a, b = golden("lenet5_w8a8"), golden("lenet5_w8a8")
    key = next(k for k in b.params if k.endswith("weight"))
    b.params[key] = b.params[key].flip(0).contiguous()  # another valid graph, same names and shapes
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    (tmp_path / "a" / "tensors.safetensors").write_bytes((tmp_path / "b" / "tensors.safetensors").read_bytes())
    r = invoke("eval", tmp_path / "a")
    assert isinstance(r.exception, GraphError)
    assert f"{tmp_path / 'a' / 'tensors.safetensors'} does not belong to {tmp_path / 'a' / 'graph.json'}" in str(r.exception)


def test_hw_compile_refuses_a_graph_folder_and_replaces_its_own(tmp_path):
    graph = golden_path("single_layer")
    golden("lenet5_w8a8").save(tmp_path / "g")
    before = tree(tmp_path / "g")
    r = invoke("hw", "compile", graph, "--out", tmp_path / "g", "--images", "0")
    assert isinstance(r.exception, OutputError) and "integer graph folder" in str(r.exception)
    assert tree(tmp_path / "g") == before
    for images in ("0", "1"):
        r = invoke("hw", "compile", graph, "--out", tmp_path / "mem", "--images", images, "--data", "random")
        assert r.exit_code == 0, r.output
    assert "In8.hex" in json.loads((tmp_path / "mem" / "program.json").read_text())["sha256"]
    assert temporaries(tmp_path) == []


def test_ranges_clipq_hex_and_sweep_publish_their_folders(float_run, tmp_path):
    r = invoke("ranges", float_run, "--out", tmp_path / "rg", "--calib-batches", "1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[-1])["files"]["csv"] == str(tmp_path / "rg" / "ranges.csv")
    assert folder_kind(tmp_path / "rg") is RANGES
    r = invoke("export", golden_path("lenet5_clipq"), "--format", "clipq-hex", "--out", tmp_path / "rg")
    assert isinstance(r.exception, OutputError) and "ranges report folder" in str(r.exception)
    assert invoke("export", golden_path("lenet5_clipq"), "--format", "clipq-hex", "--out", tmp_path / "hex").exit_code == 0
    assert folder_kind(tmp_path / "hex") is CLIPQ_HEX
    r = invoke("hw", "sweep", golden_path("single_layer"), "--sizes", "1,2", "--out", tmp_path / "sw", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[-1])["files"]["json"] == str(tmp_path / "sw" / "sweep.json")
    assert folder_kind(tmp_path / "sw") is SWEEP and temporaries(tmp_path) == []


@pytest.mark.skipif(__import__("shutil").which("iverilog") is None, reason="iverilog not installed")
def test_rtl_out_is_published_and_can_move(tmp_path):
    out = tmp_path / "rtl"
    r = invoke("rtl", golden_path("fsm_one_layer"), "--pe", "4", "--simd", "4", "--data", "random", "--out", out,
               "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[-1])["details"]["work_dir"] == str(out)
    assert folder_kind(out) is RTL_WORK and temporaries(tmp_path) == []
    assert '$readmemh("../memory/param.hex"' in (out / "rtl" / "bitsmith_top.v").read_text()
    assert '$readmemh("../memory/expected/L00.hex"' in (out / "rtl" / "tb_bitsmith.v").read_text()
    moved = tmp_path / "elsewhere"
    out.rename(moved)  # the testbench names its memory files relative to the rtl folder
    log = subprocess.run(["vvp", "-n", "tb_bitsmith.vvp"], cwd=moved / "rtl", capture_output=True, text=True)
    assert "SUMMARY" in log.stdout and "MISMATCH" not in log.stdout


def test_qat_and_homework_refuse_other_kinds(float_run, tmp_path):
    from bitsmith.experiments.homework import run_homework
    from bitsmith.pipeline import qat_run
    from bitsmith.quant.api import QATConfig

    golden("single_layer").save(tmp_path / "g")
    with pytest.raises(OutputError, match="integer graph folder; bitsmith qat writes a QAT integer graph"):
        qat_run(float_run, tmp_path / "g", QATConfig("lsq", epochs=1), quiet=True)
    with pytest.raises(OutputError, match="bitsmith homework writes the homework tables"):
        run_homework(tmp_path / "g", epochs=1, quiet=True, datasets=[("synthetic", None)])
    assert folder_kind(tmp_path / "g") is INTEGER_GRAPH


def test_every_writing_command_has_force():
    for args in (["train"], ["quantize"], ["qat"], ["ranges"], ["homework"], ["export"], ["demo"],
                 ["hw", "compile"], ["hw", "sweep"], ["hw", "hls"], ["rtl"], ["verify"]):
        r = invoke(*args, "--help")
        assert "--force" in r.output, args


def test_bitsmith_errors_exit_2_from_the_command_line(tmp_path):
    (tmp_path / "file").write_text("x")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "bitsmith.cli", "hw", "compile", str(golden_path("single_layer")),
                           "--out", str(tmp_path / "file"), "--images", "0"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "is a file" in proc.stderr and "Traceback" not in proc.stderr
    assert isinstance(OutputError("x"), BitsmithError) and isinstance(OutputError("x"), ConfigError)


def test_demo_reuses_its_float_run_and_a_failing_demo_leaves_the_folder(tmp_path, monkeypatch):
    import bitsmith.pipeline
    from bitsmith.train import TrainConfig

    monkeypatch.setattr(bitsmith.pipeline, "DEMO_TRAIN", TrainConfig(**TINY_RUN))
    out = tmp_path / "demo"
    first = bitsmith.pipeline.demo(out, quiet=True)
    assert not first["reused_float_run"] and folder_kind(out) is DEMO
    assert first["int8_graph"] == str(out / "int8")
    source = json.loads((out / "int8" / "graph.json").read_text())["metadata"]["source_run"]
    assert source == str((out / "fp32").absolute())  # the final place, not the temporary folder
    second = bitsmith.pipeline.demo(out, quiet=True)
    assert second["reused_float_run"]
    before = tree(out)

    def fails(*a, **k):
        raise GraphError("injected failure while quantizing")

    monkeypatch.setattr(bitsmith.pipeline, "quantize_run", fails)
    with pytest.raises(GraphError, match="injected"):
        bitsmith.pipeline.demo(out, quiet=True, fresh=True)
    assert tree(out) == before and temporaries(tmp_path) == []


def test_relative_and_dot_outputs(int8_graph, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("sub").mkdir()
    r = invoke("hw", "compile", golden_path("single_layer"), "--out", "sub/../mem", "--images", "0")
    assert r.exit_code == 0, r.output
    assert folder_kind(tmp_path / "mem") is MEMORY_FILES and temporaries(tmp_path) == []
    monkeypatch.chdir(tmp_path / "mem")
    r = invoke("hw", "compile", golden_path("single_layer"), "--out", ".", "--images", "0")
    assert r.exit_code == 0, r.output
    assert temporaries(tmp_path) == [] and temporaries(tmp_path / "mem") == []
