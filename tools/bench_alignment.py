"""Cost of fitting and applying one subject's piecewise Procrustes transform (docs/alignment.md).

Random time-locked frames stand in for a subject and the reference: the cost depends only on
the number of fit volumes, voxels and the parcel size, not on the values. Prints seconds for
the parcellation, the fit and applying the transform to ``--apply`` volumes, and the peak RSS.

    python tools/bench_alignment.py --voxels 110000 --volumes 450 --parcel_voxels 100
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from monai_emotion.align.procrustes import PiecewiseProcrustes, parcellate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=110_000, help="parcelled voxels (a mask of this size)")
    parser.add_argument("--volumes", type=int, default=450, help="fit volumes (time-locked frames)")
    parser.add_argument("--apply", type=int, default=450, help="volumes to transform after fitting")
    parser.add_argument("--parcel_voxels", type=int, default=100)
    parser.add_argument("--parcellation", default="kmeans", choices=("kmeans", "grid"))
    args = parser.parse_args()
    side = int(np.ceil(args.voxels ** (1 / 3)))
    mask = np.zeros((side, side, side), bool)
    mask.reshape(-1)[: args.voxels] = True
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    parcels = parcellate(mask, args.parcel_voxels, args.parcellation)
    t1 = time.perf_counter()
    source = rng.standard_normal((args.volumes, args.voxels), dtype=np.float32).astype(np.float16)
    target = rng.standard_normal((args.volumes, args.voxels), dtype=np.float32).astype(np.float16)
    t2 = time.perf_counter()
    fitted = PiecewiseProcrustes.fit(source, target, parcels)
    t3 = time.perf_counter()
    del source, target
    frames = rng.standard_normal((args.apply, *mask.shape), dtype=np.float32).astype(np.float16)
    t4 = time.perf_counter()
    fitted.transform(frames)
    t5 = time.perf_counter()
    rotations = sum(r.size for r in fitted.rotations) * 4
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"voxels {args.voxels}, fit volumes {args.volumes}, parcels {parcels.n_parcels} "
          f"(~{args.parcel_voxels} voxels, {args.parcellation}): parcellation {t1 - t0:.1f} s, "
          f"fit {t3 - t2:.1f} s, apply to {args.apply} volumes {t5 - t4:.1f} s, "
          f"transform {rotations / 1e6:.0f} MB, peak RSS {peak:.2f} GB")


if __name__ == "__main__":
    main()
