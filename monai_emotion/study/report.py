"""``report.md``: the study's figures with captions and numbers, and its headline table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai_emotion.fileio import atomic_write_text

__all__ = ["write_report", "headline_markdown"]

_PROTOCOLS = {
    ("within", "heldout"): "single-subject models, held-out runs of the same subject",
    ("cross", "heldout"): "one model on all subjects, the same held-out runs",
    ("unseen", "unseen_heldout"): "unseen subjects, their held-out runs (no movie moment seen in training)",
    ("unseen", "unseen_all_runs"): "unseen subjects, all their runs (the stimulus was heard in training)",
    ("unseen", "seen_heldout"): "training subjects of the unseen-subject models, held-out runs",
    ("leaky", "leaky_random"): "**LEAKY**: the seed's random 80/20 split of volumes, no lag",
}


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and value != value) else f"{value:.{digits}f}"


def _chance(r: dict[str, Any] | None) -> str:
    if not r or r.get("chance_low") is None:
        return "-"
    method = "" if r.get("chance_method") == "quantile" else ", normal approx."
    return (f"[{_num(r['chance_low'])}, {_num(r['chance_high'])}] (n={int(r['n_permutations'])}{method}), "
            f"p={_num(r.get('p_value'))}")


def headline_markdown(rows: list[dict[str, Any]]) -> str:
    """The headline table: balanced accuracy per protocol and decoder with chance intervals."""
    lines = ["| protocol | test set | decoder | balanced acc. (mean over subjects) | chance 95% interval, p | "
             "pooled | vs chance |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        mean, pooled = row.get("mean") or {}, row.get("pooled") or {}
        label = _PROTOCOLS.get((row["experiment"], row["test_set"]), row["experiment"])
        lines.append(f"| {label} | {row['test_set']} | {row['decoder']} | {_num(mean.get('balanced_accuracy'))} | "
                     f"{_chance(mean)} | {_num(pooled.get('balanced_accuracy'))} | {mean.get('versus_chance', '-')} |")
    return "\n".join(lines)


def _clustering_verdict(within: float, between: float) -> str:
    """What the co-occurrence numbers say about the seed's five-class "heuristic clustering"."""
    if within - between < 0.15:
        return ("Categories merged into one class are hardly more related in time than any two "
                "categories: the observers' use does not support the five-class clustering.")
    return ("Categories merged into one class co-occur clearly more than others here (synthetic observers "
            "draw their tokens class by class; see docs/validation.md for the real annotations).")


def _figure(lines: list[str], summary: dict[str, Any], key: str, title: str, caption: str) -> None:
    name = summary["figures"].get(key)
    lines += [f"### {title}", ""]
    if name:
        lines += [f"![{title}](figures/{name})", "", caption, ""]
    else:
        lines += ["(not produced: the models it needs have not run)", ""]


def _ranking_text(summary: dict[str, Any]) -> str:
    parts = []
    for key, r in (summary.get("emotion_ranking") or {}).items():
        recall = ", ".join(f"{c} {r['recall'][c]:.2f}" for c in r["order"])
        parts.append(f"- {key} ({r['unit']}): {recall}")
    return "\n".join(parts)


def _oracle_text(oracle: dict[str, Any] | None) -> list[str]:
    if not oracle:
        return []
    lines = ["## Ground truth (synthetic data)", ""]
    if oracle["null"]:
        lines.append("The data are **null**: no emotion signal was planted; every clean protocol should sit "
                     "inside its chance interval.")
    lines.append(f"Oracle decoder (template matching with the true patterns, all runs): mean balanced accuracy "
                 f"{oracle['oracle_mean']:.3f} ({', '.join(f'sub-{s} {v:.3f}' for s, v in oracle['oracle'].items())}).")
    for decoder in ("cnn", "linear"):
        if decoder in oracle:
            d = oracle[decoder]
            lines.append(f"- {decoder}: within-subject balanced accuracy / oracle = {_num(d['ratio_of_means'])} "
                         f"(ratio of means; per subject {', '.join(f'{s} {v:.2f}' for s, v in d['ratio_to_oracle'].items())})")
    lines.append(f"- planted: strength {oracle['class_strength']}, share common to all subjects "
                 f"{oracle['class_shared']}")
    return [*lines, ""]


def write_report(summary: dict[str, Any], root: Path) -> Path:
    """Write ``root/report.md`` from the study summary."""
    data, training = summary["data"], summary["training"]
    lines = [f"# Study '{summary['study']}'", "",
             f"Config `{summary['config']}`. Data: "
             + (f"synthetic {data['synthetic']}" if data.get("synthetic") else f"`{data['dataset_dir']}`")
             + f"; {data['n_labelled']} labelled volumes, grid {data['spatial_shape']}, observers "
               f"'{data['observers']}', threshold {data['threshold']}, lag {data['lag']} s. Network "
               f"{training['network']}, training {({k: v for k, v in training.items() if k != 'network'})}.",
             "",
             f"Run folds {summary['plan']['run_folds']} (every class in every test fold); subject folds "
             f"{summary['plan']['subject_folds']}; models planned {summary['plan']['models']} "
             f"(finished: CNN {summary['models_done']['cnn']}, linear {summary['models_done']['linear']}). "
             "Training volumes sharing movie moments with validation or test runs (the 16 s overlap of "
             "neighbouring runs) are dropped. Chance levels: labels circularly shifted within runs, every "
             "model refitted per permutation.", "",
             "## Headline", "", headline_markdown(summary.get("headline", [])), "",
             "The leaky row repeats the seed's protocol: neighbouring volumes (near-duplicates of one slow BOLD "
             "response, inside one emotion episode) fall on both sides of the split, and the test set doubles as "
             "the validation set. Its score measures memorisation of temporal neighbours, not emotion decoding.",
             "", *_oracle_text(summary.get("oracle")), "## Per-emotion recall", "", _ranking_text(summary), "",
             "## Figures", ""]
    head = {(r["decoder"], r["experiment"], r["test_set"]): r for r in summary.get("headline", [])}

    def leaky(decoder: str) -> dict[str, Any] | None:
        return (head.get((decoder, "leaky", "leaky_random")) or {}).get("mean")

    def bacc(decoder: str, experiment: str, test_set: str, unit: str = "mean") -> str:
        return _num(((head.get((decoder, experiment, test_set)) or {}).get(unit) or {}).get("balanced_accuracy"))

    _figure(lines, summary, "fig1", "1. Emotion x subject recall within subject (ALL = cross-subject model)",
            f"Recall per emotion on each subject's held-out runs (pooled over run folds). Mean balanced accuracy: "
            f"CNN {bacc('cnn', 'within', 'heldout')}, linear {bacc('linear', 'within', 'heldout')}; cross-subject "
            f"(pooled) CNN {bacc('cnn', 'cross', 'heldout', 'pooled')}, linear "
            f"{bacc('linear', 'cross', 'heldout', 'pooled')}. Chance 1/{len(summary['classes'])}.")
    pie = summary.get("pie") or {}
    _figure(lines, summary, "fig2", f"2. What sub-{pie.get('subject', '?')}'s {pie.get('emotion', '')} volumes were "
            "called", f"{pie.get('n', 0)} held-out volumes ({pie.get('decoder', '')}, within-subject): "
            f"{pie.get('predicted', {})}.")
    unseen = [bacc(d, "unseen", t) for d in ("cnn", "linear") for t in ("seen_heldout", "unseen_heldout",
                                                                         "unseen_all_runs")]
    _figure(lines, summary, "fig3", "3. Seen vs unseen subjects per subject fold",
            "Mean balanced accuracy, CNN: seen subjects' held-out runs {}, unseen subjects' held-out runs {}, "
            "unseen subjects' all runs {} (linear: {}, {}, {}).".format(*unseen))
    curves = summary.get("curves") or {}
    _figure(lines, summary, "fig4", "4. Accuracy over epochs",
            "Band: mean +/- sd over the single-subject models; dashed: cross-subject models. Last epoch, "
            "single-subject mean: " + ", ".join(f"{k} {v:.2f}" for k, v in curves.items())
            + ". The gap between train and validation accuracy is memorisation.")
    ann = summary["annotations"]
    _figure(lines, summary, "fig5", "5. The annotations: class frequencies and category co-occurrence",
            f"Mean correlation over movie time of the observers' votes for two raw categories merged into the "
            f"same class: {ann['within_class_r']:.2f}; for categories of different classes: "
            f"{ann['between_class_r']:.2f}. " + _clustering_verdict(ann['within_class_r'], ann['between_class_r']))
    emb = summary.get("embedding") or {}
    _figure(lines, summary, "fig6", "6. Penultimate features in 2-D",
            f"{emb.get('model', '')} on '{emb.get('test_set', '')}' ({emb.get('n', 0)} volumes): silhouette by "
            f"emotion {_num(emb.get('silhouette'))} (cosine, 128-d features; 1 = separate clusters, 0 = none), "
            f"{_num(emb.get('silhouette_pca'))} in the PCA plane, {_num(emb.get('silhouette_tsne'))} in t-SNE.")
    _figure(lines, summary, "fig7", "7. Class x run table (run confound)",
            "Labelled volumes per class and run. Classes concentrated in few runs let a model decode 'which run' "
            "instead of 'which emotion'; held-out-run splits and per-run z-scoring guard against it.")
    _figure(lines, summary, "fig8", "8. The seed's leaky protocol vs a clean one",
            f"Mean balanced accuracy, clean (held-out runs) vs leaky (random volumes, no lag): CNN "
            f"{bacc('cnn', 'within', 'heldout')} vs {bacc('cnn', 'leaky', 'leaky_random')}, linear "
            f"{bacc('linear', 'within', 'heldout')} vs {bacc('linear', 'leaky', 'leaky_random')}. Bars: "
            "permutation 95% chance intervals. Under the leaky split even labels shifted in time are "
            "'decoded' well above 1/5 (its own chance interval, mean over subjects: CNN "
            f"{_chance(leaky('cnn'))}; linear {_chance(leaky('linear'))}): its chance level is not 20 %.")
    timings = summary.get("timings")
    lines += ["## Files", "", "`results.csv` (one row per model x test set x emotion, plus per-subject/POOLED/MEAN "
              "rows with chance intervals), `summary.json`, `models/cnn/<model>/` (bundle output: TensorBoard "
              "events, checkpoints, eval/<test set>/metrics.json + predictions.csv), `models/linear/<model>/`, "
              "`permutations_linear.csv`, `figures/`.", ""]
    if timings:
        lines += [f"Timings (s): {timings}", ""]
    path = Path(root) / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
