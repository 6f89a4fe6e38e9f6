"""Hutchinson block traces against exact Hessians (closed form and torch.autograd.functional.hessian),
seeding, the per-consumer input blocks, the sensitivities Ω and their grids, and the input checks.

Tolerances are in standard errors: the toy quadratic's exact estimator variance is computed from its
Hessian (Var v_lᵀH_ll v_l = 2·Σ_{i≠j} H_ij²); elsewhere the standard error is estimated from the run's
own per-iteration samples, recovered from the running means in `history`.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import hessian

from bitsmith.errors import ConfigError
from bitsmith.search.hessian import (LayerTraces, layer_traces, quantize_activation, quantize_weight,
                                     sensitivities)

pytestmark = pytest.mark.usefixtures("one_thread")


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def linear_toy(d: int = 4, o: int = 16, batch: int = 32, count: int = 8, seed: int = 0):
    """fc = Linear(d → o, no bias) in float64, targets near its own outputs (residual noise 0.1)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(OrderedDict(fc=nn.Linear(d, o, bias=False))).double()
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(o, d, generator=g, dtype=torch.float64) / math.sqrt(d))
    w = model.fc.weight.detach()
    batches = []
    for _ in range(count):
        x = torch.randn(batch, d, generator=g, dtype=torch.float64)
        batches.append((x, x @ w.T + 0.1 * torch.randn(batch, o, generator=g, dtype=torch.float64)))
    return model, batches


def tiny_cnn(seed: int = 0):
    """conv 3×3 1→2, ReLU, flatten, fc 32→3 (no biases, float64) on two batches of 16 6×6 images."""
    torch.manual_seed(seed)
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3, bias=False), relu=nn.ReLU(), flat=nn.Flatten(),
                                      fc=nn.Linear(2 * 4 * 4, 3, bias=False))).double()
    g = torch.Generator().manual_seed(seed + 1)
    batches = [(torch.randn(16, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g))
               for _ in range(2)]
    return model, batches


def square_trace(h: torch.Tensor, n: int) -> float:
    return float(torch.trace(h.reshape(n, n)))


def samples(traces: LayerTraces, kind: str, name: str) -> np.ndarray:
    """The per-iteration samples x_k = k·m_k − (k−1)·m_{k−1} behind the running means m_k."""
    means = np.array([h[kind][name] for h in traces.history])
    k = np.arange(1, len(means) + 1)
    return k * means - np.concatenate([[0.0], (k[:-1]) * means[:-1]])


# -- (a) a quadratic whose Hessian is known in closed form ----------------------------------------


def test_quadratic_traces_within_two_percent_at_100_iterations():
    """L = mean over B·o of (W x − y)²: H^W = (2/(B·o))·I_o ⊗ Σ_i x_i x_iᵀ, so Tr H^W = (2/N)·Σ‖x_i‖²
    over the N images (batches weighted by size); H^A per image = (2/(B·o))·WᵀW, so the batch trace
    (the mean per-image trace) is (2/o)·‖W‖²_F."""
    model, batches = linear_toy()
    n, o = sum(x.shape[0] for x, _ in batches), model.fc.out_features
    w = model.fc.weight.detach()
    exact_w = 2 / n * sum(float((x ** 2).sum()) for x, _ in batches)
    exact_a = 2 / o * float((w ** 2).sum())

    # The closed forms against autograd, and the estimator's exact standard error at 100 iterations.
    var_w = var_a = check_w = check_a = 0.0
    for x, y in batches:
        share = x.shape[0] / n
        h = hessian(lambda ww, xx: mse(xx @ ww.T, y), (w, x))
        h_w, h_x = h[0][0].reshape(w.numel(), -1), h[1][1].reshape(x.numel(), -1)
        check_w += share * float(torch.trace(h_w))
        check_a += share * float(torch.trace(h_x))
        off = lambda m: float((m ** 2).sum() - (torch.diagonal(m) ** 2).sum())  # noqa: E731
        var_w += share ** 2 * 2 * off(h_w)
        var_a += share ** 2 * 2 * off(h_x)
    assert check_w == pytest.approx(exact_w, rel=1e-12) and check_a == pytest.approx(exact_a, rel=1e-12)
    se_w, se_a = math.sqrt(var_w / 100) / exact_w, math.sqrt(var_a / 100) / exact_a
    assert se_w < 0.005 and se_a < 0.005, "2 % must be at least 4 standard errors"

    traces = layer_traces(model, ["fc"], batches, seed=0, loss_fn=mse, min_iter=100, max_iter=100)
    assert traces.iterations == 100
    err_w = traces.weight["fc"] / exact_w - 1
    err_a = traces.activation["fc"] / exact_a - 1
    assert abs(err_w) < 0.02 and abs(err_a) < 0.02, (err_w, err_a)
    assert traces.weight_size == {"fc": w.numel()} and traces.activation_size == {"fc": model.fc.in_features}


# -- (b), (d) a tiny CNN against torch.autograd.functional.hessian --------------------------------


@pytest.fixture(scope="module")
def cnn_case():
    """Exact traces of the tiny CNN and a 300-iteration estimate (shared by the weight and input tests)."""
    torch.set_num_threads(1)
    model, batches = tiny_cnn()
    n = sum(x.shape[0] for x, _ in batches)
    wc, wf = model.conv.weight.detach(), model.fc.weight.detach()
    exact = {"weight": {"conv": 0.0, "fc": 0.0}, "activation": {"conv": 0.0, "fc": 0.0}}
    for x, y in batches:
        share = x.shape[0] / n
        h = hessian(lambda a, b, xx: F.cross_entropy(F.linear(F.relu(F.conv2d(xx, a)).flatten(1), b), y), (wc, wf, x))
        exact["weight"]["conv"] += share * square_trace(h[0][0], wc.numel())
        exact["weight"]["fc"] += share * square_trace(h[1][1], wf.numel())
        exact["activation"]["conv"] += share * square_trace(h[2][2], x.numel())
        z = F.relu(F.conv2d(x, wc)).flatten(1)   # the fc layer's input
        hz = hessian(lambda zz: F.cross_entropy(F.linear(zz, wf), y), z)
        exact["activation"]["fc"] += share * square_trace(hz, z.numel())
    traces = layer_traces(model, ["conv", "fc"], batches, seed=0, min_iter=300, max_iter=300)
    return model, batches, exact, traces


def _within_four_standard_errors(traces: LayerTraces, exact: dict, kind: str) -> None:
    for name, value in exact[kind].items():
        xs = samples(traces, kind, name)
        assert xs.mean() == pytest.approx(getattr(traces, kind)[name], rel=1e-9)
        se = xs.std(ddof=1) / math.sqrt(len(xs))
        assert se < 0.02 * abs(value), f"{kind} {name}: the check is too loose to mean anything"
        assert abs(getattr(traces, kind)[name] - value) < 4 * se, (kind, name, getattr(traces, kind)[name], value, se)


def test_weight_traces_of_a_tiny_cnn_match_the_exact_hessian(cnn_case):
    _, _, exact, traces = cnn_case
    _within_four_standard_errors(traces, exact, "weight")


def test_input_traces_of_a_tiny_cnn_match_the_exact_hessian(cnn_case):
    """The network input (conv) and a hidden activation after ReLU (fc), each the Hessian w.r.t.
    the batch tensor of the batch-mean loss."""
    _, _, exact, traces = cnn_case
    _within_four_standard_errors(traces, exact, "activation")
    assert traces.activation_size == {"conv": 36, "fc": 32}


def test_the_input_trace_is_the_mean_per_image_trace(cnn_case):
    """Tr ∂²(mean_i ℓ_i)/∂X² = mean_i Tr ∂²ℓ_i/∂x_i²: what `activation` means, independent of B."""
    model, batches, _, _ = cnn_case
    wc, wf = model.conv.weight.detach(), model.fc.weight.detach()
    x, y = batches[0]
    loss = lambda xx, yy: F.cross_entropy(F.linear(F.relu(F.conv2d(xx, wc)).flatten(1), wf), yy)  # noqa: E731
    batch_trace = square_trace(hessian(lambda xx: loss(xx, y), x), x.numel())
    per_image = [square_trace(hessian(lambda xi: loss(xi, y[i:i + 1]), x[i:i + 1]), 36) for i in range(len(x))]
    assert batch_trace == pytest.approx(np.mean(per_image), rel=1e-10)


def test_a_shared_input_gets_one_block_per_consumer():
    """out = A·x + B·x: the block of layer a counts only the path through a, Tr = (2/o)·‖A‖²_F, not the
    shared tensor's (2/o)·‖A + B‖²_F."""

    class TwoBranches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8, bias=False)
            self.b = nn.Linear(4, 8, bias=False)

        def forward(self, x):
            return self.a(x) + self.b(x)

    torch.manual_seed(0)
    model = TwoBranches().double()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 4, generator=g, dtype=torch.float64),
                torch.randn(32, 8, generator=g, dtype=torch.float64)) for _ in range(4)]
    traces = layer_traces(model, ["a", "b"], batches, seed=0, loss_fn=mse, min_iter=100, max_iter=100)
    for name, own, other in (("a", model.a, model.b), ("b", model.b, model.a)):
        exact = 2 / 8 * float((own.weight.detach() ** 2).sum())
        shared = 2 / 8 * float(((own.weight + other.weight).detach() ** 2).sum())
        se = samples(traces, "activation", name).std(ddof=1) / 10
        assert abs(traces.activation[name] - exact) < 4 * se
        assert abs(traces.activation[name] - shared) > 10 * se


# -- (c) seeding, the loop, the model left as it was -------------------------------------------


def test_same_seed_bit_identical_other_seed_differs():
    model, batches = tiny_cnn()
    run = lambda seed: layer_traces(model, ["conv", "fc"], batches, seed=seed, min_iter=5, max_iter=5)  # noqa: E731
    first, again, other = run(3), run(3), run(4)
    assert first.to_json() == again.to_json()
    assert first.weight != other.weight and first.activation != other.activation


def test_stopping_callback_history_and_json():
    model, batches = linear_toy(count=2)
    calls = []
    traces = layer_traces(model, ["fc"], batches, seed=0, loss_fn=mse, tol=0.05, min_iter=3, max_iter=50,
                          on_iteration=lambda k, est, change: calls.append((k, est, change)))
    assert traces.converged and 3 <= traces.iterations < 50
    assert [c[0] for c in calls] == list(range(1, traces.iterations + 1))
    assert math.isinf(calls[0][2]) and all(c[2] < 0.05 for c in calls[-1:])
    assert all(c[2] >= 0.05 for c in calls[2:-1])           # it stops at the first iteration ≥ min_iter under tol
    assert calls[-1][1] == {"weight": traces.weight, "activation": traces.activation}
    assert len(traces.history) == traces.iterations and traces.history[-1]["weight"] == traces.weight

    data = json.loads(json.dumps(traces.to_json()))        # strict JSON: the first change is null
    assert data["history"][0]["max_rel_change"] is None
    assert LayerTraces.from_json(data) == traces

    capped = layer_traces(model, ["fc"], batches, seed=0, loss_fn=mse, tol=1e-9, min_iter=2, max_iter=4)
    assert not capped.converged and capped.iterations == 4


def test_the_model_is_left_as_it_was():
    model, batches = tiny_cnn()
    model.train()
    model.conv.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_traces(model, ["conv", "fc"], batches, seed=0, min_iter=2, max_iter=2)
    assert model.training and all(m.training for m in model.modules())
    assert not model.conv.weight.requires_grad and model.fc.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- (e) sensitivities -------------------------------------------------------------------------


def _traces(layers: dict[str, tuple[float, float, int, int]]) -> LayerTraces:
    return LayerTraces(weight={k: v[0] for k, v in layers.items()}, activation={k: v[1] for k, v in layers.items()},
                       weight_size={k: v[2] for k, v in layers.items()},
                       activation_size={k: v[3] for k, v in layers.items()}, iterations=1, converged=True)


def test_sensitivities_fall_with_more_bits_on_a_random_layer():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(8, 16, 3, bias=False)))
    batches = [(torch.randn(4, 8, 6, 6), torch.zeros(4, dtype=torch.int64))]
    widths = list(range(2, 17))
    omega = sensitivities(model, ["conv"], _traces({"conv": (1.0, 1.0, 16 * 8 * 9, 8 * 36)}), [widths], [widths],
                          batches)[0]
    assert omega.shape == (15, 15) and omega.dtype == np.float64
    assert (np.diff(omega, axis=0) < 0).all() and (np.diff(omega, axis=1) < 0).all()


def test_sensitivities_formula_grids_and_clamping():
    """Ω(w, a) = Tr H^W/n^W·‖Q_w(W) − W‖² + Tr H^A/n^A·E_x‖Q_a(x) − x‖², written out for two layers: fc1
    sees signed images (symmetric grid), fc2 ReLU outputs (unsigned grid 0..2^a − 1)."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(6, 5, bias=False), relu=nn.ReLU(), fc2=nn.Linear(5, 3))).double()
    batches = [(torch.randn(7, 6, dtype=torch.float64), torch.zeros(7, dtype=torch.int64)),
               (torch.randn(3, 6, dtype=torch.float64), torch.zeros(3, dtype=torch.int64))]
    traces = _traces({"fc1": (2.0, 3.0, 30, 6), "fc2": (-1.0, 0.5, 15, 5)})   # fc2's weight trace clamped to 0
    omega = sensitivities(model, ["fc1", "fc2"], traces, [[4, 8], [3]], [[2, 5, 8], [4, 6]], batches)
    assert [o.shape for o in omega] == [(2, 3), (1, 2)]

    x = torch.cat([b[0] for b in batches])
    h = torch.relu(model.fc1(x)).detach()
    w1 = model.fc1.weight.detach()

    def signed(t, bits):
        qmax = 2 ** (bits - 1) - 1
        s = float(t.abs().max()) / qmax
        return torch.clamp(torch.round(t / s), -qmax, qmax) * s

    def unsigned(t, bits):
        s = float(t.max()) / (2 ** bits - 1)
        return torch.clamp(torch.round(t / s), 0, 2 ** bits - 1) * s

    def per_channel(w, bits):
        qmax = 2 ** (bits - 1) - 1
        s = w.abs().amax(dim=1, keepdim=True) / qmax
        return torch.clamp(torch.round(w / s), -qmax, qmax) * s

    for i, wb in enumerate([4, 8]):
        for j, ab in enumerate([2, 5, 8]):
            expected = (2.0 / 30 * float(((per_channel(w1, wb) - w1) ** 2).sum())
                        + 3.0 / 6 * float(((signed(x, ab) - x) ** 2).sum()) / 10)
            assert omega[0][i, j] == pytest.approx(expected, rel=1e-12)
    for j, ab in enumerate([4, 6]):
        assert omega[1][0, j] == pytest.approx(0.5 / 5 * float(((unsigned(h, ab) - h) ** 2).sum()) / 10, rel=1e-12)


def test_quantizers_round_half_to_even_and_clamp():
    w = torch.tensor([[1.0, 0.25, -0.75, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # 2 bits: codes −1..1, scale 1 (row 1); an all-zero row gets scale 1 and stays 0.
    assert torch.equal(quantize_weight(w, 2), torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    x = torch.tensor([0.0, 0.5, 1.5, 3.0])
    assert torch.equal(quantize_activation(x, 2, 3.0, signed=False), torch.tensor([0.0, 0.0, 2.0, 3.0]))
    assert torch.equal(quantize_activation(-x, 3, 3.0, signed=True), torch.tensor([0.0, 0.0, -2.0, -3.0]))


# -- (f) bad inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(layers=["nope"]), "not a layer of the model.*conv, fc"),
    (dict(layers=["relu"]), "not a Conv2d or Linear"),
    (dict(layers=[]), "non-empty list"),
    (dict(layers="conv"), "non-empty list"),
    (dict(layers=["conv", "conv"]), "repeat"),
    (dict(batches=[]), "non-empty list"),
    (dict(batches=[(torch.zeros(2, 1, 6, 6), torch.zeros(3, dtype=torch.int64))]), "3 labels|labels for 2"),
    (dict(batches=[(torch.zeros(2, 1, 6, 6, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))]), "float"),
    (dict(seed="1"), "seed must be an integer"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(seed=True), "seed must be an integer"),
    (dict(seed=-1), "seed must be an integer in 0..2"),
    (dict(tol=0.0), "tol"),
    (dict(tol=1.0), "tol"),
    (dict(tol=float("nan")), "tol"),
    (dict(max_iter=0), "max_iter"),
    (dict(min_iter=0), "min_iter"),
    (dict(min_iter=20, max_iter=10), "min_iter"),
])
def test_layer_traces_rejects_bad_inputs(kwargs, match):
    model, batches = tiny_cnn()
    args = dict(layers=["conv", "fc"], batches=batches, seed=0, max_iter=2, min_iter=1) | kwargs
    with pytest.raises(ConfigError, match=match):
        layer_traces(model, args.pop("layers"), args.pop("batches"), **args)


def test_a_layer_that_runs_twice_is_refused():
    shared = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(OrderedDict(first=shared, second=shared)).double()
    batches = [(torch.randn(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.int64))]
    with pytest.raises(ConfigError, match="ran 2 times"):
        layer_traces(model, ["first"], batches, seed=0, max_iter=1, min_iter=1)


@pytest.mark.parametrize("cand_w, cand_a, match", [
    ([[1, 4], [8]], [[8], [8]], "bit width 1 is not allowed; widths must be integers 2..16"),
    ([[4], [17]], [[8], [8]], "bit width 17"),
    ([[4], [8]], [[8], [8.0]], "bit width 8.0"),
    ([[4]], [[8], [8]], "one list of bit widths per layer"),
    ([[4], []], [[8], [8]], "non-empty list"),
    ([[4, 4], [8]], [[8], [8]], "repeat"),
])
def test_sensitivities_reject_bad_widths(cand_w, cand_a, match):
    model, batches = tiny_cnn()
    traces = _traces({"conv": (1.0, 1.0, 18, 36), "fc": (1.0, 1.0, 96, 32)})
    with pytest.raises(ConfigError, match=match):
        sensitivities(model, ["conv", "fc"], traces, cand_w, cand_a, batches)


def test_sensitivities_reject_traces_of_other_layers_or_shapes():
    model, batches = tiny_cnn()
    with pytest.raises(ConfigError, match="no traces for layer"):
        sensitivities(model, ["conv", "fc"], _traces({"conv": (1.0, 1.0, 18, 36)}), [4], [8], batches)
    with pytest.raises(ConfigError, match="traces of another model or input shape"):
        sensitivities(model, ["conv"], _traces({"conv": (1.0, 1.0, 18, 49)}), [4], [8], batches)
