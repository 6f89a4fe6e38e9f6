"""One verification harness: every back end against the integer engine, layer by layer, bit for bit.

    inputs = verification_inputs(graph, 20)               # 20 real test images + 20 random codes
    report = verify(graph, "accel", inputs, pe=8, simd=8)   # VerifyReport
    report.passed, report.mismatches, report.first_mismatch, report.to_json()

The integer engine (`engine.run(graph, x, return_all=True)`) is the golden model: it gives every tensor of
the graph as int64. A back-end runner (the table `BACKENDS`) produces the back end's own per-layer
integer outputs, and cycles where the back end has a clock, for the same inputs; `compare` is the
one comparison of the code base. The RTL is the exception in where the values are compared: its
testbench reads the engine's values from the `expected/Lii.hex` files this harness writes and
reports per-layer mismatch counts and the first mismatches, which the runner turns into the same
rows.

Input policy (`verification_inputs`): the first n test images of the graph's data set, transformed
exactly as evaluation feeds them, *and* n seeded random images whose input codes are uniform over
the whole code range of the QuantizeInput output (every code value reachable, not just those real
pictures produce). Graphs whose input shape no data set has get the random ones only.

This module sits above the back ends (bitsmith.onnx, bitsmith.accel, bitsmith.rtl,
bitsmith.targets) and the data sets (bitsmith.data); the command line (`bitsmith verify`,
`export --check`, `hw simulate`, `hw hls --check`, `rtl`) only calls it and renders its reports.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from bitsmith.errors import BitsmithError, ConfigError
from bitsmith.integer.arithmetic import quantize_input
from bitsmith.integer.graph import IntegerGraph
from bitsmith.integer import engine

DEFAULT_DATASET = "fashion-mnist"
RANDOM = "random"


# -- inputs -----------------------------------------------------------------------------------

@dataclass
class Inputs:
    """Float images for a graph and where they came from: the first `real` are data-set images,
    the next `random` have uniformly drawn input codes."""

    x: torch.Tensor
    description: str
    real: int = 0
    random: int = 0
    seed: int = 0

    @property
    def count(self) -> int:
        return int(self.x.shape[0])

    def to_json(self) -> dict:
        return {"description": self.description, "images": self.count, "real": self.real, "random": self.random,
                "seed": self.seed}


def _input_quantizer(graph: IntegerGraph):
    node = graph.nodes[0]
    if node.op != "QuantizeInput":
        raise ConfigError(f"graph starts with {node.op}, not QuantizeInput: no input code range to draw from")
    return graph.tensors[node.output]


def random_code_images(graph: IntegerGraph, n: int, seed: int = 0) -> torch.Tensor:
    """`n` float images whose input codes are uniform over [qmin, qmax] of the QuantizeInput output:
    x = (q − z)·scale, which QuantizeInput maps back to exactly q (checked)."""
    spec = _input_quantizer(graph)
    if spec.per_channel:
        raise ConfigError(f"input {spec.name!r} has per-channel scales; random codes need one input scale")
    shape = (n, *graph.input_spec.shape)
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(spec.qmin, spec.qmax + 1, shape, generator=gen, dtype=torch.int64)
    x = ((codes - spec.zero_point).to(torch.float64) * float(spec.scale)).to(torch.float32)
    back = quantize_input(x, float(spec.scale), spec.zero_point, spec.qmin, spec.qmax)
    if not torch.equal(back, codes):  # the float32 round trip is exact for codes of ≤ 16 bits
        raise ConfigError(f"input {spec.name!r}: random codes do not survive QuantizeInput "
                          f"(scale {spec.scale}); use a data set instead of random inputs")
    return x


def _dataset_images(graph: IntegerGraph, name: str, n: int, data_dir: Optional[str]) -> torch.Tensor:
    from bitsmith.data import load_dataset
    from bitsmith.data.datasets import dataset_info
    from bitsmith.data.transforms import to_model_input

    test = load_dataset(name, "test", data_dir or graph.metadata.get("data_dir"), limit=n)
    return to_model_input(test.images, dataset_info(name), tuple(graph.input_spec.shape))


def verification_inputs(graph: IntegerGraph, n: int, data: Optional[str] = None, data_dir: Optional[str] = None,
                        seed: int = 0) -> Inputs:
    """The one input policy: the first `n` test images of the data set AND `n` random-code images.

    `data` None uses the graph's data set (metadata "dataset", else Fashion-MNIST) and falls back to
    random codes only when that data set's images do not fit the graph's input shape (e.g. an
    untrained VGG-tiny 3x32x32 without "dataset" metadata); a named data set that does not fit is a
    ConfigError; "random" gives the random-code images only.
    """
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of images must be a positive integer, got {n!r}")
    random_x = random_code_images(graph, n, seed)
    random_text = f"{n} random input codes over [{_input_quantizer(graph).qmin}, {_input_quantizer(graph).qmax}] " \
                  f"(seed {seed})"
    if data == RANDOM:
        return Inputs(random_x, f"random: {random_text}", 0, n, seed)
    name = data or graph.metadata.get("dataset") or DEFAULT_DATASET
    try:
        real_x = _dataset_images(graph, name, n, data_dir)
    except ConfigError as e:
        if data is not None:
            raise ConfigError(f"{e}. Use --data random for inputs that do not come from a data set") from None
        shape = "x".join(map(str, graph.input_spec.shape))
        return Inputs(random_x, f"random: {random_text}; no data set fits the input shape {shape} ({name}: {e})",
                      0, n, seed)
    real = int(real_x.shape[0])
    return Inputs(torch.cat([real_x, random_x]), f"{name}: the first {real} test images + {random_text}",
                  real, n, seed)


# -- the comparison ------------------------------------------------------------------------------

def _coordinates(index: tuple[int, ...], shape: tuple[int, ...]) -> dict:
    """A position in an [N, ...] tensor as image, channel, y, x (maps) or image, index (vectors)."""
    if len(shape) == 4:
        return dict(zip(("image", "channel", "y", "x"), index))
    flat = int(np.ravel_multi_index(index[1:], shape[1:])) if len(shape) > 1 else 0
    return {"image": index[0], "index": flat}


def compare(got, want) -> tuple[int, int, Optional[dict]]:
    """(elements, mismatches, first mismatch) of a back end's tensor against the engine's.

    Both are [N, ...]; `got` may have another shape of the same size (e.g. a Linear's [N, F, 1, 1]
    for the engine's [N, F]); coordinates follow the engine's shape. A size difference counts every
    element as a mismatch.
    """
    want = want.detach().cpu().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = want.astype(np.int64)
    if got.size != want.size:
        return int(want.size), int(want.size), {"error": f"shape {list(got.shape)} differs from the engine's "
                                                         f"{list(want.shape)}"}
    got = got.astype(np.int64).reshape(want.shape)
    wrong = got != want
    count = int(np.count_nonzero(wrong))
    if not count:
        return int(want.size), 0, None
    index = tuple(int(i) for i in np.argwhere(wrong)[0])
    return int(want.size), count, {**_coordinates(index, want.shape), "got": int(got[index]), "want": int(want[index])}


# -- results -------------------------------------------------------------------------------------

@dataclass
class LayerCheck:
    """One compared tensor of one back end."""

    name: str                          # the graph tensor
    kind: str                          # conv / maxpool / avgpool, or the op
    label: str = ""                    # the back end's own name for it (L03, CONV_1, …)
    elements: int = 0
    mismatches: int = 0
    first: Optional[dict] = None       # image, channel, y, x (or index), got, want
    cycles: Optional[int] = None       # per image, counted by the back end
    formula_cycles: Optional[int] = None

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "label": self.label, "elements": self.elements,
                "mismatches": self.mismatches, "first_mismatch": self.first, "cycles": self.cycles,
                "formula_cycles": self.formula_cycles}


@dataclass
class VerifyReport:
    """The result of one back end on one set of inputs: nothing but equality passes."""

    backend: str
    images: int
    inputs: str
    layers: list[LayerCheck] = field(default_factory=list)
    cycles_per_image: Optional[list[int]] = None   # counted by the back end, one per image
    formula_cycles: Optional[int] = None           # docs/hardware.md §5
    complete: bool = True                          # every layer of every image was checked
    error: Optional[str] = None                    # the back end could not run the graph
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)    # back-end specifics (config, files, wall times, …)

    @property
    def mismatches(self) -> int:
        return sum(row.mismatches for row in self.layers)

    @property
    def first_mismatch(self) -> Optional[dict]:
        """The first mismatch of the first layer that has one, with the layer's name."""
        for row in self.layers:
            if row.mismatches:
                return {"layer": row.name, "label": row.label, **(row.first or {})}
        return None

    @property
    def cycles_equal(self) -> Optional[bool]:
        """Cycles counted = formula, per image and per layer (None: the back end has no clock)."""
        if self.cycles_per_image is None or self.formula_cycles is None:
            return None
        if len(self.cycles_per_image) != self.images or any(c != self.formula_cycles for c in self.cycles_per_image):
            return False
        return all(row.cycles == row.formula_cycles for row in self.layers if row.formula_cycles is not None)

    @property
    def passed(self) -> bool:
        return (self.error is None and self.complete and bool(self.layers) and self.mismatches == 0
                and self.cycles_equal is not False)

    def to_json(self) -> dict:
        return {"backend": self.backend, "passed": self.passed, "images": self.images, "inputs": self.inputs,
                "layers_checked": len(self.layers), "mismatches": self.mismatches,
                "first_mismatch": self.first_mismatch, "cycles_per_image": self.cycles_per_image,
                "formula_cycles": self.formula_cycles, "cycles_equal": self.cycles_equal,
                "complete": self.complete, "error": self.error, "notes": self.notes,
                "layers": [row.to_json() for row in self.layers], "details": self.details}


@dataclass
class BackendRun:
    """What a runner hands the harness: per layer either the back end's values (`outputs`) or the
    counts its own checker made against the engine's values (`counted`, the RTL testbench), plus
    cycles where the back end has them."""

    layers: list[LayerCheck]                                  # names, kinds, labels, cycles; counts filled later
    outputs: dict[str, Any] = field(default_factory=dict)     # tensor name -> [N, ...] values
    counted: dict[str, tuple[int, int, Optional[dict]]] = field(default_factory=dict)
    cycles_per_image: Optional[list[int]] = None
    formula_cycles: Optional[int] = None
    complete: bool = True
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)


Runner = Callable[..., BackendRun]


# -- runners ---------------------------------------------------------------------------------------

@contextmanager
def _work_dir(work_dir: Optional[str | os.PathLike], prefix: str) -> Iterator[Path]:
    """The given folder (kept), or a temporary one removed afterwards."""
    if work_dir is not None:
        path = Path(work_dir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def _no_fault(backend: str, fault: Optional[str], notes: list[str]) -> None:
    if fault is not None:
        notes.append(f"fault {fault!r} is not injected into the {backend} back end (accel and rtl only)")


def run_onnx_backend(graph: IntegerGraph, inputs: Inputs, expected: dict, *, work_dir=None, fault=None,
                     **_) -> BackendRun:
    """The integer ONNX export with every tensor as a model output, run in onnxruntime."""
    from bitsmith.onnx import export_onnx, run_onnx

    notes: list[str] = []
    _no_fault("onnx", fault, notes)
    with _work_dir(work_dir, "bitsmith_onnx_") as work:
        path = export_onnx(graph, work / "model.onnx", intermediates=True)
        outputs = run_onnx(path, inputs.x, all_outputs=True)
    layers = [LayerCheck(node.output, node.op, node.name) for node in graph.nodes]
    return BackendRun(layers, outputs=outputs, notes=notes,
                      details={"model": str(path) if work_dir is not None else None})


def _accel_config(options: dict):
    from bitsmith.accel.config import AccelConfig

    config = options.get("config")
    if config is not None:
        return config
    names = set(AccelConfig.__dataclass_fields__)
    return AccelConfig.from_options(**{k: v for k, v in options.items() if k in names})


def run_accel_backend(graph: IntegerGraph, inputs: Inputs, expected: dict, *, fault=None, **options) -> BackendRun:
    """The compiled program on the cycle-level model; cycles must equal accel.timing.program_cycles."""
    from bitsmith.accel.compiler import compile_graph
    from bitsmith.accel.faults import with_fault
    from bitsmith.accel.simulate import simulate
    from bitsmith.accel.timing import PHASES, program_cycles

    program = compile_graph(graph, _accel_config(options))
    sim = simulate(with_fault(program, fault), expected[program.input_name])
    formula = program_cycles(program)
    # Skipping zero activations makes cycles data dependent: counted per image, with no formula to equal.
    data_dependent = program.config.zero_skip == "both"
    layers = []
    for layer, counted, row in zip(program.layers, sim.cycles["layers"], formula["layers"]):
        layers.append(LayerCheck(layer.name, layer.kind, f"L{layer.index:02d}", cycles=sum(counted[p] for p in PHASES),
                                 formula_cycles=None if data_dependent else row["cycles"]))
    notes = [f"fault {fault!r} injected into the program's parameters"] if fault else []
    if data_dependent:
        notes.append("zero_skip 'both': cycles depend on the activations; counted per image, not checked "
                     "against the formula (its figure is an estimate)")
    notes += sim.overflows
    details = {"config": program.config.to_json(), "fault": fault, "phases": sim.cycles["layers"],
               "formula": formula, "overflows": sim.overflows}
    per_image = list(sim.cycles["images"]) if data_dependent else [sim.total_cycles] * inputs.count
    return BackendRun(layers, outputs=sim.outputs, cycles_per_image=per_image,
                      formula_cycles=None if data_dependent else formula["total"], notes=notes, details=details)


def run_hls_backend(graph: IntegerGraph, inputs: Inputs, expected: dict, *, work_dir=None, fault=None,
                    hls_simd: int = 8, hls_pe: int = 8, hls_layers: Optional[dict] = None, **_) -> BackendRun:
    """The DeepBurning-MixQ headers exported, parsed back and run by the g++-compiled C++ reference."""
    from bitsmith.targets.hls import run_hls

    notes: list[str] = []
    _no_fault("hls", fault, notes)
    codes = expected[graph.nodes[0].output].numpy()
    with _work_dir(work_dir, "bitsmith_hls_") as work:
        ran = run_hls(graph, codes, work, simd=hls_simd, pe=hls_pe, layers=hls_layers)
    layers = [LayerCheck(layer.name, layer.kind, layer.macro) for layer, _ in ran]
    return BackendRun(layers, outputs={layer.name: values for layer, values in ran}, notes=notes,
                      details={"folding": {l.macro: [l.simd, l.pe] for l, _ in ran if l.kind == "conv"},
                               "files": str(work) if work_dir is not None else None})


def accel_memory(graph: IntegerGraph, config, expected: Optional[dict], out_dir: str | os.PathLike):
    """Compile `graph` and write its memory files into `out_dir` with the input codes and the
    engine's expected outputs of `expected` (None: no images). Returns (program, program.json)."""
    from bitsmith.accel.compiler import compile_graph
    from bitsmith.accel.memory import write_memory

    program = compile_graph(graph, config)
    if expected is None:
        codes = torch.zeros((0, *graph.tensors[program.input_name].shape), dtype=torch.int64)
        return program, write_memory(program, codes, out_dir)
    return program, write_memory(program, expected[program.input_name], out_dir, expected=expected)


def run_rtl_backend(graph: IntegerGraph, inputs: Inputs, expected: dict, *, sim: str = "icarus", fault=None,
                    work_dir=None, waves: bool = False, timeout: Optional[float] = None, **options) -> BackendRun:
    """The generated Verilog in Icarus or Verilator; its testbench compares every value with the
    engine's (expected/Lii.hex) and counts cycles, which must equal the §5 formula."""
    from bitsmith.accel.faults import with_fault
    from bitsmith.accel.timing import program_cycles
    from bitsmith.rtl import FAULTS, SIMULATORS, run_testbench

    if sim not in SIMULATORS:
        raise ConfigError(f"unknown simulator {sim!r}; choose one of {', '.join(SIMULATORS)}")
    if fault is not None and fault not in FAULTS:
        raise ConfigError(f"unknown RTL fault {fault!r}; choose one of {', '.join(sorted(FAULTS))}")
    config = _accel_config(options)
    keep = work_dir is not None
    work = Path(work_dir) if keep else Path(tempfile.mkdtemp(prefix="bitsmith_rtl_"))
    program, _ = accel_memory(graph, config, expected, work / "memory")
    if fault is not None:
        with_fault(program, fault)  # refuses a fault that would change nothing in this graph
    log = run_testbench(program, work / "memory", work / "rtl", inputs.count, sim=sim, fault=fault, waves=waves,
                        timeout=timeout)
    formula = program_cycles(program)
    layers, counted = [], {}
    for layer, row in zip(program.layers, formula["layers"]):
        per_image = log["layer_cycles"].get(layer.index, [])
        cycles = per_image[0] if per_image and all(c == per_image[0] for c in per_image) else \
            (max(per_image) if per_image else None)
        layers.append(LayerCheck(layer.name, layer.kind, f"L{layer.index:02d}", cycles=cycles,
                                 formula_cycles=row["cycles"]))
        first = next(({k: m[k] for k in ("image", "channel", "y", "x", "got", "want")}
                      for m in log["printed_mismatches"] if m["layer"] == layer.index), None)
        wrong = log["mismatches_per_layer"].get(layer.index, 0)
        if wrong and first is None:
            first = {"note": "more mismatches than the testbench prints; see the simulator log"}
        counted[layer.name] = (layer.out_elems * len(per_image), wrong, first)
    complete = log["timeout"] is None and all(
        len(log["layer_cycles"].get(layer.index, [])) == inputs.count for layer in program.layers)
    notes = []
    if fault:
        notes.append(f"fault {fault!r} built into the Verilog")
    if log["timeout"] is not None:
        notes.append(f"the testbench watchdog fired: {log['timeout']}")
    details = {"simulator": sim, "config": config.to_json(), "fault": fault, "timeout": log["timeout"],
               "printed_mismatches": log["printed_mismatches"], "work_dir": str(work), "waves": log["waves"],
               "wall_s": {"generate": log["generate_s"], "build": log["build_s"], "simulate": log["run_s"]}}
    return BackendRun(layers, counted=counted, cycles_per_image=log["cycles_per_image"],
                      formula_cycles=formula["total"], complete=complete, notes=notes, details=details)


#: Back ends by name: each runs the graph on the inputs and returns its per-layer results.
BACKENDS: dict[str, Runner] = {
    "onnx": run_onnx_backend,
    "accel": run_accel_backend,
    "hls": run_hls_backend,
    "rtl": run_rtl_backend,
}


# -- the harness -----------------------------------------------------------------------------------

def engine_outputs(graph: IntegerGraph, inputs: Inputs) -> dict[str, torch.Tensor]:
    """Every tensor of the golden model (int64) for the inputs; random codes must come back exactly."""
    outputs = engine.run(graph, inputs.x, return_all=True)
    if inputs.random:
        codes = outputs[graph.nodes[0].output][inputs.real:]
        spec = _input_quantizer(graph)
        redo = quantize_input(inputs.x[inputs.real:], float(spec.scale), spec.zero_point, spec.qmin, spec.qmax)
        assert torch.equal(codes, redo), "the engine's QuantizeInput disagrees with integer.arithmetic.quantize_input"
    return outputs


def verify(graph: IntegerGraph, backend: str, inputs: Inputs, *, expected: Optional[dict] = None,
           raise_errors: bool = False, **options) -> VerifyReport:
    """Run `backend` on `inputs` and compare every layer with the integer engine.

    `options` go to the runner: accelerator configuration (`config=AccelConfig(...)` or `pe`,
    `simd`, `bus_bits`, …), `sim` ("icarus" / "verilator"), `fault` (accel, rtl), `work_dir` (keep
    the back end's files there), `waves`, `timeout`, `hls_simd` / `hls_pe` / `hls_layers`.
    `expected` reuses engine outputs already computed for the same inputs. A back end that cannot
    run the graph (a BitsmithError: unsupported op, missing tool, …) gives a report with `error`
    set (raised instead with `raise_errors=True`).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown back end {backend!r}; choose one of {', '.join(BACKENDS)}")
    expected = expected if expected is not None else engine_outputs(graph, inputs)
    report = VerifyReport(backend, inputs.count, inputs.description)
    t0 = time.perf_counter()
    try:
        run = BACKENDS[backend](graph, inputs, expected, **options)
    except BitsmithError as e:
        if raise_errors:
            raise
        report.error = f"{type(e).__name__}: {e}"
        report.details["wall_s"] = time.perf_counter() - t0
        return report
    for row in run.layers:
        if row.name in run.counted:
            row.elements, row.mismatches, row.first = run.counted[row.name]
        elif row.name in run.outputs:
            row.elements, row.mismatches, row.first = compare(run.outputs[row.name], expected[row.name])
        else:
            row.first = {"error": f"the {backend} back end produced no tensor {row.name!r}"}
            report.complete = False
    report.layers = run.layers
    report.cycles_per_image = run.cycles_per_image
    report.formula_cycles = run.formula_cycles
    report.complete = report.complete and run.complete
    report.notes = run.notes
    report.details = {**run.details, "seconds": time.perf_counter() - t0}
    return report


def check_options(backends: list[str], sim: Optional[str] = None, fault: Optional[str] = None) -> None:
    """ConfigError for an unknown back end, simulator or fault, before anything runs."""
    from bitsmith.accel.faults import FAULTS
    from bitsmith.rtl import SIMULATORS

    for name in backends:
        if name not in BACKENDS:
            raise ConfigError(f"unknown back end {name!r}; choose one of {', '.join(BACKENDS)}, all")
    if sim is not None and sim not in SIMULATORS:
        raise ConfigError(f"unknown simulator {sim!r}; choose one of {', '.join(SIMULATORS)}")
    if fault is not None and fault not in FAULTS:
        raise ConfigError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")


def verify_all(graph: IntegerGraph, backends: list[str], inputs: Inputs, **options) -> dict[str, VerifyReport]:
    """`verify` for several back ends on the same inputs (the engine runs once)."""
    check_options(backends, options.get("sim"), options.get("fault"))
    expected = engine_outputs(graph, inputs)
    reports = {}
    for name in backends:
        kept = dict(options)
        if options.get("work_dir") is not None:
            kept["work_dir"] = Path(options["work_dir"]) / name
        reports[name] = verify(graph, name, inputs, expected=expected, **kept)
    return reports


def summary(graph_name: str, inputs: Inputs, reports: dict[str, VerifyReport]) -> dict:
    """The JSON document of `bitsmith verify`: {graph, inputs, backends: {name: report}, passed}."""
    return {"graph": graph_name, "inputs": inputs.to_json(),
            "backends": {name: r.to_json() for name, r in reports.items()},
            "passed": bool(reports) and all(r.passed for r in reports.values())}


def qdq_agreement(graph: IntegerGraph, path: str | os.PathLike, inputs: Inputs) -> dict:
    """A QDQ export is not bit-exact by design: the argmax agreement with the engine's dequantized
    output and the largest difference from it."""
    from bitsmith.onnx import run_onnx

    want = engine.run(graph, inputs.x)
    reference = graph.dequantize(want).numpy().reshape(inputs.count, -1)
    got = np.asarray(run_onnx(path, inputs.x)).reshape(inputs.count, -1)
    return {"checked_images": inputs.count, "inputs": inputs.description,
            "argmax_agreement": float((got.argmax(1) == reference.argmax(1)).mean()),
            "max_abs_difference": float(np.abs(got - reference).max())}


def dumps(doc: dict) -> str:
    return json.dumps(doc, sort_keys=False)
