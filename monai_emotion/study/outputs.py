"""Everything a finished (or partly finished) study writes: results.csv, figures, summary, report.

Rebuilt from the stored predictions every time the study runs, so it always describes exactly
the models that have finished.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monai_emotion.data.annotations import read_observers
from monai_emotion.data.labels import load_emotion_map
from monai_emotion.study import figures as fr
from monai_emotion.study import figures_data as fd
from monai_emotion.study.bundle import captured
from monai_emotion.study.embedding import embed_2d, penultimate_features
from monai_emotion.study.history import epoch_curves
from monai_emotion.study.results import headline, tidy_results
from monai_emotion.study.scoring import MEAN, POOLED

__all__ = ["build_outputs", "emotion_ranking", "oracle_comparison"]

#: per-emotion rankings reported (experiment, test set, unit)
RANKINGS = (("within", "heldout", MEAN), ("cross", "heldout", POOLED), ("unseen", "unseen_heldout", POOLED),
            ("unseen", "unseen_all_runs", POOLED))


def emotion_ranking(results: pd.DataFrame, classes: list[str]) -> dict[str, dict[str, Any]]:
    """Per decoder and experiment: recall per emotion and the emotions from best to worst."""
    out: dict[str, dict[str, Any]] = {}
    for decoder in sorted(results["decoder"].unique()):
        for experiment, test_set, unit in RANKINGS:
            rows = results[(results["decoder"] == decoder) & (results["experiment"] == experiment)
                           & (results["test_set"] == test_set) & (results["model"] == "*")
                           & (results["subject"] == unit) & results["emotion"].isin(classes)]
            recall = {r.emotion: float(r.recall) for r in rows.itertuples() if pd.notna(r.recall)}
            if recall:
                out[f"{decoder}/{experiment}/{test_set}"] = {
                    "unit": unit, "recall": recall, "order": sorted(recall, key=recall.get, reverse=True)}
    return out


def oracle_comparison(results: pd.DataFrame, synthetic_root: str | None) -> dict[str, Any] | None:
    """Within-subject balanced accuracy of each decoder against the synthetic data's oracle."""
    if synthetic_root is None or not (Path(synthetic_root) / "ground_truth" / "oracle.json").is_file():
        return None
    root = Path(synthetic_root) / "ground_truth"
    oracle = {s: float(v["balanced_accuracy"]) for s, v in json.loads((root / "oracle.json").read_text()).items()}
    generation = json.loads((root / "generation.json").read_text())
    out: dict[str, Any] = {"oracle": oracle, "oracle_mean": float(np.mean(list(oracle.values()))),
                           "null": bool(generation.get("null")), "class_strength": generation.get("class_strength"),
                           "class_shared": generation.get("class_shared")}
    for decoder in sorted(results["decoder"].unique()):
        rows = results[(results["decoder"] == decoder) & (results["experiment"] == "within")
                       & (results["test_set"] == "heldout") & (results["model"] == "*") & (results["emotion"] == "ALL")
                       & results["subject"].isin(list(oracle))]
        if not len(rows):
            continue
        per = {r.subject: float(r.balanced_accuracy) for r in rows.itertuples()}
        ratios = {s: per[s] / oracle[s] for s in per if oracle[s] > 0}
        out[decoder] = {"within_balanced_accuracy": per, "ratio_to_oracle": ratios,
                        "mean_ratio": float(np.mean(list(ratios.values()))) if ratios else None,
                        "ratio_of_means": float(np.mean(list(per.values())) / np.mean([oracle[s] for s in per]))}
    return out


def _versus_chance(row: dict[str, Any]) -> dict[str, Any]:
    for unit in ("mean", "pooled"):
        r = row.get(unit)
        if not r or r.get("chance_low") is None or r.get("balanced_accuracy") is None:
            continue
        value, low, high = r["balanced_accuracy"], r["chance_low"], r["chance_high"]
        r["versus_chance"] = "above" if value > high else "below" if value < low else "inside"
    return row


def _embedding(state: Any, figures: Path, log: Callable[[str], None]) -> dict[str, Any] | None:
    settings = state.study["figures"]
    wanted = settings["embedding_model"]
    candidates = [m for m in state.plan.models if (m.id == wanted if wanted else m.experiment in ("cross", "within"))]
    candidates.sort(key=lambda m: m.experiment != "cross")
    spec = next((m for m in candidates if state.cnn.done(m)), None)
    if spec is None:
        return None
    test = spec.test_sets[0]
    with captured(state.root / "logs" / "embedding.log"):
        features, items = penultimate_features(state.study, state.base, spec, test,
                                               state.cnn.folder(spec) / "ckpt" / "model.pt",
                                               int(settings["max_embedding_points"]))
    labels = [int(i["label"]) for i in items]
    emb = embed_2d(features, labels, float(settings["tsne_perplexity"]))
    path = fd.fig_embedding(emb, labels, state.classes, f"{spec.id} on '{test.name}' ({len(items)} volumes)",
                            figures / "fig6_embedding.png")
    log(f"  embedding of {spec.id}: silhouette {emb.get('silhouette', float('nan')):.3f}")
    return {"model": spec.id, "test_set": test.name, "n": len(items), "path": path.name,
            **{k: emb[k] for k in ("silhouette", "silhouette_pca", "silhouette_tsne", "pca_explained", "perplexity")
               if k in emb}}


def build_outputs(state: Any, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write results.csv and every figure; returns the summary (report.md is written from it)."""
    root, classes, study = state.root, state.classes, state.study
    figures = root / "figures"
    predictions, null = state.predictions(), state.null()
    results = tidy_results(predictions, null, classes, study.name) if len(predictions) else pd.DataFrame()
    results.to_csv(root / "results.csv", index=False, float_format="%.6g")
    if len(predictions):
        predictions[predictions["permutation"] == -1].to_csv(root / "predictions_all.csv.gz", index=False,
                                                              float_format="%.6g")
    lag = float(study["labels"]["lag"])
    labels = state.table.labels(lag)
    emap = load_emotion_map()
    tokens, votes = fd.category_votes(read_observers(state.annotations_dir, study["labels"]["observers"]))
    structure = fd.category_structure(tokens, votes, emap)
    paths: dict[str, Any] = {"fig5": fd.fig_annotations(labels, structure, figures / "fig5_annotations.png")}
    paths["fig7"], by_run = fd.fig_class_by_run(labels, figures / "fig7_class_by_run.png")
    summary: dict[str, Any] = {
        "study": study.name, "config": str(study.source), "plan": state.plan.describe(),
        "data": {"dataset_dir": state.dataset_dir, "annotations_dir": state.annotations_dir,
                 "synthetic": study["data"]["synthetic"], "n_labelled": len(state.experiment["train"]),
                 "spatial_shape": list(state.experiment["spatial_shape"]), "lag": lag,
                 "observers": study["labels"]["observers"], "threshold": study["labels"]["threshold"],
                 "class_by_run": by_run.to_dict(orient="index")},
        "annotations": {"within_class_r": structure["within"], "between_class_r": structure["between"],
                        "token_seconds": structure["frequency"]},
        "training": {**study["training"], "network": study["network"]},
        "permutations": study["permutations"], "classes": classes,
        "models_done": {d: int(predictions[(predictions["decoder"] == d) & (predictions["permutation"] == -1)]
                               ["model"].nunique()) if len(predictions) else 0 for d in ("cnn", "linear")},
        "models_planned": len(state.plan.models),
    }
    if len(results):
        summary["headline"] = [_versus_chance(r) for r in headline(results)]
        summary["emotion_ranking"] = emotion_ranking(results, classes)
        summary["oracle"] = oracle_comparison(results, state.synthetic_root)
        paths["fig1"] = fr.fig_within_heatmap(results, classes, figures / "fig1_within_heatmap.png")
        subjects = state.plan.subjects
        pie_subject = study["figures"]["pie_subject"] or subjects[0]
        pie = fr.fig_pie(predictions[predictions["permutation"] == -1], str(pie_subject),
                         study["figures"]["pie_emotion"], figures / "fig2_pie.png")
        if pie:
            paths["fig2"], summary["pie"] = pie[0], {"subject": str(pie_subject),
                                                     "emotion": study["figures"]["pie_emotion"], **pie[1]}
        decoder = "cnn" if (predictions["decoder"] == "cnn").any() else "linear"
        paths["fig3"] = fr.fig_seen_unseen(predictions[predictions["permutation"] == -1], classes,
                                           figures / "fig3_seen_unseen.png", decoder)
        paths["fig8"] = fr.fig_leaky_vs_clean(results, figures / "fig8_leaky_vs_clean.png")
    folders = [(m.id, state.cnn.folder(m) / "train") for m in state.plan.models
               if m.experiment in ("within", "cross") and state.cnn.done(m)]
    curves = epoch_curves(folders)
    paths["fig4"] = fr.fig_curves(curves, figures / "fig4_curves.png")
    if len(curves):
        last = curves[curves["epoch"] == curves["epoch"].max()]
        summary["curves"] = {c: float(g["value"].mean()) for c, g in
                             last[last["model"].str.startswith("within/")].groupby("curve")}
    summary["embedding"] = _embedding(state, figures, log)
    if summary["embedding"]:
        paths["fig6"] = figures / summary["embedding"]["path"]
    summary["figures"] = {k: Path(v).name for k, v in sorted(paths.items()) if v}
    return summary
