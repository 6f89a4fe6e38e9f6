"""The figure of a crossbar sweep (cim_sweep.png): accuracy against ADC bits, one line per cell width,
and against device variation. Agg backend: files only."""

from __future__ import annotations

from pathlib import Path


def sweep_figure(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers or in tests
    import matplotlib.pyplot as plt

    points = doc["points"]
    variations = sorted({p["variation"] for p in points})
    adcs = sorted({p["adc_bits"] for p in points if p["adc_bits"] is not None})
    cells = sorted({p["cell_bits"] for p in points})
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for cell in cells:
        row = sorted((p["adc_bits"], p["cim_accuracy"]) for p in points
                     if p["cell_bits"] == cell and p["variation"] == variations[0] and p["adc_bits"] is not None)
        if row:
            left.plot(*zip(*row), marker="o", label=f"{cell}-bit cells")
        at = max(adcs) if adcs else None
        col = sorted((p["variation"], p["cim_accuracy"]) for p in points if p["cell_bits"] == cell
                     and p["adc_bits"] == at)
        if col:
            right.plot(*zip(*col), marker="o", label=f"{cell}-bit cells, {at}-bit ADC")
    for ax in (left, right):
        ax.axhline(doc["integer_accuracy"], color="gray", ls="--", lw=1, label="integer engine")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if adcs:
        left.set_xticks(adcs)
    left.set_xlabel("ADC bits")
    left.set_ylabel(f"accuracy on {doc['images']} test images (%)")
    left.set_title(f"variation {variations[0]:g}, ADC range {doc['base']['adc_range']}", fontsize=9)
    right.set_xlabel("conductance variation σ")
    right.set_title("device variation", fontsize=9)
    fig.suptitle(f"{doc['graph']} on crossbars", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
