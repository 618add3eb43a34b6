"""Interpretability: per-emotion saliency maps in the source image space (``configs/saliency.json``).

``saliency`` (attributions per batch, summed per emotion and subject), ``maps`` (back to the
source grid through the model's contract), ``figures`` (a PNG per map), ``truth`` (correlation
with the synthetic data's planted patterns), ``run`` (what the bundle config calls).
"""

from monai_emotion._lazy import lazy_getattr

__all__ = ["METHODS", "VOLUMES", "DEFAULT_METHOD"]

#: the attribution methods (``interpret#method``; :mod:`monai_emotion.interpret.saliency`)
METHODS: tuple[str, ...] = ("gradcam", "occlusion", "integrated_gradients")
#: which held-out volumes feed the maps (``interpret#volumes``)
VOLUMES: tuple[str, ...] = ("correct", "all")
#: chosen from the measurements of docs/saliency.md
DEFAULT_METHOD = "integrated_gradients"

__getattr__ = lazy_getattr(__name__, {n: n for n in ("figures", "maps", "run", "saliency", "truth")})

