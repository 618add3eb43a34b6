"""The peer as a user would write it: ``nilearn.decoding.Decoder`` on the raw runs, no censoring.

For each within-subject model of a study (same subjects, run folds, labels and movie-overlap
rule as the study's), this reads the subject's raw 4D runs, cleans each run with
``nilearn.image.clean_img`` (linear detrend, z-score), takes the subject's own brain mask
(``nilearn.masking.compute_epi_mask`` of the mean of its first run), and fits
``Decoder(estimator="logistic_l2", screening_percentile=20, cv=LeaveOneGroupOut())`` with
nilearn's default ``C`` grid on the training runs (inner CV: leave one training run out),
then scores the held-out runs. Nothing is censored: motion spikes stay in, as in ten lines
of nilearn. The study's own ``nilearn`` peer row uses the study's cache instead.

    python tools/nilearn_as_user.py --study studies/realistic.json
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import fire
import numpy as np


def _volumes(cleaned: dict, part: list[dict]) -> object:
    from nilearn.image import concat_imgs, index_img

    return concat_imgs([index_img(cleaned[int(i["run"])], int(i["frame"])) for i in part])


def as_user(study: str = "studies/realistic.json", out: str = "/tmp/nilearn_as_user") -> None:
    """Print balanced accuracy per subject and its mean (also ``out/nilearn_as_user.csv``)."""
    import pandas as pd
    from nilearn.decoding import Decoder
    from nilearn.image import clean_img, mean_img
    from nilearn.masking import compute_epi_mask
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import LeaveOneGroupOut

    from monai_emotion.data.datalist import labelled_items
    from monai_emotion.data.studyforrest import discover_runs
    from monai_emotion.experiment import make_splits
    from monai_emotion.study.config import load_study
    from monai_emotion.study.context import prepare_context

    config = load_study(study)
    ctx = prepare_context(config, Path(out) / "context", log=lambda line: None)
    sources = {(r.subject, r.run): r.path for r in discover_runs(ctx.dataset_dir, config.data.space).runs}
    rows = []
    for spec in ctx.plan.of("within"):
        started = time.perf_counter()
        table = ctx.views.table(spec.subjects)
        items = labelled_items(table.runs, table.labels(spec.lag))  # every volume: no censoring
        with warnings.catch_warnings(record=True):
            parts = make_splits(items, dict(spec.split))
        subject = spec.subjects[0]
        runs = sorted({int(i["run"]) for i in parts["train"] + parts["test"]})
        cleaned = {r: clean_img(sources[(subject, r)], detrend=True, standardize="zscore_sample")
                   for r in runs}
        mask = compute_epi_mask(mean_img(sources[(subject, runs[0])]))

        train, test = parts["train"], parts["test"]
        decoder = Decoder(estimator="logistic_l2", mask=mask, screening_percentile=20, cv=LeaveOneGroupOut(),
                          scoring="balanced_accuracy", standardize=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decoder.fit(_volumes(cleaned, train), np.array([i["label"] for i in train]),
                        groups=np.array([i["run"] for i in train]))
            predicted = decoder.predict(_volumes(cleaned, test))
        score = balanced_accuracy_score([i["label"] for i in test], predicted)
        rows.append({"model": spec.id, "subject": subject, "balanced_accuracy": score,
                     "seconds": round(time.perf_counter() - started, 1)})
        print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    Path(out).mkdir(parents=True, exist_ok=True)
    frame.to_csv(Path(out) / "nilearn_as_user.csv", index=False)
    print(frame.round(3).to_string(index=False))
    print(f"mean balanced accuracy {frame['balanced_accuracy'].mean():.3f}")


if __name__ == "__main__":
    fire.Fire(as_user)
