"""The multi-task recipe's pieces: targets in, loss, and the output split (configs/dimensions.json).

A multi-task :class:`~monai_emotion.networks.EmotionCNN3D` (``dimensions=D``) returns one
``(B, K + D)`` tensor. MONAI's engines pass ``loss_function(pred, targets)`` one target
tensor, so :class:`DimensionsBatch` makes it ``(B, 1 + D)``: the class index, then the
dimension targets (valence, arousal) of the items. :class:`MultiTaskLoss` is cross-entropy on
the logits plus weighted mean squared errors on the dimensions. Before the existing
postprocessing (softmax, one-hot) and metrics see the output, :class:`SplitDimensionsd` puts
the logits back under ``pred`` and the class back under ``label``, and the dimensions under
``dims_pred`` / ``dims_target``; :func:`with_split` prepends it to a postprocessing chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.transforms import Compose
from torch import nn
from torch.nn import functional as F

from monai_emotion.data.dimensions import DIMENSIONS, check_dimensions
from monai_emotion.errors import ConfigError, DataError
from monai_emotion.networks import split_outputs

__all__ = ["DimensionsBatch", "MultiTaskLoss", "SplitDimensionsd", "with_split", "DIMS_PRED", "DIMS_TARGET"]

#: output keys of the dimensions after :class:`SplitDimensionsd`
DIMS_PRED, DIMS_TARGET = "dims_pred", "dims_target"


class DimensionsBatch:
    """A MONAI ``prepare_batch``: ``(image, targets)`` with targets ``(B, 1 + D)`` float32.

    Parameters
    ----------
    names
        Item keys of the dimension targets, in the network's output order.
    image_key, label_key
        Item keys of the input and of the class index.
    """

    def __init__(self, names: Sequence[str] = DIMENSIONS, image_key: str = "image", label_key: str = "label") -> None:
        self.names = check_dimensions(names, where="DimensionsBatch")
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, batchdata: Mapping[str, Any], device: str | torch.device | None = None,
                 non_blocking: bool = False, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Move the image and the stacked targets to ``device``."""
        missing = [n for n in self.names if n not in batchdata]
        if missing:
            raise DataError(f"the batch has no {missing}", where="DimensionsBatch",
                            fix="build the experiment with monai_emotion.data.dimensions."
                            "prepare_experiment_with_dimensions (configs/dimensions.json does)")
        columns = [torch.as_tensor(batchdata[self.label_key])] + [torch.as_tensor(batchdata[n]) for n in self.names]
        targets = torch.stack([c.reshape(-1).float() for c in columns], dim=1)
        image = batchdata[self.image_key].to(device=device, non_blocking=non_blocking, **kwargs)
        return image, targets.to(device=device, non_blocking=non_blocking)


class MultiTaskLoss(nn.Module):
    """Cross-entropy on the logits + ``sum_d w_d * MSE_d`` on the dimensions.

    Parameters
    ----------
    num_classes
        ``K``: the first ``K`` output channels are logits.
    dimension_weights
        One weight per dimension (the output's remaining channels, in order).
    weight
        Class weights of the cross-entropy (as ``torch.nn.CrossEntropyLoss`` takes them).

    Notes
    -----
    Targets that are NaN (no target) are left out of their dimension's mean.
    """

    def __init__(self, num_classes: int = 5, dimension_weights: Sequence[float] = (1.0, 1.0),
                 weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        weights = [float(w) for w in dimension_weights]
        if not weights or any(w < 0 for w in weights):
            raise ConfigError(f"dimension_weights {weights} must be one or more values >= 0",
                              where="MultiTaskLoss", fix="give one weight >= 0 per dimension, e.g. [1.0, 1.0]")
        self.register_buffer("dimension_weights", torch.tensor(weights))
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def parts(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-entropy and the ``(D,)`` per-dimension mean squared errors."""
        logits, dims = split_outputs(pred, self.num_classes)
        n_dims = self.dimension_weights.numel()
        if dims.shape[-1] != n_dims or target.shape[-1] != 1 + n_dims:
            raise ConfigError(f"{dims.shape[-1]} dimension outputs and {target.shape[-1] - 1} targets for "
                              f"{n_dims} dimension weights", where="MultiTaskLoss",
                              fix="give network_def#dimensions, the targets and dimension_weights the same length")
        weight = None if self.weight is None else self.weight.to(logits.dtype)
        ce = F.cross_entropy(logits, target[:, 0].round().long(), weight=weight)
        truth = target[:, 1:].to(dims.dtype)
        known = torch.isfinite(truth)
        sq = torch.where(known, (dims - torch.nan_to_num(truth)) ** 2, torch.zeros_like(dims))
        mse = sq.sum(dim=0) / known.sum(dim=0).clamp(min=1)
        return ce, mse

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted sum (a scalar)."""
        ce, mse = self.parts(pred, target)
        return ce + (self.dimension_weights.to(mse.dtype) * mse).sum()


class SplitDimensionsd:
    """Per decollated sample: ``pred`` (K + D) -> logits + ``dims_pred``; ``label`` (1 + D) -> class + ``dims_target``.

    A plain callable (postprocessing runs any), applied before the classification transforms.
    """

    def __init__(self, num_classes: int = 5, pred_key: str = "pred", label_key: str = "label") -> None:
        self.num_classes, self.pred_key, self.label_key = int(num_classes), pred_key, label_key

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The split sample (a new dict)."""
        d = dict(data)
        d[self.pred_key], d[DIMS_PRED] = split_outputs(torch.as_tensor(d[self.pred_key]), self.num_classes)
        label = torch.as_tensor(d[self.label_key])
        if label.ndim == 1 and label.numel() == 1 + d[DIMS_PRED].shape[-1]:
            d[self.label_key], d[DIMS_TARGET] = label[0].round().long(), label[1:]
        return d


def with_split(postprocessing: Compose | None, num_classes: int = 5) -> Compose:
    """``postprocessing`` with :class:`SplitDimensionsd` in front (configs wrap theirs with it)."""
    transforms = list(postprocessing.transforms) if isinstance(postprocessing, Compose) else \
        ([] if postprocessing is None else [postprocessing])
    return Compose([SplitDimensionsd(num_classes), *transforms])
