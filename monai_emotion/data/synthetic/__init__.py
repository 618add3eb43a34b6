"""A synthetic studyforrest: BIDS runs, observer files, ground truth and an oracle decoder.

``timeline`` (the hidden emotion episodes and simulated observers), ``bold`` (voxels: masks,
patterns, noise, NIfTI writing), ``generate`` (:func:`make_synthetic`, the whole tree),
``layout`` (argument checks, random streams, BIDS side files), ``realistic`` (the
``preset="realistic"`` world: per-subject coverage, misalignment, HRF latency, spikes, motion,
run intensity, data types), ``stimulus`` (the shared soundtrack response and the HRF),
``oracle`` (the best decoder given the planted patterns) and ``demo`` (the bundle's demo data).
"""

from monai_emotion.data.synthetic.demo import DEMO, ensure_demo_dataset
from monai_emotion.data.synthetic.generate import (
    DEFAULT_CLASS_SHARED,
    DEFAULT_CLASS_STRENGTH,
    make_synthetic,
)
from monai_emotion.data.synthetic.oracle import oracle_decode
from monai_emotion.data.synthetic.realistic import PRESETS, REALISTIC_CLASS_STRENGTH

__all__ = [
    "DEMO",
    "DEFAULT_CLASS_SHARED",
    "DEFAULT_CLASS_STRENGTH",
    "PRESETS",
    "REALISTIC_CLASS_STRENGTH",
    "ensure_demo_dataset",
    "make_synthetic",
    "oracle_decode",
]
