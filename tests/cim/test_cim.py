"""The compute-in-memory back end (bitsmith.cim, docs/cim.md): the decomposition, the tile plan,
exactness in the ideal limit against the integer engine, the ADC and device non-idealities, and
the refusals."""

import pytest
import torch

from bitsmith.cim import CIMConfig, decompose, map_graph, run, slice_unsigned
from bitsmith.cim.mapping import tile_plan
from bitsmith.errors import ConfigError, GraphError
from bitsmith.integer import engine
from tests.helpers import golden
from tests.random_graphs import random_graph

def vgg7_w4a4():
    """The seed's VGG7 shape at width 0.125 (16-16-M-32-32-M-64-64-M) on 1×32×32, W4A4."""
    return golden("vgg7_narrow_w4a4")


def vgg_tiny_w8a8():
    """VGG-tiny at width 0.125 (8-8-M-16-16-M-32-32-M), W8A8."""
    return golden("vgg_tiny_narrow")


def images(graph, n=4, seed=0):
    return torch.randn(n, *graph.input_spec.shape, generator=torch.Generator().manual_seed(seed)) * 1.5


# -- the decomposition ---------------------------------------------------------------------------

def test_the_issues_decomposition_example():
    # "a 4-bit weight tensor [128, 128, 3, 3] with 1-bit cells becomes [4, 128, 128, 3, 3];
    #  weight 7 → slices (1, 1, 1, 0) LSB first, weight 8 → (0, 0, 0, 1)" (unsigned weights)
    w = torch.randint(0, 16, (128, 128, 3, 3), generator=torch.Generator().manual_seed(0))
    w[0, 0, 0, 0], w[0, 0, 0, 1] = 7, 8
    slices = slice_unsigned(w, 4, 1)
    assert slices.shape == (4, 128, 128, 3, 3)
    assert slices[:, 0, 0, 0, 0].tolist() == [1, 1, 1, 0]
    assert slices[:, 0, 0, 0, 1].tolist() == [0, 0, 0, 1]
    assert torch.equal(sum(slices[s] << s for s in range(4)), w)
    # signed codes with the offset mapping: W + 2^(n-1), so −1 → 7 and 0 → 8
    signed = decompose(torch.tensor([-1, 0]), 4, 1, "offset")
    assert signed.t().tolist() == [[1, 1, 1, 0], [0, 0, 0, 1]]


@pytest.mark.parametrize("cell_bits", [1, 2, 4])
def test_decompose_reconstructs_the_signed_codes(cell_bits):
    codes = torch.arange(-8, 8).reshape(4, 4)
    shifts = [1 << (cell_bits * s) for s in range(4 // cell_bits)]
    offset = decompose(codes, 4, cell_bits, "offset")
    assert offset.shape == (4 // cell_bits, 4, 4) and int(offset.max()) <= 2**cell_bits - 1
    assert torch.equal(sum(offset[s] * k for s, k in enumerate(shifts)) - 8, codes)
    pos, neg = decompose(codes, 4, cell_bits, "differential")
    assert torch.equal(sum((pos[s] - neg[s]) * k for s, k in enumerate(shifts)), codes)
    assert int(neg[-1].max()) == (1 << (4 - 1 - cell_bits * (4 // cell_bits - 1)))  # −8: 8 fits 4 unsigned bits


def test_decompose_refuses_codes_outside_the_width():
    with pytest.raises(GraphError, match="signed 4-bit"):
        decompose(torch.tensor([8]), 4, 1)


def test_tile_plan_counts_crossbars():
    # the seed's inner VGG7 conv: 128 → 128, 3×3, 4-bit weights, 1-bit cells, 128×128 sub-arrays
    plan = tile_plan("conv2", 128 * 9, 128, 4, CIMConfig(cell_bits=1))
    assert (plan.rows, plan.slices, plan.weight_columns, plan.reference_columns) == (1152, 4, 512, 4)
    assert (plan.row_tiles, plan.column_tiles, plan.crossbars) == (9, 5, 45)
    pair = tile_plan("conv2", 1152, 128, 4, CIMConfig(cell_bits=2, mapping="differential"))
    assert (pair.weight_columns, pair.reference_columns, pair.crossbars) == (512, 0, 36)


def test_the_default_maps_the_inner_convs_like_the_seed():
    g = vgg7_w4a4()
    layers = map_graph(g, CIMConfig())
    assert list(layers) == [f"q_conv{i}_acc" for i in range(2, 7)]  # first conv and both FCs digital
    conv2 = layers["q_conv2_acc"]
    assert conv2.plan.rows == 16 * 9 and conv2.plan.row_tiles == 2
    assert conv2.active_rows.tolist() == [128, 16]
    assert list(map_graph(g, CIMConfig(digital=("q_conv1_acc", "q_fc2")))) == [
        "q_conv2_acc", "q_conv3_acc", "q_conv4_acc", "q_conv5_acc", "q_conv6_acc", "q_fc1_acc"]


# -- exactness in the ideal limit -------------------------------------------------------------------

SETTINGS = [(c, m, d) for c in (1, 2, 4) for m in ("offset", "differential") for d in ("subtract", "separate")]


@pytest.mark.parametrize("model", ["lenet5_w8a8", "vgg_tiny_w8a8", "vgg7_w4a4"])
@pytest.mark.parametrize("cell_bits, mapping, dummy", SETTINGS)
def test_ideal_crossbar_equals_the_integer_engine(model, cell_bits, mapping, dummy):
    g = {"vgg7_w4a4": vgg7_w4a4, "vgg_tiny_w8a8": vgg_tiny_w8a8}.get(model, lambda: golden(model))()
    x = images(g)
    config = CIMConfig(cell_bits=cell_bits, mapping=mapping, dummy=dummy, digital="none", subarray_rows=64)
    expected = engine.run(g, x, return_all=True)
    got = run(g, x, config, return_all=True)
    assert len(map_graph(g, config)) >= 3
    for name, value in expected.items():
        if g.tensors[name].dtype == "int":
            assert torch.equal(got[name], value), name


@pytest.mark.parametrize("name", ["lenet5_bias_asym", "lenet5_mixed", "lenet5_clipq", "lenet5_w12", "strided_padded",
                                  "dilated_conv", "nin_bn", "ultranet_bypass_32x64"])
def test_ideal_crossbar_is_exact_on_zero_points_codebooks_odd_shapes_and_the_zoo(name):
    g = golden(name)
    x = images(g, 3)
    assert torch.equal(run(g, x, CIMConfig(cell_bits=1, digital="none", subarray_rows=32)), engine.run(g, x))


def test_ideal_crossbar_is_exact_on_random_graphs():
    # random zero points, asymmetric padding, residual adds, pools, grouped convs: every layer mapped
    grouped = 0
    for seed in range(12):
        g = random_graph(seed)
        grouped += sum(n.op == "Conv2d" and n.attrs.get("groups", 1) != 1 for n in g.nodes)
        config = CIMConfig(cell_bits=2, mapping=("offset", "differential")[seed % 2], digital="none",
                           subarray_rows=16)
        x = images(g, 2, seed)
        assert torch.equal(run(g, x, config), engine.run(g, x)), seed
    assert grouped


def test_a_16_bit_adc_still_resolves_every_level_and_an_empty_batch_runs():
    g = vgg7_w4a4()
    x = images(g)
    assert torch.equal(run(g, x, CIMConfig(adc_bits=16, digital="none")), engine.run(g, x))
    assert run(g, x[:0], CIMConfig(adc_bits=4)).shape == (0, 10)


# -- the ADC ---------------------------------------------------------------------------------------

def test_few_adc_bits_change_the_outputs_and_the_range_modes_differ():
    g = vgg7_w4a4()
    x = images(g, 8)
    exact = engine.run(g, x)
    low = {mode: run(g, x, CIMConfig(adc_bits=3, adc_range=mode)) for mode in ("per-call", "full-scale")}
    for out in low.values():
        assert not torch.equal(out, exact)
    assert not torch.equal(low["per-call"], low["full-scale"])
    floor = run(g, x, CIMConfig(adc_bits=3, adc_rounding="floor"))
    assert not torch.equal(floor, low["per-call"])
    separate = run(g, x, CIMConfig(adc_bits=3, dummy="separate"))
    assert not torch.equal(separate, low["per-call"])
    # per-call ranges: more ADC bits, closer to the exact accumulators (mean absolute logit error)
    errors = [float((run(g, x, CIMConfig(adc_bits=b)) - exact).abs().float().mean()) for b in (2, 3, 4, 5)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 4
    # full-scale: exact once a step is below one level, 2^b − 1 ≥ 2·128 rows·1 level (b = 9)
    assert not torch.equal(run(g, x, CIMConfig(adc_bits=8, adc_range="full-scale")), exact)
    assert torch.equal(run(g, x, CIMConfig(adc_bits=9, adc_range="full-scale")), exact)


# -- the devices -----------------------------------------------------------------------------------

def test_device_levels_and_on_off_ratio():
    g = vgg7_w4a4()
    ideal = map_graph(g, CIMConfig(cell_bits=2))["q_conv2_acc"].conductance
    assert set(ideal.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    finite = map_graph(g, CIMConfig(cell_bits=2, on_off_ratio=10))["q_conv2_acc"].conductance
    present = finite[0]  # the first sub-array is full: every row is a cell
    assert torch.allclose(present, 0.9 * ideal[0] + 0.3, rtol=0, atol=2.0**-14)  # on a grid of 2^-14
    assert float(finite[1, 16:].abs().max()) == 0  # rows beyond the layer are no cells


def test_variation_zero_is_ideal_and_positive_variation_is_seeded():
    g = vgg7_w4a4()
    x = images(g, 8)
    exact = engine.run(g, x)
    assert torch.equal(run(g, x, CIMConfig(variation=0.0, seed=5)), exact)
    a = run(g, x, CIMConfig(variation=0.1, seed=1))
    assert torch.equal(a, run(g, x, CIMConfig(variation=0.1, seed=1)))
    assert not torch.equal(a, exact)
    assert not torch.equal(a, run(g, x, CIMConfig(variation=0.1, seed=2)))


@pytest.mark.parametrize("devices", [dict(on_off_ratio=5), dict(stuck_at_0=0.05, stuck_at_1=0.05),
                                     dict(read_noise=0.1), dict(drift_nu=0.1, drift_time=1e3)])
def test_each_non_ideality_is_seeded_and_moves_the_outputs(devices):
    g = vgg7_w4a4()
    x = images(g, 8)
    a = run(g, x, CIMConfig(**devices, seed=3))
    assert torch.equal(a, run(g, x, CIMConfig(**devices, seed=3)))
    assert not torch.equal(a, engine.run(g, x))


# -- refusals --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, needle", [
    (dict(adc_bits=0), "adc_bits"), (dict(adc_bits=17), "adc_bits"), (dict(cell_bits=3), "cell_bits"),
    (dict(variation=-0.1), "variation"), (dict(read_noise=-1.0), "read_noise"), (dict(drift_nu=-0.1), "drift_nu"),
    (dict(stuck_at_0=1.0), "stuck_at_0"), (dict(stuck_at_0=0.6, stuck_at_1=0.5), "stuck_at_0 \\+ stuck_at_1"),
    (dict(on_off_ratio=1.0), "on_off_ratio"), (dict(adc_range="calibre"), "adc_range"),
    (dict(mapping="twos"), "mapping"), (dict(dummy="none"), "dummy"), (dict(digital="first"), "digital"),
    (dict(subarray_rows=0), "subarray_rows"), (dict(drift_time=0.0), "drift_time"),
])
def test_bad_settings_are_refused_by_name(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        CIMConfig(**kwargs)


def test_cell_bits_that_do_not_divide_a_layers_weight_bits_name_the_layer():
    g = golden("lenet5_mixed")  # conv2 has 5-bit weights
    with pytest.raises(ConfigError, match="'q_conv2_acc'.*5 weight bits"):
        run(g, images(g), CIMConfig(cell_bits=2))


@pytest.mark.parametrize("name", ["grouped_conv", "skynet_32x64"])
def test_grouped_and_depthwise_convs_map_one_group_per_crossbar_set_and_stay_exact(name):
    g = golden(name)
    grouped = [n for n in g.nodes if n.op == "Conv2d" and n.attrs["groups"] != 1]
    assert grouped
    x = images(g, 2)
    for config in (CIMConfig(cell_bits=2, digital="none"), CIMConfig(mapping="differential", dummy="separate",
                                                                     digital="none", subarray_rows=16)):
        layers = map_graph(g, config)
        node = grouped[0]
        plan = layers[node.name].plan
        groups = node.attrs["groups"]
        assert plan.groups == groups and plan.crossbars == groups * plan.row_tiles * plan.column_tiles
        assert torch.equal(run(g, x, config, layers=layers), engine.run(g, x))
    noisy = CIMConfig(adc_bits=5, variation=0.05, digital="none")
    assert not torch.equal(run(g, x, noisy), engine.run(g, x))


def test_unknown_digital_layers_are_refused():
    with pytest.raises(ConfigError, match="not nodes of the graph"):
        map_graph(golden("lenet5_w8a8"), CIMConfig(digital=("conv9",)))
    g = golden("lenet5_w8a8")
    pool = next(n for n in g.nodes if n.op == "MaxPool2d")
    with pytest.raises(ConfigError, match=f"{pool.name!r} \\(MaxPool2d\\): only Conv2d and Linear"):
        map_graph(g, CIMConfig(digital=(pool.name,)))


def test_programmed_layers_are_reused_only_with_the_same_devices():
    g = vgg7_w4a4()
    x = images(g)
    layers = map_graph(g, CIMConfig(variation=0.1, seed=4))
    # the ADC acts at run time: the same devices may be read with another ADC
    assert torch.equal(run(g, x, CIMConfig(variation=0.1, seed=4, adc_bits=5), layers=layers),
                       run(g, x, CIMConfig(variation=0.1, seed=4, adc_bits=5)))
    with pytest.raises(ConfigError, match="'q_conv2_acc' was programmed with other variation, seed"):
        run(g, x, CIMConfig(variation=0.2, seed=5), layers=layers)
    with pytest.raises(ConfigError, match="not a node of this graph"):
        run(golden("lenet5_w8a8"), images(golden("lenet5_w8a8")), CIMConfig(variation=0.1, seed=4), layers=layers)


# -- odd (DoReFa) codes, the conductance grid, the calibrated range -----------------------------------

def odd_coded(name="lenet5_mixed", layer="q_conv2_acc"):
    """A golden graph whose `layer` (5-bit weights) holds only odd codes in [−15, 15], as DoReFa's
    4-bit levels 2k − 15 are stored."""
    g = golden(name)
    node = next(n for n in g.nodes if n.name == layer)
    w = g.params[node.params["weight"]]
    g.params[node.params["weight"]] = (2 * w.clamp(-8, 7) + 1).to(w.dtype)
    assert node.attrs["weight_bits"] == 5
    return g


@pytest.mark.parametrize("cell_bits", [1, 2, 4])
@pytest.mark.parametrize("mapping", ["offset", "differential"])
def test_odd_codes_are_stored_in_one_bit_less_and_stay_exact(cell_bits, mapping):
    g = odd_coded()
    others = tuple(n.name for n in g.nodes if n.op in ("Conv2d", "Linear") and n.name != "q_conv2_acc")
    config = CIMConfig(cell_bits=cell_bits, mapping=mapping, digital=others)  # other widths: 2, 3, 7, 8 bits
    layer = map_graph(g, config)["q_conv2_acc"]
    assert layer.weight_bits == 4 and layer.plan.slices == 4 // cell_bits
    if mapping == "offset":  # reference cells hold (2^c − 1)/2: in half-level units, 2^c − 1
        assert layer.unit == 2
        assert set(layer.conductance[0, :, :, -1].unique().tolist()) == {2**cell_bits - 1}
    x = images(g)
    assert torch.equal(run(g, x, config), engine.run(g, x))
    assert torch.equal(run(g, x, replace_(config, dummy="separate")), engine.run(g, x))


def test_odd_codes_decompose_into_half_offsets():
    codes = torch.tensor([-15, -1, 1, 15])
    offset = decompose(codes, 5, 1, "offset", odd=True)  # W = (w + 15) / 2 in 4 bits
    assert offset.t().tolist() == [[0, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]]
    with pytest.raises(GraphError, match="odd"):
        decompose(torch.tensor([2]), 5, 1, "offset", odd=True)


def replace_(config, **changes):
    from dataclasses import replace

    return replace(config, **changes)


def test_non_ideal_conductances_sit_on_a_grid_so_chunks_and_threads_do_not_change_a_bit(monkeypatch):
    from bitsmith.cim import simulate
    from bitsmith.cim.mapping import grid_bits

    g = vgg7_w4a4()
    x = images(g, 6)
    config = CIMConfig(adc_bits=6, variation=0.05, on_off_ratio=20, seed=7)
    layers = map_graph(g, config)
    for layer in layers.values():
        f = grid_bits(layer.conductance)
        scaled = layer.conductance * 2.0**f
        assert f >= 14 and torch.equal(scaled, scaled.round())
        assert float(scaled.abs().sum(dim=1).max()) <= 2**23  # every column sum: an integer count of 2^-f
    expected = run(g, x, config, layers=layers)
    monkeypatch.setattr(simulate, "CHUNK_ELEMENTS", 2**9)  # many small chunks, other summation orders
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert torch.equal(run(g, x, config, layers=layers), expected)
    finally:
        torch.set_num_threads(threads)


def test_the_calibrated_range_is_measured_on_images_and_then_static():
    from bitsmith.cim import calibrate

    g = vgg7_w4a4()
    x, other = images(g, 8), images(g, 8, seed=1)
    config = CIMConfig(adc_bits=16, adc_range="calibrated", digital="none")
    layers = map_graph(g, config)
    with pytest.raises(ConfigError, match="no calibrated ADC ranges"):
        run(g, x, config, layers=layers)
    calibrate(g, [x[:4], x[4:]], config, layers)
    ranges = layers["q_conv2_acc"].adc_ranges
    assert ranges.shape[:2] == (4, 1) and bool((ranges[..., 0] <= ranges[..., 1]).all())
    # ranges that cover every sum seen, 16 bits: every level resolved on the calibration images
    assert torch.equal(run(g, x, config, layers=layers), engine.run(g, x))
    # static: another batch is converted with the same ranges, unlike per-call
    four = CIMConfig(adc_bits=4, adc_range="calibrated", digital="none")
    with pytest.raises(ConfigError, match="calibrated with other ADC settings"):
        run(g, other, four, layers=layers)
    calibrate(g, [x], four, layers)
    calibrated = run(g, other, four, layers=layers)
    assert not torch.equal(calibrated, run(g, other, CIMConfig(adc_bits=4, digital="none")))
    assert torch.equal(calibrated, run(g, other, four, layers=layers))  # no batch dependence
    assert torch.equal(run(g, other[:3], four, layers=layers), calibrated[:3])
    with pytest.raises(ConfigError, match="ideal ADC"):
        calibrate(g, [x], CIMConfig(digital="none"), layers)
