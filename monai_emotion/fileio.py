"""Crash-safe file writing, JSON reading and hashing: the one owner of how files get written.

Every file a later step reads (caches, checkpoints, records, reports) is written under a hidden
temporary name beside its final name, fsynced and renamed into place, so a full disk or a kill
leaves either the old file or all of the new one, never half of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from monai_emotion.errors import MonaiEmotionError, write_error

__all__ = [
    "atomic_write_text",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "dumps",
    "fsync_dir",
    "source_stat",
    "file_sha256",
    "array_sha256",
    "json_digest",
    "jsonable",
    "load_json",
    "read_json",
    "remove_stale_temporaries",
    "raise_write_error",
    "temporary_name",
]

_TMP_MARK = ".tmp-"


def source_stat(path: str | os.PathLike) -> dict[str, Any]:
    """Identity of an input file for the fingerprint: resolved path, size and mtime (ns)."""
    st = os.stat(path)  # follows symlinks: datalad/git-annex trees are symlinks to the content
    return {
        "path": os.path.abspath(path),
        "realpath": os.path.realpath(path),
        "size": int(st.st_size),
        "mtime_ns": int(st.st_mtime_ns),
    }


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def array_sha256(mask: np.ndarray) -> str:
    """Hash of a boolean mask that depends on its shape and voxels only (not on dtype or file)."""
    mask = np.asarray(mask, dtype=bool)
    digest = hashlib.sha256(repr(mask.shape).encode())
    digest.update(np.packbits(mask, axis=None).tobytes())
    return digest.hexdigest()


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename durable: the directory entry lives in the folder, not in the file."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms/filesystems cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(final: Path) -> Path:
    """Hidden temporary beside ``final`` that :func:`remove_stale_temporaries` recognises."""
    # hidden, in the same folder (os.replace must not cross filesystems), unique per writer
    return final.parent / f".{final.name}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"


def raise_write_error(exc: OSError, final: Path, error: type[MonaiEmotionError]) -> None:
    """Re-raise a failed write: a clear error for a full disk, the ``OSError`` otherwise."""
    if clear := write_error(exc, final, error):
        raise clear from exc
    raise exc


def remove_stale_temporaries(final: Path) -> int:
    """Delete temporaries left by a killed writer of ``final``; returns how many were removed.

    Only call this for a file the caller is about to write itself (under sharding each run
    has exactly one writer, so no live writer's temporary is removed).
    """
    removed = 0
    for stale in final.parent.glob(f".{final.name}{_TMP_MARK}*"):
        pid_text = stale.name.rsplit(_TMP_MARK, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and _pid_alive(int(pid_text)):
            continue  # a live writer on this machine (two builds of one run at once): leave it
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_text(
    path: str | os.PathLike, text: str, error: type[MonaiEmotionError] = MonaiEmotionError
) -> None:
    """Write ``text`` so that ``path`` holds either the old content or all of the new."""
    atomic_write_bytes(path, text.encode("utf-8"), error)


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, error: type[MonaiEmotionError] = MonaiEmotionError
) -> None:
    """Write ``data`` so that ``path`` holds either the old content or all of the new."""
    atomic_write(path, lambda fh: fh.write(data), error)


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], object],
    error: type[MonaiEmotionError] = MonaiEmotionError,
) -> Path:
    """Call ``write(fh)`` on a temporary beside ``path``, fsync, then rename it over ``path``.

    A full disk (or quota) raises ``error`` naming ``path`` after the temporary is removed;
    any other failure leaves no temporary behind either.
    """
    final = Path(path)
    tmp = temporary_name(final)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, Exception) and (clear := write_error(exc, final, error)):
            raise clear from exc
        raise
    fsync_dir(final.parent)
    return final


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """Parse a JSON file the cache wrote; ``None`` when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None

def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def jsonable(value: Any) -> Any:
    """``json.dumps`` default: typed specs by their ``to_dict``, paths and numpy scalars as text."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def atomic_write_json(
    path: str | os.PathLike, data: Any, error: type[MonaiEmotionError] = MonaiEmotionError,
    indent: int = 2,
) -> Path:
    """Write ``data`` as JSON (``default=str`` for paths and numpy scalars), atomically."""
    atomic_write_text(path, json.dumps(data, indent=indent, default=jsonable) + "\n", error)
    return Path(path)


def json_digest(data: Any, length: int = 10) -> str:
    """A short, stable digest of JSON-able ``data`` (key order does not matter)."""
    text = json.dumps(data, sort_keys=True, default=jsonable)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:length]


def load_json(path: str | os.PathLike, error: type[MonaiEmotionError] = MonaiEmotionError,
              fix: str = "rewrite or regenerate the file") -> Any:
    """Parse a JSON file a user or an earlier step wrote; ``error`` names the file and the fix.

    Unlike :func:`read_json` (which treats an unreadable cache file as absent), a missing or
    malformed file here is the user's to fix.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise error("file not found", path, fix=fix) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"not valid JSON ({exc})", path, fix=fix) from None
