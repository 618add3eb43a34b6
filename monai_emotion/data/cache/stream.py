"""Streaming reads of 4D NIfTI runs: one sequential pass, volume by volume, with clear errors."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from monai_emotion.errors import ImageError

__all__ = ["SourceReader"]

_READ_ERRORS = (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError)



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


