"""Atomic writes and checked reads of the files bitsmith produces (JSON and safetensors).

An interrupted write never leaves a half-written file under the final name: data goes to a
temporary file in the same folder, is flushed to disk, given the mode the umask asks for
(`0o666 & ~umask`; `tempfile.mkstemp` alone would leave 0600), and is then renamed over the target.

Every safetensors file bitsmith writes verifies itself: `save_tensors_atomic` stores in the file's
metadata, under `DIGEST_KEY`, the sha256 of everything else the file says (tensor names, dtypes,
shapes, offsets, the other metadata, the tensor bytes), and `load_tensors` recomputes it, so a
flipped byte anywhere in a checkpoint, QAT weights or a graph's tensors is a CheckpointError that
names the file. The header is written with sorted metadata keys, so the same tensors and metadata
always give the same bytes (safetensors alone orders metadata keys at random).

Whole output folders are published atomically by `bitsmith.artifacts` on top of these functions.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from bitsmith.errors import CheckpointError, OutputError

#: The metadata key of a safetensors file's own digest (64 lowercase hex digits).
DIGEST_KEY = "bitsmith.sha256"


# -- modes --------------------------------------------------------------------------------------

_umask_lock = threading.Lock()
_umask_fallback: int | None = None


def current_umask() -> int:
    """The process umask, read without changing it (Linux: /proc/self/status). Where that is not
    available it is read once, under a lock, by setting and restoring it."""
    global _umask_fallback
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        if _umask_fallback is None:
            _umask_fallback = os.umask(0o022)
            os.umask(_umask_fallback)
        return _umask_fallback


def file_mode() -> int:
    """The mode a new file gets under the current umask (what open() would give)."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """The mode a new folder gets under the current umask (what mkdir would give)."""
    return 0o777 & ~current_umask()


# -- digests ------------------------------------------------------------------------------------

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (64 lowercase hex digits), what `sha256sum` prints."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


# -- writing ------------------------------------------------------------------------------------

def output_error(path: Path, e: OSError) -> OutputError:
    """An OSError while writing `path` as a message that names the path and what to do."""
    reason = e.strerror or str(e)
    if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "it (or its folder) is not writable; choose another output path or fix its permissions"
    elif e.errno == errno.ENOSPC:
        hint = "the disk is full"
    elif isinstance(e, (NotADirectoryError, FileExistsError)):
        hint = "a part of that path is a file, not a folder; choose another output path"
    elif isinstance(e, IsADirectoryError):
        hint = "it is a folder, a file was expected; choose another output path"
    else:
        hint = "choose another output path"
    return OutputError(f"cannot write {path}: {reason}; {hint}.")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> str:
    """Write `data` to `path` atomically (temporary file, fsync, rename); returns its sha256.
    The file gets mode 0o666 & ~umask. OS errors become an OutputError naming the path."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise output_error(path, e) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return sha256_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> str:
    """Write `obj` as indented JSON, atomically; returns the file's sha256."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{what} {path} is not valid JSON ({e}); it may be truncated") from None


# -- safetensors ----------------------------------------------------------------------------------

def tensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The bytes of a self-verifying safetensors file: `metadata` plus DIGEST_KEY, header keys in a
    fixed order (the same input always gives the same bytes)."""
    metadata = {k: v for k, v in (metadata or {}).items() if k != DIGEST_KEY}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    raw = _st_save(tensors, metadata=metadata or None)
    header, body = _split(raw)
    header.pop("__metadata__", None)
    full = dict(sorted({**metadata, DIGEST_KEY: _payload_digest(header, metadata, body)}.items()))
    text = json.dumps({"__metadata__": full, **header}, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)  # safetensors aligns the data to 8 bytes
    return len(text).to_bytes(8, "little") + text + body


def save_tensors_atomic(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> str:
    """Write a self-verifying safetensors file atomically; returns the sha256 of the file's bytes."""
    return write_bytes_atomic(path, tensors_bytes(tensors, metadata))


@dataclass
class TensorsFile:
    """A safetensors file read and verified: its tensors, its metadata (without DIGEST_KEY), the
    sha256 of its bytes, and whether it carried its own digest (files bitsmith wrote before did not)."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    sha256: str
    self_verified: bool


def read_tensors(path: str | os.PathLike, what: str = "safetensors file") -> TensorsFile:
    """Read a safetensors file fully and check its embedded digest when it has one; a truncated,
    corrupt or altered file raises CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    data = path.read_bytes()
    try:
        tensors = _st_load(data)
        header, body = _split(data)
    except (SafetensorError, ValueError, RuntimeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{what} {path} is corrupt or truncated ({len(data)} bytes): {e}. "
            "Delete it and re-create it (e.g. re-run the command that wrote it)."
        ) from None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{what} {path} is corrupt: its metadata is not a JSON object.")
    recorded = metadata.pop(DIGEST_KEY, None)
    if recorded is not None:
        actual = _payload_digest(header, metadata, body)
        if recorded != actual:
            raise CheckpointError(
                f"{what} {path} is corrupt: its content does not match the sha256 recorded in it "
                f"({str(recorded)[:12]}…, content gives {actual[:12]}…); a byte changed after it was written. "
                "Delete it and re-create it (e.g. re-run the command that wrote it)."
            )
    return TensorsFile(tensors, {str(k): v for k, v in metadata.items()}, sha256_bytes(data), recorded is not None)


def load_tensors(path: str | os.PathLike, what: str = "safetensors file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file fully (tensors, metadata); a truncated, corrupt or altered file
    raises CheckpointError (see `read_tensors`)."""
    f = read_tensors(path, what)
    return f.tensors, f.metadata


def _split(data: bytes) -> tuple[dict, bytes]:
    """A safetensors file's header (parsed, key order kept) and its data section."""
    if len(data) < 8:
        raise ValueError("file shorter than its 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if 8 + n > len(data):
        raise ValueError("header runs past the end of the file")
    header = json.loads(data[8 : 8 + n])
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, data[8 + n :]


def _payload_digest(header: dict, metadata: dict, body: bytes) -> str:
    """sha256 over what a safetensors file says apart from its own digest: the tensor entries and
    the other metadata (canonical JSON) and the data bytes."""
    h = hashlib.sha256()
    h.update(json.dumps({"metadata": metadata, "tensors": header}, sort_keys=True, separators=(",", ":")).encode())
    h.update(b"\0")
    h.update(body)
    return h.hexdigest()
