"""The report's sections, each computed only from data that exists (None or [] otherwise).

Every function here returns plain dicts and lists (numbers, strings, figure data URIs) for the
template; nothing here writes HTML.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bitsmith.errors import BitsmithError
from bitsmith.report import figures
from bitsmith.report.histograms import Distribution, layer_distributions

ACCUMULATING = ("Conv2d", "Linear", "Add", "AvgPool2d")


def _read_metrics(folder: Path) -> dict:
    """metrics.json of a run or graph folder; {} when absent or unreadable (the section is skipped)."""
    try:
        doc = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _history(metrics: dict) -> list[dict]:
    history = metrics.get("history")
    if not isinstance(history, list):
        return []
    return [r for r in history if isinstance(r, dict) and "epoch" in r and "train_loss" in r]


# -- float runs ----------------------------------------------------------------------------------

def model_summary(run) -> dict:
    """Layers, parameters and shapes of a run's model (bitsmith.models.model_summary)."""
    from bitsmith.models import model_summary as summarise

    rows = summarise(run.model)
    return {"name": run.model.spec["name"], "input_shape": list(run.model.input_shape),
            "options": run.model.spec.get("kwargs", {}), "dataset": run.meta.get("dataset"),
            "epoch": run.meta.get("epoch"), "accuracy": run.metrics.get("accuracy"),
            "mean_iou": run.metrics.get("mean_iou"),
            "params": sum(r.params for r in rows), "macs": sum(r.macs for r in rows),
            "layers": [{"name": r.name, "kind": r.kind, "output_shape": list(r.output_shape), "params": r.params,
                        "macs": r.macs} for r in rows]}


def training_curves(run, label: str) -> str | None:
    history = _history(run.metrics)
    return figures.training_curves(history, f"float training: {label}") if history else None


def distributions(run, graph, calib_batches: int, data_dir: str | None, log_y: bool,
                  max_samples: int) -> tuple[list[dict], list[dict]]:
    """(ranges table rows, one histogram figure per layer) of a run."""
    from bitsmith.quant.calibration import calibration_batches

    calib = calibration_batches(run.meta["dataset"], tuple(run.model.input_shape), run.data_dir(data_dir),
                                calib_batches)
    rows, dists = layer_distributions(run.model, calib, graph, max_samples)
    by_layer: dict[str, list[Distribution]] = {}
    for d in dists:
        by_layer.setdefault(d.layer, []).append(d)
    plots = []
    for layer, ds in by_layer.items():
        plots.append({"layer": layer, "figure": figures.histograms(layer, ds, log_y),
                      "marks": [{"side": d.side, "minmax": d.minmax, "sigma": d.sigma, "percentile": d.percentile,
                                 "clip": d.clip, "clip_source": d.clip_source} for d in ds]})
    return rows, plots


# -- integer graphs ------------------------------------------------------------------------------

def bits_label(graph) -> str:
    wbits = sorted({int(n.attrs["weight_bits"]) for n in graph.nodes if "weight_bits" in n.attrs})
    abits = sorted({graph.tensors[n.output].bits for n in graph.nodes if n.op == "Requant"})
    w = "W" + "/".join(map(str, wbits)) if wbits else ""
    a = "A" + "/".join(map(str, abits)) if abits else ""
    return w + a


def quant_result(folder: Path, graph) -> dict:
    """Accuracy of a graph folder (float, fake-quant, integer) and their agreement, as recorded."""
    m = _read_metrics(folder)
    config = m.get("quant_config") or m.get("config") or {}
    how = m.get("method") or config.get("observer") or ""
    # A detector is scored by mean IoU (bitsmith.detection), a classifier by accuracy in percent.
    detection = "integer_iou" in m or "iou" in m
    keys = ("fp32_iou", "iou", "integer_iou") if detection else ("fp32_accuracy", "accuracy", "integer_accuracy")
    return {"label": f"{folder.name} ({bits_label(graph)}{' ' + how if how else ''})", "folder": str(folder),
            "bits": bits_label(graph), "method": how, "metric": "IoU" if detection else "%",
            **{name: m.get(key) for name, key in zip(("fp32_score", "score", "integer_score"), keys)},
            "agreement": m.get("agreement"), "disagreements": m.get("disagreements"),
            "test_images": m.get("test_images"), "recorded": bool(m)}


def qat_curves(folder: Path) -> str | None:
    history = _history(_read_metrics(folder))
    return figures.qat_curves(history, f"QAT: {folder.name}") if history else None


def _span(values) -> str:
    values = [int(v) for v in values]
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo} … {hi}"


def integer_layers(graph) -> list[dict]:
    """Per accumulating layer: weight bits, accumulator width and the bound on it (bitsmith.integer.bounds),
    and its Requant's multiplier m, shift s and output bits."""
    from bitsmith.integer.bounds import layer_bounds

    bounds = {b.node: b.bound for b in layer_bounds(graph)}
    consumers: dict[str, Any] = {}
    for n in graph.nodes:
        for name in n.inputs:
            consumers.setdefault(name, []).append(n)
    rows = []
    for n in graph.nodes:
        if n.op not in ACCUMULATING:
            continue
        acc = graph.tensors[n.output]
        requant = next((c for c in consumers.get(n.output, []) if c.op == "Requant"), None)
        bound = bounds.get(n.name, 0)
        needed = bound.bit_length() + 1 if acc.signed else bound.bit_length()  # sign bit
        row = {"name": n.name, "op": n.op, "weight_bits": n.attrs.get("weight_bits"), "acc_bits": acc.bits,
               "bound": bound, "needed_bits": needed, "headroom": acc.bits - needed, "fits_32": needed <= 32,
               "m": None, "s": None, "out_bits": None, "requant": None}
        if requant is not None:
            out = graph.tensors[requant.output]
            row.update(requant=requant.name, out_bits=f"{out.bits} {'signed' if out.signed else 'unsigned'}",
                       m=_span(graph.params[requant.params["multiplier"]].reshape(-1).tolist()),
                       s=_span(graph.params[requant.params["shift"]].reshape(-1).tolist()))
        rows.append(row)
    return rows


def accelerator(graph) -> dict:
    """Per-layer cycles, utilisation, DSPs and BRAM18 of the accelerator with the default AccelConfig
    (bitsmith.accel: compile + cost model; no RTL run). A graph it cannot run gives the reason."""
    from bitsmith.accel.compiler import compile_graph
    from bitsmith.accel.config import AccelConfig
    from bitsmith.accel.sweep import evaluate_design

    config = AccelConfig()
    try:
        design = evaluate_design(compile_graph(graph, config))
    except BitsmithError as e:
        return {"error": str(e), "config": f"R×C = {config.pe}×{config.simd}"}
    layers = []
    for row in design["layers"]:
        wm = row.get("weight_memory") or {}
        layers.append({"name": row["name"], "kind": row["kind"], "macs": row["macs"], "cycles": row["cycles"],
                       "utilisation": row["utilisation"], "dsp": row["dsp"], "w_bits": row["w_bits"],
                       "a_bits": row["a_bits"], "bram18": wm.get("stored_bram18", 0),
                       "finn_bram18": row["finn_bram18"]})
    return {"error": None, "config": f"R×C = {config.pe}×{config.simd}, {config.clock_mhz:g} MHz",
            "layers": layers, "cycles": design["cycles"], "fps": design["fps"],
            "utilisation": design["utilisation"], "dsp": design["dsp"]["total"], "bram18": design["bram18"]["total"],
            "figure": figures.layer_bars([r["name"] for r in layers], [r["cycles"] for r in layers],
                                         "cycles / image", "cycles per layer")}


def verification(results: list[tuple[Path, dict]]) -> list[dict]:
    """Every back end of every saved verify result: pass, images, mismatches, the first one."""
    rows = []
    for path, doc in results:
        for name, r in doc["backends"].items():
            first = r.get("first_mismatch")
            rows.append({"file": path.name, "backend": name, "passed": bool(r.get("passed")),
                         "images": r.get("images"), "layers_checked": r.get("layers_checked"),
                         "mismatches": r.get("mismatches"), "error": r.get("error"),
                         "first": f"{first.get('layer')}" if isinstance(first, dict) else None,
                         "cycles_equal": r.get("cycles_equal")})
    return rows


def sparsity(graph, folder: Path) -> dict | None:
    """Per-layer weight density and best storage format (bitsmith.integer.sparsity), shown for
    pruned graphs (recorded so, or under 90 % dense); None otherwise."""
    from bitsmith.integer.sparsity import graph_sparsity

    report = graph_sparsity(graph)
    if "pruned" not in _read_metrics(folder) and report["density"] >= 0.9:
        return None
    return {"density": report["density"], "compression": report["compression"], "stored_kb": report["stored_kb"],
            "fp32_kb": report["fp32_kb"],
            "layers": [{"name": r["name"], "weight_bits": r["weight_bits"], "weights": r["weights"],
                        "density": r["density"], "best": r["best"], "stored_bits": r["stored_bits"]}
                       for r in report["layers"]]}


# -- side results --------------------------------------------------------------------------------

def sweeps(found: list[tuple[Path, Any]]) -> list[dict]:
    out = []
    for path, doc in found:
        points = doc.get("points") or []
        if points:
            out.append({"folder": str(path), "figure": figures.pareto(points, f"design sweep: {path.name}"),
                        "pareto": doc.get("pareto") or []})
    return out


def cim_sweeps(found: list[tuple[Path, Any]]) -> list[dict]:
    out = []
    for path, doc in found:
        points = doc.get("points") or []
        if points:
            out.append({"folder": str(path), "integer_accuracy": doc.get("integer_accuracy"),
                        "images": doc.get("images"), "points": points,
                        "figure": figures.cim_sweep(points, f"crossbar sweep: {path.name}")})
    return out


def searches(found: list[tuple[Path, Any]]) -> list[dict]:
    return [{"folder": str(path), "method": doc.get("method"), "cost": doc.get("cost"), "bitw": doc.get("bitw"),
             "bita": doc.get("bita"), "predicted": doc.get("predicted") or {}, "layers": doc.get("layers") or []}
            for path, doc in found]


def saved_ranges(found: list[tuple[Path, Any]]) -> list[dict]:
    """Rows of ranges.json files (a ranges folder named, or RUN/ranges)."""
    rows = []
    for _, doc in found:
        rows.extend(r for r in doc.get("layers", []) if isinstance(r, dict))
    return rows
