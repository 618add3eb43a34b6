"""Interpretability: per-emotion saliency maps in the source image space (``configs/saliency.json``).

``saliency`` (attributions per batch, summed per emotion and subject), ``maps`` (back to the
source grid through the model's contract), ``figures`` (a PNG per map), ``truth`` (correlation
with the synthetic data's planted patterns), ``run`` (what the bundle config calls).
"""

from monai_emotion._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__, {n: n for n in ("figures", "maps", "run", "saliency", "truth")})

