"""MLflow experiment tracking through MONAI's own ``--tracking`` option.

``python -m monai.bundle run training --config_file configs/train.json --tracking
configs/mlflow.json`` patches the bundle with :class:`EmotionMLFlowHandler` on the trainer and
the evaluator (MONAI's ``MLFlowHandler`` plus run tags and the epoch's mean training loss),
so one MLflow run records the bundle's parameters (:func:`flat_params`), the per-epoch
training loss and accuracy, every validation metric per epoch and, at the end, the model
files. Plain ``--tracking mlflow`` (MONAI's default settings) also works with this bundle's
ids but records only the per-iteration loss and the metrics. ``mlflow`` is the optional
``tracking`` extra (``pip install monai-emotion[tracking]``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from monai.handlers import MLFlowHandler, from_engine

__all__ = ["flat_params", "EmotionMLFlowHandler", "MAX_PARAM_LENGTH"]

#: MLflow's limit on a parameter value's length (characters)
MAX_PARAM_LENGTH = 6000


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def flat_params(settings: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``settings`` as MLflow parameters: nested mappings flattened to dotted keys, values as text.

    Parameters
    ----------
    settings
        The bundle keys to record (``{"epochs": 50, "data": {"split": {...}}, ...}``).
    prefix
        Prepended to every key (used by the recursion).

    Returns
    -------
    dict of str to str
        ``{"epochs": "50", "data.split.kind": "runs", ...}``; lists and other values as JSON,
        cut to :data:`MAX_PARAM_LENGTH` characters.
    """
    out: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, prefix=f"{name}."))
        else:
            out[name] = _text(value)
    return out


class EmotionMLFlowHandler(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` with run tags and, on a trainer, the epoch's mean loss.

    Parameters
    ----------
    tags
        Tags set on the run when the engine starts (a study sets ``study`` and ``model``).
    epoch_loss
        Name of the epoch-level metric holding the mean of ``loss_transform(output)`` over the
        epoch's iterations (``None``: none; on an evaluator, which has no loss, leave it out).
    loss_transform
        How the loss is taken from the engine's output.
    **kwargs
        ``MLFlowHandler``'s arguments (``tracking_uri``, ``experiment_name``, ``run_name``,
        ``experiment_param``, ``artifacts``, ...).
    """

    def __init__(
        self,
        tags: Mapping[str, Any] | None = None,
        epoch_loss: str | None = None,
        loss_transform: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.epoch_loss = epoch_loss
        self.loss_transform = loss_transform or from_engine(["loss"], first=True)

    def attach(self, engine: Any) -> None:
        """Attach the epoch-loss metric (first, so it is computed before the epoch is logged)."""
        if self.epoch_loss:
            from ignite.metrics import Average

            Average(output_transform=self.loss_transform).attach(engine, self.epoch_loss)
        super().attach(engine)

    def start(self, engine: Any) -> None:
        """Open (or rejoin) the run as MONAI does, then tag it."""
        super().start(engine)
        if self.tags and self.cur_run is not None:
            for key, value in self.tags.items():
                self.client.set_tag(self.cur_run.info.run_id, key, value)
