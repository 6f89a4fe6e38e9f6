"""`bitsmith search` end to end: a float run in, bit strings out that `bitsmith qat` takes as is, and the
realised graph costs what the search predicted and runs bit-exactly on the back ends. Bad input is
refused before any work, and nothing is written."""

from __future__ import annotations

import json

import pytest

from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.config import AccelConfig
from bitsmith.accel.precision import assignment_cost
from bitsmith.accel.timing import program_cycles
from bitsmith.errors import BitsmithWarning
from bitsmith.integer import load
from bitsmith.pipeline import qat_run
from bitsmith.quant.api import QATConfig
from bitsmith.search.job import search_run
from bitsmith.verify import verification_inputs, verify_all
from tests.helpers import invoke
from tests.quantized import tiny_float_run

@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    return tiny_float_run(tmp_path_factory.mktemp("search") / "fp32")


def _message(result) -> str:
    return result.output + str(result.exception or "")


def _realise_and_check(run, doc, out):
    """QAT with the searched strings; the graph costs what search.json predicted and agrees with
    ONNX Runtime and the accelerator's cycle model element by element."""
    qat_run(run, out, QATConfig("lsq", epochs=1, bitw=doc["bitw"], bita=doc["bita"]), quiet=True, train_limit=256)
    graph = load(out)
    program = compile_graph(graph, AccelConfig())
    cost = assignment_cost(program)
    assert (cost["wbits"], cost["abits"]) == (doc["wbits"], doc["abits"])
    assert cost["cycles"] == program_cycles(program)["total"] == doc["predicted"]["cycles"]
    assert cost["dsp"] == doc["predicted"]["dsp"] and cost["bram18"] == doc["predicted"]["bram18"]
    reports = verify_all(graph, ["onnx", "accel"], verification_inputs(graph, 4))
    for name, report in reports.items():
        assert report.error is None and report.mismatches == 0 and report.complete, name
    assert reports["accel"].cycles_per_image == [doc["predicted"]["cycles"]] * reports["accel"].images


def test_dnas_search_is_realised_exactly(float_run, tmp_path, one_thread):
    doc = search_run(float_run, tmp_path / "s", method="dnas", cd=10.0, epochs=1, candidates_w="2,4",
                     candidates_a="3,8", train_limit=256, quiet=True)
    saved = json.loads((tmp_path / "s" / "search.json").read_text())
    assert saved["bitw"] == doc["bitw"] and (tmp_path / "s" / "alpha.png").is_file()
    assert len(doc["bitw"]) == 5 and doc["bitw"][0] == doc["bitw"][-1] == "8"  # first / last fixed at 8
    assert set(doc["bitw"][1:-1]) <= {"2", "4"} and set(doc["bita"][1:-1]) <= {"3", "8"}
    assert len(doc["dnas"]["history"]) == 1 and doc["qat_command"].startswith(f"bitsmith qat {float_run}")
    _realise_and_check(float_run, doc, tmp_path / "qat")


def test_hessian_search_meets_its_budget_and_is_realised_exactly(float_run, tmp_path, one_thread):
    first = search_run(float_run, tmp_path / "h1", method="hessian", budgets={"dsp": 60}, candidates_w="2,4,8",
                       candidates_a="4,8", max_iterations=4, train_limit=256, quiet=True)
    assert first["predicted"]["dsp"] <= 60 and first["hessian"]["traces"]["iterations"] == 4
    assert not first["hessian"]["traces_reused"]
    roomy = search_run(float_run, tmp_path / "h2", method="hessian", budgets={"dsp": 1000}, candidates_w="2,4,8",
                       candidates_a="4,8", max_iterations=4, train_limit=256, quiet=True, traces_from=tmp_path / "h1")
    assert roomy["hessian"]["traces_reused"] and roomy["hessian"]["traces"] == first["hessian"]["traces"]
    assert roomy["bitw"] == roomy["bita"] == "88888"  # no budget pressure: the least sensitive choice, 8 bits
    _realise_and_check(float_run, first, tmp_path / "qat")


def test_infeasible_budgets_name_the_smallest_feasible_value(float_run, tmp_path):
    result = invoke("search", float_run, "--out", tmp_path / "s", "--method", "hessian", "--budget-dsp", "5",
                    "--candidates-w", "2,8", "--candidates-a", "2,8")
    assert result.exit_code != 0, _message(result)
    assert "--budget-dsp 5 is below the smallest feasible value" in _message(result)
    assert not (tmp_path / "s").exists()


def test_traces_of_another_question_are_not_reused(float_run, tmp_path):
    search_run(float_run, tmp_path / "h1", method="hessian", budgets={"kb": 100}, candidates_w="2,8",
               candidates_a="8", max_iterations=2, train_limit=256, quiet=True)
    result = invoke("search", float_run, "--out", tmp_path / "h2", "--method", "hessian", "--budget-kb", "100",
                    "--candidates-w", "2,4,8", "--traces-from", tmp_path / "h1", "--train-limit", "256")
    assert result.exit_code != 0 and "would answer another question" in _message(result), _message(result)


def test_a_latency_search_trades_cycles_against_widths(float_run, tmp_path, one_thread):
    """Packed MACs and narrow weight storage make cycles depend on the widths, so a latency search
    has something to trade (and no longer warns that it has not)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", BitsmithWarning)
        doc = search_run(float_run, tmp_path / "s", method="dnas", cost="latency", cd=1.0, epochs=1,
                         candidates_w="2,8", candidates_a="8", train_limit=128, quiet=True)
    assert doc["cost"] == "cycles" and doc["predicted"]["cycles"] > 0


def test_search_cli_prints_the_bit_strings(float_run, tmp_path, one_thread):
    result = invoke("search", float_run, "--out", tmp_path / "s", "--epochs", "1", "--train-limit", "128",
                    "--candidates-w", "2,8", "--candidates-a", "8", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert len(summary["bitw"]) == 5 and summary["bita"] == "88888" and summary["cycles"] > 0
    assert summary["next"].startswith("bitsmith qat")


@pytest.mark.parametrize("args, needle", [
    (["--method", "anneal"], "unknown search method 'anneal'; allowed: dnas, hessian"),
    (["--cost", "area"], "unknown cost 'area'; allowed: dsp, bitops, latency, memory"),
    (["--candidates-w", "1,4"], "width 1 is not allowed; allowed: 2 to 16"),
    (["--candidates-a", "4,17"], "width 17 is not allowed"),
    (["--candidates-w", ""], "the candidate list is empty"),
    (["--candidates-w", ","], "the candidate list is empty"),
    (["--method", "hessian"], "needs a budget"),
    (["--budget-dsp", "10"], "budgets (--budget-dsp) are for --method hessian"),
    (["--method", "hessian", "--budget-kb", "-1"], "--budget-kb -1.0: allowed: a positive number"),
    (["--cost", "latency", "--candidates-w", "4,12"], "candidate width 12 > 8"),
])
def test_bad_options_are_refused_and_nothing_is_written(float_run, tmp_path, args, needle):
    out = tmp_path / "s"
    result = invoke("search", float_run, "--out", out, *args)
    assert result.exit_code != 0 and needle in _message(result), _message(result)
    assert not out.exists()


def test_a_folder_without_a_float_checkpoint_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("search", tmp_path / "empty", "--out", tmp_path / "s")
    assert result.exit_code != 0 and "checkpoint" in _message(result), _message(result)
    assert not (tmp_path / "s").exists()


def test_another_kind_of_folder_is_not_overwritten(float_run, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke("search", float_run, "--out", out, "--epochs", "1")
    assert result.exit_code != 0 and "not empty" in _message(result), _message(result)
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
