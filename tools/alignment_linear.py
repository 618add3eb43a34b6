"""The study's linear baseline on unseen subjects, with and without functional alignment.

For every unseen-subject model of a study (its plan, splits and ``baseline`` settings), the
bundle's ``experiment`` is built twice, once as it is and once with the study's
``alignment`` section (``--method procrustes`` when the study has none), and the baseline's
decoder is fitted on the training items and scored on the unseen subjects' held-out runs.
Prints one line per model and the pooled balanced accuracy (docs/alignment.md).

    python tools/alignment_linear.py --config studies/realistic.json
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from monai_emotion.study.alignment import AlignmentSettings, alignment_overrides
from monai_emotion.study.baseline import make_decoder
from monai_emotion.study.bundle import base_overrides, bundle_experiment, model_overrides
from monai_emotion.study.config import load_study
from monai_emotion.study.context import resolve_data
from monai_emotion.study.features import FeatureStore
from monai_emotion.study.plan import plan_study


def _score(study, experiment: dict) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    train, test = experiment["train"], experiment["test"]
    store = FeatureStore(sorted({i["image"] for i in train + test}))
    decoder = make_decoder(study.baseline, store.n_features)
    decoder.fit(store.matrix(train), [i["label"] for i in train])
    return np.array([i["label"] for i in test]), decoder.predict(store.matrix(test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--method", default="procrustes")
    args = parser.parse_args()
    study = load_study(args.config)
    if study.alignment.method == "none":
        study = dataclasses.replace(study, alignment=AlignmentSettings(method=args.method))
    dataset_dir, annotations_dir, _ = resolve_data(study, print)
    base = base_overrides(study, dataset_dir, annotations_dir)
    items = bundle_experiment(study, {**base, "data#split": {"kind": "runs"}})
    plan = plan_study(items["train"], study, len(items["classes"]))
    pooled: dict[str, list] = {"none": [[], []], study.alignment.method: [[], []]}
    for spec in (m for m in plan.models if m.experiment == "unseen" and m.permutation is None):
        line = [spec.id]
        for method, extra in (("none", {}), (study.alignment.method, alignment_overrides(study.alignment, spec))):
            truth, pred = _score(study, bundle_experiment(study, {**base, **model_overrides(spec), **extra}))
            pooled[method][0] += list(truth)
            pooled[method][1] += list(pred)
            line.append(f"{method} {balanced_accuracy_score(truth, pred):.3f}")
        print("  ".join(line), flush=True)
    print("pooled unseen_heldout balanced accuracy: " + ", ".join(
        f"{m} {balanced_accuracy_score(t, p):.3f}" for m, (t, p) in pooled.items()))


if __name__ == "__main__":
    main()
