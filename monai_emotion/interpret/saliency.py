"""Attributions of a trained network per held-out volume, summed per emotion (and subject).

Three methods, named by the ``method`` key of ``configs/saliency.json``:

``gradcam``
    MONAI's :class:`monai.visualize.GradCAM` on the encoder's last layer (ReLU of the gradient-
    weighted feature maps, trilinearly up-sampled to the input, each volume scaled to [0, 1]):
    one forward and one backward pass per volume and class; never negative.
``occlusion``
    MONAI's :class:`monai.visualize.OcclusionSensitivity`: the drop of the class logit when a
    patch around each voxel is occluded (MONAI's Gaussian occlusion, ``mask_size`` voxels,
    ``overlap``); signed; hundreds of forward passes per volume.
``integrated_gradients``
    Captum's ``IntegratedGradients`` from an all-zero baseline (zero is each voxel's run mean in
    the z-scored cache, and the value outside the mask): the class logit's gradient integrated
    along the straight path, times the input; signed; ``n_steps`` forward and backward passes per
    volume. Needs the ``interpret`` extra (``pip install -e ".[interpret]"``).

Each volume is explained for its *true* class; the map of an emotion is the mean over its
selected volumes (``"correct"``: those the network classifies correctly; ``"all"``).
docs/saliency.md measures the methods against the planted patterns of the synthetic data.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from monai_emotion.errors import ConfigError
from monai_emotion.interpret import DEFAULT_METHOD, METHODS, VOLUMES

__all__ = ["METHODS", "VOLUMES", "DEFAULT_METHOD", "SaliencySettings", "SaliencySums", "make_attributor",
           "attribute_batches"]


#: keys of the config's ``interpret`` section that belong to the run, not to the method
RUN_KEYS: tuple[str, ...] = ("split", "output_dir", "figures", "progress")

Attributor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SaliencySettings:
    """What ``configs/saliency.json``'s ``interpret`` section holds (validated once).

    Parameters
    ----------
    method
        One of :data:`METHODS`.
    volumes
        One of :data:`VOLUMES`: the correctly classified held-out volumes, or all of them.
    layer
        GradCAM's target layer (a module name; default: the last module of the network's ``encoder``).
    n_steps
        Integrated gradients: points on the path from the baseline to the input.
    mask_size, overlap
        Occlusion: the occluding patch (voxels per axis, clipped to the grid) and the patches' overlap.
    max_volumes
        Explain at most the first this many selected volumes in loader order (``None``: all): for timing.
    """

    method: str = DEFAULT_METHOD
    volumes: str = "correct"
    layer: str | None = None
    n_steps: int = 16
    mask_size: int = 4
    overlap: float = 0.5
    max_volumes: int | None = None

    def __post_init__(self) -> None:
        where = "config 'interpret'"
        if self.method not in METHODS:
            raise ConfigError(f"unknown saliency method {self.method!r}", where=where + "#method",
                              fix=f"use one of {list(METHODS)}")
        if self.volumes not in VOLUMES:
            raise ConfigError(f"interpret#volumes={self.volumes!r}", where=where, fix=f"use one of {list(VOLUMES)}")
        for name in ("n_steps", "mask_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"interpret#{name}={value!r} must be a positive integer", where=where)
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ConfigError(f"interpret#overlap={self.overlap!r} must lie in [0, 1)", where=where)
        if self.max_volumes is not None and int(self.max_volumes) < 1:
            raise ConfigError(f"interpret#max_volumes={self.max_volumes!r} must be >= 1 or null", where=where)

    @classmethod
    def from_dict(cls, given: Mapping[str, Any], others: Sequence[str] = RUN_KEYS) -> SaliencySettings:
        """Settings from the config's ``interpret`` mapping; a key neither a setting nor in ``others`` is an error."""
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(given) - names - set(others))
        if unknown:
            raise ConfigError(f"unknown interpret key(s) {unknown}", where="config 'interpret'",
                              fix=f"use only {sorted(names | set(others))}")
        return cls(**{k: v for k, v in dict(given).items() if k in names})


def _default_layer(network: nn.Module) -> str:
    encoder = getattr(network, "encoder", None)
    if isinstance(encoder, nn.Sequential) and len(encoder):
        return f"encoder.{len(encoder) - 1}"
    raise ConfigError(f"{type(network).__name__} has no 'encoder' whose last layer GradCAM could use",
                      where="config 'interpret#layer'",
                      fix="name the target layer (a name from network.named_modules()) in interpret#layer")


def _gradcam(network: nn.Module, settings: SaliencySettings) -> Attributor:
    from monai.visualize import GradCAM

    layer = settings.layer or _default_layer(network)
    if layer not in dict(network.named_modules()):
        raise ConfigError(f"GradCAM layer {layer!r} is not a module of the network", where="config 'interpret#layer'",
                          fix="use a name from network.named_modules(), e.g. 'encoder.10'")
    cam = GradCAM(nn_module=network, target_layers=layer)

    def attribute(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape[0], *x.shape[2:], dtype=torch.float32)
        for c in labels.unique().tolist():  # one class per call: GradCAM takes one class index
            rows = (labels == c).nonzero().flatten()
            out[rows] = cam(x[rows], class_idx=int(c))[:, 0].detach().float().cpu()
        return out

    return attribute


def _occlusion(network: nn.Module, settings: SaliencySettings) -> Attributor:
    from monai.visualize import OcclusionSensitivity

    def attribute(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        size = [min(settings.mask_size, s) for s in x.shape[2:]]
        occ = OcclusionSensitivity(network, mask_size=size, n_batch=32, verbose=False,
                                   overlap=float(settings.overlap), activate=False)
        out = torch.empty(x.shape[0], *x.shape[2:], dtype=torch.float32)
        for i in range(x.shape[0]):  # MONAI's occlusion takes one volume at a time
            with torch.no_grad(), warnings.catch_warnings():
                # MONAI 1.6 indexes with lists, which torch warns about on every patch
                warnings.filterwarnings("ignore", "Using a non-tuple sequence", UserWarning)
                logit = network(x[i:i + 1])[0, int(labels[i])]
                occluded = occ(x[i:i + 1])[0][0, int(labels[i])]  # (B, classes, X, Y, Z)
            out[i] = (logit - occluded).float().cpu()  # > 0: occluding here lowers the class logit
        return out

    return attribute


def _integrated_gradients(network: nn.Module, settings: SaliencySettings) -> Attributor:
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        raise ConfigError("method 'integrated_gradients' needs Captum, which is not installed",
                          where="config 'interpret#method'",
                          fix='pip install -e ".[interpret]" (or pip install captum), or choose method '
                          "'gradcam' or 'occlusion'") from None
    ig = IntegratedGradients(network)

    def attribute(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        attributions = ig.attribute(x, baselines=torch.zeros_like(x), target=labels.tolist(),
                                    n_steps=settings.n_steps, internal_batch_size=max(1, x.shape[0]) * 4)
        return attributions[:, 0].detach().float().cpu()

    return attribute


_FACTORIES: dict[str, Callable[[nn.Module, SaliencySettings], Attributor]] = {
    "gradcam": _gradcam, "occlusion": _occlusion, "integrated_gradients": _integrated_gradients}


def make_attributor(network: nn.Module, settings: SaliencySettings) -> Attributor:
    """``attribute(x (B, 1, X, Y, Z), labels (B,)) -> (B, X, Y, Z)`` maps for each volume's class."""
    return _FACTORIES[settings.method](network, settings)


@dataclass
class SaliencySums:
    """Attribution sums and volume counts per (subject, class) on the model's stored grid.

    ``seen``/``correct`` count the held-out volumes and how many the network got right;
    ``seconds`` is the attribution time (forward passes for the selection included).
    """

    classes: tuple[str, ...]
    shape: tuple[int, ...]
    sums: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    counts: dict[tuple[str, int], int] = field(default_factory=dict)
    seen: int = 0
    correct: int = 0
    seconds: float = 0.0

    def add(self, maps: np.ndarray, labels: Sequence[int], subjects: Sequence[str]) -> None:
        for m, c, s in zip(maps, labels, subjects, strict=True):
            key = (str(s), int(c))
            if key not in self.sums:
                self.sums[key] = np.zeros(self.shape, dtype=np.float64)
                self.counts[key] = 0
            self.sums[key] += m
            self.counts[key] += 1

    @property
    def subjects(self) -> list[str]:
        return sorted({s for s, _ in self.sums})

    def mean(self, k: int, subject: str | None = None) -> tuple[np.ndarray, int]:
        """The mean map of class ``k`` (over every subject's volumes, or one subject's) and its count."""
        keys = [key for key in self.sums if key[1] == k and (subject is None or key[0] == subject)]
        n = sum(self.counts[key] for key in keys)
        total = sum((self.sums[key] for key in keys), np.zeros(self.shape, dtype=np.float64))
        return (total / n if n else total).astype(np.float32), n


def _subjects(batch: Mapping[str, Any], n: int) -> list[str]:
    subjects = batch.get("subject")
    if subjects is None:
        return ["all"] * n
    return [str(s) for s in (subjects.tolist() if hasattr(subjects, "tolist") else subjects)]


def attribute_batches(
    network: nn.Module, batches: Iterable[Mapping[str, Any]], classes: Sequence[str], settings: SaliencySettings,
    device: torch.device | str = "cpu", progress: bool = True, total: int | None = None,
) -> SaliencySums:
    """Explain every selected volume of ``batches`` for its true class and sum the maps.

    Parameters
    ----------
    network
        The trained network (logits ``(B, K)``); put in eval mode here.
    batches
        Dicts with ``image`` ``(B, 1, X, Y, Z)``, ``label`` ``(B,)`` and ``subject`` (the
        bundle's data loader).
    classes
        Class names in label order.
    settings
        Method and selection.
    device
        Where the network runs.
    progress, total
        A tqdm bar over volumes (``total``: how many the batches hold).

    Returns
    -------
    SaliencySums
    """
    network = network.to(device).eval()
    attribute = make_attributor(network, settings)
    sums: SaliencySums | None = None
    started = time.perf_counter()
    bar = tqdm(total=total, desc=f"saliency ({settings.method})", unit="vol", disable=not progress)
    for batch in batches:
        x = torch.as_tensor(batch["image"]).float().to(device)
        labels = torch.as_tensor(batch["label"]).long().flatten().to(device)
        if sums is None:
            sums = SaliencySums(tuple(classes), tuple(x.shape[2:]))
        with torch.no_grad():
            predicted = network(x).argmax(dim=1)
        keep = (predicted == labels) if settings.volumes == "correct" else torch.ones_like(labels, dtype=torch.bool)
        keep &= (labels >= 0) & (labels < len(classes))
        sums.seen += int(x.shape[0])
        sums.correct += int((predicted == labels).sum())
        rows = keep.nonzero().flatten()
        if settings.max_volumes is not None:
            rows = rows[: max(0, int(settings.max_volumes) - sum(sums.counts.values()))]
        if len(rows):
            maps = attribute(x[rows], labels[rows]).numpy()
            subjects = _subjects(batch, x.shape[0])
            sums.add(maps, labels[rows].tolist(), [subjects[i] for i in rows.tolist()])
        bar.update(int(x.shape[0]))
        if settings.max_volumes is not None and sum(sums.counts.values()) >= int(settings.max_volumes):
            break
    bar.close()
    if sums is None:
        raise ConfigError("no held-out volumes to explain", where="config 'interpret#split'",
                          fix="choose a split with volumes (interpret#split 'test' or 'validate')")
    sums.seconds = time.perf_counter() - started
    return sums
