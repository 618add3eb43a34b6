"""Everything a finished (or partly finished) study writes: results.csv, figures, summary, report.

Rebuilt from the stored predictions every time the study runs, so it always describes exactly
the models that have finished. Everything here reads the study through its
:class:`~monai_emotion.study.context.StudyContext`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monai_emotion.data.annotations import EMOTION_TOKENS, read_observers
from monai_emotion.data.labels import load_emotion_map
from monai_emotion.fileio import load_json
from monai_emotion.study import figures as fr
from monai_emotion.study import figures_data as fd
from monai_emotion.study.bundle import captured
from monai_emotion.study.context import StudyContext
from monai_emotion.study.embedding import embed_2d, feature_silhouette, penultimate_features
from monai_emotion.study.history import epoch_curves
from monai_emotion.study.permutation import permutation_seeds, read_null
from monai_emotion.study.plan import ModelSpec
from monai_emotion.study.results import flagged_models, headline, read_predictions, tidy_results
from monai_emotion.study.scoring import MEAN, POOLED, unit_scores

__all__ = ["build_outputs", "emotion_ranking", "oracle_comparison", "study_predictions", "study_null",
           "decoder_names", "group_experiments"]

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
    oracle = {s: float(v["balanced_accuracy"]) for s, v in load_json(root / "oracle.json").items()}
    generation = load_json(root / "generation.json")
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


def lowest_recall_subject(results: pd.DataFrame, emotion: str, subjects: Sequence[str]) -> str:
    """The subject whose within-subject recall of ``emotion`` is lowest (first decoder; else the first subject)."""
    for decoder in fr.decoders_in(results):
        rows = results[(results["decoder"] == decoder) & (results["experiment"] == "within")
                       & (results["model"] == "*") & (results["emotion"] == emotion)
                       & ~results["subject"].isin([MEAN, POOLED]) & results["recall"].notna()]
        if len(rows):
            return str(rows.sort_values(["recall", "subject"]).iloc[0]["subject"])
    return str(subjects[0])


def confusion_contrast(predictions: pd.DataFrame, decoder: str, subject: str, emotion: str) -> dict[str, Any]:
    """What ``subject``'s ``emotion`` volumes were called, next to the other subjects' and chance.

    ``chance``: the subject's overall predicted-class shares (a decoder that ignores the
    emotion calls the ``emotion`` volumes in those proportions).
    """
    within = predictions[(predictions["decoder"] == decoder) & (predictions["experiment"] == "within")]

    def shares(frame: pd.DataFrame) -> dict[str, float]:
        counts = frame["predicted_label"].value_counts(normalize=True)
        return {str(k): round(float(v), 4) for k, v in counts.items()}

    mine = within[within["subject"] == subject]
    others = within[(within["subject"] != subject) & (within["true_label"] == emotion)]
    return {"shares": shares(mine[mine["true_label"] == emotion]), "others_shares": shares(others),
            "chance_shares": shares(mine), "others_n": int(len(others))}


def _versus_chance(row: dict[str, Any]) -> dict[str, Any]:
    """``versus_chance`` of each unit: its verdict (the corrected test of chance.py, not the interval)."""
    for unit in ("mean", "pooled"):
        r = row.get(unit)
        if r:
            r["versus_chance"] = r.get("verdict") or "untested"
    return row


def decoder_names(ctx: StudyContext) -> list[str]:
    """The decoders with a model folder (``cnn`` first, then the others by name): ``models/<decoder>/``."""
    folder = ctx.root / "models"
    found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return ["cnn", *[d for d in found if d != "cnn"]] if "cnn" in found else found


def group_experiments(ctx: StudyContext) -> list[str]:
    """Experiments whose every model sees one subject: their MEAN rows get the group test."""
    names = {m.experiment for m in ctx.plan.models}
    return sorted(e for e in names if all(len(m.subjects) == 1 for m in ctx.plan.of(e)))


def study_predictions(ctx: StudyContext) -> pd.DataFrame:
    """The stored predictions of every finished model of the plan, for every decoder."""
    frames = []
    for decoder in decoder_names(ctx):
        if decoder == "cnn":
            frames.append(read_predictions(ctx.cnn.root, ctx.plan.models, "cnn", "eval"))
        else:
            frames.append(read_predictions(ctx.root / "models" / decoder, ctx.plan.models, decoder))
    kept = [f for f in frames if len(f)]
    if not kept:
        return read_predictions(ctx.cnn.root, [], "cnn")
    return pd.concat(kept, ignore_index=True)


def study_null(ctx: StudyContext) -> pd.DataFrame:
    """Permutation scores: every ``permutations_<decoder>.csv``, and each complete CNN permutation."""
    frames = [read_null(path) for path in sorted(ctx.root.glob("permutations_*.csv"))]
    perms = ctx.study.permutations
    for seed in permutation_seeds(perms.first_seed, perms.cnn):
        for experiment in perms.cnn_experiments:
            specs = [s.permuted(seed) for s in ctx.plan.of(experiment)]
            if specs and all(ctx.cnn.done(s) for s in specs):  # a partial protocol would bias the null
                preds = read_predictions(ctx.cnn.root, specs, "cnn", "eval")
                frames.append(unit_scores(preds, ctx.classes).assign(permutation=seed))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else read_null(ctx.root / "permutations_linear.csv")


def _embedding(ctx: StudyContext, figures: Path) -> dict[str, Any] | None:
    settings = ctx.study.figures
    wanted = settings.embedding_model
    candidates = [m for m in ctx.plan.models if (m.id == wanted if wanted else m.experiment in ("cross", "within"))]
    seeds = permutation_seeds(ctx.study.permutations.first_seed, ctx.study.permutations.cnn)

    def permuted_twin(spec: ModelSpec) -> ModelSpec | None:
        return next((spec.permuted(s) for s in seeds if ctx.cnn.done(spec.permuted(s))), None)

    # the cross-subject model first (the seed's analysis), but one whose label-permuted twin was
    # trained before any without: the permuted silhouette is what the emotion one is read against
    candidates.sort(key=lambda m: (permuted_twin(m) is None, m.experiment != "cross"))
    spec = next((m for m in candidates if ctx.cnn.done(m)), None)
    if spec is None:
        return None
    test = spec.test_sets[0]
    with captured(ctx.root / "logs" / "embedding.log"):
        features, items = penultimate_features(ctx.study, ctx.base, spec, test,
                                               ctx.cnn.folder(spec) / "ckpt" / "model.pt",
                                               settings.max_embedding_points)
    labels = [int(i["label"]) for i in items]
    emb = embed_2d(features, labels, settings.tsne_perplexity)
    path = fd.fig_embedding(emb, labels, ctx.classes, f"{spec.id} on '{test.name}' ({len(items)} volumes)",
                            figures / "fig6_embedding.png")
    ctx.log(f"  embedding of {spec.id}: silhouette {emb.get('silhouette', float('nan')):.3f}")
    # references to read the emotion silhouette against: the same features grouped by run and by
    # subject (what else the model may encode), and a label-permuted model's features by emotion
    references = {"silhouette_by_run": feature_silhouette(features, [i["run"] for i in items]),
                  "silhouette_by_subject": feature_silhouette(features, [i["subject"] for i in items])}
    permuted = permuted_twin(spec)
    if permuted is not None:
        with captured(ctx.root / "logs" / "embedding.log"):
            null_features, null_items = penultimate_features(ctx.study, ctx.base, permuted, test,
                                                             ctx.cnn.folder(permuted) / "ckpt" / "model.pt",
                                                             settings.max_embedding_points)
        references["silhouette_permuted_model"] = feature_silhouette(null_features, [i["label"] for i in null_items])
        references["permuted_model"] = permuted.id
    return {"model": spec.id, "test_set": test.name, "n": len(items), "path": path.name, **references,
            **{k: emb[k] for k in ("silhouette", "silhouette_pca", "silhouette_tsne", "pca_explained", "perplexity")
               if k in emb}}


def _data_figures(ctx: StudyContext, figures: Path, paths: dict[str, Any]) -> dict[str, Any]:
    """Figures 5 and 7 (annotations, class x run table); returns the summary's data sections."""
    rule = ctx.study.labels
    labels = ctx.table.labels(rule.lag)
    emap = load_emotion_map(rule.emotion_map)
    observers = read_observers(ctx.annotations_dir, rule.observers, EMOTION_TOKENS | set(emap.mapping))
    structure = fd.category_structure(*fd.category_votes(observers), emap)
    paths["fig5"] = fd.fig_annotations(labels, structure, figures / "fig5_annotations.png")
    paths["fig7"], by_run = fd.fig_class_by_run(labels, figures / "fig7_class_by_run.png")
    data = {"dataset_dir": ctx.dataset_dir, "annotations_dir": ctx.annotations_dir,
            "synthetic": ctx.study.data.synthetic, "n_labelled": len(ctx.experiment["train"]),
            "spatial_shape": list(ctx.experiment["spatial_shape"]), "lag": rule.lag,
            "observers": rule.to_dict()["observers"], "threshold": rule.threshold,
            "class_by_run": by_run.to_dict(orient="index")}
    annotations = {"within_class_r": structure["within"], "between_class_r": structure["between"],
                   "token_seconds": structure["frequency"]}
    return {"data": data, "annotations": annotations}


def _result_figures(ctx: StudyContext, results: pd.DataFrame, predictions: pd.DataFrame, figures: Path,
                    paths: dict[str, Any], summary: dict[str, Any]) -> None:
    """Figures 1-3 and 8 (recall heatmap, pie, seen vs unseen, leaky vs clean) and their summary."""
    classes, settings = list(ctx.classes), ctx.study.figures
    unpermuted = predictions[predictions["permutation"] == -1]
    summary["headline"] = [_versus_chance(r) for r in headline(results)]
    summary["emotion_ranking"] = emotion_ranking(results, classes)
    summary["oracle"] = oracle_comparison(results, ctx.synthetic_root)
    paths["fig1"] = fr.fig_within_heatmap(results, classes, figures / "fig1_within_heatmap.png")
    pie_subject = settings.pie_subject or lowest_recall_subject(results, settings.pie_emotion, ctx.plan.subjects)
    pie = fr.fig_pie(unpermuted, pie_subject, settings.pie_emotion, figures / "fig2_pie.png")
    if pie:
        paths["fig2"], summary["pie"] = pie[0], {
            "subject": pie_subject, "emotion": settings.pie_emotion, "chosen": "setting" if settings.pie_subject
            else f"lowest within-subject {settings.pie_emotion} recall", **pie[1],
            **confusion_contrast(unpermuted, pie[1]["decoder"], pie_subject, settings.pie_emotion)}
    decoder = fr.decoders_in(predictions)[0]
    paths["fig3"] = fr.fig_seen_unseen(unpermuted, classes, figures / "fig3_seen_unseen.png", decoder)
    paths["fig8"] = fr.fig_leaky_vs_clean(results, figures / "fig8_leaky_vs_clean.png")


def _curve_figure(ctx: StudyContext, figures: Path, paths: dict[str, Any], summary: dict[str, Any]) -> None:
    """Figure 4 (accuracy over epochs of the finished within and cross models)."""
    folders = [(m.id, ctx.cnn.folder(m) / "train") for m in ctx.plan.models
               if m.experiment in ("within", "cross") and ctx.cnn.done(m)]
    curves = epoch_curves(folders)
    paths["fig4"] = fr.fig_curves(curves, figures / "fig4_curves.png")
    if len(curves):
        last = curves[curves["epoch"] == curves["epoch"].max()]
        summary["curves"] = {c: float(g["value"].mean()) for c, g in
                             last[last["model"].str.startswith("within/")].groupby("curve")}


def build_outputs(ctx: StudyContext) -> dict[str, Any]:
    """Write results.csv and every figure; returns the summary (report.md is written from it).

    Parameters
    ----------
    ctx
        The prepared study.

    Returns
    -------
    dict
        The summary (without timings).
    """
    root, classes, study = ctx.root, list(ctx.classes), ctx.study
    figures = root / "figures"
    predictions, null = study_predictions(ctx), study_null(ctx)
    results = (tidy_results(predictions, null, classes, study.name, study.statistics, group_experiments(ctx))
               if len(predictions) else pd.DataFrame())
    results.to_csv(root / "results.csv", index=False, float_format="%.6g")
    if len(predictions):
        predictions[predictions["permutation"] == -1].to_csv(root / "predictions_all.csv.gz", index=False,
                                                              float_format="%.6g")
    paths: dict[str, Any] = {}
    summary: dict[str, Any] = {
        "study": study.name, "config": str(study.source), "plan": ctx.plan.describe(),
        **_data_figures(ctx, figures, paths),
        "training": {**study.training.to_dict(), "network": dict(study.network)},
        "permutations": study.permutations.to_dict(), "classes": classes,
        "models_done": {d: int(predictions[(predictions["decoder"] == d) & (predictions["permutation"] == -1)]
                               ["model"].nunique()) if len(predictions) else 0
                        for d in dict.fromkeys(["cnn", "linear", *decoder_names(ctx)])},
        "models_planned": len(ctx.plan.models),
        "statistics": {**study.statistics.to_dict(), "group_experiments": group_experiments(ctx),
                       "gap": study.splits.gap_for(study.labels.lag)},
        "warnings": {"flagged_models": flagged_models(results) if len(results) else []},
    }
    if len(results):
        _result_figures(ctx, results, predictions, figures, paths, summary)
    _curve_figure(ctx, figures, paths, summary)
    summary["embedding"] = _embedding(ctx, figures)
    if summary["embedding"]:
        paths["fig6"] = figures / summary["embedding"]["path"]
    summary["figures"] = {k: Path(v).name for k, v in sorted(paths.items()) if v}
    return summary
