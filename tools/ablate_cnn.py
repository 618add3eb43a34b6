"""Ablate the CNN training recipe on a study's within-subject models, through the bundle.

Every variant is the study's own within-subject CNN (same data, masks, run folds, seed), with
a few bundle overrides on top; each model is trained by ``configs/train.json`` and scored on
its held-out runs by ``evaluate.json``, as the study does. The table gives, per variant, the
balanced accuracy of every subject, their mean, the largest predicted-class share, how many
models are flagged as degenerate and the training time. Decide defaults from it.

    python tools/ablate_cnn.py --study studies/realistic.json --out /tmp/ablate
    python tools/ablate_cnn.py --study studies/realistic.json --variants seed,balanced,gap
"""

from __future__ import annotations

import json
from pathlib import Path

import fire
import pandas as pd

#: recipe variants: bundle overrides on top of the study's (cumulative ones are spelt out)
VARIANTS: dict[str, dict] = {
    "seed": {"class_weights": None, "weight_decay": 0.0, "network_def#dropout": 0.0, "augment": 0.0,
             "early_stopping": None, "lr_schedule": None, "network_def#head": "flatten"},
    "balanced": {"class_weights": "balanced"},
    "balanced+wd": {"class_weights": "balanced", "weight_decay": 0.05},
    "balanced+dropout": {"class_weights": "balanced", "network_def#dropout": 0.5},
    "balanced+augment": {"class_weights": "balanced", "augment": 0.5},
    "balanced+seed1": {"class_weights": "balanced", "seed": 1},  # seed-to-seed noise
    "balanced+augment+seed1": {"class_weights": "balanced", "augment": 0.5, "seed": 1},  # seed-to-seed noise
    "balanced+augment+fullres": {"class_weights": "balanced", "augment": 0.5, "data#preprocessing#downsample": 1},
    "balanced+lr3e-4": {"class_weights": "balanced", "learning_rate": 3e-4},
    "balanced+lr3e-4+seed1": {"class_weights": "balanced", "learning_rate": 3e-4, "seed": 1},
    "balanced+smooth": {"class_weights": "balanced", "loss#label_smoothing": 0.1},
    "balanced+smooth+seed1": {"class_weights": "balanced", "loss#label_smoothing": 0.1, "seed": 1},
    "balanced+narrow": {"class_weights": "balanced", "network_def#channels": [8, 16, 32]},
    "balanced+narrow+seed1": {"class_weights": "balanced", "network_def#channels": [8, 16, 32], "seed": 1},
    "balanced+cosine": {"class_weights": "balanced", "lr_schedule": "cosine"},
    "balanced+early": {"class_weights": "balanced", "early_stopping": 10},
    "gap": {"class_weights": "balanced", "network_def#head": "gap"},
    "grid": {"class_weights": "balanced", "network_def#head": "grid"},
    "grid+wd+dropout": {"class_weights": "balanced", "network_def#head": "grid", "weight_decay": 0.05,
                        "network_def#dropout": 0.5},
    "grid+all": {"class_weights": "balanced", "network_def#head": "grid", "weight_decay": 0.05,
                 "network_def#dropout": 0.5, "augment": 0.5, "lr_schedule": "cosine"},
}


def ablate(study: str = "studies/realistic.json", out: str = "/tmp/ablate", variants: str | None = None,
           epochs: int | None = None, experiment: str = "within") -> None:
    """Train every variant's ``experiment`` models and print the table (also ``out/ablation.csv``)."""
    from monai_emotion.study.bundle import CNNRunner
    from monai_emotion.study.config import load_study
    from monai_emotion.study.context import prepare_context
    from monai_emotion.study.results import read_predictions
    from monai_emotion.study.scoring import report_of

    config = load_study(study)
    root = Path(out)
    ctx = prepare_context(config, root / "context", log=lambda line: None)
    specs = [s for s in ctx.plan.models if s.experiment == experiment]
    if variants is None:
        names = list(VARIANTS)
    else:  # fire turns "a,b" into a tuple
        names = [v.strip() for v in (variants.split(",") if isinstance(variants, str) else variants)]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    rows = []
    for name in names:
        base = {**ctx.base, **VARIANTS["seed"], **VARIANTS[name], **({"epochs": int(epochs)} if epochs else {})}
        runner = CNNRunner(config, root / name, base)
        for spec in specs:
            if not runner.done(spec):
                runner.run(spec)
        frame = read_predictions(root / name, specs, "cnn", "eval")
        for spec in specs:
            test = spec.test_sets[0].name
            part = frame[(frame["model"] == spec.id) & (frame["test_set"] == test)] if "model" in frame else frame
            report = report_of(part, ctx.classes)
            flags = report["degeneracy"]
            rows.append({"variant": name, "model": spec.id, "balanced_accuracy": report["balanced_accuracy"],
                         "top_class_share": flags["top_class_share"], "flagged": flags["flagged"],
                         "train_seconds": json.loads((runner.folder(spec) / "model.json").read_text())["train_seconds"]})
        print(json.dumps(rows[-len(specs):]), flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby("variant", sort=False).agg(
        mean_balanced_accuracy=("balanced_accuracy", "mean"), max_top_share=("top_class_share", "max"),
        flagged=("flagged", "sum"), train_seconds=("train_seconds", "mean"))
    root.mkdir(parents=True, exist_ok=True)
    table.to_csv(root / "ablation.csv", index=False)
    print(table.pivot(index="variant", columns="model", values="balanced_accuracy").round(3).to_string())
    print(summary.round(3).to_string())


if __name__ == "__main__":
    fire.Fire(ablate)
