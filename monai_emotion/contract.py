"""The preprocessing contract: what a trained model needs to see its inputs as it saw them in training.

Training writes, beside ``model.pt``:

``contract.json``
    the image space, the source grid (shape and affine), the crop box and downsampling, the
    preprocessing spec, the label rule, the class names, the stored grid, the network's
    full definition (``_target_`` and arguments), the temporal context (volumes per
    sample, as channels; contracts written before it read as 1) and, for a model trained with
    ``data#alignment``, the alignment (method, settings, reference subject, fit runs);
``mask.nii.gz``
    the training mask on the source grid;
``alignment/``
    aligned models only: the parcels and the reference's fit frames a new subject is aligned
    to (:mod:`monai_emotion.align.model`).

Evaluation checks its data against the contract; inference applies it: a new subject's runs
are cached through exactly this mask and crop (its voxel *i* is the training's voxel *i*),
voxels outside the subject's own coverage are zero-filled and the covered fraction is
reported per run; a run on another grid is refused with the file named. This module is the
one writer and reader of both files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monai_emotion import __version__
from monai_emotion.align.model import ALIGNMENT_DIR, save_alignment
from monai_emotion.data.cache.spec import PreprocessingSpec
from monai_emotion.data.labels import LabelRule
from monai_emotion.errors import ConfigError, ImageError
from monai_emotion.fileio import (
    atomic_write_bytes,
    atomic_write_json,
    file_sha256,
    json_digest,
    load_json,
    read_json,
)

__all__ = [
    "trained_temporal_context",
    "CONTRACT_FILE",
    "MASK_FILE",
    "Contract",
    "save_contract",
    "load_contract",
    "network_from_contract",
    "check_experiment",
    "check_source_grid",
]

CONTRACT_FILE = "contract.json"
MASK_FILE = "mask.nii.gz"
#: bump when a field changes meaning
CONTRACT_VERSION = 1


@dataclass(frozen=True)
class Contract:
    """The record :func:`save_contract` writes (all fields JSON-ready)."""

    space: str
    source_shape: tuple[int, int, int]
    source_affine: tuple[tuple[float, ...], ...]
    crop: Mapping[str, Any]
    spatial_shape: tuple[int, int, int]
    grid_affine: tuple[tuple[float, ...], ...]
    preprocessing: Mapping[str, Any]
    label_rule: Mapping[str, Any]
    classes: tuple[str, ...]
    network: Mapping[str, Any]
    mask_sha256: str
    trained_on: Mapping[str, Any]
    package_version: str = __version__
    format_version: int = CONTRACT_VERSION
    #: consecutive volumes per sample (:func:`~monai_emotion.data.context.context_frames`)
    temporal_context: int = 1
    #: names of a multi-task model's outputs after the K logits (``network_def#dimensions``)
    dimensions: tuple[str, ...] = ()
    #: functional alignment (:func:`monai_emotion.align.model.save_alignment`); ``None``: none
    alignment: Mapping[str, Any] | None = None

    @property
    def dimension_names(self) -> tuple[str, ...]:
        """The outputs after the K logits: the recorded names (contracts without them: the first D of
        :data:`~monai_emotion.data.dimensions.DIMENSIONS`); ``()`` for a classes-only model."""
        from monai_emotion.data.dimensions import DIMENSIONS

        count = int(self.network.get("dimensions") or 0)
        if len(self.dimensions) == count:
            return tuple(self.dimensions)
        return DIMENSIONS[:count] if count <= len(DIMENSIONS) else tuple(f"dimension_{k}" for k in range(count))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["alignment"] is None:  # unaligned contracts (and their digests) stay as they were
            del out["alignment"]
        return out

    def digest(self) -> str:
        return json_digest(self.to_dict())

    def inference_spec(self, ckpt_dir: str | os.PathLike) -> PreprocessingSpec:
        """The training preprocessing with the training mask given explicitly (no mask recomputed)."""
        return PreprocessingSpec.from_dict(self.preprocessing, mask=str(Path(ckpt_dir) / MASK_FILE))


def _unwrap(network: Any) -> Any:
    return getattr(network, "module", network)  # DistributedDataParallel keeps the model in .module


def save_contract(ckpt_dir: str | os.PathLike, experiment: Mapping[str, Any], network: Any,
                  temporal_context: int | None = None) -> Path:
    """Write ``contract.json`` and ``mask.nii.gz`` into ``ckpt_dir`` (rank 0 only under DDP).

    Parameters
    ----------
    ckpt_dir
        The model folder (where ``model.pt`` goes).
    experiment
        What :func:`~monai_emotion.experiment.prepare_experiment` returned.
    network
        The network being trained, built by :func:`~monai_emotion.networks.build_network`
        (which records its definition).
    temporal_context
        The config's ``temporal_context`` (default: the network's ``in_channels``).

    Raises
    ------
    ConfigError
        The network carries no definition, its input channels are not the temporal context,
        or the experiment's runs do not share one grid.
    """
    from monai_emotion.runtime import is_rank0

    folder = Path(ckpt_dir)
    definition = getattr(_unwrap(network), "definition", None)
    if not isinstance(definition, Mapping):
        raise ConfigError(
            f"the network ({type(_unwrap(network)).__name__}) carries no definition to save for inference",
            where="config 'network_def'",
            fix="build it with _target_ monai_emotion.networks.build_network (name: a registered network "
            "or a dotted class path, then its keywords)",
        )
    context = _temporal_context(definition, temporal_context)
    sidecars = _sidecars(experiment)
    first = sidecars[0]
    if not is_rank0():
        return folder / CONTRACT_FILE
    folder.mkdir(parents=True, exist_ok=True)
    mask_source = Path(first["mask"]["path"])
    atomic_write_bytes(folder / MASK_FILE, mask_source.read_bytes(), ConfigError)
    spec: PreprocessingSpec = experiment["preprocessing"]
    rule: LabelRule = experiment["label_rule"]
    contract = Contract(
        space=str(experiment["space"]),
        source_shape=tuple(int(s) for s in first["source"]["shape"]),
        source_affine=tuple(tuple(float(v) for v in row) for row in first["source"]["affine"]),
        crop=dict(first["crop"]),
        spatial_shape=tuple(int(s) for s in experiment["spatial_shape"]),
        grid_affine=tuple(tuple(float(v) for v in row) for row in first["affine"]),
        preprocessing=spec.to_dict(),
        label_rule=rule.to_dict(),
        classes=tuple(str(c) for c in experiment["classes"]),
        network=dict(definition),
        mask_sha256=file_sha256(folder / MASK_FILE),
        trained_on={"dataset_dir": str(experiment["dataset_dir"]),
                    "subjects": sorted({str(s["subject"]) for s in sidecars})},
        temporal_context=context,
        dimensions=tuple(str(n) for n in experiment.get("dimensions") or ()),
        alignment=save_alignment(folder, experiment.get("alignment")),
    )
    return atomic_write_json(folder / CONTRACT_FILE, contract.to_dict(), ConfigError)


def _temporal_context(definition: Mapping[str, Any], given: int | None) -> int:
    """The volumes per sample the model reads: the config's value, which must be its input channels."""
    from monai_emotion.data.context import check_temporal_context

    channels = int(definition.get("in_channels", 1))
    context = check_temporal_context(channels if given is None else given)
    if context != channels:
        raise ConfigError(f"temporal_context {context} but the network takes {channels} input channel(s)",
                          where="config 'network_def#in_channels'",
                          fix="leave network_def#in_channels at '@temporal_context' (one channel per volume)")
    return context


def _sidecars(experiment: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The cache sidecars of every run the experiment uses; they must share one mask and crop."""
    paths = sorted({item["image"] for part in ("train", "validate", "test") for item in experiment[part]})
    sidecars = []
    for path in paths:
        meta = read_json(Path(path).with_suffix(".json"))
        if meta is None:
            raise ConfigError("a cached run has no readable sidecar", path, fix="rebuild the cache")
        sidecars.append(meta)
    crops = {(str(m["crop"]), m["mask"]["sha256"]) for m in sidecars}
    if len(crops) > 1:
        subjects = sorted({m["subject"] for m in sidecars})
        raise ConfigError(
            f"the runs of subjects {subjects} were cached on {len(crops)} different grids; one model needs one",
            where="config 'data#preprocessing'",
            fix="set data#preprocessing#mask_strategy to 'group' (the default) or give one mask for all",
        )
    return sidecars


def trained_temporal_context(ckpt_dir: str | os.PathLike, default: int = 1) -> int:
    """The ``temporal_context`` a saved model was trained with, for evaluating it.

    Read from its contract; ``default`` when there is none yet, so that a bare checkpoint
    still reaches the checks that explain what is wrong with it (``check_experiment``).
    """
    if not (Path(ckpt_dir) / CONTRACT_FILE).is_file():
        return int(default)
    return int(load_contract(ckpt_dir).temporal_context)


def load_contract(ckpt_dir: str | os.PathLike) -> Contract:
    """Read the contract training wrote beside ``model.pt``."""
    path = Path(ckpt_dir) / CONTRACT_FILE
    fix = "train the bundle first (training writes contract.json beside model.pt), or pass the right --ckpt_dir"
    data = load_json(path, ConfigError, fix=fix)
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != CONTRACT_VERSION:
        raise ConfigError(f"contract format {version!r}; this monai-emotion reads {CONTRACT_VERSION}", path,
                          fix="retrain with this version of monai-emotion")
    if not (Path(ckpt_dir) / MASK_FILE).is_file():
        raise ConfigError("the training mask is missing beside the contract", Path(ckpt_dir) / MASK_FILE, fix=fix)
    data = dict(data)
    for key in ("source_shape", "spatial_shape", "classes"):
        data[key] = tuple(data[key])
    data["dimensions"] = tuple(data.get("dimensions") or ())  # absent from classes-only contracts before it
    for key in ("source_affine", "grid_affine"):
        data[key] = tuple(tuple(row) for row in data[key])
    return Contract(**data)


def network_from_contract(ckpt_dir: str | os.PathLike) -> Any:
    """The untrained network of the contract (load ``model.pt`` into it)."""
    from monai.utils import instantiate

    definition = dict(load_contract(ckpt_dir).network)
    target = definition.pop("_target_")
    return instantiate(target, "default", **definition)


def check_experiment(experiment: Mapping[str, Any], ckpt_dir: str | os.PathLike) -> None:
    """Refuse to evaluate a model on data prepared otherwise than its training data."""
    contract = load_contract(ckpt_dir)
    where = Path(ckpt_dir) / CONTRACT_FILE
    first = _sidecars(experiment)[0]
    differences = []
    if tuple(experiment["spatial_shape"]) != contract.spatial_shape:
        differences.append(f"grid {tuple(experiment['spatial_shape'])} vs {contract.spatial_shape}")
    if dict(first["crop"]) != dict(contract.crop):
        differences.append(f"crop {first['crop']} vs {dict(contract.crop)}")
    if experiment["preprocessing"].to_dict() != dict(contract.preprocessing):
        differences.append("preprocessing settings")
    if tuple(experiment["classes"]) != contract.classes:
        differences.append(f"classes {list(experiment['classes'])} vs {list(contract.classes)}")
    if differences:
        raise ConfigError(
            "the evaluation data are not prepared as the model's training data: " + "; ".join(differences),
            where,
            fix="evaluate with the training's data#preprocessing and dataset, or use the inference config "
            "(which applies the contract to any input)",
        )


def check_source_grid(contract: Contract, runs: Sequence[Any], names: Mapping[str, str] | None = None) -> None:
    """Each run must be on the training's source grid (shape and affine), else a clear error.

    ``names`` maps a run's path to the path to show (the user's file behind a staged link).
    """
    affine = np.asarray(contract.source_affine, dtype=float)
    for run in runs:
        shape = tuple(int(s) for s in run.shape[:3])
        if shape != contract.source_shape or not np.allclose(np.asarray(run.affine, dtype=float), affine,
                                                             atol=1e-3):
            what = ("shape " + f"{shape} vs {contract.source_shape}") if shape != contract.source_shape else "affine"
            raise ImageError(
                f"this run is not on the model's training grid ({what}; space '{contract.space}')",
                (names or {}).get(str(run.path), run.path),
                fix="resample it into the training space first, e.g. nilearn.image.resample_to_img(run, "
                "models/mask.nii.gz), or give the run of the training's space",
            )


def copy_contract(ckpt_dir: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy the contract files (and an aligned model's ``alignment/``) into another model folder."""
    for name in (CONTRACT_FILE, MASK_FILE):
        shutil.copy2(Path(ckpt_dir) / name, Path(dest) / name)
    if (Path(ckpt_dir) / ALIGNMENT_DIR).is_dir():  # a new subject's fit needs it: the export stays self-contained
        shutil.copytree(Path(ckpt_dir) / ALIGNMENT_DIR, Path(dest) / ALIGNMENT_DIR, dirs_exist_ok=True)
