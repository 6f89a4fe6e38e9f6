"""The bit-width ILP against brute force over every combination, its infeasibility messages, exact
budgets, ties and input checks."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from bitsmith.errors import ConfigError
from bitsmith.search.ilp import IlpResult, choose_bits


def brute_force(omega, costs, budgets, constants):
    """The smallest Σ Ω over every combination meeting every budget (None if none does), summed in
    layer order as choose_bits sums."""
    best = None
    for combo in itertools.product(*[range(o.size) for o in omega]):
        feasible = True
        for metric, budget in budgets.items():
            total = 0.0
            for table, k in zip(costs[metric], combo):
                total += float(table.flat[k])
            feasible &= total + constants.get(metric, 0.0) <= budget
        if feasible:
            value = 0.0
            for grid, k in zip(omega, combo):
                value += float(grid.flat[k])
            best = value if best is None else min(best, value)
    return best


def random_instance(rng: np.random.Generator, kind: int):
    layers = int(rng.integers(3, 5))
    shapes = [tuple(int(s) for s in rng.integers(1, 4, size=2)) for _ in range(layers)]
    if kind == 0:
        omega = [rng.random(s) for s in shapes]
    elif kind == 1:    # many exact ties
        omega = [rng.integers(0, 4, s).astype(float) for s in shapes]
    else:              # layers on scales 1e-9..1e-1, as real sensitivities are
        omega = [rng.random(s) * 10.0 ** int(rng.integers(-9, 0)) for s in shapes]
    metrics = [str(m) for m in rng.choice(["dsp", "cycles", "kb"], size=int(rng.integers(1, 3)), replace=False)]
    costs = {"dsp": [rng.integers(0, 20, s).astype(float) for s in shapes],
             "cycles": [rng.random(s) * 1e6 for s in shapes],
             "kb": [rng.random(s) * 3 for s in shapes]}
    constants = {m: float(rng.integers(0, 5)) for m in costs}
    budgets = {}
    for metric in metrics:
        low = sum(float(c.min()) for c in costs[metric]) + constants[metric]
        high = sum(float(c.max()) for c in costs[metric]) + constants[metric]
        budgets[metric] = low + float(rng.random()) * (high - low)
    return omega, costs, budgets, constants


def test_matches_brute_force_on_random_instances():
    rng = np.random.default_rng(0)
    solved = together_infeasible = 0
    for trial in range(240):
        omega, costs, budgets, constants = random_instance(rng, trial % 3)
        best = brute_force(omega, costs, budgets, constants)
        if best is None:   # each budget feasible alone (it lies between min and max), not together
            with pytest.raises(ConfigError, match="feasible alone but not together"):
                choose_bits(omega, costs, budgets, constants)
            together_infeasible += 1
            continue
        result = choose_bits(omega, costs, budgets, constants)
        assert abs(result.objective - best) <= 1e-9 * abs(best), (trial, result.objective, best)
        assert len(result.choices) == len(omega)
        picks = [np.ravel_multi_index(c, o.shape) for c, o in zip(result.choices, omega)]
        for metric, tables in costs.items():   # every metric reported, budgeted ones met, exactly
            total = 0.0
            for table, k in zip(tables, picks):
                total += float(table.flat[k])
            assert result.totals[metric] == total + constants[metric]
            assert metric not in budgets or result.totals[metric] <= budgets[metric]
        solved += 1
    assert solved > 200 and together_infeasible > 0, (solved, together_infeasible)


def test_result_is_deterministic_and_json_ready():
    omega, costs, budgets, constants = random_instance(np.random.default_rng(5), 0)
    first, again = choose_bits(omega, costs, budgets, constants), choose_bits(omega, costs, budgets, constants)
    assert (first.choices, first.objective, first.totals) == (again.choices, again.objective, again.totals)
    assert isinstance(first, IlpResult) and first.status == 0 and first.seconds > 0
    assert json.loads(json.dumps(first.to_json()))["choices"] == [list(c) for c in first.choices]


def test_ties_go_to_the_cheaper_choice():
    """Layer 1's Ω is flat (its traces clamped to 0): every width is as good, the cheapest is taken,
    even with room in the budget; between equal costs, the smaller index."""
    omega = [np.array([[3.0, 1.0]]), np.zeros((2, 2))]
    costs = {"dsp": [np.array([[1.0, 2.0]]), np.array([[4.0, 2.0], [3.0, 9.0]])]}
    result = choose_bits(omega, costs, {"dsp": 100})
    assert result.choices == [(0, 1), (0, 1)] and result.totals == {"dsp": 4.0}
    costs = {"dsp": [np.array([[1.0, 2.0]]), np.full((2, 2), 5.0)]}
    assert choose_bits(omega, costs, {"dsp": 100}).choices == [(0, 1), (0, 0)]


def test_budget_below_the_smallest_feasible_value():
    omega = [np.array([[3.0, 2.0, 1.0]]), np.array([[2.0], [1.0]])]
    costs = {"dsp": [np.array([[8.0, 10.0, 12.0]]), np.array([[10.0], [20.0]])],
             "cycles": [np.array([[300.0, 200.0, 100.0]]), np.array([[1000.0], [500.0]])],
             "kb": [np.array([[0.5, 1.0, 1.5]]), np.array([[2.25], [4.5]])]}
    with pytest.raises(ConfigError, match=r"^--budget-dsp 12 is below the smallest feasible value 18 "
                                          r"\(every searched layer at its cheapest widths\)$"):
        choose_bits(omega, costs, {"dsp": 12})
    with pytest.raises(ConfigError, match=r"--budget-cycles 600 is below the smallest feasible value 650 .*"
                                          r"plus 50 for the rest of the network"):
        choose_bits(omega, costs, {"dsp": 100, "cycles": 600}, {"cycles": 50})
    with pytest.raises(ConfigError, match=r"--budget-kb 2.5 is below the smallest feasible value 2.75"):
        choose_bits(omega, costs, {"kb": 2.5})
    with pytest.raises(ConfigError, match=r"--budget-luts 1 is below the smallest feasible value 2"):
        choose_bits(omega, {"luts": [np.ones((1, 3)), np.ones((2, 1))]}, {"luts": 1})


def test_a_budget_equal_to_the_smallest_value_works():
    """Float costs whose sum rounds (0.1 + 0.2 + 0.7): the budget printed as the minimum is met."""
    rng = np.random.default_rng(1)
    omega = [rng.random((2, 2)) for _ in range(3)]
    cheapest = [0.1, 0.2, 0.7]
    costs = {"kb": [np.array([[c, c + 1], [c + 2, c + 3]]) for c in cheapest],
             "dsp": [np.array([[5.0, 1.0], [1.0, 1.0]]) for _ in range(3)]}
    smallest = 0.1 + 0.2 + 0.7 + 0.3
    result = choose_bits(omega, costs, {"kb": smallest, "dsp": 100}, {"kb": 0.3})
    assert result.choices == [(0, 0)] * 3 and result.totals["kb"] == smallest
    result = choose_bits(omega, costs, {"dsp": 3.0})   # DSPs at their minimum: any of the three cheap cells
    assert result.totals["dsp"] == 3.0
    assert result.objective == pytest.approx(sum(min(o[0, 1], o[1, 0], o[1, 1]) for o in omega), rel=1e-12)


def test_budgets_infeasible_together():
    """Narrow weights save DSPs but cost cycles: each budget alone is met, both are not."""
    omega = [np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]])]
    costs = {"dsp": [np.array([[1.0, 5.0]])] * 2, "cycles": [np.array([[50.0, 10.0]])] * 2}
    assert choose_bits(omega, costs, {"dsp": 2}).choices == [(0, 0), (0, 0)]
    assert choose_bits(omega, costs, {"cycles": 20}).choices == [(0, 1), (0, 1)]
    with pytest.raises(ConfigError, match=r"--budget-dsp 2 and --budget-cycles 20 are each feasible alone "
                                          r"but not together"):
        choose_bits(omega, costs, {"dsp": 2, "cycles": 20})


def test_single_choices_and_metrics_without_budget():
    omega = [np.array([[0.5]]), np.array([[2.0, 1.0]])]
    costs = {"dsp": [np.array([[4.0]]), np.array([[1.0, 3.0]])], "cycles": [np.array([[7.0]]), np.array([[1.0, 2.0]])]}
    result = choose_bits(omega, costs, {"dsp": 7}, {"dsp": 1.0, "cycles": 100.0})
    assert result.choices == [(0, 0), (0, 0)] and result.totals == {"dsp": 6.0, "cycles": 108.0}
    assert result.objective == 2.5


GOOD_OMEGA = [np.ones((2, 2)), np.ones((1, 3))]
GOOD_COSTS = {"dsp": [np.ones((2, 2)), np.ones((1, 3))]}


@pytest.mark.parametrize("omega, costs, budgets, constants, match", [
    ([], GOOD_COSTS, {"dsp": 9}, None, "non-empty list"),
    (np.ones((2, 2)), GOOD_COSTS, {"dsp": 9}, None, "non-empty list"),
    ([np.ones(3), np.ones((1, 3))], GOOD_COSTS, {"dsp": 9}, None, "2-D array"),
    ([np.ones((2, 0)), np.ones((1, 3))], GOOD_COSTS, {"dsp": 9}, None, "at least one"),
    ([np.ones((2, 2)), np.array([[1.0, np.nan, 1.0]])], GOOD_COSTS, {"dsp": 9}, None, "NaN"),
    (GOOD_OMEGA, {"dsp": [np.ones((2, 2)), np.ones((3, 1))]}, {"dsp": 9}, None, r"shape \(3, 1\).*\(1, 3\)"),
    (GOOD_OMEGA, {"dsp": [np.ones((2, 2))]}, {"dsp": 9}, None, "one array per searched layer"),
    (GOOD_OMEGA, {"dsp": [np.ones((2, 2)), np.array([[1.0, np.nan, 1.0]])]}, {"dsp": 9}, None, "NaN"),
    (GOOD_OMEGA, {"dsp": [np.ones((2, 2)), np.array([[1.0, np.inf, 1.0]])]}, {"dsp": 9}, None, "infinite"),
    (GOOD_OMEGA, {}, {"dsp": 9}, None, "at least one metric"),
    (GOOD_OMEGA, GOOD_COSTS, {}, None, "at least one budget"),
    (GOOD_OMEGA, GOOD_COSTS, {"cycles": 9}, None, "metric 'cycles' has no cost table.*dsp"),
    (GOOD_OMEGA, GOOD_COSTS, {"dsp": 9}, {"kb": 1}, "metric 'kb' has no cost table"),
    (GOOD_OMEGA, GOOD_COSTS, {"dsp": float("nan")}, None, "--budget-dsp must be a finite number"),
    (GOOD_OMEGA, GOOD_COSTS, {"dsp": True}, None, "--budget-dsp must be a finite number"),
    (GOOD_OMEGA, GOOD_COSTS, {"dsp": "9"}, None, "--budget-dsp must be a finite number"),
    (GOOD_OMEGA, GOOD_COSTS, {"dsp": 9}, {"dsp": float("inf")}, "constant 'dsp' must be a finite number"),
])
def test_bad_inputs(omega, costs, budgets, constants, match):
    with pytest.raises(ConfigError, match=match):
        choose_bits(omega, costs, budgets, constants)
