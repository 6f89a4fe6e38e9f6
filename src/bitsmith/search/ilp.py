"""Bit widths by integer linear programme: the search half of HAWQ-V3.

Layer l has the choices (i, j) of its sensitivity grid Ω_l [nw_l, na_l] (`hessian.sensitivities`:
weight width i, activation width j). With one binary x_l,k per layer and choice k = (i, j):

    minimise   Σ_l Σ_k Ω_l,k · x_l,k
    subject to Σ_k x_l,k = 1                                  for every layer l
               Σ_l Σ_k cost^m_l,k · x_l,k + C^m ≤ budget^m     for every budgeted metric m
               x_l,k ∈ {0, 1}

where cost^m_l,k is the exact cost of layer l at choice k in metric m ("dsp", "cycles", "kb", ...)
and C^m that of everything not searched (for "cycles", layer l run alone: an upper bound of its part
of the program's exact total, bitsmith.accel.precision, so a met cycle budget holds exactly too). `scipy.optimize.milp` (HiGHS, branch and bound) solves it
with relative gap 0.

**Conditioning.** Sensitivities span 1e-9..1e-3 and cycle counts reach 1e6, while HiGHS's
tolerances are absolute (1e-6 on the objective gap, on integrality and on row feasibility). So the
programme it sees is shifted and scaled, which changes neither its feasible set nor its minimisers:
the objective is Σ_l (Ω_l − min Ω_l)·x scaled so that the largest per-layer range is 1e6
(`OBJECTIVE_RANGE`: the gap tolerance is then 1e-12 of it; scaled to 1 instead, the solver left
layers whose Ω spans a millionth of another's at any width the budgets allowed: up to 2e-5
relative off the optimum on 37 of 1,370 random instances), and each budget row is
Σ_l (cost_l,k − min_k cost_l,k)·x ≤ budget − (Σ_l min cost_l + C), divided by its largest
coefficient. The chosen widths' totals are then recomputed exactly (Σ_l in layer order, then + C,
as the smallest feasible value is) and checked against the budgets; a solution that meets a row
only within the solver's tolerance is re-solved with that row tightened by the excess.

**Exactness and ties.** The solver's answer is then polished: layer after layer, repeatedly, a
layer moves to a choice with a strictly smaller key

    (Ω_l,k exactly,  Σ_m cost^m_l,k / max|cost^m| over every metric with a cost table,  k)

if the exact totals still meet every budget, until no layer can move. This is a safety net for
what the gap tolerance might still leave (on 4,000 random instances against brute force, the
scaled solver alone was already exact to 1e-9, and so was the polish alone on the unscaled one),
and it breaks ties by a rule instead of the solver's search order: among equal Ω_l the cheaper
choice, then the smaller index (row-major (i, j)). Ties are real when Ω_l is flat: a layer whose
traces were clamped to 0, or an input exactly representable at several widths. HiGHS is
deterministic and so is the polish: the same inputs give the same result. Neither is a proof of
optimality beyond HiGHS's own: the polish moves one layer at a time.

**Infeasible budgets.** Before solving: if budget^m < Σ_l min_k cost^m_l,k + C^m, no choice meets
it and the error names the flag and that smallest value. Budgets each feasible alone may still be
infeasible together (one wants narrow weights, another few cycles): the solver says so, and so
does the error.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from bitsmith.errors import BitsmithError, ConfigError

#: The command-line flag of each metric's budget (any other metric m: --budget-m).
FLAGS = {"dsp": "--budget-dsp", "cycles": "--budget-cycles", "kb": "--budget-kb"}

#: Re-solves allowed when the exact totals break a budget the solver met within its tolerance.
_TIGHTENINGS = 3

#: The largest per-layer range of the objective HiGHS sees: its absolute gap tolerance (1e-6) is
#: then 1e-12 of it.
OBJECTIVE_RANGE = 1e6


@dataclass
class IlpResult:
    """The chosen (weight index, activation index) per layer, Σ_l Ω_l at those choices, the total
    of every metric with a cost table (constants included), the solver's status and message."""

    choices: list[tuple[int, int]]
    objective: float
    totals: dict[str, float]
    status: int
    message: str
    seconds: float

    def to_json(self) -> dict:
        return {"choices": [list(c) for c in self.choices], "objective": self.objective, "totals": dict(self.totals),
                "status": self.status, "message": self.message, "seconds": self.seconds}


def flag(metric: str) -> str:
    return FLAGS.get(metric, f"--budget-{metric}")


def _fmt(value: float) -> str:
    """An integer as an integer, anything else as its shortest exact decimal."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# -- checks -----------------------------------------------------------------------------------


def _check_grid(what: str, grid: object, shape: tuple[int, ...] | None = None) -> np.ndarray:
    try:
        array = np.asarray(grid, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a 2-D array of numbers, got {type(grid).__name__}") from None
    if array.ndim != 2 or 0 in array.shape:
        raise ConfigError(f"{what} must be a 2-D array [weight widths, activation widths] with at least one "
                          f"choice, got shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise ConfigError(f"{what} has shape {array.shape}, the layer's sensitivities {shape}: one cost per choice")
    if not np.isfinite(array).all():
        raise ConfigError(f"{what} holds NaN or infinite values")
    return array


def _check(omega: list, costs: dict, budgets: dict, constants: dict | None):
    if isinstance(omega, np.ndarray) or not isinstance(omega, (list, tuple)) or not omega:
        raise ConfigError("omega must be a non-empty list with one sensitivity array per searched layer")
    grids = [_check_grid(f"omega of layer {l}", g) for l, g in enumerate(omega)]
    if not isinstance(costs, dict) or not costs:
        raise ConfigError("costs must map at least one metric (e.g. 'dsp') to one cost array per layer")
    tables = {}
    for metric, per_layer in costs.items():
        if not isinstance(per_layer, (list, tuple)) or len(per_layer) != len(grids):
            count = len(per_layer) if isinstance(per_layer, (list, tuple)) else type(per_layer).__name__
            raise ConfigError(f"costs[{metric!r}] must hold one array per searched layer ({len(grids)}), got {count}")
        tables[metric] = [_check_grid(f"costs[{metric!r}] of layer {l}", c, g.shape)
                          for l, (c, g) in enumerate(zip(per_layer, grids))]
    if not isinstance(budgets, dict) or not budgets:
        raise ConfigError(f"give at least one budget ({', '.join(FLAGS.values())})")
    constants = {} if constants is None else constants
    if not isinstance(constants, dict):
        raise ConfigError(f"constants must map metrics to numbers, got {type(constants).__name__}")
    for what, values in (("budget", budgets), ("constant", constants)):
        for metric, value in values.items():
            if metric not in tables:
                raise ConfigError(f"{what} for metric {metric!r} has no cost table; the tables are for: "
                                  f"{', '.join(tables)}")
            if not _number(value) or not math.isfinite(value):
                raise ConfigError(f"{flag(metric) if what == 'budget' else f'constant {metric!r}'} must be a "
                                  f"finite number, got {value!r}")
    return grids, tables, {m: float(v) for m, v in budgets.items()}, {m: float(v) for m, v in constants.items()}


# -- the programme ----------------------------------------------------------------------------


def _ordered_sum(values: list[float], constant: float) -> float:
    """Σ_l value_l in layer order, then + constant: the one way every total is summed, so a budget
    equal to the smallest feasible value is met by the cheapest choices exactly."""
    total = 0.0
    for value in values:
        total += value
    return total + constant


def _total(per_layer: list[np.ndarray], picks: list[int], constant: float) -> float:
    return _ordered_sum([float(table.flat[k]) for table, k in zip(per_layer, picks)], constant)


def choose_bits(omega: list[np.ndarray], costs: dict[str, list[np.ndarray]], budgets: dict[str, float],
                constants: dict[str, float] | None = None) -> IlpResult:
    """The choice per layer minimising Σ_l Ω_l within every budget (module docstring).

    `omega[l]`: layer l's sensitivities [nw_l, na_l]; `costs[metric][l]`: its cost at each choice,
    same shape; `budgets[metric]`: the bound on Σ_l cost + `constants[metric]` (default 0). Metrics
    with a cost table but no budget are reported in `totals` only. Raises ConfigError for empty
    or misshapen inputs, NaN or infinite values, a budget or constant without a cost table, a
    budget below its smallest feasible value (naming the flag and that value), and budgets that
    are infeasible together.
    """
    start = time.perf_counter()
    grids, tables, budgets, constants = _check(omega, costs, budgets, constants)

    lows = {m: [float(t.min()) for t in tables[m]] for m in tables}
    smallest = {m: _ordered_sum(lows[m], constants.get(m, 0.0)) for m in tables}
    for metric, budget in budgets.items():
        if budget < smallest[metric]:
            rest = constants.get(metric, 0.0)
            extra = f", plus {_fmt(rest)} for the rest of the network" if rest else ""
            raise ConfigError(f"{flag(metric)} {_fmt(budget)} is below the smallest feasible value "
                              f"{_fmt(smallest[metric])} (every searched layer at its cheapest widths{extra})")

    sizes = [g.size for g in grids]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    spans = [g.ravel() - g.min() for g in grids]
    scale = max(float(s.max()) for s in spans)
    c = np.concatenate(spans) * (OBJECTIVE_RANGE / scale) if scale > 0 else np.zeros(offsets[-1])

    one_each = np.zeros((len(grids), offsets[-1]))
    for l in range(len(grids)):
        one_each[l, offsets[l]:offsets[l + 1]] = 1.0
    rows, slack, tops = {}, {}, {}
    for metric in budgets:
        row = np.concatenate([t.ravel() - low for t, low in zip(tables[metric], lows[metric])])
        tops[metric] = float(row.max())
        if tops[metric] > 0:  # a metric in which every choice costs the same is met by the check above
            rows[metric] = row / tops[metric]
            slack[metric] = (budgets[metric] - smallest[metric]) / tops[metric]

    for attempt in range(_TIGHTENINGS + 1):
        constraints = [LinearConstraint(one_each, 1.0, 1.0)]
        if rows:
            constraints.append(LinearConstraint(np.array(list(rows.values())), -np.inf, np.array(list(slack.values()))))
        result = milp(c, integrality=np.ones_like(c), bounds=Bounds(0.0, 1.0), constraints=constraints,
                      options={"mip_rel_gap": 0.0})
        if result.status == 2 and attempt == 0:
            listed = " and ".join(f"{flag(m)} {_fmt(b)}" for m, b in budgets.items())
            raise ConfigError(f"the budgets {listed} are each feasible alone but not together: no choice of "
                              f"widths meets them all; raise one of them")
        if result.x is None:
            raise BitsmithError(f"the ILP solver stopped without a solution: {result.message}" if attempt == 0 else
                                "the budgets are met only within the ILP solver's rounding margin; widen them slightly")
        picks = [int(np.argmax(result.x[offsets[l]:offsets[l + 1]])) for l in range(len(grids))]
        over = {m: _total(tables[m], picks, constants.get(m, 0.0)) - b for m, b in budgets.items()}
        over = {m: e for m, e in over.items() if e > 0}
        if not over:
            break
        for metric, excess in over.items():  # met only within HiGHS's tolerance: tighten, solve again
            slack[metric] -= 2 * excess / tops[metric]
    else:
        raise BitsmithError(f"the ILP solver's solution keeps exceeding {', '.join(flag(m) for m in over)} "
                            f"by a rounding margin; widen the budget slightly")

    picks = _polish(grids, tables, budgets, constants, picks)
    choices = [tuple(int(i) for i in np.unravel_index(k, g.shape)) for k, g in zip(picks, grids)]
    return IlpResult(choices=choices, objective=_total(grids, picks, 0.0),
                     totals={m: _total(tables[m], picks, constants.get(m, 0.0)) for m in tables},
                     status=int(result.status), message=str(result.message), seconds=time.perf_counter() - start)


def _polish(grids: list[np.ndarray], tables: dict[str, list[np.ndarray]], budgets: dict[str, float],
            constants: dict[str, float], picks: list[int]) -> list[int]:
    """Single-layer moves to a strictly better (Ω_l, cheapness, index) that keep every budget,
    until none is left (module docstring, "Exactness and ties"). Every move lowers one layer's
    key and leaves the others, so the loop ends."""
    norms = {m: max(float(np.abs(t).max()) for t in ts) or 1.0 for m, ts in tables.items()}
    keys = [list(zip(g.ravel().tolist(), sum(tables[m][l].ravel() / norms[m] for m in tables).tolist(),
                     range(g.size))) for l, g in enumerate(grids)]
    picks = list(picks)
    moved = True
    while moved:
        moved = False
        for l in range(len(grids)):
            for key in sorted(keys[l]):
                if key >= keys[l][picks[l]]:
                    break
                trial = picks[:l] + [key[2]] + picks[l + 1:]
                if all(_total(tables[m], trial, constants.get(m, 0.0)) <= b for m, b in budgets.items()):
                    picks, moved = trial, True
                    break
    return picks
