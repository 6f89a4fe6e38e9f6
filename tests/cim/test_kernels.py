"""The compiled ADC + shift-and-add (bitsmith.cim.kernels) against the torch operations it replaces
(`simulate.adc`, min / max, Σ code·2^(c·s)), element by element, on sums that sit on, between and
exactly half-way between ADC levels, in every ADC mode."""

import pytest
import torch

from bitsmith.cim import kernels
from bitsmith.cim.config import CIMConfig
from bitsmith.cim.simulate import adc, conversion_range


def awkward_sums(shape, low: float, high: float, levels: int, generator) -> torch.Tensor:
    """Column sums in [low − 1, high + 1]: a third on ADC levels, a third half-way between two (the
    rounding ties), a third anywhere; float32."""
    step = (high - low) / levels
    index = torch.randint(0, levels + 1, shape, generator=generator).to(torch.float32)
    kind = torch.randint(0, 3, shape, generator=generator)
    anywhere = torch.rand(shape, generator=generator) * (high - low + 2) + (low - 1)
    on_level = low + index * step
    half_way = on_level + step / 2
    return torch.where(kind == 0, on_level, torch.where(kind == 1, half_way, anywhere)).to(torch.float32)


def eager(sums, ranges, config, outputs, powers, groups, bit):
    """What the kernel computes, with torch operations: [G·O, pixels] int64."""
    k, s, columns, pixels = sums.shape
    if ranges is None:
        codes = adc(sums[:, :, :outputs].clone(), None, None, config)
        if columns > outputs:
            codes = codes - adc(sums[:, :, outputs:].clone(), None, None, config)
    else:
        low, high = ranges[..., 0, None, None], ranges[..., 1, None, None]  # [parts, K, S, 1, 1]
        codes = adc(sums[:, :, :outputs].clone(), low[0], high[0], config)
        if columns > outputs:
            codes = codes - adc(sums[:, :, outputs:].clone(), low[1], high[1], config)
    weights = powers.to(torch.float64).reshape(1, s, 1, 1)
    per_group = (codes.to(torch.float64) * weights).reshape(groups, k // groups * s, outputs, pixels).sum(1)
    return per_group.reshape(groups * outputs, pixels).to(torch.int64) << bit


@pytest.mark.parametrize("adc_bits", [None, 1, 3, 6])
@pytest.mark.parametrize("rounding", ["round", "floor"])
@pytest.mark.parametrize("adc_range", ["per-call", "full-scale"])
@pytest.mark.parametrize("references", [0, 1, "per-output"])
def test_convert_and_add_equals_the_torch_adc(adc_bits, rounding, adc_range, references):
    generator = torch.Generator().manual_seed(adc_bits or 0)
    k, s, outputs, pixels, groups, bit = 4, 3, 5, 37, 2, 2
    columns = outputs + (outputs if references == "per-output" else references)
    config = CIMConfig(cell_bits=2, adc_bits=adc_bits, adc_rounding=rounding, adc_range=adc_range,
                       dummy="separate" if references else "subtract")
    low, high = (-40.0, 50.0) if not references else (0.0, 90.0)
    sums = awkward_sums((k, s, columns, pixels), low, high, 2 ** (adc_bits or 6) - 1, generator)
    parts = [slice(0, outputs)] + ([slice(outputs, columns)] if references else [])
    if adc_bits is None:
        ranges = None
    elif adc_range == "per-call":
        ranges = kernels.column_ranges(sums, parts)
    else:  # a range the sums overflow on both sides: the clamp matters
        ranges = torch.tensor([low + 3.0, high - 3.0]).expand(len(parts), k, s, 2).contiguous()
    powers = 2 ** (config.cell_bits * torch.arange(s, dtype=torch.int64))
    acc = torch.full((groups * outputs, pixels + 3), 7, dtype=torch.int64)
    kernels.convert_and_add(sums, kernels.adc_settings(ranges, config, k, s), outputs, powers, groups, bit, acc, 3)
    assert torch.equal(acc[:, :3], torch.full((groups * outputs, 3), 7)), "pixels before `first` are untouched"
    expected = eager(sums, ranges, config, outputs, powers, groups, bit) + 7
    assert torch.equal(acc[:, 3:], expected)


def test_column_ranges_are_the_min_and_max_of_each_part():
    generator = torch.Generator().manual_seed(1)
    sums = torch.randn((3, 2, 7, 301), generator=generator) * 30  # 7·301: not a multiple of the lanes
    sums[1, 1, 6, 300] = -1000.0  # the extremes in the very last element, and in a reference column
    sums[2, 0, 0, 0] = 1000.0
    found = kernels.column_ranges(sums, [slice(0, 6), slice(6, 7)])
    for i, part in enumerate([slice(0, 6), slice(6, 7)]):
        low, high = conversion_range([sums[:, :, part]])
        assert torch.equal(found[i, ..., 0], low.reshape(3, 2))
        assert torch.equal(found[i, ..., 1], high.reshape(3, 2))
    assert found[1, 1, 1, 0] == -1000.0 and found[0, 2, 0, 1] == 1000.0


def test_a_single_pixel_chunk():
    sums = torch.tensor([[[[2.4], [-1.6]]]])  # K = S = 1, two columns, one pixel
    ranges = kernels.column_ranges(sums, [slice(0, 2)])
    assert ranges.flatten().tolist() == pytest.approx([-1.6, 2.4])
    acc = torch.zeros((2, 1), dtype=torch.int64)
    kernels.convert_and_add(sums, kernels.adc_settings(None, CIMConfig(adc_bits=None), 1, 1), 2, torch.tensor([1]), 1, 0,
                            acc, 0)
    assert acc.flatten().tolist() == [2, -2]
