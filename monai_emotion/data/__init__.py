"""Data: discovery and labels, data lists and splits, the preprocessing cache, datasets, synthetic data.

Read in the order of the data flow: ``studyforrest`` (facts, discovery), ``annotations`` and
``labels`` (the label rule), ``datalist`` (labelled items), ``splits``, ``cache/``,
``datasets``; ``synthetic/`` makes studyforrest-shaped data with known ground truth.
"""

from monai_emotion._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__, {n: n for n in (
    "annotations", "cache", "context", "datalist", "datasets", "device_frames", "labels", "splits", "studyforrest", "synthetic")})
