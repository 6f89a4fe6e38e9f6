"""The CIM cost estimates (bitsmith.cim.cost, docs/cim-cost.md): NeuroSim's component figures,
every per-layer figure hand-computed on a one-conv graph, monotonic behaviour, the CLI and the
refusals."""

import json
import math

import pytest
import torch

from bitsmith.cim import CIMConfig, CostModel, estimate, input_bit_activity, map_graph
from bitsmith.errors import ConfigError, DataError
from bitsmith.integer.graph import TensorSpec
from tests.helpers import invoke
from tests.random_graphs import GraphMaker

F2_UM2 = 0.022**2  # one F² at 22 nm, µm²


def one_conv_graph(linear_head: bool = False):
    """4-bit unsigned input codes [2, 4, 4] → Conv2d 3×3, pad 1, 3 outputs, 4-bit weights: output
    channel 0 all 0, channel 1 all −1, channel 2 all 7 (optionally → Flatten → Linear 48 → 5)."""
    gm = GraphMaker(0)
    image = TensorSpec("input", (2, 4, 4), "float32")
    gm.tensors["input"] = image
    codes = gm._node("QuantizeInput", [image], TensorSpec("codes", (2, 4, 4), "int", 4, False, 0.1, 0))
    acc = gm.conv(codes, 3, 3, weight_bits=4, bias=False, requant=linear_head)
    weight = torch.stack([torch.full((2, 3, 3), v, dtype=torch.int8) for v in (0, -1, 7)])
    gm.params["conv1_acc.weight"] = weight
    out = gm.linear(gm.flatten(acc), 5, requant=False) if linear_head else acc
    return gm.graph(out)


CONFIG = CIMConfig(cell_bits=1, adc_bits=5, subarray_rows=8, digital="none")


def test_one_conv_graph_is_what_the_hand_figures_assume():
    graph = one_conv_graph()
    (name,) = map_graph(graph, CONFIG)
    assert name == "conv1_acc"
    assert graph.weight_codes(graph.nodes[1])[:, 0, 0, 0].tolist() == [0, -1, 7]


# -- component figures ---------------------------------------------------------------------------

def test_adc_energies_are_the_reference_figures():
    # shared REFERENCE.md: ≈ 27/36/47/58/85 fJ per conversion at 3/4/5/6/8 bits (NeuroSim's SAR formula)
    model = CostModel()
    for bits, fj in {3: 27, 4: 36, 5: 47, 6: 58, 8: 85}.items():
        assert abs(model.adc_energy_fj(bits) - fj) < 1.0
    # P = (0.538·b + 4.3753) µW + 0.072341·exp(−2.303·log10(R·0.5/0.55)), t = (b + 1) ns
    power = (0.538 * 5 + 4.3753) * 1e-6 + 0.072341 * math.exp(-2.303 * math.log10(1e5 * 0.5 / 0.55))
    assert model.adc_energy_fj(5) == pytest.approx(power * 6e-9 * 1e15, rel=1e-12)
    energies = [model.adc_energy_fj(b) for b in range(1, 17)]
    assert all(a < b for a, b in zip(energies, energies[1:]))


def test_adc_latency_area_and_cell_conductance():
    model = CostModel()
    assert [model.adc_latency_ns(b) for b in (3, 5, 8)] == [4.0, 6.0, 9.0]
    # SarADC.cpp: (269 + 109·(b−1)) NMOS + (209 + 73·(b−1)) PMOS gate regions of 7.6F × 28F
    assert model.adc_area_um2(5) == pytest.approx(1206 * 7.6 * 28 * F2_UM2)
    assert model.cell_conductance_us(1, 1) == pytest.approx(10.0)
    assert model.cell_conductance_us(0, 2) == pytest.approx(1 / 1.7)
    assert model.cell_conductance_us(3, 2) == pytest.approx(10.0)


# -- one layer by hand ---------------------------------------------------------------------------

def test_every_figure_of_one_conv_by_hand():
    graph = one_conv_graph()
    report = estimate(graph, map_graph(graph, CONFIG), CONFIG)
    (c,) = report.layers
    # rows 2·9 = 18 → 3 sub-arrays of 8; columns 3 outputs × 4 slices + 4 reference = 16 → 2 tiles
    assert (c.crossbars, c.cells, c.row_tiles, c.output_pixels, c.input_bits) == (6, 18 * 16, 3, 16, 4)
    # "subtract": one conversion per weight column, per sub-array row, pixel and input bit
    assert c.converted_columns == 12 and c.adc_conversions == 16 * 4 * 3 * 12 == 2304
    # one ADC per 8 columns: 1 per crossbar; the busiest crossbar converts 6 columns in turn
    assert (c.adcs, c.serial_conversions) == (6, 6)
    assert c.cycles == 16 * 4 * (6 * 6 + 10) and c.latency_us == pytest.approx(2.944)
    # levels: weight 0 → 8 = 0001, −1 → 7 = 1110, 7 → 15 = 1111, reference 8 = 0001: 9 of 16 cells per row
    assert c.mean_cell_level == pytest.approx(9 / 16)
    g = 1 / 1.7e6 + 9 / 16 * (1 / 1e5 - 1 / 1.7e6)
    assert c.energy_cells_pj == pytest.approx(16 * 4 * 0.5 * 288 * 0.55**2 * g * 10e-9 * 1e12)
    assert c.adc_energy_per_conversion_fj == pytest.approx(CostModel().adc_energy_fj(5))
    assert c.energy_adc_pj == pytest.approx(2304 * c.adc_energy_per_conversion_fj * 1e-3)
    assert c.energy_shift_add_pj == pytest.approx(2304 * 50e-3)
    assert c.energy_pj == pytest.approx(c.energy_cells_pj + c.energy_adc_pj + c.energy_shift_add_pj)
    assert c.macs == 16 * 18 * 3 and c.tops_per_w == pytest.approx(2 * 864 / c.energy_pj)
    assert c.area_arrays_mm2 == pytest.approx(6 * 64 * 48 * F2_UM2 * 1e-6)
    assert c.area_adc_mm2 == pytest.approx(6 * CostModel().adc_area_um2(5) * 1e-6)
    # accumulator 5 ADC bits + 3 slice shifts + 4 input bits = 12 bits of 9 NAND2 + 1 DFF each
    assert c.area_shift_add_mm2 == pytest.approx(6 * 12 * (9 * 11.4 * 28 + 12 * 7.6 * 28) * F2_UM2 * 1e-6)
    assert c.area_mm2 == pytest.approx(c.area_arrays_mm2 + c.area_adc_mm2 + c.area_shift_add_mm2)
    assert report.total["energy_pj"] == pytest.approx(c.energy_pj) and report.total["crossbars"] == 6


def test_separate_conversions_include_the_reference_columns():
    graph = one_conv_graph()
    config = CIMConfig(cell_bits=1, adc_bits=5, subarray_rows=8, digital="none", dummy="separate")
    (c,) = estimate(graph, map_graph(graph, config), config).layers
    assert c.converted_columns == 16 and c.adc_conversions == 16 * 4 * 3 * 16
    assert c.serial_conversions == 8


def test_differential_pairs_are_one_conversion_each():
    graph = one_conv_graph()
    config = CIMConfig(cell_bits=1, adc_bits=5, subarray_rows=8, digital="none", mapping="differential")
    (c,) = estimate(graph, map_graph(graph, config), config).layers
    # 24 physical columns (positive and negative arrays), 12 conversions of (positive − negative)
    assert c.converted_columns == 12 and c.crossbars == 9 and c.serial_conversions == 4


def test_linear_layers_have_one_output_pixel():
    graph = one_conv_graph(linear_head=True)
    config = CIMConfig(cell_bits=1, adc_bits=4, digital="none")
    conv, fc = estimate(graph, map_graph(graph, config), config).layers
    assert (fc.op, fc.output_pixels, fc.macs) == ("Linear", 1, 48 * 5)
    assert fc.adc_conversions == 1 * fc.input_bits * 1 * 5 * 8  # 8-bit weights: 8 slices per output


# -- monotonic behaviour -------------------------------------------------------------------------

def test_more_adc_bits_cost_more_energy_and_area():
    graph = one_conv_graph()
    layers = map_graph(graph, CIMConfig(cell_bits=1, subarray_rows=8, digital="none"))
    reports = [estimate(graph, layers, CIMConfig(cell_bits=1, adc_bits=b, subarray_rows=8, digital="none"))
               for b in range(3, 9)]
    for key in ("energy_adc_pj", "area_adc_mm2", "latency_us", "energy_pj"):
        values = [r.total[key] for r in reports]
        assert all(a < b for a, b in zip(values, values[1:])), key
    assert len({r.total["adc_conversions"] for r in reports}) == 1


def test_two_bit_cells_need_fewer_crossbars_and_conversions():
    graph = one_conv_graph()
    one, two = (estimate(graph, map_graph(graph, config), config).layers[0]
                for config in (CONFIG, CIMConfig(cell_bits=2, adc_bits=5, subarray_rows=8, digital="none")))
    assert two.crossbars < one.crossbars and two.adc_conversions == one.adc_conversions // 2
    assert two.energy_adc_pj < one.energy_adc_pj


def test_cell_energy_follows_the_activity_and_a_measured_one_is_accepted():
    graph = one_conv_graph()
    layers = map_graph(graph, CONFIG)
    half, full, none = (estimate(graph, layers, CONFIG, activity=a).layers[0] for a in (None, 1.0, 0.0))
    assert full.energy_cells_pj == pytest.approx(2 * half.energy_cells_pj) and none.energy_cells_pj == 0
    assert full.energy_adc_pj == half.energy_adc_pj  # a fixed column resistance: conversions cost the same
    x = torch.randn(6, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    measured = input_bit_activity(graph, x, layers)
    codes = (x / 0.1).round().clamp(0, 15).to(torch.int64)  # QuantizeInput: scale 0.1, zero point 0, 4 bits
    ones = sum(int(((codes >> b) & 1).sum()) for b in range(4))
    assert measured == {"conv1_acc": pytest.approx(ones / (codes.numel() * 4))}
    assert input_bit_activity(graph, x, layers, batch_size=4) == measured  # batches of 4 and 2 images
    c = estimate(graph, layers, CONFIG, activity=measured).layers[0]
    assert c.energy_cells_pj == pytest.approx(measured["conv1_acc"] * full.energy_cells_pj)


def test_the_on_off_ratio_of_the_simulation_does_not_change_the_mean_level():
    graph = one_conv_graph()
    config = CIMConfig(cell_bits=1, adc_bits=5, subarray_rows=8, digital="none", on_off_ratio=17)
    (c,) = estimate(graph, map_graph(graph, config), config).layers
    assert c.mean_cell_level == pytest.approx(9 / 16)


def test_neurosim_column_mode_puts_the_cell_energy_in_the_adc():
    graph = one_conv_graph()
    model = CostModel(adc_column_resistance_ohm=None)
    (c,) = estimate(graph, map_graph(graph, CONFIG), CONFIG, model).layers
    assert c.energy_cells_pj == 0
    # half of a sub-array's 6 rows driven, each cell 9/16 of the way from 1/R_off to 1/R_on
    g = 1 / 1.7e6 + 9 / 16 * (1 / 1e5 - 1 / 1.7e6)
    assert c.adc_energy_per_conversion_fj == pytest.approx(model.adc_energy_fj(5, 1 / (0.5 * 6 * g)))
    assert c.adc_energy_per_conversion_fj > CostModel().adc_energy_fj(5)


# -- refusals ------------------------------------------------------------------------------------

def test_an_ideal_adc_needs_adc_bits_for_cost():
    graph = one_conv_graph()
    ideal = CIMConfig(cell_bits=1, subarray_rows=8, digital="none")
    layers = map_graph(graph, ideal)
    with pytest.raises(ConfigError, match="ideal ADC"):
        estimate(graph, layers, ideal)
    assert estimate(graph, layers, ideal, adc_bits_for_cost=5).total == estimate(graph, layers, CONFIG).total
    with pytest.raises(ConfigError, match="adc_bits_for_cost"):
        estimate(graph, layers, ideal, adc_bits_for_cost=17)


@pytest.mark.parametrize("field, value, message", [
    ("columns_per_adc", 0, "columns_per_adc must be an integer >= 1"),
    ("read_pulse_ns", -1.0, "read_pulse_ns must be > 0"),
    ("r_off_ohm", 50e3, "r_off_ohm .* must be above r_on_ohm"),
    ("clock_ghz", float("nan"), "clock_ghz must be a finite number"),
    ("shift_add_energy_fj", -0.1, "shift_add_energy_fj must be >= 0"),
    ("adc_column_resistance_ohm", 0.0, "adc_column_resistance_ohm must be > 0"),
])
def test_cost_model_refuses_bad_figures(field, value, message):
    with pytest.raises(ConfigError, match=f"CostModel: {message}"):
        CostModel(**{field: value})


def test_bad_activities_and_foreign_layers_are_refused():
    graph = one_conv_graph()
    layers = map_graph(graph, CONFIG)
    for activity, message in [(1.5, "fraction in"), ({"conv9": 0.5}, "not mapped layers"), ({}, "no fraction"),
                              ({"conv1_acc": -0.1}, "fraction in")]:
        with pytest.raises(ConfigError, match=message):
            estimate(graph, layers, CONFIG, activity=activity)
    for other_config in (CIMConfig(cell_bits=2, adc_bits=5, subarray_rows=8, digital="none"),
                         CIMConfig(cell_bits=1, adc_bits=5, subarray_rows=16, digital="none"),
                         CIMConfig(cell_bits=1, adc_bits=5, subarray_rows=8, digital="none", mapping="differential")):
        with pytest.raises(ConfigError, match="'conv1_acc' was mapped with other"):
            estimate(graph, layers, other_config)
    other = one_conv_graph(linear_head=True)
    with pytest.raises(ConfigError, match="'fc4' is not a node of this graph"):
        estimate(graph, map_graph(other, CONFIG), CONFIG)


# -- the command ---------------------------------------------------------------------------------

def test_cli_cost_json_and_table(tmp_path):
    graph = one_conv_graph()
    graph.save(tmp_path / "g")
    result = invoke("cim", "cost", tmp_path / "g", "--digital", "none", "--subarray-rows", 8, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output.strip().splitlines()[-1])
    assert doc["label"].startswith("estimate") and doc["adc_bits"] == 5
    assert doc["total"]["crossbars"] == 6 and doc["layers"][0]["adc_conversions"] == 2304
    assert {"energy_pj", "area_mm2", "latency_us", "tops_per_w"} <= set(doc["total"])
    table = invoke("cim", "cost", tmp_path / "g", "--digital", "none", "--subarray-rows", 8, "--adc-bits", 6)
    assert table.exit_code == 0 and "est." in table.output and "total" in table.output
    assert "NeuroSim" in table.output


def test_cli_cost_refuses_bad_settings(tmp_path):
    one_conv_graph().save(tmp_path / "g")
    result = invoke("cim", "cost", tmp_path / "g", "--digital", "none", "--cell-bits", 3)
    assert result.exit_code != 0 and "cell_bits" in str(result.exception) + result.output
    result = invoke("cim", "cost", tmp_path / "g", "--digital", "none", "--activity", 2)
    assert result.exit_code != 0 and "activity" in str(result.exception) + result.output


def test_cli_measures_the_activity_on_test_images(tmp_path):
    from bitsmith.data import load_dataset
    from bitsmith.data.transforms import iterate_batches

    gm = GraphMaker(1)
    image = TensorSpec("input", (1, 28, 28), "float32")
    gm.tensors["input"] = image
    codes = gm._node("QuantizeInput", [image], TensorSpec("codes", (1, 28, 28), "int", 4, False, 0.25, 0))
    graph = gm.graph(gm.conv(codes, 2, 3, weight_bits=4, bias=False, requant=False))
    graph.metadata["dataset"] = "synthetic"
    graph.save(tmp_path / "g")
    result = invoke("cim", "cost", tmp_path / "g", "--digital", "none", "--images", 20, "--json")
    assert result.exit_code == 0, result.output
    (layer,) = json.loads(result.output.strip().splitlines()[-1])["layers"]
    x = next(iterate_batches(load_dataset("synthetic", "test", limit=20), 20, (1, 28, 28)))[0]
    expected = input_bit_activity(graph, x, map_graph(graph, CIMConfig(adc_bits=5, digital="none")))
    assert layer["activity"] == pytest.approx(expected["conv1_acc"]) and 0 < layer["activity"] < 1
    one_conv_graph().save(tmp_path / "h")  # no data set in its metadata
    result = invoke("cim", "cost", tmp_path / "h", "--digital", "none", "--images", 5)
    assert result.exit_code != 0 and "no data set" in str(result.exception) + result.output


def test_conductances_not_in_level_units_are_refused():
    graph = one_conv_graph()
    layers = map_graph(graph, CONFIG)
    layers["conv1_acc"].conductance = layers["conv1_acc"].conductance * 1e4  # e.g. siemens × 1e4, not levels
    with pytest.raises(DataError, match="'conv1_acc': mean cell level .* not in level units"):
        estimate(graph, layers, CONFIG)
