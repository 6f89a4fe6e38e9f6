"""`bitsmith run PIPELINE.toml` (bitsmith.pipefile): end to end on tiny synthetic data, the cache
(what re-runs after a change, --force), kill -9 and resume, --dry-run, and every bad-input error
with its key and line."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bitsmith.errors import ConfigError, OutputError
from bitsmith.pipefile import load_pipeline, run_pipeline
from bitsmith.pipefile.locate import KeyLines
from tests.helpers import invoke

ROOT = Path(__file__).resolve().parents[1]

#: LeNet-5, one epoch on 256 synthetic images (tests/quantized.py's TINY_RUN) → W8A8 → checks.
TINY = """\
[pipeline]
description = "tiny"

[stages.fp32]
kind = "train"
model = "lenet5"
dataset = "synthetic"
epochs = 1
batch_size = 64
limit_train = 256
limit_test = 64

[stages.int8]
kind = "quantize"
from = "fp32"
wbits = 8
abits = 8
calib_batches = 1

[stages.check]
kind = "verify"
from = "int8"
backends = ["onnx", "accel"]
images = 2

[stages.onnx]
kind = "export"
from = "int8"
check = 4
"""


def _write(folder: Path, text: str, name: str = "pipe.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _records(out: Path) -> dict[str, tuple[int, int]]:
    return {p.parent.name: _stamp(p) for p in out.glob("*/stage.json")}


def _status(result: dict) -> dict[str, str]:
    return {e["stage"]: e["status"] for e in result["stages"]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny pipeline run once; tests copy its output folder."""
    folder = tmp_path_factory.mktemp("pipe")
    path = _write(folder, TINY)
    result = run_pipeline(path, out=folder / "out", quiet=True)
    return path, folder / "out", result


def _copy(finished, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished[1], out)
    return out


def test_a_pipeline_runs_end_to_end(finished):
    from bitsmith.integer import load

    _, out, result = finished
    assert _status(result) == {"fp32": "ran", "int8": "ran", "check": "ran", "onnx": "ran"}
    assert result["passed"]
    assert (out / "fp32" / "run" / "checkpoint.safetensors").is_file()
    graph = load(out / "int8" / "graph")
    assert graph.metadata["source_run"] == str((out / "fp32" / "run").resolve())
    verify = json.loads((out / "check" / "verify.json").read_text())
    assert verify["passed"] and set(verify["backends"]) == {"onnx", "accel"}
    assert str(out / "check") in json.dumps(verify) and ".tmp-" not in json.dumps(verify)  # final paths only
    assert (out / "onnx" / "model.onnx").is_file()
    assert result["stages"][3]["figures"]["mismatched_elements"] == 0
    record = json.loads((out / "int8" / "stage.json").read_text())
    assert record["passed"] and record["settings"]["wbits"] == 8 and "graph/graph.json" in record["files"]
    assert not (out / ".work").exists()  # the finished run moved into its stage folder
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_a_rerun_redoes_nothing(finished, tmp_path):
    path, _, _ = finished
    out = _copy(finished, tmp_path)
    before = _records(out)
    result = run_pipeline(path, out=out, quiet=True)
    assert set(_status(result).values()) == {"cached"}
    assert result["stages"][1]["figures"] == finished[2]["stages"][1]["figures"]
    assert _records(out) == before


def test_changing_only_the_bits_reruns_quantize_and_later_not_training(finished, tmp_path):
    out = _copy(finished, tmp_path)
    before = _records(out)
    checkpoint = _stamp(out / "fp32" / "run" / "checkpoint.safetensors")
    path = _write(tmp_path, TINY.replace("wbits = 8", "wbits = 4"))
    plan = {s["stage"]: s for s in run_pipeline(path, out=out, dry_run=True)["plan"]}
    assert plan["fp32"]["action"] == "cached"
    assert plan["int8"]["action"] == "run" and plan["int8"]["reason"] == "settings changed: wbits 8 -> 4"
    assert plan["check"]["action"] == plan["onnx"]["action"] == "run"
    result = run_pipeline(path, out=out, quiet=True)
    assert _status(result) == {"fp32": "cached", "int8": "ran", "check": "ran", "onnx": "ran"}
    after = _records(out)
    assert after["fp32"] == before["fp32"]
    assert _stamp(out / "fp32" / "run" / "checkpoint.safetensors") == checkpoint  # training did not run
    assert all(after[s] != before[s] for s in ("int8", "check", "onnx"))
    graph = json.loads((out / "int8" / "graph" / "graph.json").read_text())
    assert '"weight_bits": 4' in json.dumps(graph) or json.loads((out / "int8" / "stage.json").read_text())[
        "settings"]["wbits"] == 4
    # and back: the 8-bit stage has another key, so it runs again (records hold one key each)
    again = run_pipeline(finished[0], out=out, dry_run=True)["plan"]
    assert [s["action"] for s in again] == ["cached", "run", "run", "run"]


def test_force_redoes_the_stage_and_what_reads_it(finished, tmp_path):
    path, _, _ = finished
    out = _copy(finished, tmp_path)
    before = _records(out)
    result = run_pipeline(path, out=out, force=["check"], quiet=True)
    assert _status(result) == {"fp32": "cached", "int8": "cached", "check": "ran", "onnx": "cached"}
    assert _records(out)["int8"] == before["int8"]
    plan = run_pipeline(path, out=out, force=["int8"], dry_run=True)["plan"]
    assert [(s["action"], s["reason"]) for s in plan] == [
        ("cached", "finished with this key"), ("run", "--force"),
        ("run", "--force int8 (it reads int8)"), ("run", "--force int8 (it reads int8)")]
    with pytest.raises(ConfigError, match="--force nope: no such stage"):
        run_pipeline(path, out=out, force=["nope"])


def test_writing_a_default_or_leaving_it_out_is_the_same_stage(finished, tmp_path):
    path, _, _ = finished
    out = _copy(finished, tmp_path)
    same = _write(tmp_path, TINY.replace("calib_batches = 1", "calib_batches = 1\nper_channel = false\n"
                                                              "multiplier_bits = 32"), "same.toml")
    assert [s["action"] for s in run_pipeline(same, out=out, dry_run=True)["plan"]] == ["cached"] * 4
    keys = [load_pipeline(_write(tmp_path, TINY.replace("epochs = 1", f"epochs = 1\nlr = {lr}"), "lr.toml"))
            .stages["fp32"].settings["lr"] for lr in ("1", "1.0")]
    assert keys == [1.0, 1.0] and isinstance(keys[0], float)


def test_a_changed_output_file_reruns_its_stage(finished, tmp_path):
    path, _, _ = finished
    out = _copy(finished, tmp_path)
    (out / "int8" / "graph" / "metrics.json").write_text("{}")
    plan = {s["stage"]: s for s in run_pipeline(path, out=out, dry_run=True)["plan"]}
    assert plan["int8"]["action"] == "run"
    assert plan["int8"]["reason"] == "its output changed since it finished: graph/metrics.json"
    assert plan["fp32"]["action"] == "cached" and plan["check"]["action"] == "run"


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    path = _write(tmp_path, TINY)
    result = invoke("run", path, "--out", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = [l for l in result.output.splitlines() if "│" in l]
    assert len(lines) == 4
    assert "fp32" in lines[0] and "train" in lines[0] and "run" in lines[0] and "not run yet" in lines[0]
    assert "int8" in lines[1] and "stage 'fp32', which it reads, runs" in lines[1]
    assert not (tmp_path / "out").exists()
    doc = json.loads(invoke("run", path, "--out", tmp_path / "out", "--dry-run", "--json").output)
    assert doc["dry_run"] and [s["stage"] for s in doc["plan"]] == ["fp32", "int8", "check", "onnx"]
    assert len({s["key"] for s in doc["plan"]}) == 4


def test_the_cli_runs_and_caches(finished, tmp_path):
    path, _, _ = finished
    out = _copy(finished, tmp_path)
    result = invoke("run", path, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output.strip().splitlines()[-1])
    assert doc["passed"] and {e["status"] for e in doc["stages"]} == {"cached"}


def _temporaries(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name.startswith(".") and ".tmp-" in p.name] if out.is_dir() else []


def test_kill_9_mid_run_then_rerun_finishes_without_redoing_finished_stages(tmp_path):
    """The CLI in a subprocess, killed with SIGKILL while a stage after training is being written;
    the next run keeps every finished stage (same inode and mtime) and redoes the rest."""
    path = _write(tmp_path, TINY.replace("images = 2", "images = 16"))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bitsmith.cli", "run", str(path), "--out", str(out), "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_in = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            later = [p for p in _temporaries(out) if not p.name.startswith(".fp32.")]
            if (out / "fp32" / "stage.json").is_file() and later:
                proc.send_signal(signal.SIGKILL)
                killed_in = later[0].name.split(".")[1]
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and killed_in is None:
            proc.kill()
        proc.wait()
    assert killed_in is not None, f"the run ended before a later stage was caught: {proc.stderr.read().decode()}"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / killed_in / "stage.json").exists()  # the killed stage did not finish
    finished_before = _records(out)
    assert "fp32" in finished_before and killed_in not in finished_before
    plan = {s["stage"]: s for s in run_pipeline(path, out=out, dry_run=True)["plan"]}
    assert all(plan[s]["action"] == "cached" for s in finished_before)
    assert plan[killed_in]["action"] == "run"
    result = run_pipeline(path, out=out, quiet=True)
    assert result["passed"]
    assert {s for s, st in _status(result).items() if st == "cached"} == set(finished_before)
    after = _records(out)
    assert all(after[s] == finished_before[s] for s in finished_before)
    assert _temporaries(out) == []  # the killed stage's temporary folder was cleaned up


def test_a_killed_training_stage_resumes_from_its_last_epoch(tmp_path):
    """Training checkpoints into OUT/.work/<stage>-<key>; a re-run with the same key resumes it."""
    from bitsmith.train import TrainConfig, train

    path = _write(tmp_path, TINY.replace("epochs = 1", "epochs = 2"))
    out = tmp_path / "out"
    step = run_pipeline(path, out=out, dry_run=True)["plan"][0]
    out.mkdir()  # a run writes its pipeline.json before its first stage
    (out / "pipeline.json").write_text(json.dumps({"format": "bitsmith.pipeline"}))
    work = out / ".work" / f"fp32-{step['key'][:16]}"
    # what a run killed after its first epoch leaves behind: the checkpoint of epoch 1
    partial = TrainConfig(model="lenet5", dataset="synthetic", epochs=2, batch_size=64, limit_train=256,
                          limit_test=64)

    class Stop(Exception):
        pass

    def stop_after_first(record):
        raise Stop

    with pytest.raises(Stop):
        train(partial, work, quiet=True, progress=stop_after_first)
    first_epoch = json.loads((work / "run.json").read_text())
    assert first_epoch["epoch"] == 1
    result = run_pipeline(path, out=out, quiet=True)
    assert result["passed"]
    history = json.loads((out / "fp32" / "run" / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[0] == first_epoch["metrics"]["history"][0]  # epoch 1 kept, not trained again
    assert not work.exists() and not (out / ".work").exists()


# -- bad input -------------------------------------------------------------------------------------

def _line_of(text: str, needle: str) -> int:
    """The first line holding `needle`; "A>B": the first line holding B after the first holding A."""
    after, _, needle = needle.rpartition(">") if ">" in needle else ("", "", needle)
    lines = text.splitlines()
    start = _line_of(text, after) if after else 0
    return next(i for i, line in enumerate(lines[start:], start=start + 1) if needle in line)


BAD = [
    # (name, replace this, with this, the line to name (a text on it), the key, words of the message)
    ("syntax", 'wbits = 8', 'wbits = = 8', 'wbits = = 8', None, "not valid TOML"),
    ("unknown top key", '[pipeline]', '[pipelines]', '[pipelines]', "pipelines", "unknown key"),
    ("unknown pipeline key", 'description = "tiny"', 'outdir = "x"', 'outdir', "pipeline.outdir",
     "allowed: out, data_dir, description"),
    ("unknown kind", 'kind = "quantize"', 'kind = "quantise"', 'quantise', "stages.int8.kind",
     "unknown stage kind \"quantise\"; allowed: train, prune, search, quantize"),
    ("no kind", 'kind = "export"\n', '', '[stages.onnx]', "stages.onnx", "has no kind"),
    ("unknown key", 'wbits = 8', 'wbitz = 8', 'wbitz', "stages.int8.wbitz", "unknown key for a quantize stage"),
    ("wrong type", 'wbits = 8', 'wbits = "8"', 'wbits', "stages.int8.wbits", "\"8\" is not allowed; allowed: an integer"),
    ("bad value", 'wbits = 8', 'wbits = 99', 'wbits', "stages.int8.wbits", "weight_bits=99 is not allowed"),
    ("bad value of a run", 'epochs = 1', 'epochs = 0', 'epochs = 0', "stages.fp32.epochs", "positive integer"),
    ("unknown model", 'model = "lenet5"', 'model = "lenet6"', 'lenet6', "stages.fp32.model", "unknown model"),
    ("bad backend", 'backends = ["onnx", "accel"]', 'backends = ["onnx", "fpga"]', 'fpga', "stages.check.backends",
     "unknown back end 'fpga'"),
    ("required", 'model = "lenet5"\n', '', '[stages.fp32]', "stages.fp32", "a train stage needs model"),
    ("missing input", 'from = "int8"\nbackends', 'backends', '[stages.check]', "stages.check",
     "missing input: a verify stage needs an integer graph; add from"),
    ("wrong input", 'from = "int8"\ncheck = 4', 'from = "fp32"\ncheck = 4', '[stages.onnx]>from', "stages.onnx.from",
     "missing input: an export stage needs an integer graph, but stage 'fp32' (train) makes a float run"),
    ("no such stage", 'from = "fp32"', 'from = "fp16"', 'fp16', "stages.int8.from", "no stage named 'fp16'"),
    ("train reads nothing", 'kind = "train"', 'kind = "train"\nfrom = "int8"', 'from = "int8"\nmodel',
     "stages.fp32.from", "reads no other stage's output"),
    ("bad name", '[stages.onnx]', '[stages."on nx"]', 'on nx', 'stages.on nx', "letters, digits"),
    ("no stages", None, '[pipeline]\nout = "x"\n', None, "stages", "names no stage"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_pipeline_files_name_the_key_and_line(tmp_path, case):
    _, old, new, needle, key, words = case
    text = new if old is None else TINY.replace(old, new, 1)
    assert old is None or text != TINY
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_pipeline(path)
    message = str(e.value)
    assert words in message
    if needle is None:  # nothing in the file to point at
        assert message.startswith(f"{path}: {key}: "), message
        return
    line = _line_of(text, needle.split("\n")[0])
    if key is None:  # tomllib's own position
        assert f"line {line}" in message and message.startswith(f"{path}: ")
    else:
        assert message.startswith(f"{path}:{line}: {key}: "), message


def test_a_cycle_of_stages_is_an_error(tmp_path):
    text = TINY + '\n[stages.a]\nkind = "prune"\nfrom = "b"\n\n[stages.b]\nkind = "prune"\nfrom = "a"\n'
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_pipeline(path)
    assert "in a cycle: a -> b -> a" in str(e.value)
    assert str(e.value).startswith(f"{path}:{_line_of(text, '[stages.a]') + 2}: stages.a.from: ")
    path = _write(tmp_path, TINY + '\n[stages.a]\nkind = "prune"\nfrom = "a"\n')
    with pytest.raises(ConfigError, match="in a cycle: a -> a"):
        load_pipeline(path)


def test_the_output_folder_must_be_a_pipelines(tmp_path):
    path = _write(tmp_path, TINY)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a pipeline's output folder"):
        run_pipeline(path, out=tmp_path / "busy")
    with pytest.raises(ConfigError, match="no output folder"):
        run_pipeline(path)
    busy = tmp_path / "locked"
    busy.mkdir()
    with open(busy / ".lock", "a") as held:  # another `bitsmith run` holds the folder
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="in use by another `bitsmith run`"):
            run_pipeline(path, out=busy)
    assert not (busy / "pipeline.json").exists()
    with pytest.raises(ConfigError, match="pipeline file not found"):
        load_pipeline(tmp_path / "missing.toml")


def test_a_report_stage_runs_bitsmith_report_or_says_it_is_missing(finished, tmp_path):
    text = TINY + '\n[stages.page]\nkind = "report"\nfrom = ["fp32", "int8"]\nlog_y = true\n'
    path = _write(tmp_path, text)
    if importlib.util.find_spec("bitsmith.report") is None:
        with pytest.raises(ConfigError) as e:
            load_pipeline(path)
        assert str(e.value).startswith(f"{path}:{_line_of(text, '[stages.page]') + 1}: stages.page.kind: ")
        assert "needs bitsmith.report" in str(e.value)
        return
    bad = _write(tmp_path, TINY + '\n[stages.page]\nkind = "report"\nfrom = ["fp32", "check"]\n', "bad.toml")
    with pytest.raises(ConfigError, match="stages.page.from: missing input: a report stage needs a float run or an "
                                          "integer graph or a mixed-precision search, but stage 'check'"):
        load_pipeline(bad)
    out = _copy(finished, tmp_path)
    result = run_pipeline(path, out=out, quiet=True)
    assert _status(result)["page"] == "ran" and _status(result)["int8"] == "cached"
    page = (out / "page" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and result["stages"][-1]["figures"]["sections"] > 0


def test_every_shipped_pipeline_file_is_valid():
    files = sorted((ROOT / "pipelines").glob("*.toml"))
    assert files
    for path in files:
        pipeline = load_pipeline(path)
        assert pipeline.out is not None and pipeline.order


def test_key_lines():
    lines = KeyLines('a = 1\n[stages.x]\nkind = "t"\n"quoted" = 2\nopts.width = 3\n[stages."y z"]\n'
                     'inline = { k = 1, m = 2 }\n')
    assert lines.line("a") == 1 and lines.line("stages", "x") == 2 and lines.line("stages", "x", "kind") == 3
    assert lines.line("stages", "x", "quoted") == 4 and lines.line("stages", "x", "opts", "width") == 5
    assert lines.line("stages", "x", "opts") == 5 and lines.line("stages", "y z", "inline", "m") == 7
    assert lines.line("stages", "x", "missing") == 2 and lines.line("nothing") is None


EVERY_KIND = TINY + """
[stages.sparse]
kind = "prune"
from = "fp32"
method = "nm"
epochs = 1
train_limit = 128

[stages.widths]
kind = "search"
from = "fp32"
method = "hessian"
budget_kb = 40
train_limit = 128
max_iterations = 2

[stages.mixed]
kind = "qat"
from = "fp32"
method = "lsq"
widths_from = "widths"
epochs = 1
train_limit = 128

[stages.w4]
kind = "qat"
from = "sparse"
method = "lsq"
epochs = 1
train_limit = 128

[stages.codebook]
kind = "qat"
from = "fp32"
method = "clipq"
keep_first_last_8bit = true
epochs = 1
train_limit = 128

[stages.hex]
kind = "export"
from = "codebook"
format = "clipq-hex"

[stages.hw]
kind = "rtl"
from = "int8"
images = 1

[stages.xbar]
kind = "cim"
from = "int8"
images = 64
adc_bits = 6
"""


@pytest.mark.slow
def test_every_stage_kind_runs(tmp_path):
    """Each kind's job on tiny data (the RTL simulation makes this slow: about a minute)."""
    path = _write(tmp_path, EVERY_KIND)
    out = tmp_path / "out"
    result = run_pipeline(path, out=out, quiet=True)
    assert result["passed"] and set(_status(result).values()) == {"ran"}
    search = json.loads((out / "widths" / "search" / "search.json").read_text())
    qat = json.loads((out / "mixed" / "graph" / "metrics.json").read_text())
    assert (qat["config"]["bitw"], qat["config"]["bita"]) == (search["bitw"], search["bita"])  # widths_from
    assert json.loads((out / "w4" / "graph" / "metrics.json").read_text())["pruned"]["density"] < 1
    assert (out / "hex" / "clipq-hex" / "manifest.json").is_file()
    assert json.loads((out / "hw" / "rtl.json").read_text())["passed"]
    assert json.loads((out / "xbar" / "cim.json").read_text())["agreement"] == 1.0
    assert set(_status(run_pipeline(path, out=out, quiet=True)).values()) == {"cached"}


def test_a_failed_check_stops_the_run_keeps_its_evidence_and_runs_again(finished, tmp_path):
    """A back end that cannot run the graph (an activation memory of 64 bytes) fails the verify stage;
    the stages after it that have to run do not (a finished one stays finished)."""
    out = _copy(finished, tmp_path)
    path = _write(tmp_path, TINY.replace('backends = ["onnx", "accel"]', 'backends = ["accel"]\nact_buffer_bytes = 64'))
    result = invoke("run", path, "--out", out, "--json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.output.strip().splitlines()[-1])
    assert not doc["passed"]
    assert _status(doc) == {"fp32": "cached", "int8": "cached", "check": "failed", "onnx": "cached"}
    assert "FAIL" in doc["stages"][2]["figures"]["accel"]
    record = json.loads((out / "check" / "stage.json").read_text())
    assert record["passed"] is False and not json.loads((out / "check" / "verify.json").read_text())["passed"]
    plan = run_pipeline(path, out=out, dry_run=True)["plan"]
    assert [(s["action"], s["reason"]) for s in plan[2:]] == [("run", "it failed last time"),
                                                              ("cached", "finished with this key")]
    stopped = run_pipeline(path, out=out, force=["int8"], quiet=True)
    assert _status(stopped) == {"fp32": "cached", "int8": "ran", "check": "failed", "onnx": "not run"}
    assert not stopped["passed"]
    # onnx read the int8 that was redone after it: it runs next time even though no key changed
    plan = {s["stage"]: s for s in run_pipeline(path, out=out, dry_run=True)["plan"]}
    assert (plan["onnx"]["action"], plan["onnx"]["reason"]) == ("run", "stage 'int8', which it reads, was redone after it")
    assert plan["int8"]["action"] == "cached"
