"""QuantAdd: the residual add `a + b` (and a fused ReLU / ReLU6 / Hardtanh) of the fake-quant model.

It lowers to an Add node and the Requant after it (docs/arithmetic.md):

    acc = (q_a − z_a)·m_a + (q_b − z_b)·m_b                       exact, at scale S_out·2^-k
    out = clamp(z_out + ((acc + 2^(k−1)) >> k), lo, hi)         the Requant: a rounding shift

with m_a, m_b, k from `add_parameters` and the Requant from `requant_parameters`, the functions
lowering calls. Once its scales are frozen the module computes exactly those integers (its inputs are
codes on known grids, so the integer graph's result is available in float32 without error), so the
fake-quant model and the integer graph agree element by element across every add. While calibrating
or training it is a float add, observed (or fake-quantized) by its own output quantizer `act_quant`,
as a QuantLayer owns its output quantizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.integer.arithmetic import requantize
from bitsmith.quant.config import QuantConfig
from bitsmith.quant.fake_quant import FakeQuantize
from bitsmith.quant.requant import Clamp, add_parameters, requant_parameters


@dataclass(frozen=True)
class Grid:
    """The integer grid an input of the add lies on: real = scale·(q − zero_point), q in [qmin, qmax]."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @classmethod
    def of(cls, fq: FakeQuantize) -> Grid:
        return cls(float(fq.scale), int(fq.zero_point), fq.qmin, fq.qmax)

    @property
    def max_offset(self) -> int:
        """max|q − z| over the code range: what bounds the add's accumulator."""
        return max(self.qmax - self.zero_point, self.zero_point - self.qmin)


class QuantAdd(nn.Module):
    """a + b, then the fused `clamp` (or none), requantized by `act_quant`.

    `input_grids` (set when the model is frozen, by `bitsmith.quant.ptq.freeze`) are the grids of the
    two inputs; `exact_eval` off makes a frozen model add in float (as QAT layers can, for comparison).
    """

    exact_eval = True

    def __init__(self, config: QuantConfig, name: str, clamp: Clamp | None = None,
                 act_quant: FakeQuantize | None = None) -> None:
        super().__init__()
        self.config = config
        self.name = name  # the add's node in the float model's graph, for messages
        self.clamp = clamp
        self.act_quant = act_quant
        self.input_grids: tuple[Grid, Grid] | None = None

    def integer_parameters(self) -> tuple[int, int, int]:
        """(m_a, m_b, k) of the add at the current grids (what lowering writes)."""
        if self.input_grids is None:
            raise ConfigError(f"add {self.name!r}: the grids of its inputs are not known; quantize() the model "
                              "(it freezes every scale) before evaluating it exactly or lowering it")
        a, b = self.input_grids
        return add_parameters((a.scale, b.scale), (a.max_offset, b.max_offset), float(self.act_quant.scale),
                              self.config.acc_bits, where=f"add {self.name!r}")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fq = self.act_quant
        if self.training or not self.exact_eval or fq is None or fq.observing or not fq.enabled:
            y = a + b
            if self.clamp is not None:
                y = self.clamp.apply(y)
            return y if fq is None else fq(y)
        with torch.no_grad():
            return self._exact(a, b)

    def _exact(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        grid_a, grid_b = self.input_grids or (None, None)
        m_a, m_b, k = self.integer_parameters()
        # The inputs are (q − z)·S in float32 (a quantizer's output, possibly max-pooled or reshaped), so
        # dividing by S and rounding recovers q − z exactly.
        v_a = torch.round(a / torch.tensor(grid_a.scale, dtype=torch.float32)).to(torch.int64)
        v_b = torch.round(b / torch.tensor(grid_b.scale, dtype=torch.float32)).to(torch.int64)
        acc = v_a * m_a + v_b * m_b
        fq = self.act_quant
        out_scale = float(fq.scale)
        m, s, lo, hi = requant_parameters([math.ldexp(out_scale, -k)], out_scale, fq.bits, fq.signed,
                                          int(fq.zero_point), self.clamp, self.config, where=f"add {self.name!r}")
        q = requantize(acc, m, s, int(fq.zero_point), lo, hi)
        return (q - fq.zero_point).to(torch.float32) * fq.scale

    def extra_repr(self) -> str:
        return f"{self.name}: clamp={self.clamp}"
