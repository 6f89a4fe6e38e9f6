"""Per-layer summary of a model: output shape, parameters and multiply-accumulates per image."""

from dataclasses import dataclass

import torch
from rich.table import Table
from torch import nn

from bitsmith.errors import ConfigError


@dataclass(frozen=True)
class LayerSummary:
    """One executed leaf module: `output_shape` excludes the batch; `macs` is per image."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-accumulates for one image (the summary runs a batch of 1)."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return (output.numel() // module.out_features) * module.in_features * module.out_features
    return 0


def model_summary(
    model: nn.Module, input_shape: tuple[int, int, int] | None = None
) -> list[LayerSummary]:
    """Run one zero image through `model` and return a row per executed leaf module, in order.

    `input_shape` (C, H, W) defaults to `model.input_shape`. Params count every parameter of the
    leaf (weights, bias, BN affine); BN running statistics are buffers and are not counted. The
    model runs in eval mode (BatchNorm1d cannot train on one image) and its mode is restored.
    Functional ops (`torch.cat`) are not modules and get no row.
    """
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ConfigError(
                f"{type(model).__name__} has no input_shape attribute; pass input_shape=(C, H, W)"
            )
    rows: list[LayerSummary] = []
    names = {module: name for name, module in model.named_modules()}

    def record(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        rows.append(
            LayerSummary(
                name=names[module],
                kind=type(module).__name__,
                output_shape=tuple(output.shape[1:]),
                params=sum(p.numel() for p in module.parameters()),
                macs=_macs(module, output),
            )
        )

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(record) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return rows


def format_summary(rows: list[LayerSummary], title: str) -> Table:
    """A rich table of `rows` with a total row (params and MACs summed)."""
    table = Table(title=title)
    table.add_column("layer")
    table.add_column("kind")
    table.add_column("output", justify="right")
    table.add_column("params", justify="right")
    table.add_column("MACs", justify="right")
    for row in rows:
        shape = " x ".join(str(d) for d in row.output_shape)
        table.add_row(row.name, row.kind, shape, f"{row.params:,}", f"{row.macs:,}")
    table.add_section()
    table.add_row(
        "total",
        "",
        "",
        f"{sum(r.params for r in rows):,}",
        f"{sum(r.macs for r in rows):,}",
        style="bold",
    )
    return table
