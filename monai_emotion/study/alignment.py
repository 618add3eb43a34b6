"""The study's ``alignment`` key: functional alignment for the models over several subjects.

``"alignment": {"method": "none" | "procrustes", "parcellation": "kmeans", "parcel_voxels": 100,
"reference": null}`` (default ``none``). With ``procrustes`` every cross-subject and
unseen-subject CNN model runs the bundle with ``data#alignment`` (:mod:`monai_emotion.align`):
fitted on the runs that model neither tests nor validates (``fit_runs`` written out, so every
test set of the model, the stimulus-seen one included, uses the same transforms), towards the
first of its training subjects unless ``reference`` names one. Within-subject and leaky models
see one subject and are never aligned. The linear baseline of the same models reads the same
aligned frames (:class:`LinearAligner`, given to :class:`~monai_emotion.study.features.DataViews`):
the aligned cache is derived from the group cache with the CNN's settings, so the digest, the
transforms and the aligned runs are the CNN's (fitted once, whichever decoder runs first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from monai_emotion.align.stage import AlignmentSpec, align_cache, reference_for
from monai_emotion.data.cache.index import CachedRun, CacheIndex
from monai_emotion.data.studyforrest import VOLUMES_PER_RUN
from monai_emotion.fileio import read_json

__all__ = ["ALIGNED_EXPERIMENTS", "AlignmentSettings", "LinearAligner", "alignment_overrides"]

#: the experiments whose models see several subjects (the ones alignment applies to)
ALIGNED_EXPERIMENTS: tuple[str, ...] = ("cross", "unseen")


@dataclass(frozen=True)
class AlignmentSettings:
    """``alignment``: the bundle's ``data#alignment`` for cross- and unseen-subject models."""

    # the defaults are the bundle's (AlignmentSpec), written once there
    method: str = AlignmentSpec.method
    parcellation: str = AlignmentSpec.parcellation
    parcel_voxels: int = AlignmentSpec.parcel_voxels
    reference: str | None = AlignmentSpec.reference

    def __post_init__(self) -> None:
        AlignmentSpec(**asdict(self))  # the bundle's checks, with the bundle's messages

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def alignment_overrides(settings: AlignmentSettings, spec: Any) -> dict[str, Any]:
    """``data#alignment`` for model ``spec`` (a :class:`~monai_emotion.study.plan.ModelSpec`); ``{}`` when none.

    Empty for ``method: none`` and for single-subject models, so their overrides (and the
    digests of finished models) stay what they were without the key.
    """
    if settings.method == "none" or spec.experiment not in ALIGNED_EXPERIMENTS:
        return {}
    split = dict(spec.split)
    held = {int(r) for r in list(split.get("validate_runs") or []) + list(split.get("test_runs") or [])}
    fit_runs = [r for r in range(1, len(VOLUMES_PER_RUN) + 1) if r not in held]
    reference = reference_for(AlignmentSpec(**asdict(settings)), split, sorted(spec.subjects))
    return {"data#alignment": {**settings.to_dict(), "reference": reference, "fit_runs": fit_runs}}


class LinearAligner:
    """Aligned frame paths for the linear baseline's models, the CNN's aligned cache of each.

    Parameters
    ----------
    settings
        The study's ``alignment``.
    experiment
        The bundle's ``experiment`` over every subject (the group grid's cached runs).
    """

    def __init__(self, settings: AlignmentSettings, experiment: Mapping[str, Any]) -> None:
        self.settings = settings
        paths = sorted({str(i["image"]) for i in experiment["train"]})
        self._runs = [CachedRun.from_sidecar(Path(p).with_suffix(".json"), read_json(Path(p).with_suffix(".json")))
                      for p in paths]
        self._maps: dict[str, dict[str, str]] = {}

    def __call__(self, spec: Any) -> dict[str, str] | None:
        """Group-grid run path -> aligned run path for model ``spec``; ``None`` when it is not aligned."""
        from monai_emotion.experiment import resolved_gap

        overrides = alignment_overrides(self.settings, spec)
        if not overrides:
            return None
        alignment = overrides["data#alignment"]
        key = repr((sorted(spec.subjects), alignment, spec.split))  # permutations share their model's frames
        if key not in self._maps:
            runs = [r for r in self._runs if r.subject in set(spec.subjects)]
            index = CacheIndex(Path(runs[0].path).parent, runs)
            aligned, _ = align_cache(index, alignment, spec.split, resolved_gap(spec.split, spec.lag))
            self._maps[key] = {index[k].path: aligned[k].path for k in index}
        return self._maps[key]
