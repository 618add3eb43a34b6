"""The study's ``alignment`` key: functional alignment for the models over several subjects.

``"alignment": {"method": "none" | "procrustes", "parcellation": "kmeans", "parcel_voxels": 100,
"reference": null}`` (default ``none``). With ``procrustes`` every cross-subject and
unseen-subject CNN model runs the bundle with ``data#alignment`` (:mod:`monai_emotion.align`):
fitted on the runs that model neither tests nor validates (``fit_runs`` written out, so every
test set of the model, the stimulus-seen one included, uses the same transforms), towards the
first of its training subjects unless ``reference`` names one. Within-subject and leaky models
see one subject and are never aligned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from monai_emotion.align.stage import AlignmentSpec, reference_for
from monai_emotion.data.studyforrest import VOLUMES_PER_RUN

__all__ = ["ALIGNED_EXPERIMENTS", "AlignmentSettings", "alignment_overrides"]

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
