"""Networks that map one fMRI volume ``(1, X, Y, Z)`` to emotion logits.

:class:`EmotionCNN3D` is the seed paper's 3D CNN: three ``Conv3d -> BatchNorm3d -> ReLU``
blocks (16/32/64 channels, 3x3x3), 2x max-pooling after the first two, a dense layer of
128 units and a dense layer of ``num_classes`` logits.

Padding: with ``padding="same"`` (1 voxel for a 3x3x3 kernel) and floor-mode pooling the
full aligned input 132x175x48 reaches the dense layer as 64 x 33 x 43 x 12 = 1,089,792
features, so the first dense layer has 1,089,792 * 128 + 128 = 139,493,504 parameters:
the paper's ~139.5 M. ``"valid"`` padding gives 64 x 29 x 40 x 8 (76.0 M), and ceil-mode
pooling 64 x 33 x 44 x 12 (142.7 M), so the paper must have used "same" + floor.

:func:`build_network` builds this network or a MONAI classifier by name, so a bundle
config can switch architectures with one string.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from monai_emotion.errors import ConfigError

__all__ = [
    "EmotionCNN3D",
    "NETWORKS",
    "build_network",
    "count_parameters",
    "encoder_output_shape",
    "split_outputs",
]

_HEADS = ("flatten", "gap", "grid")
_PADDINGS = ("same", "valid")


def _pool_sizes(pool: Sequence[bool | int], n_layers: int) -> tuple[int, ...]:
    if len(pool) != n_layers:
        raise ConfigError(
            f"pool has {len(pool)} entries but there are {n_layers} conv layers",
            where="EmotionCNN3D",
            fix="give one entry per conv layer: true (2x max-pool), false, or a pool size",
        )
    # True -> 2 (the paper), False/0/1 -> no pooling, other ints -> that pool size
    sizes = tuple(2 if p is True else (int(p) if p not in (False, None) else 1) for p in pool)
    if any(s < 1 for s in sizes):
        raise ConfigError(f"pool sizes must be >= 1, got {list(pool)}", where="EmotionCNN3D")
    return sizes


def encoder_output_shape(
    spatial_shape: Sequence[int],
    channels: Sequence[int] = (16, 32, 64),
    kernel_size: int = 3,
    pool: Sequence[bool | int] = (True, True, False),
    padding: str = "same",
) -> tuple[int, ...]:
    """Shape ``(C, X, Y, Z)`` of the conv encoder's output, computed without running it.

    Parameters
    ----------
    spatial_shape
        Input volume shape ``(X, Y, Z)``.
    channels, kernel_size, pool, padding
        As in :class:`EmotionCNN3D`.

    Returns
    -------
    tuple of int
        ``(channels[-1], X', Y', Z')``; the flatten head has ``prod`` of it input features.
    """
    shape = [int(s) for s in spatial_shape]
    shrink = 0 if padding == "same" else kernel_size - 1
    for size in _pool_sizes(pool, len(channels)):
        shape = [(s - shrink) // size for s in shape]  # MaxPool3d floors
    if any(s < 1 for s in shape):
        raise ConfigError(
            f"input {tuple(spatial_shape)} shrinks to {tuple(shape)} in the encoder",
            where="EmotionCNN3D",
            fix="use a larger spatial_shape, fewer pooling layers, or padding='same'",
        )
    return (int(channels[-1]), *shape)


class EmotionCNN3D(nn.Module):
    """The seed paper's 3D CNN, with a choice of flatten or global-average-pool head.

    Parameters
    ----------
    in_channels
        Input channels (1 for one fMRI volume).
    num_classes
        Number of emotion logits.
    spatial_shape
        Input ``(X, Y, Z)``; only the ``"flatten"`` head needs it (it sizes the dense layer).
    channels
        Output channels of each conv block.
    kernel_size
        Cubic conv kernel size.
    pool
        Per conv block: ``True`` = 2x max-pool after it, ``False`` = none, int = pool size.
    head
        ``"flatten"`` (paper: flatten -> dense ``hidden``; sized for one input shape),
        ``"grid"`` (average pool to ``grid_shape`` cells -> flatten -> dense ``hidden``: keeps
        coarse location, any input size) or ``"gap"`` (global average pool -> dense ``hidden``:
        any input size, but blind to *where* a pattern is).
    hidden
        Units of the penultimate dense layer (the embedding returned by :meth:`features`).
    dropout
        Dropout before the last dense layer (0 disables it).
    padding
        ``"same"`` (paper, reproduces 139.5 M head parameters) or ``"valid"``.
    grid_shape
        Cells per axis of the ``"grid"`` head.
    dimensions
        0 (default): the output is the ``(B, num_classes)`` logits. ``D > 0``: a multi-task
        head, a dense layer of ``D`` continuous outputs (valence, arousal: docs/dimensions.md)
        beside the classifier on the same embedding; the output is one ``(B, num_classes + D)``
        tensor, the logits first (:func:`split_outputs`), so engines, TorchScript and ONNX see
        one tensor as before.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 5,
        spatial_shape: Sequence[int] | None = (132, 175, 48),
        channels: Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
        pool: Sequence[bool | int] = (True, True, False),
        head: str = "flatten",
        hidden: int = 128,
        dropout: float = 0.0,
        padding: str = "same",
        grid_shape: Sequence[int] = (4, 4, 2),
        dimensions: int = 0,
    ) -> None:
        super().__init__()
        if head not in _HEADS:
            raise ConfigError(f"unknown head {head!r}", where="EmotionCNN3D", fix=f"use one of {list(_HEADS)}")
        if padding not in _PADDINGS:
            raise ConfigError(
                f"unknown padding {padding!r}", where="EmotionCNN3D", fix=f"use one of {list(_PADDINGS)}"
            )
        if not channels:
            raise ConfigError("channels is empty", where="EmotionCNN3D", fix="give at least one conv layer")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}", where="EmotionCNN3D")
        if int(dimensions) < 0:
            raise ConfigError(f"dimensions must be >= 0, got {dimensions}", where="EmotionCNN3D",
                              fix="use 0 (classes only) or the number of continuous targets (2)")
        pools = _pool_sizes(pool, len(channels))
        pad = kernel_size // 2 if padding == "same" else 0
        layers: list[nn.Module] = []
        prev = in_channels
        for out, size in zip(channels, pools, strict=True):
            # conv bias is redundant before batch norm
            layers += [nn.Conv3d(prev, out, kernel_size, padding=pad, bias=False), nn.BatchNorm3d(out)]
            layers.append(nn.ReLU(inplace=True))
            if size > 1:
                layers.append(nn.MaxPool3d(size))
            prev = out
        self.encoder = nn.Sequential(*layers)
        self.head = head
        if head == "flatten":
            if spatial_shape is None:
                raise ConfigError(
                    "head='flatten' needs spatial_shape to size its dense layer",
                    where="EmotionCNN3D",
                    fix="set spatial_shape to the input (X, Y, Z), or use head='gap'",
                )
            self.feature_shape = encoder_output_shape(spatial_shape, channels, kernel_size, pool, padding)
            self.reduce: nn.Module = nn.Flatten(1)
            n_in = 1
            for s in self.feature_shape:
                n_in *= s
        else:
            # "grid" keeps coarse location (where in the brain a pattern sits), "gap" keeps none
            cells = tuple(int(g) for g in grid_shape) if head == "grid" else (1, 1, 1)
            self.feature_shape = (int(channels[-1]), *cells)
            self.reduce = nn.Sequential(nn.AdaptiveAvgPool3d(cells), nn.Flatten(1))
            n_in = int(channels[-1]) * cells[0] * cells[1] * cells[2]
        self.spatial_shape = tuple(int(s) for s in spatial_shape) if spatial_shape else None
        self.hidden = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)
        self.num_classes = int(num_classes)
        # None by default: the classes-only network keeps its parameters and state dict unchanged
        self.dimension_head = nn.Linear(hidden, int(dimensions)) if int(dimensions) > 0 else None

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        # turn the matmul shape error of a mismatched flatten head into a fixable message
        if tuple(x.shape[2:]) != self.spatial_shape:
            raise ConfigError(
                f"input of spatial shape {tuple(x.shape[2:])}, but the flatten head was built "
                f"for spatial_shape={self.spatial_shape}",
                where="EmotionCNN3D",
                fix="set spatial_shape to the shape the data loader produces, or use head='gap'",
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(B, hidden)`` (after ReLU): the embedding for later analysis."""
        if self.head == "flatten" and not torch.jit.is_scripting():
            self._check_input(x)
        return self.hidden(self.reduce(self.encoder(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of a batch ``(B, in_channels, X, Y, Z)`` (then the dimensions)."""
        if self.dimension_head is None:
            return self.classifier(self.dropout(self.features(x)))
        embedding = self.dropout(self.features(x))
        return torch.cat([self.classifier(embedding), self.dimension_head(embedding)], dim=1)


def split_outputs(output: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, dimensions)`` of a multi-task output ``(B, K + D)`` (``D`` may be 0).

    Parameters
    ----------
    output
        What :class:`EmotionCNN3D` returns, batched ``(B, K + D)`` or one sample ``(K + D,)``.
    num_classes
        ``K``.

    Returns
    -------
    tuple of torch.Tensor
        The first ``K`` entries of the last axis and the rest.
    """
    if output.shape[-1] < num_classes:
        raise ConfigError(f"an output of {output.shape[-1]} channels for {num_classes} classes",
                          where="multi-task output", fix="set num_classes to the network's class count")
    return output[..., :num_classes], output[..., num_classes:]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (works on ``meta``-device modules, which allocate nothing)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _monai_densenet(cls_name: str) -> Callable[..., nn.Module]:
    def build(in_channels: int = 1, num_classes: int = 5, **kwargs: Any) -> nn.Module:
        from monai.networks import nets

        kwargs.setdefault("spatial_dims", 3)
        return getattr(nets, cls_name)(in_channels=in_channels, out_channels=num_classes, **kwargs)

    return build


def _monai_resnet(fn_name: str) -> Callable[..., nn.Module]:
    def build(in_channels: int = 1, num_classes: int = 5, **kwargs: Any) -> nn.Module:
        from monai.networks import nets

        kwargs.setdefault("spatial_dims", 3)
        return getattr(nets, fn_name)(n_input_channels=in_channels, num_classes=num_classes, **kwargs)

    return build


#: name -> builder taking ``in_channels``, ``num_classes`` and the network's own keywords
NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "EmotionCNN3D": EmotionCNN3D,
    "DenseNet121": _monai_densenet("DenseNet121"),
    "DenseNet169": _monai_densenet("DenseNet169"),
    "resnet10": _monai_resnet("resnet10"),
    "resnet18": _monai_resnet("resnet18"),
    "resnet34": _monai_resnet("resnet34"),
    "resnet50": _monai_resnet("resnet50"),
}


def build_network(
    name: str = "EmotionCNN3D",
    in_channels: int = 1,
    num_classes: int | None = None,
    out_channels: int | None = None,
    spatial_shape: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a classification network by name.

    Parameters
    ----------
    name
        One of :data:`NETWORKS` (case-insensitive): ``EmotionCNN3D``, ``DenseNet121``,
        ``DenseNet169``, ``resnet10``, ``resnet18``, ``resnet34``, ``resnet50``; or the dotted
        path of any ``torch.nn.Module`` class (then the keywords are passed as given).
    in_channels
        Input channels.
    num_classes, out_channels
        Number of logits (either name; default 5). Mapped to each network's own keyword.
    spatial_shape
        Input ``(X, Y, Z)``. Passed to ``EmotionCNN3D``; the MONAI networks are
        size-independent and ignore it.
    **kwargs
        Further keywords of the chosen network (MONAI networks get ``spatial_dims=3``).

    Returns
    -------
    torch.nn.Module
        The network; its forward maps ``(B, in_channels, X, Y, Z)`` to ``(B, num_classes)``.
        Its ``definition`` attribute holds this call as a config dict (``_target_`` and the
        arguments), which training saves so that inference rebuilds the same network.

    Raises
    ------
    ConfigError
        For an unknown name, conflicting class counts, or a keyword the network lacks.
    """
    definition = {"_target_": f"{__name__}.build_network", "name": str(name), "in_channels": int(in_channels),
                  **({"num_classes": int(num_classes)} if num_classes is not None else {}),
                  **({"out_channels": int(out_channels)} if out_channels is not None else {}),
                  **({"spatial_shape": [int(s) for s in spatial_shape]} if spatial_shape is not None else {}),
                  **kwargs}
    if "." in str(name):
        net = _build_dotted(str(name), in_channels, num_classes, out_channels, spatial_shape, kwargs)
    else:
        net = _build_registered(str(name), in_channels, num_classes, out_channels, spatial_shape, kwargs)
    # what inference needs to rebuild this network: saved beside the weights at training time
    net.definition = definition
    return net


def _build_registered(name: str, in_channels: int, num_classes: int | None, out_channels: int | None,
                      spatial_shape: Sequence[int] | None, kwargs: dict[str, Any]) -> nn.Module:
    lookup = {key.lower(): key for key in NETWORKS}
    key = lookup.get(name.lower())
    if key is None:
        raise ConfigError(
            f"unknown network {name!r}",
            where="build_network",
            fix=f"use one of {sorted(NETWORKS, key=str.lower)}, or a dotted class path (monai.networks.nets.X)",
        )
    if num_classes is not None and out_channels is not None and num_classes != out_channels:
        raise ConfigError(
            f"num_classes={num_classes} and out_channels={out_channels} disagree",
            where="build_network",
            fix="give only one of them",
        )
    kwargs = dict(kwargs)
    n_classes = num_classes if num_classes is not None else out_channels
    kwargs["num_classes"] = 5 if n_classes is None else n_classes
    if key == "EmotionCNN3D" and spatial_shape is not None:
        kwargs["spatial_shape"] = spatial_shape
    try:
        return NETWORKS[key](in_channels=in_channels, **kwargs)
    except TypeError as err:
        signature = inspect.signature(EmotionCNN3D) if key == "EmotionCNN3D" else " in monai.networks.nets"
        raise ConfigError(
            f"network {key!r} rejected its arguments: {err}",
            where="build_network",
            fix=f"check the keywords against {key}{signature}",
        ) from err


def _build_dotted(path: str, in_channels: int, num_classes: int | None, out_channels: int | None,
                  spatial_shape: Sequence[int] | None, kwargs: dict[str, Any]) -> nn.Module:
    """Any ``torch.nn.Module`` class by dotted path, with exactly the keywords given."""
    from monai.utils import optional_import

    module, _, attr = path.rpartition(".")
    cls, found = optional_import(module, name=attr)
    if not found:
        raise ConfigError(f"cannot import network {path!r}", where="build_network",
                          fix="give an importable class path, e.g. monai.networks.nets.DenseNet121")
    given = {"in_channels": in_channels, **kwargs}
    given.update({k: v for k, v in (("num_classes", num_classes), ("out_channels", out_channels),
                                    ("spatial_shape", spatial_shape)) if v is not None})
    try:
        return cls(**given)
    except TypeError as err:
        raise ConfigError(f"network {path!r} rejected its arguments: {err}", where="build_network",
                          fix=f"check the keywords against {path}{inspect.signature(cls)}") from err
