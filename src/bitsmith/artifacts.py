"""Output folders and files: their kinds, and publishing them whole or not at all.

**Kinds.** Every folder bitsmith writes is of one kind (float run, integer graph, QAT graph,
accelerator memory files, HLS export, …), told from the files it already writes (the format field
of graph.json / program.json / manifest.json, the run checkpoint, ranges.json, …; `KINDS`,
`folder_kind`). A command writes its own kind only: it refuses a folder of another kind, or a
non-empty folder that is not a bitsmith folder, unless `force` (the CLI's --force). Its own
previous output it replaces without --force (a float run is the exception: `bitsmith train` asks
for --resume or --force, since the run may be hours of work).

**Publishing.** `publishing(out, kind)` yields a fresh temporary sibling folder
(`.NAME.tmp-PID-XXXX` next to NAME); the command writes everything there and checks it (e.g.
re-loads the graph). Only when the block ends without an exception is it swapped in: on Linux with
one `renameat2(RENAME_EXCHANGE)` (the old folder and the new swap names atomically; the old one
is then deleted); where that call is missing or refused, the old folder is first renamed aside
(`.NAME.old-PID-XXXX`), the new one renamed in, then the old one deleted. In that fallback there
is a window between the two renames in which NAME does not exist; the old copy is still complete
under the .old name, and the next bitsmith command that writes NAME renames it back first if NAME
is missing. On an exception (or `stage.discard()`) the temporary folder is deleted and NAME is left
byte for byte as it was. Temporary siblings of a process that died (SIGKILL, power loss) are
deleted by the next command that writes to the same path.

`publishing_file(out, kind)` does the same for one file (the ONNX export): a temporary sibling
file, checked, then `os.replace`d over the target.

Paths recorded inside outputs must name the final place, not the temporary one: `public_path(p)`
maps a path inside an active temporary folder to where it will be published.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitsmith.errors import OutputError
from bitsmith.storage import folder_mode, output_error


# -- kinds ---------------------------------------------------------------------------------------

def _json_field(path: Path, key: str = "format") -> Any:
    """A top-level field of a JSON file, or None when the file is missing or unreadable."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return doc.get(key) if isinstance(doc, dict) else None


def _has_json(path: Path, *keys: str) -> bool:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and all(k in doc for k in keys)


def _graph_json(p: Path) -> bool:
    # graph.json that says it is a bitsmith graph, or that cannot be read (a damaged graph is still a graph)
    g = p / "graph.json"
    return g.is_file() and _json_field(g) in ("bitsmith.integer_graph", None)


@dataclass(frozen=True)
class Kind:
    """A kind of output: `folder` names a folder of it ("a float run folder"), `what` what a
    command writes ("a float run"); `detect(path)` tells an existing folder (or file) of it."""

    key: str
    folder: str
    what: str
    detect: Callable[[Path], bool]
    is_file: bool = False


FLOAT_RUN = Kind("float_run", "a float run folder", "a float run",
                 lambda p: (p / "checkpoint.safetensors").is_file() or _json_field(p / "run.json") == "bitsmith.run")
QAT_GRAPH = Kind("qat_graph", "a QAT graph folder", "a QAT integer graph",
                 lambda p: _graph_json(p) and (p / "qat_weights.safetensors").is_file())
INTEGER_GRAPH = Kind("integer_graph", "an integer graph folder", "an integer graph", _graph_json)
MEMORY_FILES = Kind("memory_files", "an accelerator memory-file folder", "accelerator memory files",
                    lambda p: _json_field(p / "program.json") == "bitsmith.accel_images")
RTL_WORK = Kind("rtl_work", "an RTL work folder", "an RTL work folder",
                lambda p: (p / "rtl").is_dir() and MEMORY_FILES.detect(p / "memory"))
HLS_EXPORT = Kind("hls_export", "an HLS export folder", "HLS headers",
                  lambda p: (p / "config.h").is_file() and (p / "weights.hpp").is_file())
CLIPQ_HEX = Kind("clipq_hex", "a CLIP-Q hex folder", "CLIP-Q hex files",
                 lambda p: _json_field(p / "manifest.json") == "bitsmith.clipq_hex")
RANGES = Kind("ranges", "a ranges report folder", "a ranges report",
              lambda p: _has_json(p / "ranges.json", "sigma_k", "layers"))
SWEEP = Kind("sweep", "a design-sweep folder", "a design sweep",
             lambda p: _has_json(p / "sweep.json", "points", "pareto"))
CIM_SWEEP = Kind("cim_sweep", "a crossbar-sweep folder", "a crossbar sweep",
                 lambda p: _json_field(p / "cim_sweep.json") == "bitsmith.cim_sweep")
SEARCH = Kind("search", "a search folder", "a mixed-precision search",
              lambda p: _json_field(p / "search.json") == "bitsmith.search")
HOMEWORK = Kind("homework", "a homework folder", "the homework tables", lambda p: _has_json(p / "homework.json", "datasets"))
DEMO = Kind("demo", "a demo folder", "the demo",
            lambda p: _has_json(p / "summary.json", "fp32_run", "int8_graph"))
VERIFY_WORK = Kind("verify_work", "a verification work folder", "verification work files",
                   lambda p: p.is_dir() and any(p.iterdir())
                   and all(c.is_dir() and c.name in ("onnx", "accel", "hls", "rtl")
                           for c in p.iterdir() if not _is_temporary(c.name)))
ONNX_MODEL = Kind("onnx_model", "an ONNX model written by bitsmith", "an ONNX model", lambda p: _bitsmith_onnx(p),
                  is_file=True)

#: Folder kinds, most specific first (a QAT graph is also a graph; an RTL folder holds memory files).
KINDS: tuple[Kind, ...] = (FLOAT_RUN, QAT_GRAPH, INTEGER_GRAPH, RTL_WORK, MEMORY_FILES, HLS_EXPORT, CLIPQ_HEX,
                           RANGES, SWEEP, CIM_SWEEP, SEARCH, HOMEWORK, DEMO, VERIFY_WORK)
#: What `folder_kind` returns for a folder that holds something but nothing bitsmith recognises.
UNKNOWN = Kind("unknown", "not empty and is not a bitsmith output folder", "", lambda p: False)


def _bitsmith_onnx(path: Path) -> bool:
    """An ONNX ModelProto whose producer_name is "bitsmith": field 1 (ir_version, a varint) then
    field 2 (producer_name), as protobuf serializes them."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    if not head.startswith(b"\x08"):
        return False
    i = 1
    while i < len(head) and head[i] & 0x80:
        i += 1
    return head[i + 1 : i + 11] == b"\x12\x08bitsmith"


def folder_kind(path: str | os.PathLike) -> Kind | None:
    """The kind of an existing folder: None if it is absent or empty (anything may be written
    there), UNKNOWN if it holds files bitsmith does not recognise."""
    path = Path(path)
    if not path.is_dir():
        return None
    entries = [c for c in path.iterdir() if not _is_temporary(c.name)]
    if not entries:
        return None
    for kind in KINDS:
        if kind.detect(path):
            return kind
    return UNKNOWN


def check_target(out: str | os.PathLike, kind: Kind, *, force: bool = False, command: str = "bitsmith",
                 allow_same: bool = True) -> Kind | None:
    """Check that `command` may write `kind` at `out` and return what is there now (None: nothing,
    or an empty folder). Raises OutputError when the path cannot be written (a file where a folder
    is expected or the reverse, a parent that is a file or not writable), or when `out` holds
    another kind (or a non-bitsmith folder) and `force` is not set. `allow_same=False` refuses
    even a folder of the same kind without `force` (a float run)."""
    out = Path(out)
    _check_parent(out)
    if kind.is_file:
        if out.is_dir():
            raise OutputError(f"{out} is a folder; {command} writes a file ({kind.what}) there. "
                              "Choose another --out (a file name).")
        if not out.exists() or force or kind.detect(out):
            return kind if out.exists() else None
        raise OutputError(f"{out} exists and is not {kind.folder}; {command} writes {kind.what}. "
                          "Choose another --out, or pass --force to replace it.")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file; {command} writes a folder ({kind.what}) there. "
                          "Choose another --out (a folder).")
    found = folder_kind(out)
    if found is None or force or (found is kind and allow_same):
        return found
    if found is UNKNOWN:
        raise OutputError(f"{out} is {UNKNOWN.folder}; {command} writes {kind.what}. "
                          "Choose another --out, or pass --force to replace it.")
    raise OutputError(f"{out} is {found.folder}; {command} writes {kind.what}. "
                      "Choose another --out, or pass --force to replace it.")


def _check_parent(out: Path) -> None:
    """The nearest existing ancestor of `out` must be a writable folder."""
    parent = Path(os.path.abspath(out)).parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link
            raise OutputError(f"cannot create {out}: {parent} is a broken symbolic link.")
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot create {out}: {parent} is a file, not a folder. Choose another output path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {out}: {parent} is not writable. Choose another output path "
                          "or fix its permissions.")


# -- temporary siblings --------------------------------------------------------------------------

_TMP, _OLD = "tmp", "old"


def _is_temporary(name: str) -> bool:
    """A temporary sibling of a folder (.NAME.tmp-…, .NAME.old-…) or of a file (.NAME.XXXX.tmp)."""
    return name.startswith(".") and (f".{_TMP}-" in name or f".{_OLD}-" in name or name.endswith(".tmp"))


def _sibling(out: Path, tag: str) -> Path:
    return out.parent / f".{out.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"


def _owner_alive(name: str, prefix: str) -> bool:
    try:
        pid = int(name[len(prefix):].split("-")[0])
    except ValueError:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: str | os.PathLike) -> None:
    """Delete temporary siblings of `out` left by processes that died; if `out` is missing and a
    dead process left its previous version aside (.NAME.old-…), rename that back first."""
    out = Path(os.path.abspath(out))
    parent = out.parent
    if not parent.is_dir():
        return
    for tag in (_OLD, _TMP):
        prefix = f".{out.name}.{tag}-"
        try:
            entries = sorted(parent.glob(f".{_glob_escape(out.name)}.{tag}-*"))
        except OSError:
            return  # an unreadable folder: check_target names the problem
        for entry in entries:
            if _owner_alive(entry.name, prefix):
                continue
            if tag == _OLD and not out.exists() and not out.is_symlink():
                try:
                    os.rename(entry, out)  # the previous version, set aside by a swap that was cut short
                except OSError:
                    pass  # leave it where it is rather than lose it
                continue
            _remove(entry)


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# -- publishing ----------------------------------------------------------------------------------

_active: dict[Path, Path] = {}  # resolved temporary folder -> final path
_active_lock = threading.Lock()


def public_path(path: str | os.PathLike) -> Path:
    """Where `path` will be once the temporary folder it lies in is published (itself otherwise)."""
    path = Path(path)
    resolved = path.resolve()
    with _active_lock:
        stages = sorted(_active.items(), key=lambda kv: -len(kv[0].parts))
    for stage, final in stages:
        if resolved == stage or stage in resolved.parents:
            return public_path(final / resolved.relative_to(stage))
    return path


@dataclass
class Stage:
    """A temporary output: write to `path`; it becomes `final` when the block ends without an exception."""

    path: Path
    final: Path
    discarded: bool = False

    def discard(self) -> None:
        """Delete the temporary output at the end of the block instead of publishing it."""
        self.discarded = True

    def relocate(self, obj: Any) -> Any:
        """`obj` (str / list / dict, e.g. a report) with the temporary path replaced by the final one."""
        if isinstance(obj, str):
            for old, new in ((str(self.path.resolve()), str(self.final.absolute())), (str(self.path), str(self.final))):
                obj = obj.replace(old, new)
            return obj
        if isinstance(obj, dict):
            return {k: self.relocate(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.relocate(v) for v in obj)
        return obj


@contextlib.contextmanager
def publishing(out: str | os.PathLike, kind: Kind, *, force: bool = False, command: str = "bitsmith",
               allow_same: bool = True) -> Iterator[Stage]:
    """Write a whole output folder to a temporary sibling and swap it in at the end (see the module
    docstring). Checks the target first (`check_target`); a failure inside the block leaves `out`
    as it was and no temporary folder behind."""
    out = Path(out)
    target = Path(os.path.abspath(out))  # "runs/x/.." or "." name their folder only once made absolute
    clean_stale(target)  # first: it may bring back the previous version of `out`
    check_target(out, kind, force=force, command=command, allow_same=allow_same)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _sibling(target, _TMP)
        tmp.mkdir(mode=0o700)
        os.chmod(tmp, folder_mode())
    except OSError as e:
        raise output_error(out, e) from None
    stage = Stage(tmp, out)
    with _active_lock:
        _active[tmp.resolve()] = out
    try:
        yield stage
        if not stage.discarded:
            check_target(out, kind, force=force, command=command, allow_same=allow_same)  # still ours to replace?
            _sync_tree(tmp)
            _swap_in(tmp, target)
    finally:
        with _active_lock:
            _active.pop(tmp.resolve(), None)
        if tmp.exists():
            _remove(tmp)


@contextlib.contextmanager
def publishing_file(out: str | os.PathLike, kind: Kind, *, force: bool = False,
                    command: str = "bitsmith") -> Iterator[Stage]:
    """One output file: write to `stage.path` (a temporary sibling, not yet created); when the block
    ends without an exception (and without `stage.discard()`) it is renamed over `out`."""
    out = Path(out)
    target = Path(os.path.abspath(out))
    clean_stale(target)
    check_target(out, kind, force=force, command=command)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(out, e) from None
    stage = Stage(_sibling(target, _TMP), out)
    try:
        yield stage
        if not stage.discarded:
            if not stage.path.is_file():
                raise OutputError(f"{out}: nothing was written")
            check_target(out, kind, force=force, command=command)
            try:
                os.replace(stage.path, target)
            except OSError as e:
                raise output_error(out, e) from None
            _fsync_dir(target.parent)
    finally:
        _remove(stage.path)


def _swap_in(tmp: Path, out: Path) -> None:
    """Make `tmp` be `out`: a plain rename if `out` is absent, else an atomic exchange (Linux) or
    rename-aside-then-rename; the previous `out` is deleted once the new one is in place."""
    try:
        if not out.exists() and not out.is_symlink():
            os.rename(tmp, out)
        elif _exchange(tmp, out):
            _remove(tmp)  # now holds the previous version
        else:
            aside = _sibling(out, _OLD)
            os.rename(out, aside)
            # Window: `out` is missing until the next rename; `aside` holds the complete old copy.
            os.rename(tmp, out)
            _remove(aside)
    except OSError as e:
        raise output_error(out, e) from None
    _fsync_dir(out.parent)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where unsupported."""
    global _renameat2
    if _renameat2 is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (OSError, AttributeError):
            _renameat2 = False
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # this filesystem (or kernel) cannot exchange: fall back
    raise OSError(err, os.strerror(err), str(b))


def _sync_tree(root: Path) -> None:
    """fsync every file and folder under `root`, so the swap never publishes data still in cache."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def copy_folder(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a folder (e.g. a finished float run a composite job reuses) into a temporary output."""
    try:
        shutil.copytree(src, dst, ignore=lambda _, names: [n for n in names if _is_temporary(n)])
    except OSError as e:
        raise output_error(Path(dst), e) from None
