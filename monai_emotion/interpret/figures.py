"""One PNG per emotion map: nilearn's glass brain (both signs), Agg backend, no display needed."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["plot_map"]


def plot_map(image: str | os.PathLike | nib.Nifti1Image, out: str | os.PathLike, title: str) -> Path:
    """A glass-brain figure of one saliency map, colour range symmetric about 0 (signed maps).

    Parameters
    ----------
    image
        The map NIfTI (a path or an image) on the source grid.
    out
        The PNG to write.
    title
        The figure's title.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from nilearn import plotting

    img = nib.load(image) if not isinstance(image, nib.Nifti1Image) else image
    data = np.asarray(img.dataobj, dtype=np.float32)
    peak = float(np.abs(data).max()) or 1.0
    signed = bool((data < 0).any())
    figure = plt.figure(figsize=(9, 3.2))
    plotting.plot_glass_brain(img, figure=figure, title=title, colorbar=True, plot_abs=not signed,
                              vmin=-peak if signed else 0.0, vmax=peak, cmap="RdBu_r" if signed else "hot",
                              threshold=None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return out
