"""Piecewise orthogonal Procrustes: the arithmetic of functional alignment, on plain arrays.

A subject's frames ``X`` (time x voxels) are mapped towards a reference's time-locked frames
``Y`` parcel by parcel: within parcel ``p`` the orthogonal matrix ``R_p`` minimising
``||X_p R_p - Y_p||_F`` (Schönemann 1966; :func:`scipy.linalg.orthogonal_procrustes`) is
fitted, and the aligned frames are ``X_p R_p`` on the same voxels. Voxels outside every
parcel are left as they are. Written here rather than taken from fmralign because fmralign
works on NIfTI images through a masker, while the cache holds cropped float16 frame arrays:
going through it would write every fit run out as 4D NIfTI once more for the same one SVD
per parcel. The per-parcel products and SVDs are small: they run on one BLAS thread (several
threads on such matrices cost 100x on a loaded machine: 80 s instead of 0.7 s for 200 parcels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import orthogonal_procrustes
from threadpoolctl import threadpool_limits

__all__ = ["Parcellation", "PiecewiseProcrustes", "parcellate"]


@dataclass(frozen=True)
class Parcellation:
    """Parcels as flat voxel indices into a frame of ``shape``.

    Attributes
    ----------
    shape
        The frame grid ``(X, Y, Z)``.
    voxels
        Flat indices of every parcelled voxel, grouped by parcel.
    offsets
        ``voxels[offsets[p]:offsets[p + 1]]`` is parcel ``p``.
    """

    shape: tuple[int, int, int]
    voxels: np.ndarray
    offsets: np.ndarray

    @property
    def n_parcels(self) -> int:
        return len(self.offsets) - 1

    def slices(self) -> list[slice]:
        """Each parcel as a slice of :attr:`voxels` (and of arrays gathered in that order)."""
        return [slice(int(a), int(b)) for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]

    def parcels(self) -> list[np.ndarray]:
        """The flat voxel indices of each parcel."""
        return [self.voxels[s] for s in self.slices()]

    def gather(self, frames: np.ndarray) -> np.ndarray:
        """``frames`` ``(T, X, Y, Z)`` as ``(T, n_voxels)`` in parcel order (same dtype)."""
        return np.asarray(frames).reshape(len(frames), -1)[:, self.voxels]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"shape": np.asarray(self.shape), "voxels": self.voxels, "offsets": self.offsets}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Parcellation:
        return cls(tuple(int(s) for s in arrays["shape"]), np.asarray(arrays["voxels"]),
                   np.asarray(arrays["offsets"]))


def parcellate(mask: np.ndarray, parcel_voxels: int, method: str = "kmeans", seed: int = 0) -> Parcellation:
    """Cut the voxels of a 3D boolean ``mask`` into compact parcels of about ``parcel_voxels``.

    ``"kmeans"``: k-means on the voxel coordinates (mini-batch, fixed seed: the same mask gives
    the same parcels); ``"grid"``: cubes of side ``round(parcel_voxels ** (1/3))`` voxels.
    """
    coords = np.argwhere(mask)
    flat = np.ravel_multi_index(coords.T, mask.shape)
    if method == "grid":
        side = max(1, round(parcel_voxels ** (1 / 3)))
        cells = coords // side
        labels = np.unique(cells, axis=0, return_inverse=True)[1].ravel()
    elif method == "kmeans":
        from sklearn.cluster import MiniBatchKMeans

        n = max(1, int(round(len(coords) / max(1, parcel_voxels))))
        if n == 1:
            labels = np.zeros(len(coords), dtype=int)
        else:
            km = MiniBatchKMeans(n_clusters=n, random_state=seed, n_init=1, batch_size=4096, max_iter=10)
            with threadpool_limits(1):
                labels = km.fit_predict(coords.astype(np.float32))
    else:
        raise ValueError(f"unknown parcellation {method!r}: use 'kmeans' or 'grid'")
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Parcellation(tuple(int(s) for s in mask.shape), flat[order].astype(np.int64), offsets)


@dataclass
class PiecewiseProcrustes:
    """One subject's orthogonal map per parcel (``rotations[p]``: ``(v_p, v_p)`` float32)."""

    parcellation: Parcellation
    rotations: list[np.ndarray]

    @classmethod
    def fit(cls, source: np.ndarray, target: np.ndarray, parcellation: Parcellation) -> PiecewiseProcrustes:
        """Fit on time-locked frames ``source`` and ``target``, each ``(T, n_voxels)`` in parcel
        order (:meth:`Parcellation.gather`)."""
        if source.shape != target.shape or source.shape[1] != len(parcellation.voxels):
            raise ValueError(f"time-locked frames must match the parcels: {source.shape} vs {target.shape}, "
                             f"{len(parcellation.voxels)} voxels")
        rotations = []
        with threadpool_limits(1):
            for part in parcellation.slices():
                x = np.asarray(source[:, part], dtype=np.float32)
                y = np.asarray(target[:, part], dtype=np.float32)
                rotations.append(orthogonal_procrustes(x, y, check_finite=False)[0].astype(np.float32))
        return cls(parcellation, rotations)

    @classmethod
    def identity(cls, parcellation: Parcellation) -> PiecewiseProcrustes:
        return cls(parcellation, [np.eye(len(idx), dtype=np.float32) for idx in parcellation.parcels()])

    def transform(self, frames: np.ndarray, chunk: int = 64) -> np.ndarray:
        """``frames`` ``(T, X, Y, Z)`` mapped parcel by parcel (same shape and dtype)."""
        frames = np.asarray(frames)
        out = np.array(frames, copy=True)
        flat_in = frames.reshape(len(frames), -1)
        flat_out = out.reshape(len(out), -1)
        with threadpool_limits(1):
            for start in range(0, len(frames), chunk):
                block = slice(start, start + chunk)
                for idx, rot in zip(self.parcellation.parcels(), self.rotations, strict=True):
                    flat_out[block, idx] = np.asarray(flat_in[block, idx], dtype=np.float32) @ rot
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat arrays for ``np.savez`` (the parcellation and every rotation, concatenated)."""
        blocks = np.concatenate([r.ravel() for r in self.rotations]) if self.rotations else np.zeros(0, np.float32)
        return {**self.parcellation.to_arrays(), "rotations": blocks}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> PiecewiseProcrustes:
        parcellation = Parcellation.from_arrays(arrays)
        blocks, rotations, at = np.asarray(arrays["rotations"], dtype=np.float32), [], 0
        for idx in parcellation.parcels():
            size = len(idx) ** 2
            rotations.append(blocks[at:at + size].reshape(len(idx), len(idx)))
            at += size
        return cls(parcellation, rotations)
