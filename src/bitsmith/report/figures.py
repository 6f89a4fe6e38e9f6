"""The report's plots: matplotlib (Agg) figures, returned as PNG data URIs the HTML embeds.

Embedding keeps the report one file that opens from disk with no network and no side files.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

from bitsmith.report.histograms import Distribution

#: Marks drawn on every histogram: (attribute, label, colour, line style).
MARKS = (("minmax", "min–max", "#444444", "-"), ("sigma", "mean ± 3σ", "#1f77b4", "--"),
         ("percentile", "percentile", "#2ca02c", ":"), ("clip", "chosen clip", "#d62728", "-"))
_DPI = 90
HISTOGRAM_BINS = 100


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers or in tests
    import matplotlib.pyplot as plt
    return plt


def _data_uri(fig) -> str:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _integer_ticks(ax) -> None:
    """Epochs and bit widths are whole numbers: no 1.5 on their axis."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def training_curves(history: Sequence[dict], title: str) -> str:
    """Loss and accuracy (a detector: mean IoU) per epoch, train and test where recorded."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_loss.plot(epochs, [r.get("train_loss") for r in history], marker="o", ms=3, label="train")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    detection = any(k.endswith("_iou") for r in history for k in r)  # a detector: mean IoU, not accuracy
    suffix = "iou" if detection else "acc"
    for key, label in ((f"train_{suffix}", "train"), (f"test_{suffix}", "test")):
        if all(key in r for r in history):
            ax_acc.plot(epochs, [r[key] for r in history], marker="o", ms=3, label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("mean IoU" if detection else "accuracy %")
    ax_acc.legend(fontsize=8)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        _integer_ticks(ax)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _data_uri(fig)


def histograms(layer: str, dists: Sequence[Distribution], log_y: bool) -> str:
    """One panel per side (weights, activation) of a layer, every range marked at both ends."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(dists), figsize=(4.6 * len(dists), 2.8), squeeze=False)
    handles = {}
    for ax, d in zip(axes[0], dists):
        counts, edges = np.histogram(d.values, bins=HISTOGRAM_BINS)
        ax.stairs(counts, edges, fill=True, color="#9ecae1")  # one polygon: much faster than hist's bars
        if log_y:
            ax.set_yscale("log")
        for attr, label, colour, style in MARKS:
            r = getattr(d, attr)
            if r is None:
                continue
            handles[label] = ax.axvline(r[0], color=colour, linestyle=style, linewidth=1.2)
            ax.axvline(r[1], color=colour, linestyle=style, linewidth=1.2)
        ax.set_title(f"{layer}: {d.side} ({d.count:,} values)", fontsize=9)
        ax.tick_params(labelsize=7)
    # One legend for the figure and fixed margins: tight_layout would lay every text out twice.
    fig.legend(list(handles.values()), list(handles), loc="upper right", fontsize=7, ncol=len(handles),
               frameon=False)
    fig.subplots_adjust(left=0.07 if len(dists) > 1 else 0.13, right=0.98, bottom=0.12, top=0.8, wspace=0.2)
    return _data_uri(fig)


def accuracy_bars(rows: Sequence[dict]) -> str:
    """Score of every quantized graph (accuracy %, or mean IoU × 100 for a detector): float,
    fake-quant, integer side by side."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(rows) + 3), 3.0))
    keys = (("fp32_score", "float"), ("score", "fake-quant"), ("integer_score", "integer"))

    def percent(row: dict, key: str) -> float | None:
        value = row.get(key)
        return None if value is None else value * (100.0 if row.get("metric") == "IoU" else 1.0)

    width = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        xs = [i + (k - 1) * width for i in range(len(rows))]
        ax.bar(xs, [percent(r, key) or 0.0 for r in rows], width, label=label)
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows], fontsize=8)
    low = min((percent(r, k) for r in rows for k, _ in keys if r.get(k)), default=0.0)
    ax.set_ylim(max(0.0, low - 5.0), 100.0)
    detectors = {r.get("metric") == "IoU" for r in rows}
    ax.set_ylabel("test mean IoU × 100" if detectors == {True} else "test accuracy %" if detectors == {False}
                  else "accuracy % / IoU × 100")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return _data_uri(fig)


def qat_curves(history: Sequence[dict], title: str) -> str:
    """QAT loss and training accuracy per epoch."""
    return training_curves(history, title)


def layer_bars(names: Sequence[str], values: Sequence[float], ylabel: str, title: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * len(names) + 2), 2.8))
    ax.bar(range(len(names)), values, color="#6baed6")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _data_uri(fig)


def pareto(points: Sequence[dict], title: str) -> str:
    """Cycles per image against DSPs of a design sweep, the Pareto front joined."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for mode in sorted({p.get("mode", "") for p in points}):
        pts = [p for p in points if p.get("mode", "") == mode]
        ax.scatter([p["dsp"] for p in pts], [p["cycles"] for p in pts], s=14, label=mode or "points")
    front = sorted((p for p in points if p.get("pareto")), key=lambda p: p["dsp"])
    if front:
        ax.plot([p["dsp"] for p in front], [p["cycles"] for p in front], color="#d62728", label="Pareto front")
    ax.set_xlabel("DSP48E2")
    ax.set_ylabel("cycles / image")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _data_uri(fig)


def cim_sweep(points: Sequence[dict], title: str) -> str:
    """Crossbar accuracy against ADC bits, one line per (cell bits, variation)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for cell, var in sorted({(p["cell_bits"], p["variation"]) for p in points}):
        pts = sorted((p for p in points if (p["cell_bits"], p["variation"]) == (cell, var)), key=lambda p: p["adc_bits"])
        ax.plot([p["adc_bits"] for p in pts], [p["cim_accuracy"] for p in pts], marker="o", ms=3,
                label=f"{cell}-bit cells, σ {var:g}")
    ax.set_xlabel("ADC bits")
    _integer_ticks(ax)
    ax.set_ylabel("crossbar accuracy %")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _data_uri(fig)
