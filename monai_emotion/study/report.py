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


def format_number(value: Any, digits: int = 3) -> str:
    """A number for the report's tables: ``digits`` decimals, ``-`` for missing or NaN."""
    return "-" if value is None or (isinstance(value, float) and value != value) else f"{value:.{digits}f}"


def _chance(r: dict[str, Any] | None) -> str:
    if not r or r.get("chance_low") is None:
        return "-"
    method = {"quantile": "", "group": ", group null", "range": ", min-max: too few for 95%"}.get(
        r.get("chance_method"), "")
    return (f"[{format_number(r['chance_low'])}, {format_number(r['chance_high'])}] (n={int(r['n_permutations'] or 0)}{method}), "
            f"p={format_p(r.get('p_value'))}, corrected {format_p(r.get('p_adjusted'))}")


def format_p(value: Any) -> str:
    """A p-value for the report's tables: as :func:`format_number`, ``<0.001`` below 0.001."""
    return "<0.001" if isinstance(value, float) and 0 <= value < 0.001 else format_number(value)


def _why(r: dict[str, Any], alpha: float) -> str:
    """Why a verdict is ``untested``."""
    n = int(r.get("n_permutations") or 0)
    if not n:
        return "untested (no permutations)"
    if r.get("chance_test") == "group":
        return f"untested (group null too coarse: {n} permutations per subject cannot reach p <= {alpha})"
    return f"untested ({n} permutations: the p-value cannot go below 1/{n + 1}; >= 19 are needed for {alpha})"


def headline_markdown(rows: list[dict[str, Any]], alpha: float = 0.05) -> str:
    """The headline table: balanced accuracy per protocol and decoder with chance tests and verdicts."""
    lines = ["| experiment | test set | protocol | decoder | balanced acc. (mean over subjects) [95% block bootstrap] "
             "| chance 95% interval, p | pooled | flagged models | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        mean, pooled = row.get("mean") or {}, row.get("pooled") or {}
        label = _PROTOCOLS.get((row["experiment"], row["test_set"]), row["experiment"])
        verdict = mean.get("verdict") or "untested"
        shown = _why(mean, alpha) if verdict == "untested" else f"**{verdict}**" if verdict == "above" else verdict
        ci = (f" [{format_number(pooled.get('balanced_accuracy_ci_low'))}, {format_number(pooled.get('balanced_accuracy_ci_high'))}]"
              if pooled.get("balanced_accuracy_ci_low") is not None else "")
        lines.append(f"| {label} | {row['test_set']} | {row.get('protocol', '-')} | {row['decoder']} | "
                     f"{format_number(mean.get('balanced_accuracy'))} | {_chance(mean)} | "
                     f"{format_number(pooled.get('balanced_accuracy'))}{ci} | "
                     f"{mean.get('n_flagged', 0) or 0} of {mean.get('n_models', 0) or 0} | {shown} |")
    return "\n".join(lines)


def _statistics_text(summary: dict[str, Any]) -> list[str]:
    stats = summary.get("statistics") or {}
    correction = {"fdr": "Benjamini-Hochberg FDR", "holm": "Holm"}.get(stats.get("correction"), "-")
    return [f"Verdicts follow the one-sided permutation p-value, corrected ({correction}, alpha "
            f"{stats.get('alpha')}) across each table of tests (the MEAN rows here; POOLED and per-subject rows "
            "of results.csv are corrected in their own tables). Experiments of single-subject models "
            f"({', '.join(stats.get('group_experiments', []))}) get the group test: every subject has its own "
            "independent circular shifts, and the mean over subjects is compared with every combination of one "
            "permutation score (or the observed one) per subject (an exact Stelzer-style group null). Other rows: "
            "p = (1 + #null >= observed) / (1 + n); with fewer than 19 permutations the verdict is `untested`. "
            "Protocol `clean`: no movie moment of the test set was heard in training by any subject; "
            "`stimulus-seen`: the training subjects heard it; `leaky`: the seed's random split. Intervals of "
            "balanced accuracy and recall: block bootstrap over episodes (docs/study.md). Gap around held-out "
            f"runs: {format_number(stats.get('gap'), 1)} s of movie time.", ""]


def _warnings_text(summary: dict[str, Any]) -> list[str]:
    flagged = (summary.get("warnings") or {}).get("flagged_models") or []
    if not flagged:
        return ["## Warnings", "", "No model is flagged as collapsed or degenerate.", ""]
    lines = ["## Warnings", "", f"{len(flagged)} model x test set(s) flagged as collapsed or degenerate "
             "(monai_emotion.metrics.degeneracy): their scores describe a class bias, not decoding.", ""]
    lines += [f"- {f['decoder']} {f['model']} on {f['test_set']}: {format_number(f['top_class_share'], 2)} of its volumes "
              f"predicted {f['top_class']}; {'; '.join(f.get('reasons') or [])}" for f in flagged]
    return [*lines, ""]


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
    for decoder, d in oracle.items():
        if isinstance(d, dict) and "ratio_of_means" in d:
            lines.append(f"- {decoder}: within-subject balanced accuracy / oracle = {format_number(d['ratio_of_means'])} "
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
             "## Headline", "", headline_markdown(summary.get("headline", []),
                                                  (summary.get("statistics") or {}).get("alpha", 0.05)), "",
             *_statistics_text(summary), *_warnings_text(summary),
             "The leaky row repeats the seed's protocol: neighbouring volumes (near-duplicates of one slow BOLD "
             "response, inside one emotion episode) fall on both sides of the split, and the test set doubles as "
             "the validation set. Its score measures memorisation of temporal neighbours, not emotion decoding.",
             "", *_oracle_text(summary.get("oracle")), "## Per-emotion recall", "", _ranking_text(summary), "",
             "## Figures", ""]
    head = {(r["decoder"], r["experiment"], r["test_set"]): r for r in summary.get("headline", [])}

    def leaky(decoder: str) -> dict[str, Any] | None:
        return (head.get((decoder, "leaky", "leaky_random")) or {}).get("mean")

    def bacc(decoder: str, experiment: str, test_set: str, unit: str = "mean") -> str:
        return format_number(((head.get((decoder, experiment, test_set)) or {}).get(unit) or {}).get("balanced_accuracy"))

    _figure(lines, summary, "fig1", "1. Emotion x subject recall within subject (ALL = cross-subject model)",
            f"Recall per emotion on each subject's held-out runs (pooled over run folds). Mean balanced accuracy: "
            f"CNN {bacc('cnn', 'within', 'heldout')}, linear {bacc('linear', 'within', 'heldout')}; cross-subject "
            f"(pooled) CNN {bacc('cnn', 'cross', 'heldout', 'pooled')}, linear "
            f"{bacc('linear', 'cross', 'heldout', 'pooled')}. Chance 1/{len(summary['classes'])}.")
    pie = summary.get("pie") or {}
    _figure(lines, summary, "fig2", f"2. What sub-{pie.get('subject', '?')}'s {pie.get('emotion', '')} volumes were "
            "called", f"{pie.get('n', 0)} held-out volumes ({pie.get('decoder', '')}, within-subject; subject "
            f"chosen by {pie.get('chosen', 'setting')}): {pie.get('predicted', {})}. Shares: this subject "
            f"{pie.get('shares', {})}; the other subjects' {pie.get('emotion', '')} volumes ({pie.get('others_n', 0)}) "
            f"{pie.get('others_shares', {})}; chance (this subject's predicted-class shares over all its volumes) "
            f"{pie.get('chance_shares', {})}.")
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
            f"emotion {format_number(emb.get('silhouette'))} (cosine, 128-d features; 1 = separate clusters, 0 = none), "
            f"{format_number(emb.get('silhouette_pca'))} in the PCA plane, {format_number(emb.get('silhouette_tsne'))} in t-SNE. "
            f"References in the same feature space: by run {format_number(emb.get('silhouette_by_run'))}, by subject "
            f"{format_number(emb.get('silhouette_by_subject'))}, and a label-permuted model's silhouette by its own "
            f"(shifted) labels {format_number(emb.get('silhouette_permuted_model'))} "
            f"({emb.get('permuted_model') or 'no permuted CNN model in this study'}).")
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
    # the optional saliency stage's section
    from monai_emotion.study.dimensions import dimensions_markdown
    from monai_emotion.study.saliency import saliency_markdown

    lines += saliency_markdown(summary.get("saliency"))
    lines += dimensions_markdown(summary.get("dimensions"))  # the optional valence/arousal stage
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
