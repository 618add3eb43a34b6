"""Training speed of the study's CNN on one device, and the study's projected wall time from it.

One prepared script (at most ~5 minutes on a GPU) that measures, for the network of
``studies/real.json`` (EmotionCNN3D, flatten head, channels 16/32/64, hidden 128, batch 16):

* training samples/s at the full grid (132 x 175 x 48) and at the 2x-downsampled grid
  (66 x 88 x 24), AMP off / on (bf16 where supported, else fp16: ``engine.speed.amp_kwargs``),
  ``channels_last_3d`` on, and optionally ``torch.compile`` (``--compile``);
* device-resident frames (float16 on the device, batches gathered by index and cast there, as
  ``device_frames``) against host batches (float16 in pinned host memory, copied to the device
  every step: the transfer the loader path adds; the loader's own per-frame transforms, which
  cost more, are measured by ``tools/bench_device_frames.py``);
* inference samples/s (validation and test passes);
* one vs several models trained at once on the device (separate processes, as Ray's
  fractional GPUs run them), total samples/s;
* peak device memory of each configuration;

then prints the projected wall time of ``studies/real.json`` (or ``--study``): the training
and evaluation samples of every model of its plan, counted by the study's own ``plan_study``
and ``make_splits`` on items with the real run lengths and labelled fraction (1477 labelled
volumes per subject, docs/study.md), divided by the measured rates.

Usage::

    python tools/bench_gpu.py                    # on a GPU machine
    python tools/bench_gpu.py --compile          # also torch.compile (adds its compile time)
    nice python tools/bench_gpu.py --small       # CPU: small grids, short timings (a check of the script)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
FULL, HALF = (132, 175, 48), (66, 88, 24)
#: labelled volumes per subject of the real data (AV, threshold 0.5, lag 4 s: docs/study.md)
LABELLED = 1477
BATCH = 16


def _network(grid: Sequence[int], device: torch.device, channels_last: bool) -> torch.nn.Module:
    from monai_emotion.engine.speed import place_network
    from monai_emotion.networks import build_network

    net = build_network("EmotionCNN3D", in_channels=1, num_classes=5, spatial_shape=tuple(grid),
                        channels=[16, 32, 64], head="flatten", hidden=128)
    return place_network(net, device, channels_last)


def _frames(grid: Sequence[int], n: int, device: torch.device, on_device: bool) -> torch.Tensor:
    frames = torch.randn(n, 1, *grid, dtype=torch.float16)
    if on_device:
        return frames.to(device)
    return frames.pin_memory() if device.type == "cuda" else frames


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(grid: Sequence[int], device: torch.device, amp: bool, channels_last: bool = False,
            on_device: bool = True, compile: bool = False, seconds: float = 5.0, frames: int = 256,
            train: bool = True) -> dict[str, Any]:
    """Samples/s of training (or inference) steps of batch :data:`BATCH` for about ``seconds``."""
    from monai_emotion.engine.speed import amp_kwargs

    torch.manual_seed(0)
    net = _network(grid, device, channels_last)
    step_net = torch.compile(net) if compile else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    data = _frames(grid, frames, device, on_device)
    labels = torch.randint(0, 5, (frames,), device=device)
    dtype = amp_kwargs("auto", device)["dtype"] if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16 and device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        index = torch.randint(0, frames, (BATCH,), generator=gen)
        x = data[index.to(data.device)] if on_device else data[index].to(device, non_blocking=True)
        x, y = x.float(), labels[index.to(device)]
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            if not train:
                with torch.no_grad():
                    step_net(x)
                return
            loss = loss_fn(step_net(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    net.train(train)
    start = time.perf_counter()
    for _ in range(3):  # warm-up: cuDNN autotuning, allocator, compilation
        step()
    _sync(device)
    warmup = time.perf_counter() - start
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < 2:
        step()
        steps += 1
        if steps % 4 == 0:
            _sync(device)
    _sync(device)
    elapsed = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"grid": "x".join(map(str, grid)), "mode": "train" if train else "infer", "amp": amp,
            "channels_last": channels_last, "frames": "device" if on_device else "host", "compile": compile,
            "samples_per_s": BATCH * steps / elapsed, "warmup_s": warmup, "peak_gib": memory}


def _worker(args: tuple[Sequence[int], str, bool, float, Any]) -> float:
    grid, device, amp, seconds, barrier = args
    torch.set_num_threads(1)
    measure(grid, torch.device(device), amp, seconds=0.5)  # start-up outside the shared window
    barrier.wait()
    return measure(grid, torch.device(device), amp, seconds=seconds)["samples_per_s"]


def concurrent(grid: Sequence[int], device: torch.device, amp: bool, k: int, seconds: float) -> float:
    """Total training samples/s of ``k`` processes each training its own model on ``device``."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(k)
        with ctx.Pool(k) as pool:
            return float(sum(pool.map(_worker, [(tuple(grid), str(device), amp, seconds, barrier)] * k)))


def _study_items(n_subjects: int) -> list[dict]:
    """Items of ``n_subjects`` subjects with the real run lengths, :data:`LABELLED` of them labelled."""
    from monai_emotion.data.studyforrest import VOLUMES_PER_RUN

    total = sum(VOLUMES_PER_RUN)
    items, offset = [], 0.0
    subjects = [f"{s:02d}" for s in range(1, n_subjects + 2) if s != 10][:n_subjects]
    for sub in subjects:
        offset, k = 0.0, 0
        for run, length in enumerate(VOLUMES_PER_RUN, start=1):
            for v in range(length):
                k += 1
                if (k * LABELLED) // total != ((k - 1) * LABELLED) // total:  # evenly spread labelled volumes
                    label = (k // 12) % 5  # emotion episodes of about 12 volumes
                    items.append({"subject": sub, "run": run, "frame": v, "label": label,
                                  "movie_time": offset + 2.0 * v, "label_time": offset + 2.0 * v - 3.0})
            offset += 2.0 * length
    return items


def study_samples(path: str | Path) -> dict[str, float]:
    """Training samples (x epochs) and evaluation samples of every CNN model of the study at ``path``."""
    import warnings

    from monai_emotion.experiment import make_splits
    from monai_emotion.study.config import load_study
    from monai_emotion.study.features import select_subjects
    from monai_emotion.study.plan import plan_study

    study = load_study(path)
    items = _study_items(19 if study.subjects is None else len(study.subjects))
    plan = plan_study(items, study, 5)
    epochs = study.training.epochs
    val_every = int(study.training.options.get("val_interval", 1))
    perms = study.permutations
    train = val = test = main = 0
    for spec in plan.models:
        with warnings.catch_warnings(record=True):  # the leaky split warns on purpose
            parts = make_splits(select_subjects(items, spec.subjects), dict(spec.split))
            tests = sum(len(make_splits(select_subjects(items, t.subjects), dict(t.split))["test"])
                        for t in spec.test_sets)
        copies = 1 + (perms.cnn if spec.experiment in perms.cnn_experiments else 0)
        train += copies * len(parts["train"]) * epochs
        main += len(parts["train"]) * epochs
        val += copies * len(parts.get("validate", [])) * (epochs // val_every)
        test += copies * tests
    return {"models": len(plan.models), "train_samples": train, "train_samples_unpermuted": main, "eval_samples": val + test, "epochs": epochs,
            "cnn_permutations": perms.cnn}


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ["grid", "mode", "amp", "channels_last", "frames", "compile", "samples_per_s", "warmup_s", "peak_gib"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="small grids and short timings (CPU check)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per configuration")
    parser.add_argument("--concurrent", default="1,2,4", help="numbers of models trained at once")
    parser.add_argument("--study", default=str(REPO / "studies" / "real.json"))
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    grids = ((33, 44, 12), (22, 29, 8)) if args.small else (FULL, HALF)
    seconds = args.seconds or (1.0 if args.small else 6.0)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}; "
          f"grids {grids}; {seconds} s per configuration", flush=True)
    rows = []
    for grid in grids:
        configs = [dict(amp=False), dict(amp=True), dict(amp=True, channels_last=True), dict(amp=True, on_device=False),
                   dict(amp=False, on_device=False)]
        if args.compile:
            configs.append(dict(amp=True, compile=True))
        for config in configs:
            rows.append(measure(grid, device, seconds=seconds, **config))
            print(rows[-1], flush=True)
        rows.append(measure(grid, device, amp=True, seconds=seconds, train=False))
        rows.append(measure(grid, device, amp=False, seconds=seconds, train=False))
    print(_table(rows))
    counts = [int(k) for k in args.concurrent.split(",") if k]
    together, amp = {}, device.type == "cuda"  # the bundle's default: AMP on CUDA only
    for k in counts:
        together[k] = concurrent(grids[1], device, amp, k, seconds * 2)
        print(f"{k} model(s) at once, grid {grids[1]}, AMP {'on' if amp else 'off'}: "
              f"{together[k]:.1f} samples/s in total", flush=True)
    samples = study_samples(args.study)
    print(f"study {Path(args.study).name}: {samples}")
    projection = {}
    for grid in grids:
        name = "x".join(map(str, grid))
        best = max((r for r in rows if r["grid"] == name and r["mode"] == "train" and r["frames"] == "device"),
                   key=lambda r: r["samples_per_s"])
        infer = max(r["samples_per_s"] for r in rows if r["grid"] == name and r["mode"] == "infer")
        hours = (samples["train_samples"] / best["samples_per_s"] + samples["eval_samples"] / infer) / 3600
        line = f": {hours:.2f} h one model at a time"
        shared = None
        if grid == grids[1] and len(together) > 1 and 1 in together:
            # training at the measured total rate of k models at once; evaluation sped up alike
            k = max(together, key=together.get)
            shared = (samples["train_samples"] / together[k]
                      + samples["eval_samples"] / (infer * together[k] / together[1])) / 3600
            line += f", {shared:.2f} h with {k} models at once"
        projection[name] = {"best": {k: best[k] for k in ("amp", "channels_last", "compile")},
                            "train_samples_per_s": best["samples_per_s"], "infer_samples_per_s": infer,
                            "hours_one_model_at_a_time": hours, "hours_concurrent": shared}
        print(f"projected {Path(args.study).name} at the rates of {name}"
              + (" (--small: not the study's grid, a check of the arithmetic only)" if args.small else "") + line)
    result = {"device": str(device), "rows": rows, "concurrent": together, "study": samples, "projection": projection}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
