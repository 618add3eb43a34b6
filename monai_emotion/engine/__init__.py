"""Ignite engines' companions: metric handlers, the training recipe, prediction writers,
checkpoints and resume.

The engines themselves are MONAI's (``SupervisedTrainer``, ``SupervisedEvaluator``), built by
the bundle configs; this package holds what the configs attach to them.
"""

from monai_emotion._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__, {n: n for n in ("checkpoints", "handlers", "losses", "recipe", "regression", "resume", "speed", "writers")})
