"""Compare the EmotionCNN3D heads (flatten, grid, gap) through the bundle on the demo dataset.

Each head is trained by the bundle's own train.json (same data, split, seed and epochs); the
table gives parameters, wall time and the best validation balanced accuracy.

    python tools/compare_heads.py --epochs 50
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bundles" / "emotion_3dcnn" / "configs" / "train.json"


def _train(head: str, epochs: int, root: Path) -> dict:
    from monai.bundle import ConfigWorkflow

    from monai_emotion.networks import count_parameters

    workflow = ConfigWorkflow(
        config_file=str(TRAIN), workflow_type="train", bundle_root=str(root / head),
        meta_file=str(TRAIN.with_name("metadata.json")), logging_file=str(TRAIN.with_name("logging.conf")),
        epochs=epochs, **{"network_def::head": head},
    )
    workflow.initialize()
    started = time.perf_counter()
    workflow.run()
    seconds = time.perf_counter() - started
    evaluator = workflow.parser.get_parsed_content("validate::evaluator")
    network = workflow.parser.get_parsed_content("network_def")
    workflow.finalize()
    return {
        "head": head,
        "parameters": count_parameters(network),
        "train_seconds": round(seconds, 1),
        "best_val_balanced_accuracy": round(float(evaluator.state.best_metric), 3),
        "best_epoch": int(evaluator.state.best_metric_epoch),
    }


def main(epochs: int = 50, heads: str = "flatten,grid,gap", out: str | None = None) -> list[dict]:
    """Train each head and print a table (the demo dataset is generated on first use)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for head in heads.split(","):
            rows.append(_train(head, epochs, Path(tmp)))
    print(f"\nheads on the demo dataset, {epochs} epochs, {os.cpu_count()} cores")
    print(f"{'head':<8}{'params':>10}{'train s':>9}{'best val BA':>13}{'epoch':>7}")
    for r in rows:
        print(f"{r['head']:<8}{r['parameters']:>10}{r['train_seconds']:>9}"
              f"{r['best_val_balanced_accuracy']:>13}{r['best_epoch']:>7}")
    if out:
        Path(out).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    fire.Fire(main)
