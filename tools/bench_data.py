"""Benchmark of the data pipeline on one full-geometry synthetic subject.

Measures, on the same files and frames:

- cache build time vs a bare chunked nibabel read of the same runs, and peak RSS of the
  build (each in its own subprocess, ``ru_maxrss`` of that process);
- frames/s our pipeline delivers through the DataLoader, batched, vs the naive MONAI
  pipeline (``LoadImaged`` of the 4D file, then select the frame; a few samples only);
- frames/s vs the limit: a tight numpy loop reading the same frames from the warm memory map.

Usage::

    nice python tools/bench_data.py --workdir /tmp/bench_data
    nice python tools/bench_data.py --workdir /tmp/bench_data --generator own   # float32 runs

``--generator auto`` uses ``monai_emotion.data.synthetic.make_synthetic`` when it exists (int16
runs with a scale factor), ``own`` writes full-size float32 runs with smooth random data
inside an ellipsoid.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import fire
import nibabel as nib
import numpy as np

from monai_emotion.data.studyforrest import (
    ALIGNED_SHAPE,
    ALIGNED_VOXEL_MM,
    TR,
    VOLUMES_PER_RUN,
    bold_path,
    discover_runs,
)

GB = 1e9


def _machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = 0.0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024 / GB
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model
            )
    except OSError:
        pass
    return f"{cores} CPU cores ({model}), {mem:.1f} GB RAM, Python {platform.python_version()}"


def _write_own_run(path: Path, n_volumes: int, seed: int) -> None:
    """Full-size float32 run: smooth baseline and smooth fluctuations inside an ellipsoid."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    shape = ALIGNED_SHAPE
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    brain = sum((g / 0.85) ** 2 for g in grid) <= 1.0
    baseline = (1000 + 200 * gaussian_filter(rng.standard_normal(shape), 4) * 10) * brain
    fields = np.stack([gaussian_filter(rng.standard_normal(shape), 3) * 30 for _ in range(4)])
    affine = np.diag([ALIGNED_VOXEL_MM] * 3 + [1.0])
    affine[:3, 3] = -np.array(shape) * ALIGNED_VOXEL_MM / 2
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((*shape, n_volumes))
    header.set_zooms((ALIGNED_VOXEL_MM,) * 3 + (TR,))
    header.set_xyzt_units("mm", "sec")
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header["vox_offset"] = 352
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    with gzip.open(part, "wb", compresslevel=1) as fh:
        fh.write(header.binaryblock + b"\x00" * 4)
        for t in range(n_volumes):
            weights = np.sin(0.05 * t * (np.arange(4) + 1) + seed)
            vol = baseline + np.tensordot(weights, fields, axes=1) + 5 * rng.standard_normal(shape)
            fh.write(np.asarray(vol * brain, dtype="<f4").tobytes(order="F"))
    os.replace(part, path)


def _generate(root: Path, runs: list[int], generator: str) -> str:
    if discover_runs_quiet(root, runs):
        return "existing"
    if root.exists():
        shutil.rmtree(root)
    use_synthetic = generator == "synthetic"
    if generator == "auto":
        try:
            from monai_emotion.data.synthetic import make_synthetic  # noqa: F401

            use_synthetic = True
        except ImportError:
            use_synthetic = False
    if use_synthetic:
        from monai_emotion.data.synthetic import make_synthetic

        make_synthetic(root, subjects=1, scale=1, runs=runs, oracle=False, progress=True)
        return "make_synthetic (int16 + scl_slope)"
    for run in runs:
        _write_own_run(bold_path(root, "01", run), VOLUMES_PER_RUN[run - 1], seed=run)
    return "own (float32)"


def discover_runs_quiet(root: Path, runs: list[int]) -> bool:
    if not root.is_dir():
        return False
    try:
        found = discover_runs(root, "nonlinear", ["01"], runs)
    except Exception:
        return False
    return len(found.runs) == len(runs) and not any("short" in p for p in found.problems)


_CHILD_PRELUDE = """
import json, resource, sys, time
import numpy as np
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""


def _child(body: str, **params) -> dict:
    """Run ``body`` in a fresh interpreter; it fills ``result``; returns it with its own peak RSS."""
    fd, params_file = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(params, fh)
    code = (
        _CHILD_PRELUDE
        + f"params = json.load(open({params_file!r}))\nresult = {{}}\n"
        + body
        + "\nresult['rss_import_kb'] = rss0\n"
        + "result['peak_rss_kb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        + "print('RESULT ' + json.dumps(result))\n"
    )
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    finally:
        os.unlink(params_file)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    print({k: v for k, v in result.items() if not isinstance(v, list)}, file=sys.stderr, flush=True)
    return result


_BARE_READ = """
import nibabel as nib
t = time.perf_counter()
for path in params['paths']:
    img = nib.load(path, keep_file_open=True)  # one open gzip stream, read forward
    n = img.shape[3]
    for t0 in range(0, n, 16):
        block = np.asarray(img.dataobj[..., t0:t0 + 16], dtype=np.float32)
result['seconds'] = time.perf_counter() - t
"""

_BUILD = """
from monai_emotion.data.cache import prepare_cache
import nilearn.masking, torch  # imported before the clock starts, like nibabel for the bare read
t = time.perf_counter()
index = prepare_cache(params['root'], params['out'], downsample=params['downsample'], progress=False)
result['seconds'] = time.perf_counter() - t
result['bytes'] = index.summary.bytes_on_disk
result['volumes'] = index.summary.volumes
result['frame_shape'] = list(index[('01', params['runs'][0])].frame_shape)
"""

_PIPELINE = """
import torch
if params['threads']:
    torch.set_num_threads(params['threads'])
from monai_emotion.data.datasets import emotion_dataset, emotion_dataloader
from monai_emotion.data.cache import CacheIndex
index = CacheIndex.load(params['out'])
items = params['items']
for entry in index.values():  # warm the page cache: the limit loop reads warm pages too
    np.asarray(entry.open()).sum()
ds = emotion_dataset(items, cache=index, cache_rate=params['cache_rate'], num_workers=2)
loader = emotion_dataloader(ds, batch_size=params['batch_size'], num_workers=params['workers'])
t_fill = time.perf_counter()
it = iter(loader)
first = next(it)
t = time.perf_counter()
n = 0
for batch in it:
    n += batch['image'].shape[0]
result['seconds'] = time.perf_counter() - t
result['frames'] = n
result['fps'] = n / result['seconds']
result['startup_s'] = t - t_fill
"""

_LIMIT = """
from monai_emotion.data.cache import CacheIndex
index = CacheIndex.load(params['out'])
maps = {(e.subject, e.run): e.open() for e in index.values()}
for mm in maps.values():
    np.asarray(mm).sum()
frames = [(('01', it['run']), it['frame']) for it in params['items']]
for name, dtype in (('fps_float32', np.float32), ('fps_float16', None)):
    t = time.perf_counter()
    for key, f in frames:
        x = np.array(maps[key][f], dtype=dtype)
    result[name] = len(frames) / (time.perf_counter() - t)
"""

_NAIVE = """
from monai.transforms import LoadImaged
load = LoadImaged(keys='image', image_only=True)
t = time.perf_counter()
for it in params['items']:
    d = load({'image': it['image']})
    frame = d['image'][..., it['frame']][None]
result['seconds'] = time.perf_counter() - t
result['fps'] = len(params['items']) / result['seconds']
"""


def _median(values: list[float]) -> float:
    return float(np.median(values))


def main(
    workdir: str = "/tmp/bench_data",
    generator: str = "auto",
    runs: str | tuple = "1,2",
    frames: int = 2048,
    naive_frames: int = 3,
    batch_size: int = 8,
    workers: int = 2,
    ram_frames: int = 512,
    rounds: int = 3,
    seed: int = 0,
) -> str:
    """Run the benchmark and print one markdown table (also written to WORKDIR/bench_data.md).

    Contenders are measured in alternation, ``rounds`` times, and medians are reported: on a
    shared machine the load of other processes changes from one minute to the next.
    """
    work = Path(workdir)
    run_ids = [int(r) for r in (runs.split(",") if isinstance(runs, str) else runs)]
    root = work / "bids"
    made_by = _generate(root, run_ids, generator)
    discovery = discover_runs(root, "nonlinear", ["01"], run_ids)
    paths = [r.path for r in discovery.runs]
    n_vols = [r.n_volumes for r in discovery.runs]
    run_f32 = max(n_vols) * int(np.prod(ALIGNED_SHAPE)) * 4
    src_bytes = sum(os.path.getsize(p) for p in paths)

    _child(_BARE_READ, paths=paths)  # warm the page cache for both contenders
    bare, build1 = [], []
    for _ in range(rounds):
        bare.append(_child(_BARE_READ, paths=paths))
        out = work / "cache_ds1"
        if out.exists():
            shutil.rmtree(out)
        build1.append(_child(_BUILD, root=str(root), out=str(out), downsample=1, runs=run_ids))
    out2 = work / "cache_ds2"
    if out2.exists():
        shutil.rmtree(out2)
    build2 = _child(_BUILD, root=str(root), out=str(out2), downsample=2, runs=run_ids)

    rng = np.random.default_rng(seed)
    items = []
    for _ in range(frames):
        k = int(rng.integers(len(paths)))
        items.append(
            {
                "image": paths[k],
                "frame": int(rng.integers(n_vols[k])),
                "label": 0,
                "run": run_ids[k],
            }
        )
    out1 = str(work / "cache_ds1")
    common = {"out": out1, "batch_size": batch_size}
    limit, stream_w, stream_0, ram = [], [], [], []
    for _ in range(rounds):
        limit.append(_child(_LIMIT, out=out1, items=items))
        stream_0.append(
            _child(_PIPELINE, items=items, cache_rate=0.0, workers=0, threads=1, **common)
        )
        stream_w.append(
            _child(_PIPELINE, items=items, cache_rate=0.0, workers=workers, threads=0, **common)
        )
        ram.append(
            _child(
                _PIPELINE, items=items[:ram_frames], cache_rate=1.0, workers=0, threads=1, **common
            )
        )
    naive = _child(_NAIVE, items=items[:naive_frames])

    t_bare = _median([r["seconds"] for r in bare])
    t_build = _median([r["seconds"] for r in build1])
    rss_build = max(r["peak_rss_kb"] for r in build1) * 1e3
    lim32 = _median([r["fps_float32"] for r in limit])
    lim16 = _median([r["fps_float16"] for r in limit])
    fps_w = _median([r["fps"] for r in stream_w])
    fps_0 = _median([r["fps"] for r in stream_0])
    fps_ram = _median([r["fps"] for r in ram])
    best = max(fps_w, fps_0)
    best_name = f"{workers} workers" if fps_w >= fps_0 else "0 workers, 1 torch thread"
    b1 = build1[-1]
    builds = {1: b1, 2: build2}
    per_vol = {ds: builds[ds]["bytes"] / builds[ds]["volumes"] for ds in builds}
    total_vols = sum(VOLUMES_PER_RUN)
    rows = [
        (
            "cache build, downsample 1",
            f"{t_build:.1f} s",
            f"bare nibabel read {t_bare:.1f} s",
            f"{t_build / t_bare:.2f}x",
            "<= 2x",
        ),
        (
            "peak RSS during build (max of rounds)",
            f"{rss_build / GB:.2f} GB",
            f"one run as float32 {run_f32 / GB:.2f} GB",
            f"{rss_build / run_f32:.2f}x",
            "<= 2x",
        ),
        (
            f"frames/s, DataLoader batch {batch_size}, best setting ({best_name}), cache_rate=0",
            f"{best:.0f}",
            f"naive LoadImaged + select {naive['fps']:.3f}",
            f"{best / naive['fps']:.0f}x",
            ">= 100x",
        ),
        (
            "same vs the memmap limit (numpy loop, float32 out)",
            f"{best:.0f}",
            f"limit {lim32:.0f}",
            f"{best / lim32:.0%}",
            ">= 50%",
        ),
        (
            f"frames/s, DataLoader, {workers} workers (default torch threads), cache_rate=0",
            f"{fps_w:.0f}",
            f"limit {lim32:.0f}",
            f"{fps_w / lim32:.0%}",
            "",
        ),
        (
            "frames/s, DataLoader, 0 workers, 1 torch thread, cache_rate=0",
            f"{fps_0:.0f}",
            f"limit {lim32:.0f}",
            f"{fps_0 / lim32:.0%}",
            "",
        ),
        (
            f"frames/s, CacheDataset in RAM ({ram_frames} frames), ThreadDataLoader, 1 torch thread",
            f"{fps_ram:.0f}",
            f"limit {lim32:.0f}",
            f"{fps_ram / lim32:.0%}",
            "",
        ),
        (
            "frames/s vs a raw float16 copy loop (no cast)",
            f"{best:.0f}",
            f"{lim16:.0f}",
            f"{best / lim16:.0%}",
            "",
        ),
    ]
    lines = [
        f"Machine: {_machine()}; load average at the end {os.getloadavg()[0]:.1f} "
        "(shared with other work).",
        f"Data: 1 subject, runs {run_ids} ({'+'.join(map(str, n_vols))} volumes, {ALIGNED_SHAPE} at "
        f"{ALIGNED_VOXEL_MM} mm), generator {made_by}, {src_bytes / GB:.2f} GB of .nii.gz; cached "
        f"grid {b1['frame_shape']} (downsample 1), {build2['frame_shape']} (downsample 2). "
        f"{frames} random frames of both runs (naive: the first {naive_frames}). Medians of "
        f"{rounds} alternating rounds.",
        "",
        "| measure | ours | reference | ratio | target |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {' | '.join(r)} |" for r in rows],
        "",
        "| cache on disk | 2 runs measured | one full subject (3599 volumes), extrapolated |",
        "| --- | --- | --- |",
        *[
            f"| downsample {ds} | {builds[ds]['bytes'] / GB:.2f} GB | "
            f"{per_vol[ds] * total_vols / GB:.2f} GB |"
            for ds in builds
        ],
        "",
        f"Rounds: bare read {[round(r['seconds'], 1) for r in bare]} s, build "
        f"{[round(r['seconds'], 1) for r in build1]} s, limit "
        f"{[round(r['fps_float32']) for r in limit]}, {workers} workers "
        f"{[round(r['fps']) for r in stream_w]}, 0 workers {[round(r['fps']) for r in stream_0]} "
        f"frames/s. Downsample-2 build {build2['seconds']:.1f} s. Peak RSS: bare read "
        f"{bare[-1]['peak_rss_kb'] / 1e6:.2f} GB, naive {naive['peak_rss_kb'] / 1e6:.2f} GB.",
    ]
    text = "\n".join(lines)
    print(text)
    (work / "bench_data.md").write_text(text + "\n")
    return ""


if __name__ == "__main__":
    fire.Fire(main)
