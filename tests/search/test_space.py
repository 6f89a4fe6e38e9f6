"""The search space: candidates per layer, the model's geometry on the accelerator, and cost tables in
bit-string order that add up to the exact cost of the realised widths."""

from __future__ import annotations

import pytest

from bitsmith.accel.config import AccelConfig
from bitsmith.accel.timing import program_cycles
from bitsmith.errors import ConfigError
from bitsmith.models import build_model
from bitsmith.quant.prepare import quantizable_layers
from bitsmith.search.space import build_space, parse_widths


@pytest.fixture(scope="module")
def lenet():
    return build_model("lenet5").eval()


def test_first_and_last_layers_are_fixed_unless_asked(lenet):
    space = build_space(lenet, lenet.input_shape)
    assert space.layers == quantizable_layers(lenet)
    assert space.candidates_w[0] == space.candidates_a[0] == (8,) and space.candidates_w[-1] == (8,)
    assert space.candidates_w[1] == tuple(range(2, 9)) and space.searched == [False, True, True, True, False]
    free = build_space(lenet, lenet.input_shape, "2,4", "3,8", search_first_last=True)
    assert free.candidates_w == [(2, 4)] * 5 and free.candidates_a == [(3, 8)] * 5 and all(free.searched)


def test_tables_add_up_to_the_exact_cost(lenet):
    space = build_space(lenet, lenet.input_shape, "2,4,8", "2,8", search_first_last=True)
    wbits, abits = [8, 2, 4, 2, 8], [8, 8, 2, 2, 8]
    exact = space.exact(wbits, abits)
    # narrower than the W8A8 geometry: weights load at 2 / 4 bits, and ≤ 4-bit layers may pack four products
    assert exact["cycles"] < program_cycles(space.program)["total"]
    for metric in ("dsp", "bitops", "weight_bits", "cycles"):
        tables, constant = space.tables(metric)
        picked = sum(t[space.candidates_w[l].index(w), space.candidates_a[l].index(a)]
                     for l, (t, w, a) in enumerate(zip(tables, wbits, abits)))
        if metric == "cycles":   # each layer priced alone: an upper bound of the exact total
            assert picked + constant >= exact[metric]
        else:
            assert picked + constant == pytest.approx(exact[metric])
        normalised, c = space.tables(metric, normalise=True)
        unit = {"dsp": 1, "cycles": space.first_macs / 64}.get(metric, space.first_macs)
        assert normalised[1][0, 0] == pytest.approx(tables[1][0, 0] / unit)
        assert c == pytest.approx(constant / unit)


def test_dag_models_map_layers_by_name():
    model = build_model("resnet20", input_shape=(1, 16, 16)).eval()
    space = build_space(model, model.input_shape, "2,8", "8", config=AccelConfig(max_kernel=8))
    assert sorted(space.program_index) == list(range(len(space.layers)))
    tables, _ = space.tables("weight_bits")
    for l, name in enumerate(space.layers):
        module = dict(model.named_modules())[name]
        assert tables[l][-1, 0] == module.weight.numel() * 8, name  # the row of that very layer


@pytest.mark.parametrize("text, needle", [
    ("", "the candidate list is empty"),
    ("2,x", "not a comma-separated list"),
    ("1,4", "width 1 is not allowed; allowed: 2 to 16"),
    ("4,17", "width 17 is not allowed"),
    ("4,4", "repeated widths"),
])
def test_bad_candidate_lists_are_refused(text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_widths(text, "--candidates-w")


def test_widths_are_sorted():
    assert parse_widths("8, 2,4", "--candidates-a") == (2, 4, 8)
    assert parse_widths([16, 9], "--candidates-a") == (9, 16)


def test_inputs_that_are_not_one_layers_choice_are_fixed():
    """A residual add's output (its width is QAT's --abits) and codes several layers read are not a
    per-layer choice: the space fixes them at 8, so every assignment it offers is one QAT accepts."""
    import random

    from bitsmith.quant.qat.prepare import QATSpec, ptq_config

    model = build_model("resnet20", input_shape=(1, 16, 16)).eval()
    space = build_space(model, model.input_shape, config=AccelConfig(max_kernel=8))
    fixed = {name for name, a in zip(space.layers, space.candidates_a) if len(a) == 1}
    assert {"layer1.1.conv1", "layer2.0.conv1", "layer2.0.shortcut.conv"} <= fixed  # they read a residual add
    assert "layer1.0.conv2" not in fixed and "layer1.0.conv1" not in fixed
    rng = random.Random(0)
    for _ in range(3):
        bitw = ",".join(str(rng.choice(c)) for c in space.candidates_w)
        bita = ",".join(str(rng.choice(c)) for c in space.candidates_a)
        ptq_config(model, QATSpec("lsq", abits=8, bitw=bitw, bita=bita), model.input_shape)  # no ConfigError
