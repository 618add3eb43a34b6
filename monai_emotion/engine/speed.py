"""GPU speed knobs of the bundle: the AMP dtype, ``channels_last_3d`` weights, ``torch.compile``.

Bundle keys ``amp`` (on when CUDA is available), ``amp_dtype`` (``"auto"``: bfloat16 where the
GPU supports it, else float16; or ``"bfloat16"`` / ``"float16"``), ``channels_last`` and
``compile`` (both off by default until a GPU measurement says otherwise:
``tools/bench_gpu.py``, docs/performance.md). On a CPU every knob leaves training as it is:
MONAI's AMP autocasts CUDA ops only, and ``channels_last`` is ignored off CUDA, so CPU results
do not change whatever the keys say.
"""

from __future__ import annotations

from typing import Any

import torch

from monai_emotion.errors import ConfigError

__all__ = ["AMP_DTYPES", "amp_kwargs", "place_network"]

#: the values of the bundle key ``amp_dtype``
AMP_DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float16")


def amp_kwargs(amp_dtype: str, device: str | torch.device) -> dict[str, Any]:
    """The ``torch.autocast`` keywords MONAI's trainer and evaluator get (``amp_kwargs``).

    Parameters
    ----------
    amp_dtype
        ``"auto"``, ``"bfloat16"`` or ``"float16"``.
    device
        The bundle's device; ``"auto"`` picks bfloat16 on a CUDA device that supports it (no
        loss scaling needed, fp32's range), float16 elsewhere.
    """
    if amp_dtype not in AMP_DTYPES:
        raise ConfigError(f"amp_dtype={amp_dtype!r}", where="bundle key amp_dtype", fix=f"use one of {list(AMP_DTYPES)}")
    if amp_dtype == "auto":
        cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
        amp_dtype = "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float16"
    return {"dtype": getattr(torch, amp_dtype)}


def place_network(network: torch.nn.Module, device: str | torch.device, channels_last: bool = False) -> torch.nn.Module:
    """``network`` on ``device``; its 5-D weights in ``channels_last_3d`` order when asked on CUDA.

    cuDNN then runs the 3-D convolutions in NDHWC, which tensor cores prefer; inputs stay as
    they come (the convolution converts them), so batches and labels are untouched.
    """
    if not isinstance(channels_last, bool):
        raise ConfigError(f"channels_last must be true or false, got {channels_last!r}", where="bundle key channels_last")
    device = torch.device(device)
    if channels_last and device.type == "cuda":
        return network.to(device, memory_format=torch.channels_last_3d)
    return network.to(device)
