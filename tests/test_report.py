"""bitsmith report: the sections follow the data, bad input is refused by name, and the page renders
in a real browser (headless Chromium, offline): not blank, every image decoded, no console message,
the expected headings. The data: a tiny LeNet-5 run on the synthetic set, its W8A8 graph, a saved
verify result and a design sweep beside the graph."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from bitsmith.errors import ConfigError, OutputError
from bitsmith.report import build_report
from tests.helpers import invoke
from tests.quantized import tiny_float_run

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it)")

FAST = dict(calib_batches=1, max_samples=4000)
RUN_SECTIONS = ["Model summary", "Float training curves", "Weight and activation histograms", "Ranges"]
GRAPH_SECTIONS = ["Quantization results", "Integer parameters", "Accelerator", "Verification", "Design-space sweeps"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from bitsmith.accel.sweep import sweep, write_sweep
    from bitsmith.integer import load
    from bitsmith.pipeline import quantize_run
    from bitsmith.verify import summary, verification_inputs, verify_all

    root = tmp_path_factory.mktemp("report")
    run = tiny_float_run(root / "fp32")
    graph_dir = root / "int8"
    quantize_run(run, graph_dir)
    graph = load(graph_dir)
    inputs = verification_inputs(graph, 2, "random")
    doc = summary(str(graph_dir), inputs, verify_all(graph, ["accel"], inputs))
    (graph_dir / "verify.json").write_text(json.dumps(doc))
    write_sweep(sweep(graph, sizes=(4, 8)), graph_dir / "sweep", "tiny")
    return run, graph_dir


@pytest.fixture(scope="module")
def report(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "report.html"
    result = build_report(list(folders), out, log_y=True, **FAST)
    return out, result


def _headings(html: str) -> list[str]:
    return re.findall(r"<h2>([^<]+)</h2>", html)


def test_every_section_with_data_is_there_and_nothing_is_fetched(report):
    out, result = report
    html = out.read_text()
    assert result["sections"] == RUN_SECTIONS + GRAPH_SECTIONS
    assert _headings(html) == result["sections"]
    images = re.findall(r'<img src="([^"]+)"', html)
    # training curves, input + 5 layers of histograms, accuracy bars, cycles per layer, the Pareto plot
    assert len(images) == 1 + 6 + 1 + 1 + 1
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing from a network
    assert "url(" not in html
    # the verify result saved beside the graph: the accel back end, passed, 0 mismatches
    row = re.search(r"<td class=\"l\">accel</td><td>(\d+)</td>\s*<td>(\d+)</td><td>(\d+)</td>.*?>(PASS|FAIL|ERROR)<",
                    html, re.S)
    assert row and row.group(1) == "2" and row.group(3) == "0" and row.group(4) == "PASS"


def test_sections_appear_only_when_their_data_exists(folders, tmp_path):
    run, graph = folders
    only_run = build_report([run], tmp_path / "run.html", **FAST)
    assert only_run["sections"] == RUN_SECTIONS
    only_graph = build_report([graph], tmp_path / "graph.html", **FAST)
    assert only_graph["sections"] == GRAPH_SECTIONS
    html = (tmp_path / "graph.html").read_text()
    assert "conv1" in html and "headroom" in html and "<img" in html


def test_a_verification_result_saved_elsewhere_is_read_when_named(folders, tmp_path):
    """A pipeline's verify stage writes verify.json beside its graph: named, it brings its graph."""
    _, graph = folders
    doc = json.loads((graph / "verify.json").read_text())
    doc["backends"]["accel"]["mismatches"], doc["backends"]["accel"]["passed"] = 3, False
    elsewhere = tmp_path / "verify" / "verify.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps({**doc, "graph": str(graph.resolve())}))
    result = build_report([graph, elsewhere], tmp_path / "v.html", **FAST)
    assert result["sections"] == GRAPH_SECTIONS
    html = (tmp_path / "v.html").read_text()
    assert html.count('<td class="l">accel</td>') == 2  # the one inside the graph and the one named
    assert ">FAIL<" in html and ">PASS<" in html
    alone = build_report([elsewhere], tmp_path / "alone.html", **FAST)  # the graph comes with it
    assert alone["sections"] == GRAPH_SECTIONS
    elsewhere.write_text(json.dumps({**doc, "graph": str(tmp_path / "gone")}))
    with pytest.raises(ConfigError, match="not an integer graph folder"):
        build_report([elsewhere], tmp_path / "bad.html", **FAST)


def test_histograms_mark_the_graph_clip_of_the_paired_graph(folders):
    from bitsmith.integer import load
    from bitsmith.quant.calibration import calibration_batches
    from bitsmith.report.histograms import layer_distributions
    from bitsmith.runs import load_run

    run_dir, graph_dir = folders
    run, graph = load_run(run_dir), load(graph_dir)
    calib = calibration_batches(run.meta["dataset"], tuple(run.model.input_shape), None, 1)
    rows, dists = layer_distributions(run.model, calib, graph, max_samples=3000)
    assert [r["layer"] for r in rows] == ["input", "conv1", "conv2", "conv3", "fc1", "fc2"]
    act = {d.layer: d for d in dists if d.side == "activation"}
    spec = graph.tensors["q_conv1"]  # unsigned 8-bit after the fused ReLU: [0, 255·scale]
    assert act["conv1"].clip == pytest.approx((0.0, 255 * spec.scale))
    assert act["fc2"].clip is None  # the logits stay on the accumulator: no clip to mark
    for d in dists:
        assert d.minmax[0] <= d.percentile[0] <= d.percentile[1] <= d.minmax[1]
        assert len(d.values) <= (3000 if d.side == "activation" else d.count)


def test_qat_curves_and_the_side_results_found_beside_a_graph(folders, tmp_path):
    from bitsmith.pipeline import qat_run
    from bitsmith.quant import QATConfig
    from bitsmith.quant.ranges import COLUMNS, write_ranges

    run, _ = folders
    qat = tmp_path / "qat"
    qat_run(run, qat, QATConfig("lsq", epochs=2, wbits=4, abits=4), quiet=True, train_limit=128)
    # a crossbar sweep and a search as those commands write them (their formats; the numbers made up)
    (qat / "cim").mkdir()
    (qat / "cim" / "cim_sweep.json").write_text(json.dumps({
        "format": "bitsmith.cim_sweep", "graph": str(qat), "images": 8, "integer_accuracy": 50.0,
        "points": [{"cell_bits": 2, "variation": 0.0, "adc_bits": a, "cim_accuracy": 40.0 + a} for a in (4, 6, 8)]}))
    search = tmp_path / "search"
    search.mkdir()
    (search / "search.json").write_text(json.dumps({
        "format": "bitsmith.search", "method": "hessian", "bitw": "8,4", "bita": "8,4", "predicted": {"dsp": 12},
        "layers": [{"layer": "conv1", "w_bits": 8, "a_bits": 8, "macs": 10, "dsp": 4, "cycles": 9, "bram18": 1}]}))
    ranges = tmp_path / "ranges"  # what `bitsmith ranges` writes
    write_ranges([{k: (0.5 if k.endswith(("min", "max", "mean", "std", "lo", "hi")) else "minmax") for k in COLUMNS}
                  | {"layer": "conv1", "kind": "Conv2d"}], ranges)
    out = tmp_path / "r.html"
    result = build_report([qat, search, ranges], out, **FAST)
    assert result["sections"] == ["Ranges", "Quantization results", "QAT curves", "Integer parameters", "Accelerator",
                                  "Mixed-precision search", "Crossbar (CIM) sweeps"]
    html = out.read_text()
    assert "W4A4" in html and "lsq" in html and "bitw 8,4" in html and "[0.5, 0.5]" in html


def test_a_run_whose_data_set_is_missing_still_gets_a_report(folders, tmp_path, monkeypatch):
    import bitsmith.quant.calibration as calibration
    from bitsmith.errors import DataError

    def missing(*args, **kwargs):
        raise DataError("fashion-mnist not found in /nowhere")

    monkeypatch.setattr(calibration, "calibration_batches", missing)
    result = build_report([folders[0]], tmp_path / "r.html", **FAST)
    assert result["sections"] == ["Model summary", "Float training curves", "Weight and activation histograms"]
    assert "the calibration data cannot be read (fashion-mnist not found in /nowhere)" in (tmp_path / "r.html").read_text()


def test_a_folder_that_is_neither_a_run_nor_a_graph_is_refused_by_name(tmp_path, folders):
    junk = tmp_path / "holiday-photos"
    junk.mkdir()
    (junk / "beach.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ConfigError, match="holiday-photos is neither a float run nor an integer graph"):
        build_report([folders[0], junk], tmp_path / "r.html", **FAST)
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(ConfigError, match="missing: no such file or folder"):
        build_report([tmp_path / "missing"], tmp_path / "r.html", **FAST)
    result = invoke("report", junk, "--out", tmp_path / "r.html")
    assert isinstance(result.exception, ConfigError) and "holiday-photos" in str(result.exception)


def test_the_report_replaces_its_own_file_but_no_other(folders, tmp_path):
    other = tmp_path / "notes.html"
    other.write_text("<html>my notes</html>")
    with pytest.raises(OutputError, match="notes.html exists and is not an HTML report"):
        build_report([folders[1]], other, **FAST)
    assert other.read_text() == "<html>my notes</html>"
    out = tmp_path / "r.html"
    build_report([folders[1]], out, **FAST)
    first = out.read_text()
    build_report([folders[1]], out, **FAST)  # its own previous report: replaced without --force
    assert out.read_text() != "" and _headings(out.read_text()) == _headings(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.html", "r.html"]  # no temporary left


# -- in a browser -----------------------------------------------------------------------------------

OFFLINE = ["--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"]  # any fetch would fail


def _chromium(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", *OFFLINE, *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def _open(page, tmp_path) -> tuple[str, list[str]]:
    """The DOM after the page's load handlers ran, and the console messages."""
    done = _chromium("--virtual-time-budget=5000", "--dump-dom", page.as_uri(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, _console(done.stderr)


@needs_chromium
def test_the_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    out, result = report
    dom, console = _open(out, tmp_path)
    assert console == []
    assert 'data-images-broken="0"' in dom  # the template's own check: every <img> decoded
    assert dom.count("<img") == 10 and 'data-broken="1"' not in dom
    assert _headings(dom) == result["sections"]

    shot = tmp_path / "shot.png"
    done = _chromium("--window-size=1200,2400", f"--screenshot={shot}", out.as_uri(), cwd=tmp_path)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"), dtype=np.float64)
    assert pixels.shape == (2400, 1200)
    assert pixels.std() > 20  # not blank: text, tables and plots on a light page
    assert (pixels < 128).mean() > 0.01  # dark ink somewhere (the header bar, text, plot lines)


@needs_chromium
def test_the_browser_checks_catch_a_broken_image_and_a_script_error(report, tmp_path):
    out, _ = report
    html = out.read_text()
    first = html.index('<img src="data:image/png;base64,') + len('<img src="data:image/png;base64,')
    broken = html[:first] + "AAAA" + html[first + 4:]  # the first image's PNG signature destroyed
    broken = broken.replace("</main>", "<script>notDefined();</script></main>")
    page = tmp_path / "broken.html"
    page.write_text(broken)
    dom, console = _open(page, tmp_path)
    assert 'data-images-broken="1"' in dom and dom.count('data-broken="1"') == 1
    assert any("notDefined" in line for line in console)


def test_a_detector_is_scored_by_mean_iou(tmp_path):
    """Detection metrics (bitsmith.detection) show as mean IoU: the table's scores and the curves."""
    from bitsmith.report import figures
    from bitsmith.report.sections import quant_result

    (tmp_path / "metrics.json").write_text(json.dumps(
        {"method": "lsq", "fp32_iou": 0.7872, "iou": 0.7745, "integer_iou": 0.7745, "agreement": 1.0,
         "test_images": 1000}))

    class Graph:  # quant_result reads the bit widths only
        nodes, tensors = [], {}

    row = quant_result(tmp_path, Graph())
    assert (row["metric"], row["fp32_score"], row["score"], row["integer_score"]) == ("IoU", 0.7872, 0.7745, 0.7745)
    classifier = tmp_path / "c"
    classifier.mkdir()
    (classifier / "metrics.json").write_text(json.dumps({"fp32_accuracy": 90.5, "accuracy": 90.1,
                                                         "integer_accuracy": 90.2}))
    assert quant_result(classifier, Graph())["metric"] == "%"
    assert figures.training_curves([{"epoch": 1, "train_loss": 0.4, "train_iou": 0.7, "test_iou": 0.72}], "t") \
        .startswith("data:image/png;base64,")
    assert figures.accuracy_bars([row]).startswith("data:image/png;base64,")
