"""Benchmarks of the training engine and the network heads (a tool, not a test).

Usage::

    nice python tools/bench_engine.py engine   # SupervisedTrainer vs a bare PyTorch loop
    nice python tools/bench_engine.py heads    # flatten vs gap head at full input size
    nice python tools/bench_engine.py all      # both, one markdown report

Every number is wall-clock on synthetic in-memory tensors, so it measures compute and
engine overhead only (no I/O). Each head runs in its own subprocess so that its peak RSS
is its own.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import fire
import torch

from monai_emotion.networks import EmotionCNN3D, count_parameters

FULL_SHAPE = (1, 132, 175, 48)
DOWN_SHAPE = (1, 66, 88, 24)


def machine() -> str:
    """One markdown line describing where the numbers come from."""
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu}; {len(os.sched_getaffinity(0))} usable cores (os.cpu_count()={os.cpu_count()}), "
        f"torch threads {torch.get_num_threads()}; RAM {mem_kb / 2**20:.1f} GiB; "
        f"load average before the run {load}; Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _batches(shape: Sequence[int], batch_size: int, n: int, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randn(batch_size, *shape, generator=gen), "label": torch.randint(0, 5, (batch_size,), generator=gen)}
        for _ in range(n)
    ]


def _setup(shape: Sequence[int], head: str, seed: int = 0):
    torch.manual_seed(seed)
    net = EmotionCNN3D(spatial_shape=tuple(shape[1:]), head=head)
    return net, torch.optim.Adam(net.parameters(), lr=1e-4), torch.nn.CrossEntropyLoss()


def _bare_epoch(net, opt, loss_fn, batches) -> float:
    net.train()
    start = time.perf_counter()
    for batch in batches:
        opt.zero_grad(set_to_none=False)  # what SupervisedTrainer does by default
        loss = loss_fn(net(batch["image"]), batch["label"])
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / len(batches)


def _trainer(net, opt, loss_fn, batches, decollate: bool):
    from monai.engines import SupervisedTrainer

    return SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=batches, network=net,
        optimizer=opt, loss_function=loss_fn, decollate=decollate,
    )  # fmt: skip


def _trainer_epoch(trainer) -> float:
    start = time.perf_counter()
    trainer.run()  # a finished Ignite engine restarts from epoch 0
    return (time.perf_counter() - start) / trainer.state.epoch_length


def _compare(net, opt, loss_fn, batches: list[dict], repeats: int) -> dict[str, list[float]]:
    trainers = {d: _trainer(net, opt, loss_fn, batches, d) for d in (True, False)}
    runs = {
        "bare": lambda: _bare_epoch(net, opt, loss_fn, batches),
        "trainer (decollate=True)": lambda: _trainer_epoch(trainers[True]),
        "trainer (decollate=False)": lambda: _trainer_epoch(trainers[False]),
    }
    for run in runs.values():  # warm-up: allocator, oneDNN primitives, Adam state
        run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(repeats):
        # alternate the order so that neither warm caches nor load drift favour one variant
        for key in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            times[key].append(runs[key]())
    return times


def engine(
    shape: Sequence[int] = DOWN_SHAPE,
    batch_size: int = 4,
    steps: int = 8,
    repeats: int = 5,
    head: str = "flatten",
    probe_steps: int = 64,
    print_table: bool = True,
) -> dict:
    """SupervisedTrainer step time against a bare loop on the same model, data and batches.

    Two measurements. (1) The real model, variants interleaved: on a shared machine this is
    the difference of two large, noisy numbers. (2) The engine's own cost per step, measured
    precisely with a near-free probe network (average pool + linear) on the same batches;
    adding it to the real model's bare step gives the expected ratio. Minimum over repeats:
    other jobs only ever add time.
    """
    shape = tuple(int(s) for s in shape)
    batches = _batches(shape, batch_size, steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    probe = torch.nn.Sequential(torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(1), torch.nn.Linear(shape[0], 5))
    probe_batches = batches * max(1, probe_steps // steps)
    probe_t = _compare(probe, torch.optim.Adam(probe.parameters()), loss_fn, probe_batches, repeats)
    cost = {k: min(v) - min(probe_t["bare"]) for k, v in probe_t.items()}
    net, opt, loss_fn = _setup(shape, head)
    times = _compare(net, opt, loss_fn, batches, repeats)
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    expected = {k: (best["bare"] + cost[k]) / best["bare"] for k in times}
    result = {
        "shape": shape, "batch_size": batch_size, "steps": steps, "repeats": repeats, "head": head,
        "params": count_parameters(net), "min_step_s": best, "median_step_s": med,
        "engine_cost_s": cost, "expected_ratio": expected,
    }  # fmt: skip
    if print_table:
        print(f"\n### Engine overhead: input {shape}, batch {batch_size}, head {head} "
              f"({count_parameters(net) / 1e6:.2f} M params), {steps} steps x {repeats} repeats; "
              f"probe {len(probe_batches)} steps x {repeats}\n")  # fmt: skip
        print("| loop | min step (s) | median step (s) | measured ratio (min) | measured ratio (median) "
              "| engine cost/step (ms, probe) | expected ratio |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for k in times:
            print(f"| {k} | {best[k]:.4f} | {med[k]:.4f} | {best[k] / best['bare']:.3f} "
                  f"| {med[k] / med['bare']:.3f} | {1e3 * cost[k]:.2f} | {expected[k]:.4f} |")  # fmt: skip
    return result


def _one_head(head: str, batch_size: int, steps: int, warmup: int) -> None:
    """Child process: one head at full size; prints one JSON line."""
    base_rss = _rss_mb()
    net, opt, loss_fn = _setup(FULL_SHAPE, head)
    batches = _batches(FULL_SHAPE, batch_size, 1)
    _bare_epoch(net, opt, loss_fn, batches * warmup)  # Adam state is allocated here
    step_s = _bare_epoch(net, opt, loss_fn, batches * steps)
    net.eval()
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(steps):
            net(batches[0]["image"])
        infer_s = (time.perf_counter() - start) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({
        "head": head, "params": count_parameters(net), "head_params": count_parameters(net.hidden),
        "step_s": step_s, "train_samples_per_s": batch_size / step_s,
        "infer_samples_per_s": batch_size / infer_s, "peak_rss_mb": peak, "base_rss_mb": base_rss,
    }))  # fmt: skip


def heads(batch_size: int = 2, steps: int = 3, warmup: int = 1, print_table: bool = True) -> list[dict]:
    """Flatten vs gap head at the full 1x132x175x48 input: parameters, speed, peak memory."""
    rows = []
    for head in ("flatten", "gap"):
        cmd = [sys.executable, __file__, "_one_head", head, str(batch_size), str(steps), str(warmup)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    if print_table:
        print(f"\n### Heads at full input {FULL_SHAPE}, batch {batch_size}, Adam, "
              f"{steps} timed steps after {warmup} warm-up\n")  # fmt: skip
        print("| head | params | first dense layer | train step (s) | train samples/s "
              "| inference samples/s | peak RSS (MB) | peak - imports (MB) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['head']} | {r['params'] / 1e6:.2f} M | {r['head_params']:,} | {r['step_s']:.2f} "
                  f"| {r['train_samples_per_s']:.2f} | {r['infer_samples_per_s']:.2f} "
                  f"| {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['base_rss_mb']:.0f} |")  # fmt: skip
    return rows


def run_all(batch_size: int = 4, head_batch_size: int = 2, steps: int = 8, repeats: int = 5) -> None:
    """Machine line, engine overhead (both heads) and the full-size head comparison."""
    print(f"Machine: {machine()}")
    for head in ("flatten", "gap"):
        engine(DOWN_SHAPE, batch_size, steps, repeats, head)
    heads(head_batch_size)


def _quiet(fn, show: bool = False):
    # fire prints return values; the tables are the output
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        result = fn(*args, **kwargs)
        if show:
            print(result)

    return wrapper


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_one_head":
        _one_head(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        fire.Fire({"engine": _quiet(engine), "heads": _quiet(heads), "all": run_all, "machine": _quiet(machine, True)})
