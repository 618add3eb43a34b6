"""Resuming training: the newest full training state, saved every epoch and checked before use."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai_emotion.errors import ConfigError
from monai_emotion.runtime import is_rank0

__all__ = ["latest_checkpoint", "attach_training_state"]


def latest_checkpoint(resume: str, ckpt_dir: str | os.PathLike) -> str:
    """``resume`` as a checkpoint path; ``"latest"`` picks the newest ``training_state*.pt``.

    An empty ``resume`` returns ``""`` (the config's loader is disabled then).
    """
    if not resume:
        return ""
    if resume != "latest":
        if not Path(resume).is_file():
            raise ConfigError("checkpoint to resume from not found", resume,
                              fix="pass a training_state_*.pt path, or --resume latest")
        return str(resume)
    from monai_emotion.engine.checkpoints import checkpoint_epoch

    # newest first by time: states of an older, longer training in the same folder may carry
    # higher epochs; the epoch only breaks ties between files written within one clock tick
    states = sorted(Path(ckpt_dir).glob("training_state*.pt"),
                    key=lambda p: (p.stat().st_mtime_ns, checkpoint_epoch(p)))
    if not states:
        raise ConfigError("no training state to resume from", ckpt_dir,
                          fix="train once first (training_state_*.pt is written every epoch)")
    return str(states[-1])


def attach_training_state(
    trainer: Any, objects: Mapping[str, Any], ckpt_dir: str | os.PathLike, resume: str = ""
) -> None:
    """Save the full training state every epoch and, with ``resume``, load it before the run.

    The trainer itself is part of the state (epoch, iteration), which a config cannot put in a
    handler of its own (circular reference): the bundle calls this from its run list instead.
    States are written atomically and the last two are kept, so a kill at any moment leaves a
    complete one (ignite deletes the oldest before writing the next). The state to resume from
    is read with ``weights_only=True`` and checked against the objects before training starts
    (:class:`~monai_emotion.engine.checkpoints.CheckpointLoader`). Only rank 0 writes under DDP.
    """
    import ignite.distributed as idist
    from ignite.engine import Events
    from ignite.handlers import Checkpoint

    from monai_emotion.engine.checkpoints import AtomicSaveHandler, CheckpointLoader

    # ignite builds its process-group view lazily with a collective call: make every rank
    # take part now, before only rank 0 creates the saver (which would otherwise hang)
    idist.sync()
    state = {**objects, "trainer": trainer}
    if resume:
        path = latest_checkpoint(resume, ckpt_dir)
        CheckpointLoader(load_path=path, load_dict=state, map_location="cpu").attach(trainer)
        print(f"resuming from {path}", flush=True)
    if not is_rank0():
        return
    saver = Checkpoint(state, AtomicSaveHandler(ckpt_dir), filename_prefix="training_state",
                       score_function=lambda engine: engine.state.epoch, score_name="epoch",
                       n_saved=2)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, saver)
