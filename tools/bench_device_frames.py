"""Loader path vs device-resident frames (bundle key ``device_frames``) on the bundle's own config.

Measures, for each path, the set-up time of ``train#dataloader`` (RAM cache fill, or the copy to
the device), the frames/s of iterating it for a few epochs (batches formed and cast to float32,
no network), and optionally the wall time of a short bundle training. A measurement, never a
test; on a busy CPU repeat it.

Usage::

    nice python tools/bench_device_frames.py                      # the demo dataset, CPU
    nice python tools/bench_device_frames.py --train_epochs 3     # plus a 3-epoch training each
    nice python tools/bench_device_frames.py --dataset_dir /data/ds000113 --annotations_dir ...
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import fire
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "bundles" / "emotion_3dcnn" / "configs" / "train.json")


def _loader_rate(overrides: dict[str, Any], epochs: int) -> tuple[float, float, int]:
    """(set-up s, frames/s, frames per epoch) of ``train#dataloader`` under ``overrides``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update(overrides)
    parser.get_parsed_content("experiment")  # the cache is built (or reused) outside the timing
    start = time.perf_counter()
    loader = parser.get_parsed_content("train#dataloader")
    setup = time.perf_counter() - start
    frames = 0
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            frames += int(batch["image"].shape[0])
    device = torch.device(overrides.get("device", "cpu"))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return setup, frames / (time.perf_counter() - start), frames // epochs


def _train_seconds(overrides: dict[str, Any], epochs: int, out: Path) -> float:
    from monai.bundle import run

    start = time.perf_counter()
    run("training", config_file=TRAIN, logging_file=False,
        **{k.replace("#", "::"): v for k, v in {**overrides, "epochs": epochs, "output_dir": str(out / "runs"),
                                                "ckpt_dir": str(out / "models")}.items()})
    return time.perf_counter() - start


def main(dataset_dir: str = "", annotations_dir: str = "", epochs: int = 5, train_epochs: int = 0,
         batch_size: int = 16, threads: int = 1, workdir: str | None = None) -> None:
    """Print set-up time, frames/s and (``train_epochs > 0``) training wall time of both paths.

    Parameters
    ----------
    dataset_dir, annotations_dir
        The data (empty: the synthetic demo dataset, as the bundle's default).
    epochs
        Epochs of plain iteration per path for frames/s.
    train_epochs
        Epochs of a bundle training per path (0: none).
    batch_size, threads
        The bundle's ``batch_size``; torch intra-op threads (the bundle's CPU default is 1).
    workdir
        Where trainings write (default: a temporary folder).
    """
    torch.set_num_threads(threads)
    work = Path(workdir or tempfile.mkdtemp(prefix="bench_device_frames_"))
    base = {"dataset_dir": dataset_dir, "annotations_dir": annotations_dir, "batch_size": batch_size,
            "output_dir": str(work / "parse"), "ckpt_dir": str(work / "parse_models")}
    rows = []
    for name, on in (("loader", False), ("device_frames", True)):
        overrides = {**base, "device_frames": on}
        setup, rate, per_epoch = _loader_rate(overrides, epochs)
        train = _train_seconds(overrides, train_epochs, work / name) if train_epochs else float("nan")
        rows.append(f"{name:<16}{setup:>10.2f}{rate:>12.0f}{per_epoch:>14d}{train:>10.1f}")
    print(f"\ndevice: {'cuda' if torch.cuda.is_available() else 'cpu'}, torch threads {threads}, "
          f"cores {len(os.sched_getaffinity(0))}, {epochs} epochs iterated, {train_epochs} trained")
    print(f"{'path':<16}{'set-up s':>10}{'frames/s':>12}{'frames/epoch':>14}{'train s':>10}")
    print("\n".join(rows))


if __name__ == "__main__":
    fire.Fire(main)
