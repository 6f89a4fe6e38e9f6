"""The DNAS search loop: a strong cost weight drives every searched layer to its cheapest widths,
cd = 0 leaves the cost table without effect, a seed repeats a search bit for bit, every epoch
is recorded, and bad settings are refused."""

from __future__ import annotations

import json

import pytest
import torch

from bitsmith.data import load_dataset
from bitsmith.errors import ConfigError
from bitsmith.models import build_model
from bitsmith.search.dnas import (
    DNASConfig,
    DNASResult,
    expected_cost,
    search,
)
from bitsmith.quant.qat.prepare import bit_string, parse_bit_string
from bitsmith.search.supernet import MixedLayer

LAYERS = ["conv1", "conv2", "conv3", "fc1", "fc2"]
SEARCHED = [2, 3, 4, 6, 8]
CANDS = [[8]] + [SEARCHED] * 3 + [[8]]
SHAPE = (1, 32, 32)
RECORD_KEYS = {"epoch", "train_loss", "train_acc", "expected_cost", "bitw", "bita", "prob_w", "prob_a", "seconds"}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small tensors: one thread (tests/conftest.py); also what makes a search bit-identical."""


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", "train", limit=256)


def _lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet5", bias=True).eval()


def _tables(cheap_low: bool = True) -> list[torch.Tensor]:
    """w·a per layer (cheapest at 2/2), or its reverse (cheapest at 8/8)."""
    tables = []
    for cw, ca in zip(CANDS, CANDS):
        t = torch.tensor([[float(w * a) for a in ca] for w in cw])
        tables.append(t if cheap_low else 100.0 - t)
    return tables


def _search(data, config: DNASConfig, tables=None, **kwargs) -> DNASResult:
    return search(_lenet(), LAYERS, CANDS, CANDS, _tables() if tables is None else tables, 1.0, data, SHAPE,
                  config, quiet=True, **kwargs)


def test_a_huge_cost_weight_picks_the_cheapest_widths(data):
    result = _search(data, DNASConfig(epochs=1, batch_size=64, cd=10.0))
    assert result.bitw == [8, 2, 2, 2, 8] and result.bita == [8, 2, 2, 2, 8]
    # Not merely the first candidate winning a tie: 2 bits took almost all the probability.
    record = result.history[0]
    assert all(p[0] > 0.9 for p in record["prob_w"][1:4] + record["prob_a"][1:4])
    # The same with the table reversed: the widest widths are now the cheap ones.
    result = _search(data, DNASConfig(epochs=1, batch_size=64, cd=10.0), tables=_tables(cheap_low=False))
    assert result.bitw == [8, 8, 8, 8, 8] and result.bita == [8, 8, 8, 8, 8]
    record = result.history[0]
    assert all(p[-1] > 0.9 for p in record["prob_w"][1:4] + record["prob_a"][1:4])


def test_without_cost_weight_the_table_has_no_effect(data):
    config = DNASConfig(epochs=1, batch_size=64, cd=0.0)
    cheap_low = _search(data, config, tables=_tables(True))
    cheap_high = _search(data, config, tables=_tables(False))
    for a, b in zip(cheap_low.history, cheap_high.history):
        for key in ("train_loss", "train_acc", "bitw", "bita", "prob_w", "prob_a"):
            assert a[key] == b[key], key
    for (_, p), (_, q) in zip(cheap_low.supernet.named_parameters(), cheap_high.supernet.named_parameters()):
        assert torch.equal(p, q)
    # ... whereas with a cost weight the two tables pull the α apart.
    config = DNASConfig(epochs=1, batch_size=64, cd=0.01)
    low = _search(data, config, tables=_tables(True)).history[0]["prob_w"][2]
    high = _search(data, config, tables=_tables(False)).history[0]["prob_w"][2]
    assert low[0] > high[0] and low[-1] < high[-1]


def test_a_seed_repeats_the_search_exactly(data):
    config = DNASConfig(epochs=2, batch_size=64, cd=1e-3, seed=5)
    a, b = _search(data, config), _search(data, config)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.history]
    assert all(torch.equal(p, q) for p, q in zip(a.supernet.state_dict().values(), b.supernet.state_dict().values()))
    other = _search(data, DNASConfig(epochs=2, batch_size=64, cd=1e-3, seed=6))
    assert other.history[0]["train_loss"] != a.history[0]["train_loss"]


def test_history_has_one_record_per_epoch(data):
    seen = []
    model = _lenet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tables = _tables()
    result = search(model, LAYERS, CANDS, CANDS, tables, 2.5, data, SHAPE, DNASConfig(epochs=3, batch_size=64),
                    on_epoch=seen.append, quiet=True)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert seen == result.history
    for r in result.history:
        assert set(r) == RECORD_KEYS
        assert len(r["bitw"]) == len(r["bita"]) == 5
        assert [len(p) for p in r["prob_w"]] == [1, 5, 5, 5, 1] == [len(p) for p in r["prob_a"]]
        assert all(abs(sum(p) - 1) < 1e-5 for p in r["prob_w"] + r["prob_a"])
        assert r["seconds"] > 0 and 0 <= r["train_acc"] <= 100
        # The recorded cost is E at the recorded probabilities.
        probs = [(torch.tensor(pw), torch.tensor(pa)) for pw, pa in zip(r["prob_w"], r["prob_a"])]
        assert r["expected_cost"] == pytest.approx(float(expected_cost(probs, tables, 2.5)), rel=1e-5)
    assert (result.bitw, result.bita) == (result.history[-1]["bitw"], result.history[-1]["bita"])
    assert result.epoch_seconds == [r["seconds"] for r in result.history]
    doc = json.loads(json.dumps(result.to_json()))
    assert doc["bitw_string"] == bit_string(result.bitw) and doc["layers"] == LAYERS
    assert doc["config"]["epochs"] == 3 and len(doc["history"]) == 3
    # The float model is left as it was; the supernet is a copy.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(result.supernet.conv2, MixedLayer) and not isinstance(model.conv2, MixedLayer)


def test_the_progress_bar_runs(data, capsys):
    result = search(_lenet(), LAYERS, CANDS, CANDS, _tables(), 0.0, data, SHAPE, DNASConfig(epochs=1, batch_size=128))
    out = capsys.readouterr().out
    assert f"bitw {bit_string(result.bitw)}" in out and "search 1/1" in out


def test_expected_cost_is_the_bilinear_form():
    pw, pa = torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.25, 0.25])
    t = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    fixed = (torch.ones(1), torch.ones(1))
    value = expected_cost([(pw, pa), fixed], [t, torch.tensor([[7.0]])], 0.5)
    manual = sum(float(pw[i] * t[i, j] * pa[j]) for i in range(2) for j in range(3)) + 7.0 + 0.5
    assert float(value) == pytest.approx(manual)


@pytest.mark.parametrize("kwargs", [
    {"epochs": 0}, {"epochs": 1.5}, {"epochs": True}, {"batch_size": 0}, {"cd": -1.0}, {"cd": float("nan")},
    {"lr": 0.0}, {"alpha_lr": -0.1}, {"alpha_lr": float("inf")}, {"weight_decay": -1e-4}, {"seed": "0"},
])
def test_bad_configs_are_refused(kwargs):
    with pytest.raises(ConfigError):
        DNASConfig(**kwargs)


def test_bad_tables_and_sizes_are_refused(data):
    config = DNASConfig(epochs=1, batch_size=64)
    tables = _tables()
    with pytest.raises(ConfigError, match="shape"):
        _search(data, config, tables=tables[:2] + [tables[2][:, :2]] + tables[3:])
    with pytest.raises(ConfigError, match="one table per searched layer"):
        _search(data, config, tables=tables[:4])
    bad = [t.clone() for t in tables]
    bad[1][0, 0] = float("inf")
    with pytest.raises(ConfigError, match="non-finite"):
        _search(data, config, tables=bad)
    with pytest.raises(ConfigError, match="larger than"):
        _search(data, DNASConfig(epochs=1, batch_size=512))
    with pytest.raises(ConfigError, match="cost_constant"):
        search(_lenet(), LAYERS, CANDS, CANDS, tables, float("nan"), data, SHAPE, config, quiet=True)


def test_bit_strings_round_trip():
    assert bit_string([8, 2, 2, 2, 2, 2]) == "822222"
    assert bit_string([8, 10, 2]) == "8,10,2"
    for bits in ([8, 2, 2, 2, 2, 2], [8, 10, 2], [16], [12], [2], [9, 9, 16]):
        assert parse_bit_string(bit_string(bits), "bitw") == bits
    assert parse_bit_string(" 8, 3 ,4 ", "bitw") == [8, 3, 4]
    for bad in ("", "81", "8,1", "8,17", "8a", "8,,4", "0"):
        with pytest.raises(ConfigError, match="allowed"):
            parse_bit_string(bad, "bitw")
