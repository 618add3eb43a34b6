"""The cache's on-disk frame format: ``.npy`` files streamed in under a temporary name, and its version."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from monai_emotion.errors import CacheError
from monai_emotion.fileio import fsync_dir, raise_write_error, temporary_name

__all__ = ["CACHE_FORMAT_VERSION", "AtomicNpyWriter", "check_format_version", "run_stem"]

#: bump when the bytes a cache holds for the same inputs and parameters change meaning
CACHE_FORMAT_VERSION = 2


class AtomicNpyWriter:
    """Stream frames into a ``.npy`` file under a temporary name; publish it with :meth:`commit`.

    Frames are appended in order with :meth:`write` (plain file writes, no memory map, so the
    written pages count as page cache, not as this process's RSS). Used as a context manager,
    an exception before :meth:`commit` deletes the temporary; a SIGKILL leaves only the hidden
    temporary, which :func:`remove_stale_temporaries` removes on the next build.
    """

    def __init__(self, final: str | os.PathLike, shape: tuple[int, ...], dtype: Any = np.float16):
        self.final = Path(final)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.frame_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self.frames_written = 0
        self.tmp = temporary_name(self.final)
        self._fh = open(self.tmp, "wb")
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        np.lib.format.write_array_header_1_0(self._fh, header)
        self.header_bytes = self._fh.tell()

    @property
    def nbytes(self) -> int:
        return self.header_bytes + self.shape[0] * self.frame_bytes

    def write(self, frames: np.ndarray) -> None:
        """Append ``frames`` of shape ``(n, *shape[1:])`` (cast to the file's dtype)."""
        frames = np.ascontiguousarray(frames, dtype=self.dtype)
        if (
            frames.shape[1:] != self.shape[1:]
            or self.frames_written + frames.shape[0] > self.shape[0]
        ):
            raise ValueError(f"frames of shape {frames.shape} do not fit file shape {self.shape}")
        try:
            self._fh.write(memoryview(frames).cast("B"))
        except OSError as exc:
            raise_write_error(exc, self.final, CacheError)
        self.frames_written += frames.shape[0]

    def commit(self) -> None:
        if self.frames_written != self.shape[0]:
            raise ValueError(f"{self.frames_written} of {self.shape[0]} frames written")
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise_write_error(exc, self.final, CacheError)
        self._fh.close()
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)

    def abort(self) -> None:
        if not self._fh.closed:
            # closing flushes the buffer, which fails again on a full disk: the temporary
            # must go all the same
            with contextlib.suppress(OSError):
                self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def __enter__(self) -> AtomicNpyWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is not None:
            self.abort()



def check_format_version(sidecar: dict[str, Any], path: Path, *, allow_older: bool) -> None:
    """Raise :class:`CacheError` for a sidecar of another cache format (older only if not allowed)."""
    version = sidecar.get("format_version")
    if version == CACHE_FORMAT_VERSION:
        return
    if allow_older and isinstance(version, int) and version < CACHE_FORMAT_VERSION:
        return
    by = sidecar.get("package_version", "an unknown version")
    raise CacheError(
        f"cache written in format {version!r} by monai-emotion {by}; this monai-emotion "
        f"reads format {CACHE_FORMAT_VERSION}",
        path,
        fix="rebuild it: call prepare_cache with the same output folder (older formats are "
        "rebuilt in place), or use a new folder; a cache from a newer monai-emotion needs "
        "that version",
    )


def run_stem(subject: str, run: int) -> str:
    """The file stem of a cached run (``sub-01_run-01``): frames, sidecar and coverage mask."""
    return f"sub-{subject}_run-{int(run):02d}"
