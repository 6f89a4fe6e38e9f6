"""Figures of a search: α over the DNAS epochs (alpha.png), and accuracy against hardware cost with
the Pareto front (the mixed-precision benchmark's pareto.png). Agg backend: files only."""

from __future__ import annotations

from pathlib import Path

from bitsmith.accel.sweep import pareto_front


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers or in tests
    import matplotlib.pyplot as plt
    return plt


def alpha_figure(doc: dict, path: Path) -> None:
    """One panel per searched layer and side (weights, activations): the softmax of α per candidate
    width over the epochs (epoch 0: before the search, all equal)."""
    plt = _pyplot()
    history = doc["dnas"]["history"]
    space = doc["space"]
    searched = [l for l, s in enumerate(space["searched"]) if s]
    sides = [("prob_w", "candidates_w", "weights"), ("prob_a", "candidates_a", "activations")]
    fig, axes = plt.subplots(2, len(searched), figsize=(2.6 * len(searched) + 1, 5.2), squeeze=False, sharey=True)
    epochs = [0] + [r["epoch"] for r in history]  # epoch 0: α initialised equal, so softmax uniform
    for col, l in enumerate(searched):
        for row, (key, cands, label) in enumerate(sides):
            ax = axes[row][col]
            widths = space[cands][l]
            for i, bits in enumerate(widths):
                ax.plot(epochs, [1 / len(widths)] + [r[key][l][i] for r in history], marker="o", ms=3,
                        label=f"{bits} b")
            ax.set_title(f"{space['layers'][l]}: {label}", fontsize=8)
            ax.set_xlabel("epoch", fontsize=8)
            ax.set_xticks(epochs)
            ax.tick_params(labelsize=7)
            if col == 0:
                ax.set_ylabel("softmax(α)", fontsize=8)
            if col == len(searched) - 1:
                ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"DNAS {doc['model']} on {doc['dataset']}: cost {doc['cost']}, cd {doc['cd']:g} → "
                 f"bitw {doc['bitw']} bita {doc['bita']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pareto_figure(points: list[dict], path: Path, title: str) -> None:
    """Accuracy against DSPs and against cycles, one marker per kind of point (uniform, dnas,
    hessian), the Pareto front (fewer DSPs/cycles, higher accuracy) drawn through."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"uniform": "s", "dnas": "o", "hessian": "^"}
    for ax, key, label in ((axes[0], "dsp", "DSP48E2 (dataflow design)"), (axes[1], "cycles", "cycles / image at 8×8")):
        coords = [(p[key], -p["accuracy"]) for p in points]
        front = sorted(pareto_front(coords), key=lambda i: points[i][key])
        for kind, marker in markers.items():
            pts = [p for p in points if p["kind"] == kind]
            ax.scatter([p[key] for p in pts], [p["accuracy"] for p in pts], marker=marker, s=40, label=kind)
            for p in pts:
                ax.annotate(p["label"], (p[key], p["accuracy"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.plot([points[i][key] for i in front], [points[i]["accuracy"] for i in front], "-", color="black", lw=1,
                label="Pareto front")
        if len({p[key] for p in points}) == 1:  # say why the panel is a single column
            ax.text(0.5, 0.02, f"every point: {points[0][key]:,} {key} — this accelerator's cycles do not "
                    "depend on the widths", transform=ax.transAxes, ha="center", fontsize=7, color="dimgray")
        ax.set_xlabel(label)
        ax.set_ylabel("integer-engine accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
