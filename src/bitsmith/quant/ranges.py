"""Per-layer value ranges: min–max against mean ± 3σ, for weights and output activations.

This is step 1 and 3 of the classroom LeNet-5 flow (docs/homework.md): for each Conv2d / Linear,
compare the weight range given by min–max with the one given by mean ± 3σ, and likewise the
range of the activation the layer's output quantizer sees (after BatchNorm folding and the
fused ReLU), and say which is wider. The weights reported are the folded ones (what gets
quantized); for a model without BatchNorm they are the float weights. Activations are measured
with float weights on the calibration batches. The 3σ ranges here are the raw mean ± 3σ
(the "sigma" observer additionally intersects them with [min, max]).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.quant.config import QuantConfig
from bitsmith.quant.fake_quant import FakeQuantize
from bitsmith.quant.modules import QuantConv2d, QuantLayer
from bitsmith.quant.observers import SIGMA_K, SigmaObserver
from bitsmith.quant.prepare import prepare
from bitsmith.storage import write_bytes_atomic, write_json_atomic

COLUMNS = ("layer", "kind", "weight_min", "weight_max", "weight_mean", "weight_std", "weight_3sigma_lo",
           "weight_3sigma_hi", "weight_wider", "act_min", "act_max", "act_mean", "act_std", "act_3sigma_lo",
           "act_3sigma_hi", "act_wider")


def _wider(lo: float, hi: float, lo3: float, hi3: float) -> str:
    return "3sigma" if hi3 - lo3 > hi - lo else "minmax"


def _stats(lo: float, hi: float, mean: float, std: float, prefix: str) -> dict[str, Any]:
    lo3, hi3 = mean - SIGMA_K * std, mean + SIGMA_K * std
    return {f"{prefix}_min": lo, f"{prefix}_max": hi, f"{prefix}_mean": mean, f"{prefix}_std": std,
            f"{prefix}_3sigma_lo": lo3, f"{prefix}_3sigma_hi": hi3, f"{prefix}_wider": _wider(lo, hi, lo3, hi3)}


def _observer_stats(fq: FakeQuantize, prefix: str) -> dict[str, Any]:
    obs = fq.observer
    assert isinstance(obs, SigmaObserver)
    mean, std = obs.stats()
    return _stats(float(obs.min_val), float(obs.max_val), mean, std, prefix)


def layer_ranges(model: nn.Module, calib_batches: Iterable) -> list[dict[str, Any]]:
    """One row per Conv2d / Linear (float module name) plus a first row for the input.

    Each row holds weight_{min,max,mean,std,3sigma_lo,3sigma_hi,wider} and the same act_* fields
    for the layer's output activation; `wider` is "minmax" or "3sigma". The input row has no
    weight fields (None).
    """
    qmodel = prepare(model, QuantConfig(observer="sigma", requantize_output=True))
    layers = [m for m in qmodel.modules() if isinstance(m, QuantLayer)]
    for m in layers:
        m.fake_quant_weights = False  # float weights: measure the float model's activations
    batches = 0
    with torch.no_grad():
        for batch in calib_batches:
            qmodel(batch[0] if isinstance(batch, (tuple, list)) else batch)
            batches += 1
    if batches == 0:
        raise ConfigError("calibration data is empty; pass at least one batch of inputs")
    rows = [{"layer": "input", "kind": "input",
             **{k: None for k in COLUMNS if k.startswith("weight_")},
             **_observer_stats(qmodel.get_submodule("input_quant"), "act")}]
    for m in layers:
        w = m.weight.detach().to(torch.float64)
        rows.append({"layer": m.float_name, "kind": "Conv2d" if isinstance(m, QuantConv2d) else "Linear",
                     **_stats(float(w.min()), float(w.max()), float(w.mean()), float(w.std(unbiased=False)), "weight"),
                     **_observer_stats(m.act_quant, "act")})
    return [{k: row[k] for k in COLUMNS} for row in rows]


def write_ranges(rows: list[dict[str, Any]], out_dir: str | os.PathLike) -> dict[str, str]:
    """Write ranges.csv and ranges.json (atomically) into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in COLUMNS})
    write_bytes_atomic(out_dir / "ranges.csv", buf.getvalue().encode())
    write_json_atomic(out_dir / "ranges.json", {"sigma_k": SIGMA_K, "layers": rows})
    return {"csv": str(out_dir / "ranges.csv"), "json": str(out_dir / "ranges.json")}


def _span(row: dict[str, Any], prefix: str) -> tuple[str, str, str]:
    if row[f"{prefix}_min"] is None:
        return "", "", ""
    return (f"[{row[f'{prefix}_min']:.4g}, {row[f'{prefix}_max']:.4g}]",
            f"[{row[f'{prefix}_3sigma_lo']:.4g}, {row[f'{prefix}_3sigma_hi']:.4g}]", row[f"{prefix}_wider"])


def ranges_table(rows: list[dict[str, Any]]) -> Table:
    """A rich table: per layer, weight and activation ranges by min–max and by mean ± 3σ."""
    table = Table(title="Value ranges: min–max vs mean ± 3σ")
    for col in ("layer", "kind", "weight min–max", "weight ±3σ", "wider", "act min–max", "act ±3σ", "wider"):
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for row in rows:
        table.add_row(row["layer"], row["kind"], *_span(row, "weight"), *_span(row, "act"))
    return table
