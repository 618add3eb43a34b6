"""Measure the saliency methods against the synthetic data's planted patterns (docs/saliency.md).

For each world (``demo``: the bundle's demo data; ``realistic``: ``make-synthetic --preset
realistic``, one subject at the demo's size) it trains a model on the labels and one on
circularly shifted labels (``data#label_permutation``), both through ``configs/train.json``,
then runs ``configs/saliency.json`` with every method on the test runs and reads each map's
correlation with the planted class contrast (:mod:`monai_emotion.interpret.truth`). The true
model's maps use its correctly classified volumes (the default), the permuted model's all of
them (it gets few right). Last, the time per volume at the full aligned grid (132x175x48,
stored 66x88x24 after the default 2x downsampling) with the bundle's network.

    python tools/saliency_validation.py --out /tmp/saliency_validation --epochs 30

Writes ``results.json`` and prints the markdown tables docs/saliency.md shows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from monai_emotion.interpret.saliency import METHODS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "emotion_3dcnn" / "configs"
#: the realistic world at the demo's size (one subject, scale 4, 90 volumes per run)
REALISTIC = {"preset": "realistic", "subjects": 1, "scale": 4, "volumes_per_run": 90, "seed": 7}


def _world(name: str, out: Path) -> Path:
    from monai_emotion.data.synthetic import make_synthetic
    from monai_emotion.data.synthetic.demo import ensure_demo_dataset

    if name == "demo":
        return ensure_demo_dataset()
    root = out / "data" / name
    if not (root / ".complete").is_file():
        make_synthetic(root, progress=False, overwrite=True, **REALISTIC)
        (root / ".complete").write_text("ok\n")
    return root


def _overrides(data: Path, folder: Path, cache: Path, epochs: int) -> dict[str, Any]:
    return {"dataset_dir": str(data), "annotations_dir": str(data / "annotations"), "cache_dir": str(cache),
            "bundle_root": str(folder), "output_dir": str(folder / "runs" / "train"),
            "ckpt_dir": str(folder / "models"), "epochs": epochs}


def _train(base: dict[str, Any], permutation: int | None) -> float:
    from monai_emotion.study.bundle import run_workflow

    started = time.perf_counter()
    if not (Path(base["ckpt_dir"]) / "model.pt").is_file():
        run_workflow([str(CONFIGS / "train.json")], {**base, "data#label_permutation": permutation},
                     Path(base["bundle_root"]) / "train.log")
    return time.perf_counter() - started


def _saliency(base: dict[str, Any], permutation: int | None, method: str) -> dict[str, Any]:
    from monai_emotion.study.bundle import run_workflow

    out = Path(base["bundle_root"]) / "saliency" / method
    run_workflow([str(CONFIGS / "train.json"), str(CONFIGS / "saliency.json")],
                 {**base, "data#label_permutation": permutation, "interpret#method": method,
                  "interpret#output_dir": str(out), "interpret#figures": False,
                  "interpret#volumes": "correct" if permutation is None else "all"},
                 Path(base["bundle_root"]) / "saliency.log")
    record = json.loads((out / "saliency.json").read_text())
    truth = record["truth_mean"]
    return {"r_abs": truth["r_abs"], "r_abs_mean": truth["r_abs_mean"], "r_signed_mean": truth["r_signed_mean"],
            "n_explained": record["n_explained"], "n_split": record["n_split"], "n_correct": record["n_correct"],
            "seconds_per_volume": record["seconds_per_volume"]}


def measure_world(name: str, out: Path, epochs: int, methods: list[str]) -> dict[str, Any]:
    """Train the true and the permuted model of one world and score every method's maps."""
    data = _world(name, out)
    result: dict[str, Any] = {"dataset": str(data), "epochs": epochs, "models": {}}
    oracle = json.loads((data / "ground_truth" / "oracle.json").read_text())
    result["oracle_balanced_accuracy"] = {s: v["balanced_accuracy"] for s, v in oracle.items()}
    for model, permutation in (("true", None), ("permuted", 1)):
        base = _overrides(data, out / name / model, out / name / "cache", epochs)
        seconds = _train(base, permutation)
        rows = {m: _saliency(base, permutation, m) for m in methods}
        result["models"][model] = {"train_seconds": round(seconds, 1), "methods": rows}
        print(f"{name}/{model}: trained in {seconds:.0f} s; " + ", ".join(
            f"{m} r_abs {r['r_abs_mean']:.3f}" for m, r in rows.items()), flush=True)
    return result


def time_full_size(methods: list[str], volumes: int = 2) -> dict[str, Any]:
    """Seconds per volume of each method at the full grid (random weights: the cost does not depend on them)."""
    import torch

    from monai_emotion.interpret.saliency import SaliencySettings, make_attributor
    from monai_emotion.networks import build_network

    shape = (66, 88, 24)  # 132 x 175 x 48 cropped to the brain and 2x downsampled: the bundle's default grid
    torch.manual_seed(0)
    network = build_network("EmotionCNN3D", spatial_shape=shape).eval()
    x = torch.randn(volumes, 1, *shape)
    labels = torch.arange(volumes) % 5
    out: dict[str, Any] = {"stored_grid": list(shape), "threads": torch.get_num_threads()}
    for method in methods:
        if method == "occlusion":
            continue
        attribute = make_attributor(network, SaliencySettings(method=method))
        attribute(x[:1], labels[:1])  # warm-up
        started = time.perf_counter()
        attribute(x, labels)
        out[method] = {"seconds_per_volume": round((time.perf_counter() - started) / volumes, 2), "measured": True}
    if "occlusion" in methods:
        # MONAI evaluates one occluded copy per window position; time batches of 32 forward passes
        settings = SaliencySettings(method="occlusion")
        stride = max(1, int(settings.mask_size * (1 - settings.overlap)))
        windows = int(np.prod([int(np.ceil((s - settings.mask_size) / stride)) + 1 for s in shape]))
        batch = torch.randn(32, 1, *shape)
        with torch.no_grad():
            network(batch[:2])
            started = time.perf_counter()
            network(batch)
        per_pass = (time.perf_counter() - started) / 32
        out["occlusion"] = {"seconds_per_volume": round(windows * per_pass, 1), "measured": False,
                            "windows": windows, "seconds_per_forward_pass": round(per_pass, 4)}
    out["to_source_seconds"] = _time_to_source(shape)
    return out


def _time_to_source(shape: tuple[int, int, int]) -> float:
    """Seconds to bring one stored-grid map back to 132x175x48 (the writing step per map)."""
    from types import SimpleNamespace

    from monai_emotion.interpret.maps import to_source

    source = (132, 175, 48)
    contract = SimpleNamespace(spatial_shape=shape, source_shape=source,
                               crop={"lo": [0, 0, 0], "downsample": [2, 2, 2]})
    mask = np.ones(source, dtype=bool)
    started = time.perf_counter()
    to_source(np.random.default_rng(0).standard_normal(shape).astype(np.float32), contract, mask)
    return round(time.perf_counter() - started, 3)


def markdown(results: dict[str, Any], methods: list[str]) -> str:
    """The tables of docs/saliency.md."""
    lines = ["| world | method | r_abs true model (per emotion H/S/F/L/A) | mean | r_abs permuted model | "
             "r_signed true | test accuracy true / permuted | volumes explained | s / volume |",
             "|---|---|---|---|---|---|---|---|---|"]
    for world, res in results["worlds"].items():
        for m in methods:
            t, p = res["models"]["true"]["methods"][m], res["models"]["permuted"]["methods"][m]
            per = "/".join("-" if v is None else f"{v:.2f}" for v in t["r_abs"].values())
            lines.append(f"| {world} | {m} | {per} | **{t['r_abs_mean']:.3f}** | {p['r_abs_mean']:.3f} | "
                         f"{t['r_signed_mean']:.3f} | {t['n_correct'] / t['n_split']:.2f} / "
                         f"{p['n_correct'] / p['n_split']:.2f} | {t['n_explained']} of {t['n_split']} | "
                         f"{t['seconds_per_volume']:.4f} |")
    full = results.get("full_size")
    if full:
        lines += ["", "| method (full grid, stored 66x88x24, one CPU thread) | s / volume | how |", "|---|---|---|"]
        for m in methods:
            row = full[m]
            how = "measured" if row["measured"] else (f"estimated: {row['windows']} windows x "
                                                      f"{row['seconds_per_forward_pass']} s per forward pass")
            lines.append(f"| {m} | {row['seconds_per_volume']} | {how} |")
        lines.append(f"| back to 132x175x48 (per map) | {full['to_source_seconds']} | measured |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/saliency_validation")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--worlds", default="demo,realistic")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--full_size", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    results: dict[str, Any] = {"worlds": {w: measure_world(w, out, args.epochs, methods)
                                          for w in args.worlds.split(",") if w}}
    if args.full_size:
        results["full_size"] = time_full_size(methods)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results, methods))


if __name__ == "__main__":
    main()
