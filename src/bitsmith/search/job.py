"""`bitsmith search`: a float run in, per-layer bit widths out (search.json, with the figures).

    search_run(RUN, OUT, method="dnas", cost="dsp", cd=3e-5, epochs=3)
    search_run(RUN, OUT, method="hessian", budgets={"dsp": 60})

Both methods write OUT/search.json: the bit strings in DeepBurning-MixQ's form (`bitw`, `bita`,
which `bitsmith qat RUN --bitw … --bita …` takes as is), per-layer widths, and the exact predicted
figures of `bitsmith.accel.precision` (DSPs, cycles, BRAM18, weight bytes, BitOPs) on the
accelerator configuration given; DNAS adds its per-epoch history and alpha.png (the softmax of
every layer's α over the epochs), Hessian its traces with their convergence. Everything is
checked before any work: an unknown method or cost, a bad candidate list, a budget below the
smallest feasible value and a run folder without a float checkpoint are errors, and nothing is
written.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from bitsmith.accel.config import AccelConfig
from bitsmith.artifacts import SEARCH, check_target, public_path, publishing
from bitsmith.data import dataset_info, iterate_batches
from bitsmith.detection import DetectionObjective
from bitsmith.errors import BitsmithWarning, ConfigError
from bitsmith.runs import load_run
from bitsmith.quant.qat.prepare import bit_string
from bitsmith.search.space import BUDGETS, COSTS, FIXED_BITS, SearchSpace, build_space
from bitsmith.storage import write_json_atomic

METHODS = ("dnas", "hessian")
SEARCH_FILE = "search.json"
ALPHA_FIGURE = "alpha.png"
FORMAT = "bitsmith.search"
HESSIAN_BATCHES = 4       # batches of HESSIAN_BATCH_SIZE training images for the traces and sensitivities
HESSIAN_BATCH_SIZE = 128
TRACE_TOL = 1e-3          # HAWQ-V3's stopping rule: every trace's running mean moves by less than this


def _check_options(method: str, cost: str, budgets: dict[str, float] | None, cd: float) -> dict[str, float]:
    if method not in METHODS:
        raise ConfigError(f"unknown search method {method!r}; allowed: {', '.join(METHODS)}")
    if cost not in COSTS:
        raise ConfigError(f"unknown cost {cost!r}; allowed: {', '.join(COSTS)}")
    budgets = {k: v for k, v in (budgets or {}).items() if v is not None}
    for name, value in budgets.items():
        if name not in BUDGETS:
            raise ConfigError(f"unknown budget {name!r}; allowed: {', '.join('--budget-' + b for b in BUDGETS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"--budget-{name} {value!r}: allowed: a positive number")
    if method == "hessian" and not budgets:
        raise ConfigError("--method hessian needs a budget: --budget-dsp N, --budget-cycles N or --budget-kb N")
    if method == "dnas" and budgets:
        raise ConfigError(f"budgets ({', '.join('--budget-' + b for b in budgets)}) are for --method hessian; "
                          "DNAS trades accuracy against cost with --cd")
    if not (isinstance(cd, (int, float)) and not isinstance(cd, bool) and cd >= 0):
        raise ConfigError(f"--cd {cd!r}: allowed: a number ≥ 0")
    return budgets


def _figures(space: SearchSpace, wbits: list[int], abits: list[int]) -> dict[str, Any]:
    exact = space.exact(wbits, abits)
    per_layer = []
    for l, name in enumerate(space.layers):
        row = exact["layers"][space.program_index[l]]
        per_layer.append({"layer": name, "tensor": row["name"], "w_bits": wbits[l], "a_bits": abits[l],
                          "searched": space.searched[l], "macs": row["macs"], "dsp": row["dsp"], "cycles": row["cycles"],
                          "bram18": row["bram18"], "weight_bytes": row["weight_bits"] / 8, "bitops": row["bitops"]})
    predicted = {k: exact[k] for k in ("dsp", "array_dsp", "bitops", "weight_bits", "weight_kb", "bram18", "cycles",
                                       "interval")}
    return {"layers": per_layer, "predicted": predicted}


def search_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, method: str = "dnas", cost: str = "dsp",
               cd: float = 3e-5, epochs: int = 3, candidates_w="2,3,4,5,6,7,8", candidates_a="2,3,4,5,6,7,8",
               search_first_last: bool = False, budgets: dict[str, float] | None = None,
               accel: AccelConfig | None = None, seed: int = 0, data_dir: str | None = None,
               train_limit: int | None = None, quiet: bool = False, force: bool = False,
               traces_from: str | os.PathLike | None = None, max_iterations: int = 100,
               on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Search per-layer widths for the float run `run_dir` and publish OUT (module docstring).

    `train_limit`: search on the first N training images only (a quick look; the full set by default).
    `max_iterations`: Hutchinson iterations at most (HAWQ-V3: 100).
    `traces_from`: a Hessian search folder of the same run, seed and candidates whose traces and
    sensitivities to reuse (other budgets without recomputing them).
    """
    budgets = _check_options(method, cost, budgets, cd)
    check_target(out_dir, SEARCH, force=force, command="bitsmith search")  # refused before any work
    run = load_run(run_dir)  # a folder without a float checkpoint fails here, before anything is written
    shape = tuple(run.model.input_shape)
    space = build_space(run.model, shape, candidates_w, candidates_a, search_first_last=search_first_last,
                        config=accel or AccelConfig())
    if not any(space.searched):
        raise ConfigError(f"nothing to search: {run.model.spec['name']} has {len(space.layers)} Conv2d/Linear layers "
                          "and the first and last are fixed at 8/8; pass --search-first-last")
    metric = COSTS[cost]
    _check_accelerator_widths(space, metric, budgets)
    # A detector's loss is the detection loss (bitsmith.detection), a classifier's cross-entropy.
    detector = dataset_info(run.meta["dataset"]).task == "detect"
    if detector and method == "dnas":
        raise ConfigError(f"--method dnas trains a classifier's supernet (cross-entropy); {run.meta['dataset']} is a "
                          "detection data set: use --method hessian (its traces use the detection loss)")
    loss_fn = DetectionObjective(run.model.spec["name"]).loss if detector else None
    train_ds = run.dataset("train", data_dir, limit=train_limit)
    started = time.perf_counter()
    if method == "dnas":
        result = _dnas(run, space, metric, cd, epochs, train_ds, shape, seed, quiet, on_epoch)
    else:
        reuse = _reusable(traces_from, run_dir, seed, space, train_limit) if traces_from is not None else None
        result = _hessian(run, space, budgets, train_ds, shape, seed, quiet, reuse, max_iterations, loss_fn)
    wbits, abits = result.pop("wbits"), result.pop("abits")
    doc = {
        "format": FORMAT, "method": method, "model": run.model.spec["name"], "dataset": run.meta["dataset"],
        "run": str(Path(run_dir).resolve()), "seed": seed, "train_limit": train_limit,
        "bitw": bit_string(wbits), "bita": bit_string(abits), "wbits": wbits, "abits": abits,
        **_figures(space, wbits, abits),
        "space": space.to_json(),
        # --abits 8: what a residual add's or concatenation's output takes (fixed at 8 in the space)
        "qat_command": f"bitsmith qat {run_dir} --method lsq --abits {FIXED_BITS} --bitw {bit_string(wbits)} "
                       f"--bita {bit_string(abits)} --out OUT",
        "seconds": round(time.perf_counter() - started, 3),
        **result,
    }
    with publishing(out_dir, SEARCH, force=force, command="bitsmith search") as stage:
        if method == "dnas":
            from bitsmith.search.plots import alpha_figure
            alpha_figure(doc, stage.path / ALPHA_FIGURE)
            doc["figure"] = str(public_path(stage.path / ALPHA_FIGURE))
        write_json_atomic(stage.path / SEARCH_FILE, doc)
    return doc


def _check_accelerator_widths(space: SearchSpace, metric: str, budgets: dict) -> None:
    """Cycles come from the accelerator, which runs widths ≤ 8; so does every realised graph."""
    widest = max(max(c) for c in space.candidates_w + space.candidates_a)
    if widest > 8 and (metric == "cycles" or "cycles" in budgets):
        raise ConfigError(f"candidate width {widest} > 8: the accelerator, whose timing model gives the cycles, "
                          "runs widths 2..8; allowed with a cycle cost or budget: candidates 2 to 8")


def _dnas(run, space: SearchSpace, metric: str, cd: float, epochs: int, train_ds, shape, seed: int, quiet: bool,
          on_epoch) -> dict[str, Any]:
    from bitsmith.search.dnas import DNASConfig, search

    tables, constant = space.tables(metric, normalise=True)
    if all(float(t.max() - t.min()) == 0.0 for t in tables):
        warnings.warn(f"--cost {next(k for k, v in COSTS.items() if v == metric)}: no layer's cost depends on its "
                      "widths on this accelerator configuration (e.g. cycles of layers whose packing mode and "
                      "weight storage are the same at every candidate width); the search will trade nothing "
                      "against accuracy. "
                      "Use --cost dsp, bitops or memory (docs/mixed-precision.md, Cost).", BitsmithWarning,
                      stacklevel=2)
    config = DNASConfig(epochs=epochs, cd=cd, seed=seed)
    result = search(run.model, space.layers, [list(c) for c in space.candidates_w], [list(c) for c in space.candidates_a],
                    [torch.as_tensor(t, dtype=torch.float32) for t in tables], constant, train_ds, shape, config,
                    on_epoch=on_epoch, quiet=quiet)
    out = result.to_json()
    return {"wbits": list(result.bitw), "abits": list(result.bita), "cost": metric, "cd": cd, "epochs": epochs,
            "cost_normaliser": space.normaliser(metric), "dnas": out}


def _reusable(folder, run_dir, seed: int, space: SearchSpace, train_limit) -> dict:
    """The Hessian part of an earlier search.json, if it was made for the same question."""
    from bitsmith.storage import read_json

    doc = read_json(Path(folder) / SEARCH_FILE, "search result")
    same = (doc.get("format") == FORMAT and doc.get("method") == "hessian" and doc.get("seed") == seed
            and doc.get("run") == str(Path(run_dir).resolve()) and doc.get("train_limit") == train_limit
            and doc.get("space", {}).get("candidates_w") == space.to_json()["candidates_w"]
            and doc.get("space", {}).get("candidates_a") == space.to_json()["candidates_a"])
    if not same:
        raise ConfigError(f"--traces-from {folder}: not a Hessian search of the same run, seed, training images "
                          "and candidates; its traces would answer another question")
    return doc["hessian"]


def _hessian(run, space: SearchSpace, budgets: dict[str, float], train_ds, shape, seed: int,
             quiet: bool, reuse: dict | None = None, max_iterations: int = 100, loss_fn=None) -> dict[str, Any]:
    from bitsmith.search.hessian import layer_traces, sensitivities

    tables = {name: space.tables(BUDGETS[name]) for name in budgets}
    costs = {name: t for name, (t, _) in tables.items()}
    constants = {name: c for name, (_, c) in tables.items()}
    # Infeasible budgets fail here, before the traces are computed (the ILP checks again, exactly).
    for name, budget in budgets.items():
        lowest = sum(float(t.min()) for t in costs[name]) + constants[name]
        if budget < lowest:
            raise ConfigError(f"--budget-{name} {budget:g} is below the smallest feasible value {lowest:g} "
                              "(every searched layer at its cheapest widths)")
    if reuse is not None:
        import numpy as np
        omega = [np.asarray(o, dtype=np.float64) for o in reuse["sensitivity"]]
        return _solve(space, budgets, costs, constants, omega, reuse["traces"], reused=True)
    g = torch.Generator().manual_seed(seed)
    batches = []
    for x, y in iterate_batches(train_ds, HESSIAN_BATCH_SIZE, shape, shuffle=True, generator=g):
        batches.append((x, y))
        if len(batches) == HESSIAN_BATCHES:
            break

    def report(i: int, estimates: dict, change: float) -> None:
        if not quiet and (i % 10 == 0 or change < TRACE_TOL):  # the convergence, every tenth iteration
            print(f"hutchinson iteration {i}: largest relative change of a trace {change:.2e} "
                  f"(stops below {TRACE_TOL:g})", flush=True)

    traces = layer_traces(run.model, space.layers, batches, seed=seed, tol=TRACE_TOL, max_iter=max_iterations,
                          min_iter=min(10, max_iterations), on_iteration=report, loss_fn=loss_fn)
    if not quiet:
        print(f"hutchinson: {traces.iterations} iterations, "
              f"{'converged' if traces.converged else 'not converged (the iteration limit)'}", flush=True)
    omega = sensitivities(run.model, space.layers, traces, [list(c) for c in space.candidates_w],
                          [list(c) for c in space.candidates_a], batches)
    return _solve(space, budgets, costs, constants, omega, traces.to_json(), reused=False)


def _solve(space: SearchSpace, budgets, costs, constants, omega, traces: dict, reused: bool) -> dict[str, Any]:
    from bitsmith.search.ilp import choose_bits

    solved = choose_bits(omega, costs, budgets, constants)
    wbits = [space.candidates_w[l][i] for l, (i, _) in enumerate(solved.choices)]
    abits = [space.candidates_a[l][j] for l, (_, j) in enumerate(solved.choices)]
    return {"wbits": wbits, "abits": abits, "budgets": budgets,
            "hessian": {"traces": traces, "traces_reused": reused, "objective": solved.objective,
                        "sensitivity": [o.tolist() for o in omega], "ilp_seconds": solved.seconds,
                        "batches": HESSIAN_BATCHES, "batch_size": HESSIAN_BATCH_SIZE}}
