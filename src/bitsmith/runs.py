"""The on-disk float run: one folder, one checkpoint file, two JSON views of it.

    run_dir/
      checkpoint.safetensors   the whole training state, written atomically after every epoch
      run.json                 human-readable copy of the checkpoint's metadata, with the
                               checkpoint's sha256 ("checkpoint_sha256")
      metrics.json             per-epoch history and the final test accuracy ("accuracy", percent)

The checkpoint is a single safetensors file so that one atomic rename publishes a consistent
state: killing the process at any moment leaves the previous epoch's complete checkpoint.
Its tensors are

    model.<name>              the model's state_dict
    optim.<param_index>.<key> the optimizer's per-parameter state (momentum buffers, Adam moments)
    rng.torch                 torch's global CPU generator state (uint8)
    rng.data                  the data generator's state (uint8), which drives order and augmentation

and its metadata has one key, "bitsmith", holding a JSON object:
{"format": "bitsmith.run", "version": 1, "model": model.spec, "dataset": ..., "data_dir": ...,
"epoch": completed epochs, "train_config": {...}, "optimizer": {"type", "param_groups"}, "metrics": {...}}.

Shrunk layers. Structured pruning (bitsmith.prune.structured) makes layers narrower than
`build_model` builds them. Such a run says so in its model spec: "shrunk" maps a module name to its
widths ({"in_channels", "out_channels", "groups"} of a Conv2d, {"in_features", "out_features"} of
a Linear, {"num_features"} of a BatchNorm1d/2d), each at least 1 and at most what `build_model`
builds. `load_run` rebuilds the model, replaces exactly those modules with ones of the stored
widths (every other hyper-parameter kept), then loads the weights: any tensor that still does not
match, in a listed module or elsewhere, is a CheckpointError as for any run.

Nothing here unpickles: tensors come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from torch import nn

from bitsmith.data import ArrayDataset, load_dataset
from bitsmith.errors import BitsmithError, CheckpointError
from bitsmith.integer.schema import describe_errors, finite_number, strict_int
from bitsmith.models import build_model
from bitsmith.storage import read_tensors, save_tensors_atomic, write_json_atomic

CHECKPOINT_FILE = "checkpoint.safetensors"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIGEST = "checkpoint_sha256"  # run.json: the sha256 of checkpoint.safetensors it describes
FORMAT = "bitsmith.run"
VERSION = 1
_META_KEY = "bitsmith"


@dataclass
class Checkpoint:
    """A checkpoint file read and validated, its tensors split by role."""

    path: Path
    meta: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    optim_state: dict[int, dict[str, Any]]
    rng: dict[str, torch.Tensor]


@dataclass
class RunInfo:
    """A trained float run: the rebuilt model (weights loaded, eval mode) and its metadata."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path

    @property
    def metrics(self) -> dict[str, Any]:
        return self.meta.get("metrics", {})

    def data_dir(self, data_dir: str | None = None) -> str | None:
        """`data_dir` if given, else the folder the run was trained from (None: the default search)."""
        return data_dir or self.meta.get("data_dir")

    def dataset(self, split: str, data_dir: str | None = None, limit: int | None = None) -> ArrayDataset:
        """The `split` ("train" / "test") of the data set the run was trained on."""
        return load_dataset(self.meta["dataset"], split, self.data_dir(data_dir), limit=limit)


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_FILE


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    rng: dict[str, torch.Tensor],
) -> Path:
    """Write checkpoint.safetensors atomically, then run.json and metrics.json.

    `meta` holds the run's description (dataset, epoch, train_config, metrics, ...); the format
    marker, version, model spec and optimizer hyper-parameters are filled in here. `rng` maps a
    short name ("torch", "data") to a generator state tensor. Returns the checkpoint path.
    """
    run_dir = Path(run_dir)
    spec = getattr(model, "spec", None)
    if spec is None:
        raise CheckpointError(
            f"cannot save {type(model).__name__} into {run_dir}: it has no .spec to rebuild it from; "
            "build models with bitsmith.models.build_model."
        )
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    scalar_state: dict[str, dict[str, Any]] = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:  # e.g. a plain number some optimizers keep; JSON carries it
                scalar_state.setdefault(str(index), {})[key] = value
    for name, state in rng.items():
        tensors[f"rng.{name}"] = state
    groups = [
        {k: v for k, v in g.items() if k != "params"} | {"num_params": len(g["params"])} for g in opt["param_groups"]
    ]
    full_meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": spec,
        **{k: v for k, v in meta.items() if k not in ("format", "version", "model", "optimizer")},
        "optimizer": {"type": type(optimizer).__name__, "param_groups": groups, "state_values": scalar_state},
    }
    path = checkpoint_path(run_dir)
    # The write order is the resume rule (see check_run_json): the checkpoint, the one source of
    # truth, goes first and atomically; run.json (with the checkpoint's sha256) and metrics.json
    # are views of it written after. A kill between the writes leaves them one epoch behind, which
    # a reader accepts; it never leaves a view ahead of its checkpoint.
    digest = save_tensors_atomic(path, tensors, metadata={_META_KEY: json.dumps(full_meta)})
    write_json_atomic(run_dir / RUN_FILE, {**full_meta, CHECKPOINT_DIGEST: digest})
    write_json_atomic(run_dir / METRICS_FILE, full_meta.get("metrics", {}))
    return path


def read_checkpoint(run_dir: str | os.PathLike) -> Checkpoint:
    """Read and validate run_dir/checkpoint.safetensors (run_dir may also be the file itself)."""
    path = Path(run_dir)
    if path.suffix != ".safetensors":
        if not path.is_dir():
            raise CheckpointError(f"run folder not found: {path}. Train a model first, writing to that folder.")
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(
            f"run checkpoint not found: {path}. The run never finished an epoch, or the folder is not a "
            "training run; train (or resume) it first."
        )
    stored = read_tensors(path, "run checkpoint")
    tensors, metadata = stored.tensors, stored.metadata
    meta = _parse_meta(path, metadata)
    check_run_json(path, meta, stored.sha256)
    model_state, optim_state, rng = {}, {}, {}
    for key, value in tensors.items():
        role, _, rest = key.partition(".")
        if role == "model":
            model_state[rest] = value
        elif role == "optim":
            index, _, name = rest.partition(".")
            if not index.isdigit() or not name:
                raise CheckpointError(
                    f"{path}: malformed optimizer tensor name {key!r}; the file was not written by bitsmith."
                )
            optim_state.setdefault(int(index), {})[name] = value
        elif role == "rng":
            rng[rest] = value
        else:
            raise CheckpointError(f"{path}: unexpected tensor {key!r}; the file was not written by bitsmith.")
    for index, values in meta["optimizer"].get("state_values", {}).items():
        optim_state.setdefault(int(index), {}).update(values)
    return Checkpoint(path=path, meta=meta, model_state=model_state, optim_state=optim_state, rng=rng)


def check_run_json(path: Path, meta: dict[str, Any], sha256: str) -> None:
    """run.json, when present beside the checkpoint `path`, must describe it.

    The checkpoint is the source of truth (it verifies itself); run.json is a view written after
    it in every epoch (save_checkpoint). So run.json is accepted when it records this checkpoint's
    sha256, or when it is exactly one write behind: the previous epoch of the same run (same model
    and training settings), what a kill between the checkpoint and run.json leaves; the next epoch
    rewrites it. A resumable run is never refused for that. Anything else (another run's run.json, a view ahead of its checkpoint, the same
    epoch with another checkpoint) means the folder mixes two runs: CheckpointError naming
    run.json. A run.json without the digest (written by an older bitsmith) is not checked.
    """
    view_path = path.parent / RUN_FILE
    if not view_path.is_file():
        return
    try:
        view = json.loads(view_path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        view = None
    if not isinstance(view, dict):
        raise CheckpointError(
            f"{view_path} is not a JSON object (truncated or damaged); {path.name} beside it is the source of truth: "
            f"delete {RUN_FILE} (bitsmith train --resume or the next epoch rewrites it)."
        )
    recorded = view.get(CHECKPOINT_DIGEST)
    if recorded is None or recorded == sha256:
        return
    same_run = view.get("model") == meta.get("model") and _settings(view) == _settings(meta)
    if same_run and view.get("epoch") == meta.get("epoch", 0) - 1:
        return  # one write behind: interrupted between the checkpoint and run.json
    raise CheckpointError(
        f"{view_path} does not describe {path} (run.json: epoch {view.get('epoch')!r}, checkpoint sha256 "
        f"{str(recorded)[:12]}…; the checkpoint: epoch {meta.get('epoch')!r}, sha256 {sha256[:12]}…): the folder "
        f"mixes files of two runs. The checkpoint is the source of truth: if it is the run you want, delete "
        f"{RUN_FILE} and {METRICS_FILE} (bitsmith train --resume rewrites them); otherwise re-train the run."
    )


def _settings(meta: dict[str, Any]) -> Any:
    config = meta.get("train_config")
    return {k: v for k, v in config.items() if k != "data_dir"} if isinstance(config, dict) else config


def load_model_state(model: nn.Module, checkpoint: Checkpoint) -> None:
    """Copy the checkpoint's weights into `model`; any missing, extra or reshaped tensor is an error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(checkpoint.model_state))
    extra = sorted(set(checkpoint.model_state) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{checkpoint.path}: weights do not match model {_model_name(checkpoint.meta)!r} "
            f"(missing: {missing[:5]}, unexpected: {extra[:5]}). "
            "The checkpoint belongs to a different model or bitsmith version; re-train it."
        )
    for name, tensor in expected.items():
        stored = checkpoint.model_state[name]
        if stored.shape != tensor.shape:
            raise CheckpointError(
                f"{checkpoint.path}: tensor model.{name} has shape {list(stored.shape)}, "
                f"model {_model_name(checkpoint.meta)!r} expects {list(tensor.shape)}; re-train the run."
            )
    model.load_state_dict(checkpoint.model_state, strict=True)


def load_optimizer_state(optimizer: torch.optim.Optimizer, checkpoint: Checkpoint) -> None:
    """Restore per-parameter state and hyper-parameters into a freshly built optimizer of the same type."""
    stored = checkpoint.meta["optimizer"]
    if stored.get("type") != type(optimizer).__name__:
        raise CheckpointError(
            f"{checkpoint.path}: optimizer is {stored.get('type')}, the run now uses {type(optimizer).__name__}; "
            "resume with the same optimizer or start a new run."
        )
    current = optimizer.state_dict()
    if len(stored["param_groups"]) != len(current["param_groups"]):
        raise CheckpointError(
            f"{checkpoint.path}: optimizer has a different number of parameter groups; start a new run."
        )
    groups = []
    for saved, now in zip(stored["param_groups"], current["param_groups"]):
        if saved.get("num_params") != len(now["params"]):
            raise CheckpointError(
                f"{checkpoint.path}: optimizer parameter count differs from the model's; start a new run."
            )
        # JSON turned tuples (Adam's betas) into lists; give the optimizer back its own types.
        restored = {
            k: (tuple(v) if isinstance(now.get(k), tuple) else v) for k, v in saved.items() if k != "num_params"
        }
        groups.append(restored | {"params": now["params"]})
    n_params = sum(len(g["params"]) for g in groups)
    bad = [i for i in checkpoint.optim_state if i >= n_params]
    if bad:
        raise CheckpointError(
            f"{checkpoint.path}: optimizer state for parameter {bad[0]} but the model has {n_params}; "
            "start a new run."
        )
    optimizer.load_state_dict({"state": checkpoint.optim_state, "param_groups": groups})


def load_run(run_dir: str | os.PathLike) -> RunInfo:
    """Rebuild the model of a float run from its checkpoint, weights loaded, in eval mode."""
    checkpoint = read_checkpoint(run_dir)
    spec = checkpoint.meta["model"]
    try:
        model = build_model(
            spec["name"],
            num_classes=spec.get("num_classes"),
            input_shape=tuple(spec["input_shape"]) if spec.get("input_shape") else None,
            **spec.get("kwargs", {}),
        )
    except (BitsmithError, TypeError, KeyError) as e:
        raise CheckpointError(f"{checkpoint.path}: cannot rebuild model from its spec {spec}: {e}") from None
    if spec.get("shrunk"):
        resize_layers(model, spec["shrunk"], checkpoint.path)
        model.spec = {**model.spec, "shrunk": spec["shrunk"]}
    load_model_state(model, checkpoint)
    model.eval()
    return RunInfo(model=model, meta=checkpoint.meta, path=checkpoint.path.parent)


# -- shrunk layers (structured pruning) ------------------------------------------------------------

#: The widths a shrunk module records, by module type (what its constructor takes).
WIDTHS: dict[type, tuple[str, ...]] = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm1d: ("num_features",),
    nn.BatchNorm2d: ("num_features",),
}


def layer_widths(module: nn.Module) -> dict[str, int] | None:
    """The widths of a resizable module ({name: value}, see WIDTHS), None for any other module."""
    names = WIDTHS.get(type(module))
    return None if names is None else {n: int(getattr(module, n)) for n in names}


def _resized(module: nn.Module, widths: dict[str, int]) -> nn.Module:
    """A fresh module of `module`'s type and hyper-parameters with `widths` (weights uninitialised
    in meaning: load_state_dict overwrites them)."""
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(widths["in_channels"], widths["out_channels"], module.kernel_size, stride=module.stride,
                         padding=module.padding, dilation=module.dilation, groups=widths["groups"],
                         bias=module.bias is not None, padding_mode=module.padding_mode)
    if isinstance(module, nn.Linear):
        return nn.Linear(widths["in_features"], widths["out_features"], bias=module.bias is not None)
    return type(module)(widths["num_features"], eps=module.eps, momentum=module.momentum, affine=module.affine,
                        track_running_stats=module.track_running_stats)


def resize_layers(model: nn.Module, shrunk: dict[str, dict[str, int]], where: Any = "model") -> None:
    """Replace each module named in `shrunk` by one of the recorded widths (in place).

    Each name must be a Conv2d, Linear or BatchNorm1d/2d of `model`, its widths exactly that type's
    (WIDTHS), each between 1 and the built width, and a Conv2d's groups must divide its channels;
    anything else is a CheckpointError naming `where` and the module.
    """
    modules = dict(model.named_modules())
    for name, widths in shrunk.items():
        module = modules.get(name) if name else None
        built = layer_widths(module) if module is not None else None
        if built is None:
            kind = "no module" if module is None else f"a {type(module).__name__}, which cannot be resized"
            raise CheckpointError(f"{where}: shrunk layer {name!r} is {kind} of model {type(model).__name__}; "
                                  "the run was not written by this bitsmith.")
        if set(widths) != set(built):
            raise CheckpointError(f"{where}: shrunk layer {name!r} ({type(module).__name__}) records "
                                  f"{sorted(widths)}, expected {sorted(built)}.")
        too_wide = {k: v for k, v in widths.items() if not 1 <= v <= built[k]}
        if too_wide:
            raise CheckpointError(f"{where}: shrunk layer {name!r}: {too_wide} outside 1 to the built {built}; "
                                  "a shrunk layer is never wider than the model builds it.")
        if "groups" in widths and (widths["in_channels"] % widths["groups"] or widths["out_channels"] % widths["groups"]):
            raise CheckpointError(f"{where}: shrunk layer {name!r}: groups {widths['groups']} does not divide "
                                  f"{widths['in_channels']} input and {widths['out_channels']} output channels.")
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name], child, _resized(module, widths))


def _parse_meta(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    if _META_KEY not in metadata:
        raise CheckpointError(f"{path} has no '{_META_KEY}' metadata: it is not a bitsmith run checkpoint.")
    try:
        meta = json.loads(metadata[_META_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: '{_META_KEY}' metadata is not valid JSON ({e}); re-train the run.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise CheckpointError(f"{path}: metadata format is {found!r}, expected {FORMAT!r}; not a bitsmith run.")
    if meta.get("version") != VERSION or isinstance(meta.get("version"), bool):
        raise CheckpointError(
            f"{path}: run format version {meta.get('version')!r}; this bitsmith reads version {VERSION}. "
            "Re-train the run with this version."
        )
    try:
        _RUN_META.validate_python(meta)
    except ValidationError as e:
        problem = describe_errors(e, lambda loc: ("", loc))
        raise CheckpointError(f"{path}: metadata {problem}. The file is damaged or was not written by this "
                              "bitsmith; re-train the run.") from None
    return meta


# -- the schema of a checkpoint's metadata (run.json is a copy of it) -------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


_NonEmpty = Annotated[str, Field(min_length=1)]
_Count = strict_int(0)
_Rate = finite_number(0)


#: Bounds on a model spec, so that rebuilding a model from a damaged spec cannot allocate more than
#: a real checkpoint could hold (its weights must then match the file's tensors exactly).
MAX_CLASSES = 1 << 16
MAX_INPUT_CHANNELS = 1 << 10
MAX_INPUT_SIDE = 1 << 16
MAX_WIDTH = 1 << 20
_WidthName = Literal["in_channels", "out_channels", "groups", "in_features", "out_features", "num_features"]


class _ModelSpec(_Strict):
    """What `build_model` needs to rebuild the architecture (`bitsmith.models`)."""

    name: _NonEmpty
    num_classes: Optional[strict_int(1, MAX_CLASSES)] = None
    input_shape: Optional[Annotated[list[strict_int(1, MAX_INPUT_SIDE)], Field(min_length=3, max_length=3)]] = None
    kwargs: dict[str, Any] = {}
    # Structured pruning: module name -> its widths (see "Shrunk layers" above; checked against the
    # rebuilt model by resize_layers, where the module types are known).
    shrunk: dict[_NonEmpty, Annotated[dict[_WidthName, strict_int(1, MAX_WIDTH)], Field(min_length=1)]] = {}

    @model_validator(mode="after")
    def _channels(self) -> "_ModelSpec":
        if self.input_shape is not None and self.input_shape[0] > MAX_INPUT_CHANNELS:
            raise ValueError(f"input_shape {self.input_shape}: {self.input_shape[0]} input channels; allowed: "
                             f"1 to {MAX_INPUT_CHANNELS}")
        return self


class _ParamGroup(_Open):
    """One optimizer parameter group without its tensors (other hyper-parameters pass as JSON)."""

    num_params: _Count
    lr: _Rate = None
    momentum: _Rate = None
    dampening: _Rate = None
    weight_decay: _Rate = None
    eps: _Rate = None
    betas: Optional[Annotated[list[finite_number(0, 1)], Field(min_length=2, max_length=2)]] = None
    nesterov: bool = False
    maximize: bool = False
    amsgrad: bool = False


class _Optimizer(_Strict):
    type: _NonEmpty
    param_groups: Annotated[list[_ParamGroup], Field(min_length=1)]
    state_values: dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], dict[str, Any]] = {}


class _Environment(_Open):
    torch: Optional[str] = None
    num_threads: Optional[strict_int(1)] = None


class _Metrics(_Open):
    history: list[dict[str, Any]] = []
    accuracy: Optional[finite_number()] = None


class _RunMeta(_Strict):
    format: Literal["bitsmith.run"]
    version: Literal[1]
    model: _ModelSpec
    dataset: _NonEmpty
    data_dir: Optional[str] = None
    epoch: _Count
    train_config: dict[str, Any] = {}
    metrics: _Metrics = _Metrics()
    steps_per_epoch: Optional[strict_int(1)] = None
    train_images: Optional[_Count] = None
    test_images: Optional[_Count] = None
    environment: _Environment = _Environment()
    optimizer: _Optimizer
    pruning: Optional[dict[str, Any]] = None  # how a pruned run was made from its source (bitsmith.prune)


_RUN_META = TypeAdapter(_RunMeta)


def _model_name(meta: dict[str, Any]) -> str:
    return str(meta.get("model", {}).get("name", "?"))
