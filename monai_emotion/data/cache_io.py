"""File-level pieces of the preprocessing cache: streaming NIfTI reads and crash-safe writes.

Kept apart from :mod:`monai_emotion.data.cache` so that the policy (what to compute, when to
rebuild) reads separately from the mechanics (how bytes get in and out safely).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import secrets
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from monai_emotion.errors import CacheError, ImageError, MonaiEmotionError, write_error

__all__ = [
    "CACHE_FORMAT_VERSION",
    "SourceReader",
    "AtomicNpyWriter",
    "atomic_write_text",
    "atomic_write_bytes",
    "check_format_version",
    "dumps",
    "fsync_dir",
    "source_stat",
    "file_sha256",
    "array_sha256",
    "read_json",
    "remove_stale_temporaries",
    "temporary_name",
]

#: bump when the bytes a cache holds for the same inputs and parameters change meaning
CACHE_FORMAT_VERSION = 1

_TMP_MARK = ".tmp-"
_READ_ERRORS = (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError)


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


def _raise_write_error(exc: OSError, final: Path, error: type[MonaiEmotionError]) -> None:
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
    path: str | os.PathLike, text: str, error: type[MonaiEmotionError] = CacheError
) -> None:
    """Write ``text`` so that ``path`` holds either the old content or all of the new."""
    atomic_write_bytes(path, text.encode("utf-8"), error)


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, error: type[MonaiEmotionError] = CacheError
) -> None:
    """Write ``data`` to a temporary beside ``path``, fsync, then rename it over ``path``.

    A full disk raises ``error`` (naming ``path``) after the temporary is removed.
    """
    final = Path(path)
    tmp = temporary_name(final)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError):
            _raise_write_error(exc, final, error)
        raise
    fsync_dir(final.parent)


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """Parse a JSON file the cache wrote; ``None`` when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


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
            _raise_write_error(exc, self.final, CacheError)
        self.frames_written += frames.shape[0]

    def commit(self) -> None:
        if self.frames_written != self.shape[0]:
            raise ValueError(f"{self.frames_written} of {self.shape[0]} frames written")
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            _raise_write_error(exc, self.final, CacheError)
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


class SourceReader:
    """Read a 4D NIfTI run volume by volume, strictly in time order, from one open stream.

    NIfTI stores x fastest and time slowest, so each volume is one contiguous byte range and
    reading volumes in order is one sequential pass over the (gzip) stream: no seek ever goes
    backwards, which for ``.nii.gz`` would mean decompressing from the start again. The read
    buffer is reused between chunks: consume each chunk before asking for the next.

    Parameters
    ----------
    path
        The run (``.nii`` or ``.nii.gz``).
    nonfinite
        ``"error"``: NaN/Inf anywhere in a volume raises :class:`ImageError` naming the file
        and the volume; ``"zero"``: replaced by 0 and counted in :attr:`n_nonfinite`.
    """

    def __init__(self, path: str | os.PathLike, nonfinite: str = "error"):
        self.path = Path(path)
        if nonfinite not in ("error", "zero"):
            raise ValueError("nonfinite must be 'error' or 'zero'")
        self.nonfinite = nonfinite
        self.n_nonfinite = 0
        try:
            img = nib.load(str(self.path))
        except Exception as exc:  # nibabel raises many types for broken files
            raise ImageError(
                f"cannot read as NIfTI ({type(exc).__name__}: {exc})",
                self.path,
                fix="check that the file is a complete .nii/.nii.gz",
            ) from None
        if len(img.shape) != 4:
            raise ImageError(
                f"expected a 4D time series, found shape {img.shape}",
                self.path,
                fix="give the 4D BOLD run (x, y, z, time)",
            )
        self.img = img
        self.shape = tuple(int(s) for s in img.shape[:3])
        self.n_volumes = int(img.shape[3])
        self.affine = np.asarray(img.affine, dtype=float)
        self.zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        self.dtype = img.header.get_data_dtype()
        proxy = img.dataobj
        self.offset = int(proxy.offset)
        self.slope = float(proxy.slope)
        self.inter = float(proxy.inter)
        self.voxels = int(np.prod(self.shape))
        self.volume_bytes = self.voxels * self.dtype.itemsize

    def chunks(
        self, chunk: int = 16, stop: int | None = None, *, raw: bool = False
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(t0, volumes)``, ``volumes`` of shape ``(n, X, Y, Z)``.

        ``raw=False``: float32, scaled, checked for NaN/Inf. ``raw=True``: the stored dtype,
        unscaled and unchecked; the caller applies :meth:`scale` and :meth:`check_finite` to
        what it keeps (cheaper when it keeps only the voxels inside a mask).
        """
        stop = self.n_volumes if stop is None else min(int(stop), self.n_volumes)
        chunk = max(1, min(int(chunk), max(stop, 1)))
        buf = bytearray(chunk * self.volume_bytes)
        nx, ny, nz = self.shape
        convert = not raw and (self.needs_scaling or self.dtype != np.dtype("<f4"))
        # reused: fresh multi-MB arrays per chunk cost a page fault per 4 kB
        fbuf = np.empty((chunk, nz, ny, nx), dtype=np.float32) if convert else None
        try:
            with _open_stream(self.path) as fh:
                self._fill(fh, memoryview(bytearray(self.offset)), 0)  # header and extensions
                for t0 in range(0, stop, chunk):
                    n = min(chunk, stop - t0)
                    view = memoryview(buf)[: n * self.volume_bytes]
                    self._fill(fh, view, t0)
                    vols = np.frombuffer(view, dtype=self.dtype).reshape(n, nz, ny, nx)
                    if convert:
                        out = fbuf[:n]
                        np.copyto(out, vols, casting="unsafe")
                        vols = self.scale(out)
                    vols = vols.transpose(0, 3, 2, 1)  # (n, X, Y, Z) view of F-ordered volumes
                    if not raw:
                        self.check_finite(vols, t0)
                    yield t0, vols
                if stop == self.n_volumes:
                    fh.readinto(bytearray(1))  # lets zlib reach the gzip trailer and check its CRC
        except _READ_ERRORS as exc:
            if isinstance(exc, ImageError):
                raise
            raise ImageError(
                f"cannot read the voxel data ({type(exc).__name__}: {exc})",
                self.path,
                fix="the file is corrupt or truncated: copy it again from the dataset",
            ) from None

    @property
    def needs_scaling(self) -> bool:
        return self.slope != 1.0 or self.inter != 0.0

    def scale(self, values: np.ndarray) -> np.ndarray:
        """Apply the header's ``scl_slope``/``scl_inter`` in place to float32 ``values``."""
        if self.slope != 1.0:
            values *= np.float32(self.slope)
        if self.inter != 0.0:
            values += np.float32(self.inter)
        return values

    def _fill(self, fh: Any, view: memoryview, t0: int) -> None:
        got = 0
        while got < len(view):
            n = fh.readinto(view[got:])
            if not n:
                missing_from = t0 + got // self.volume_bytes
                raise ImageError(
                    f"data end early: volume {missing_from} of {self.n_volumes} is missing",
                    self.path,
                    where=f"volume {missing_from}",
                    fix="the file is truncated: copy it again from the dataset",
                )
            got += n

    def check_finite(self, vols: np.ndarray, t0: int, columns: np.ndarray | None = None) -> None:
        """NaN/Inf in ``vols`` (n, ...): raise, or zero them under ``nonfinite='zero'``.

        ``columns``: for gathered rows ``(n, k)``, each column's flat (Fortran-order) index in
        the source volume, so that an error names the source voxel.
        """
        self._check_finite(vols, t0, columns)

    def _check_finite(self, vols: np.ndarray, t0: int, columns: np.ndarray | None = None) -> None:
        if vols.dtype.kind != "f":
            return
        finite = np.isfinite(vols)
        if finite.all():
            return
        bad = ~finite
        if self.nonfinite == "zero":
            if not vols.flags.writeable:
                raise ImageError("cannot clean read-only volumes", self.path)
            self.n_nonfinite += int(bad.sum())
            vols[bad] = 0.0
            return
        first = [int(i[0]) for i in np.nonzero(bad)]
        t_rel, voxel = first[0], tuple(first[1:])
        count = int(bad[t_rel].sum())
        if columns is not None:
            voxel = tuple(
                int(i) for i in np.unravel_index(columns[voxel[0]], self.shape, order="F")
            )
        where = f"voxel {voxel}"
        raise ImageError(
            f"{count} NaN/Inf voxel(s) in volume {t0 + t_rel} (first at {where})",
            self.path,
            where=f"volume {t0 + t_rel}",
            fix="repair or exclude the run, or pass nonfinite='zero' to replace them by 0 "
            "(recorded in the cache sidecar)",
        )


class _GzipStream:
    """Sequential gzip reader with 1 MB input reads.

    Same bytes as ``gzip.open`` (multi-member files included, CRC checked by zlib at each
    member's end) with far fewer Python-level calls: the stdlib reader decompresses in
    8-128 kB steps, which costs seconds over a 2 GB run.
    """

    _BLOCK = 1 << 20

    def __init__(self, path: str | os.PathLike):
        self._file = open(path, "rb")
        self._zlib = zlib.decompressobj(31)
        self._pending = b""

    def readinto(self, view: memoryview) -> int:
        filled, total = 0, len(view)
        while filled < total:
            if not self._pending:
                self._pending = self._file.read(self._BLOCK)
                if not self._pending:
                    break
            out = self._zlib.decompress(self._pending, total - filled)
            view[filled : filled + len(out)] = out
            filled += len(out)
            if self._zlib.eof:
                rest = self._zlib.unused_data
                if not rest.strip(b"\x00"):
                    rest = self._file.read(self._BLOCK)
                    if not rest.strip(b"\x00"):
                        self._pending = b""
                        break  # end of file (trailing zero padding is allowed, as in gzip)
                self._zlib = zlib.decompressobj(31)  # next gzip member
                self._pending = rest
            else:
                self._pending = self._zlib.unconsumed_tail
        return filled

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> _GzipStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_stream(path: Path) -> Any:
    if path.name.endswith(".gz"):
        return _GzipStream(path)
    if path.name.endswith(".nii"):
        return open(path, "rb", buffering=0)
    return ImageOpener(str(path), "rb")


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


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"
