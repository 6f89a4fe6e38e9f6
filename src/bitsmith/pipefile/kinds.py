"""The kinds of stage a pipeline file may name, the settings each takes, and what each needs and makes.

A stage kind is one bitsmith command: its options (the same names as the command's, with `_` for
`-`), what its `from` must name (a stage that makes a float run, an integer graph, …) and what it
makes for the stages after it. `check` builds the job's own config (TrainConfig, QuantConfig,
QATConfig, PruneConfig, CIMConfig, AccelConfig, …) from the settings, so a value the job would
refuse is refused when the file is read, before any stage runs. What each kind runs is in
`bitsmith.pipefile.jobs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

from bitsmith.errors import ConfigError
from bitsmith.pipefile.options import Option

#: What a stage makes, in words (for "needs … but makes …" messages).
PRODUCTS = {"run": "a float run", "graph": "an integer graph", "search": "a mixed-precision search",
            "export": "an exported model", "verification": "a verification report", "cim": "a crossbar evaluation",
            "report": "an HTML report"}


@dataclass(frozen=True)
class StageKind:
    """`needs`: what the stages named by `from` must make (empty: it takes no `from`); `many`: `from`
    may name several stages; `refs`: other settings that name a stage, with what that stage must
    make; `aliases`: the job config's name of a setting, so its errors point at the right key."""

    name: str
    what: str
    needs: tuple[str, ...]
    makes: str
    options: dict[str, Option]
    check: Callable[[dict[str, Any]], None]
    many: bool = False
    refs: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


#: Option type names of the Python types a job's config dataclass declares.
_PY_TYPES = {int: "int", float: "float", str: "str", bool: "bool"}


def accel_config(s: dict[str, Any]):
    """The AccelConfig of a stage's accelerator settings, built the one way every command builds it."""
    from bitsmith.accel.config import AccelConfig

    keys = ("pe", "simd", "bus_bits", "act_buffer_bytes", "max_kernel")
    return AccelConfig.from_options(**{k: s[k] for k in keys if k in s})


# -- train -------------------------------------------------------------------------------------

TRAIN = {
    "model": Option("str", required=True), "dataset": Option("str", required=True), "epochs": Option("int", 8),
    "batch_size": Option("int", 128), "optimizer": Option("str", "sgd"), "lr": Option("float"),
    "weight_decay": Option("float", 5e-4), "seed": Option("int", 0), "options": Option("table", {}),
    "limit_train": Option("int"), "limit_test": Option("int"),
}


def train_config(s: dict[str, Any], data_dir: str | None):
    from bitsmith.train import TrainConfig

    return TrainConfig(model=s["model"], dataset=s["dataset"], epochs=s["epochs"], batch_size=s["batch_size"],
                       optimizer=s["optimizer"], lr=s["lr"], weight_decay=s["weight_decay"], seed=s["seed"],
                       data_dir=data_dir, model_kwargs=dict(s["options"]), limit_train=s["limit_train"],
                       limit_test=s["limit_test"]).resolved()


def _check_train(s: dict[str, Any]) -> None:
    from bitsmith.data import dataset_info
    from bitsmith.models import spatial_multiple

    spatial_multiple(s["model"])  # an unknown model name
    dataset_info(s["dataset"])
    train_config(s, None)


# -- quantize / qat ----------------------------------------------------------------------------

QUANTIZE = {
    "wbits": Option("int", 8), "abits": Option("int", 8), "per_channel": Option("bool", False),
    "observer": Option("str", "minmax"), "weight_observer": Option("str", "minmax"),
    "asymmetric": Option("bool", False), "scale_mode": Option("str", "float"), "weight_qformat": Option("str"),
    "act_qformat": Option("str"), "layers": Option("table", {}), "multiplier_bits": Option("int", 32),
    "calib_batches": Option("int", 8),
}


def quant_config(s: dict[str, Any]):
    from bitsmith.quant import QuantConfig

    return QuantConfig(weight_bits=s["wbits"], act_bits=s["abits"], per_channel=s["per_channel"],
                       observer=s["observer"], weight_observer=s["weight_observer"],
                       act_symmetric=not s["asymmetric"], scale_mode=s["scale_mode"],
                       weight_qformat=s["weight_qformat"], act_qformat=s["act_qformat"], layers=dict(s["layers"]),
                       multiplier_bits=s["multiplier_bits"])


def _check_quantize(s: dict[str, Any]) -> None:
    quant_config(s)
    if s["calib_batches"] < 1:
        raise ConfigError(f"calib_batches must be a positive integer, got {s['calib_batches']}")


QAT = {
    "method": Option("str", required=True), "wbits": Option("int", 4), "abits": Option("int", 4),
    "epochs": Option("int", 2), "bitw": Option("str"), "bita": Option("str"),
    "keep_first_last_8bit": Option("bool", False), "p": Option("float", 0.4), "clipq_bits": Option("int", 2),
    "q35": Option("bool", False), "lr": Option("float"), "outlier_fraction": Option("float", 0.01),
    "outlier_bits": Option("int", 8), "train_limit": Option("int"), "widths_from": Option("stage"),
}


def qat_config(s: dict[str, Any], run_dir, widths: tuple[str, str] | None = None):
    """The QATConfig / ClipQConfig of `bitsmith qat`; `widths` (bitw, bita) from a search stage."""
    from bitsmith.pipeline import qat_config as make

    bitw, bita = widths if widths is not None else (s["bitw"], s["bita"])
    return make(run_dir, s["method"], wbits=s["wbits"], abits=s["abits"], epochs=s["epochs"], bitw=bitw, bita=bita,
                keep_first_last_8bit=s["keep_first_last_8bit"], p=s["p"], clipq_bits=s["clipq_bits"], q35=s["q35"],
                lr=s["lr"], outlier_fraction=s["outlier_fraction"], outlier_bits=s["outlier_bits"])


def _check_qat(s: dict[str, Any]) -> None:
    if s["widths_from"] is not None and (s["bitw"] is not None or s["bita"] is not None):
        raise ConfigError("give either widths_from (a search stage) or bitw / bita, not both")
    if s["method"] == "clipq" and s["keep_first_last_8bit"]:
        return  # its config names the run's first and last layers: built when the run exists
    qat_config(s, None)


# -- prune / search ------------------------------------------------------------------------------

def _prune_options() -> dict[str, Option]:
    from bitsmith.prune.job import PruneConfig

    options = {}
    for f in fields(PruneConfig):
        if f.name == "ssl_groups":
            options[f.name] = Option("list[str]", list(f.default))
        elif f.name == "layers":
            options[f.name] = Option("list[str]")
        else:
            options[f.name] = Option(_PY_TYPES[type(f.default)], f.default)
    return {**options, "train_limit": Option("int")}


def prune_config(s: dict[str, Any]):
    from bitsmith.prune.job import PruneConfig

    values = {k: v for k, v in s.items() if k != "train_limit"}
    values["ssl_groups"] = tuple(values["ssl_groups"])
    values["layers"] = None if values["layers"] is None else tuple(values["layers"])
    return PruneConfig(**values)


def _check_prune(s: dict[str, Any]) -> None:
    prune_config(s)


SEARCH = {
    "method": Option("str", "dnas"), "cost": Option("str", "dsp"), "cd": Option("float", 3e-5),
    "epochs": Option("int", 3), "candidates_w": Option("str|list[int]", "2,3,4,5,6,7,8"),
    "candidates_a": Option("str|list[int]", "2,3,4,5,6,7,8"), "search_first_last": Option("bool", False),
    "budget_dsp": Option("float"), "budget_cycles": Option("float"), "budget_kb": Option("float"),
    "pe": Option("int", 8), "simd": Option("int", 8), "act_buffer_bytes": Option("int"), "seed": Option("int", 0),
    "train_limit": Option("int"), "max_iterations": Option("int", 100),
}


def _check_search(s: dict[str, Any]) -> None:
    from bitsmith.search.job import METHODS
    from bitsmith.search.space import COSTS

    if s["method"] not in METHODS:
        raise ConfigError(f"unknown search method {s['method']!r}; allowed: {', '.join(METHODS)}")
    if s["cost"] not in COSTS:
        raise ConfigError(f"unknown cost {s['cost']!r}; allowed: {', '.join(COSTS)}")
    budgets = [k for k in ("budget_dsp", "budget_cycles", "budget_kb") if s[k] is not None]
    if s["method"] == "hessian" and not budgets:
        raise ConfigError("method hessian needs a budget: budget_dsp, budget_cycles or budget_kb")
    if s["method"] == "dnas" and budgets:
        raise ConfigError(f"{', '.join(budgets)} are for method hessian; DNAS trades accuracy against cost with cd")
    accel_config(s)


# -- back ends ----------------------------------------------------------------------------------

EXPORT_FORMATS = ("onnx", "clipq-hex")
EXPORT = {"format": Option("str", "onnx"), "qdq": Option("bool", False), "check": Option("int", 64)}


def _check_export(s: dict[str, Any]) -> None:
    if s["format"] not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {s['format']!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    if s["check"] < 0:
        raise ConfigError(f"check must be 0 (no check) or a number of images, got {s['check']}")
    if s["qdq"] and s["format"] != "onnx":
        raise ConfigError("qdq is an ONNX option; remove it or use format = \"onnx\"")


_ACCEL = {"pe": Option("int", 8), "simd": Option("int", 8), "bus_bits": Option("int", 64),
          "act_buffer_bytes": Option("int"), "max_kernel": Option("int", 7)}
VERIFY = {"backends": Option("list[str]", ["onnx", "accel"]), "images": Option("int", 8), "data": Option("str"),
          "sim": Option("str", "icarus"), **_ACCEL}
RTL = {"images": Option("int", 1), "data": Option("str"), "sim": Option("str", "icarus"), "synth": Option("bool", False),
       **_ACCEL}


def _check_images(s: dict[str, Any]) -> None:
    if s["images"] < 1:
        raise ConfigError(f"images must be a positive integer, got {s['images']}")


def _check_verify(s: dict[str, Any]) -> None:
    from bitsmith.verify import check_options

    if not s["backends"]:
        raise ConfigError("backends is empty; allowed: a list of onnx, accel, hls, rtl")
    check_options(s["backends"], sim=s["sim"])
    _check_images(s)
    accel_config(s)


def _check_rtl(s: dict[str, Any]) -> None:
    from bitsmith.verify import check_options

    check_options(["rtl"], sim=s["sim"])
    _check_images(s)
    accel_config(s)


def _cim_options() -> dict[str, Option]:
    from bitsmith.cim import CIMConfig
    from bitsmith.pipeline import CIM_BATCH_SIZE, CIM_CALIBRATION_IMAGES

    options: dict[str, Option] = {"images": Option("int"), "calibration_images": Option("int", CIM_CALIBRATION_IMAGES),
                                  "batch_size": Option("int", CIM_BATCH_SIZE)}
    for f in fields(CIMConfig):
        if f.name == "digital":
            options[f.name] = Option("str|list[str]", f.default)
        elif f.default is None:
            options[f.name] = Option("int" if f.name == "adc_bits" else "float")
        else:
            options[f.name] = Option(_PY_TYPES[type(f.default)], f.default)
    return options


def cim_config(s: dict[str, Any]):
    from bitsmith.cim import CIMConfig

    values = {f.name: s[f.name] for f in fields(CIMConfig)}
    if isinstance(values["digital"], list):
        values["digital"] = tuple(values["digital"])
    return CIMConfig(**values)


def _check_cim(s: dict[str, Any]) -> None:
    cim_config(s)
    for name in ("images", "calibration_images", "batch_size"):
        if s[name] is not None and s[name] < 1:
            raise ConfigError(f"{name} must be a positive integer, got {s[name]}")


# -- report ------------------------------------------------------------------------------------

REPORT = {"log_y": Option("bool", False), "calib_batches": Option("int", 4), "max_samples": Option("int")}


def report_function():
    """`bitsmith.report.build_report(paths, out, log_y=…, calib_batches=…, max_samples=…, data_dir=…)`,
    the job of `bitsmith report`; a ConfigError while that package is not part of this installation."""
    try:
        from bitsmith import report  # the HTML report (issue 17), written beside this package
    except ImportError as e:
        raise ConfigError(f"the report stage needs bitsmith.report, which this installation does not have ({e}); "
                          "remove the stage, or run `bitsmith report` once it is available") from None
    fn = getattr(report, "build_report", None)
    if fn is None:
        raise ConfigError("bitsmith.report has no build_report(paths, out, …), which the report stage calls")
    return fn


def _check_report(s: dict[str, Any]) -> None:
    report_function()
    for name in ("calib_batches", "max_samples"):
        if s[name] is not None and s[name] < 1:
            raise ConfigError(f"{name} must be a positive integer, got {s[name]}")


# -- the table ---------------------------------------------------------------------------------

def _kinds() -> dict[str, StageKind]:
    return {k.name: k for k in (
        StageKind("train", "float training (bitsmith train)", (), "run", TRAIN, _check_train),
        StageKind("prune", "pruning and fine-tuning (bitsmith prune)", ("run",), "run", _prune_options(),
                  _check_prune),
        StageKind("search", "mixed-precision search (bitsmith search)", ("run",), "search", SEARCH, _check_search),
        StageKind("quantize", "post-training quantization (bitsmith quantize)", ("run",), "graph", QUANTIZE,
                  _check_quantize, aliases={"wbits": "weight_bits", "abits": "act_bits"}),
        StageKind("qat", "quantization-aware training (bitsmith qat)", ("run",), "graph", QAT, _check_qat,
                  refs={"widths_from": "search"}),
        StageKind("export", "ONNX or CLIP-Q hex export (bitsmith export)", ("graph",), "export", EXPORT,
                  _check_export),
        StageKind("verify", "every back end against the engine (bitsmith verify)", ("graph",), "verification",
                  VERIFY, _check_verify, aliases={"backends": "back end"}),
        StageKind("rtl", "the generated Verilog in a simulator (bitsmith rtl)", ("graph",), "verification", RTL,
                  _check_rtl),
        StageKind("cim", "accuracy on simulated crossbars (bitsmith cim run)", ("graph",), "cim", _cim_options(),
                  _check_cim),
        StageKind("report", "the HTML report (bitsmith report)", ("run", "graph", "search"), "report", REPORT,
                  _check_report, many=True),
    )}


_TABLE: dict[str, StageKind] | None = None


def stage_kinds() -> dict[str, StageKind]:
    """Every stage kind by name (built on first use: the option tables read the job configs' fields)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _kinds()
    return _TABLE


#: Settings every stage takes besides its kind's own.
COMMON = {"kind": Option("str", required=True), "from": Option("stages"), "data_dir": Option("str", keyed=False)}
