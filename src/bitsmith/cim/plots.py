"""The figure of a crossbar sweep (cim_sweep.png): accuracy against ADC bits, one line per cell width,
and against device variation — each panel only when its axis has more than one value (a sweep over
one of them draws one panel). Agg backend: files only."""

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
    panels = [kind for kind, values in (("adc", adcs), ("variation", variations)) if len(values) > 1] or ["adc"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 0.5, 4), sharey=True, squeeze=False)
    axes = dict(zip(panels, axes[0]))
    at = max(adcs) if adcs else None  # the variation panel's ADC width
    for cell in cells:
        if "adc" in axes:
            row = sorted((p["adc_bits"], p["cim_accuracy"]) for p in points
                         if p["cell_bits"] == cell and p["variation"] == variations[0] and p["adc_bits"] is not None)
            if row:
                axes["adc"].plot(*zip(*row), marker="o", label=f"{cell}-bit cells")
        if "variation" in axes:
            col = sorted((p["variation"], p["cim_accuracy"]) for p in points
                         if p["cell_bits"] == cell and p["adc_bits"] == at)
            if col:
                axes["variation"].plot(*zip(*col), marker="o", label=f"{cell}-bit cells, {at}-bit ADC")
    for ax in axes.values():
        ax.axhline(doc["integer_accuracy"], color="gray", ls="--", lw=1, label="integer engine")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    first = axes[panels[0]]
    first.set_ylabel(f"accuracy on {doc['images']} test images (%)")
    if "adc" in axes:
        if adcs:
            axes["adc"].set_xticks(adcs)
        axes["adc"].set_xlabel("ADC bits")
        axes["adc"].set_title(f"variation {variations[0]:g}, ADC range {doc['base']['adc_range']}", fontsize=9)
    if "variation" in axes:
        axes["variation"].set_xlabel("conductance variation σ")
        axes["variation"].set_title(f"device variation, {at}-bit ADC, range {doc['base']['adc_range']}", fontsize=9)
    fig.suptitle(f"{doc['graph']} on crossbars", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
