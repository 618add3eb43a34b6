"""The study report as data, then rendered twice: ``report.md`` and the self-contained ``report.html``.

:func:`report_sections` turns the summary (and what the study left on disk: ``results.csv``,
the models' ``model.json`` and ``versions.json``) into a list of sections, each
``{"id", "title", "paragraphs", "tables", "figures", "viewers"}`` (optional ``notes``:
paragraphs after the tables). Every number is formatted once, here; :func:`render_markdown`
and :mod:`monai_emotion.study.report_html` only lay the same strings out, so the two files
cannot disagree. Sections in ``summary["sections"]`` (same shape) are appended in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai_emotion.errors import MonaiEmotionError
from monai_emotion.fileio import atomic_write_json, atomic_write_text, load_json

__all__ = ["write_report", "rebuild_report", "report_sections", "render_markdown", "section_from_markdown",
           "headline_table", "headline_markdown", "format_number", "format_p"]

_PROTOCOLS = {
    ("within", "heldout"): "single-subject models, held-out runs of the same subject",
    ("cross", "heldout"): "one model on all subjects, the same held-out runs",
    ("unseen", "unseen_heldout"): "unseen subjects, their held-out runs (no movie moment seen in training)",
    ("unseen", "unseen_all_runs"): "unseen subjects, all their runs (the stimulus was heard in training)",
    ("unseen", "seen_heldout"): "training subjects of the unseen-subject models, held-out runs",
    ("leaky", "leaky_random"): "**LEAKY**: the seed's random 80/20 split of volumes, no lag",
}
_HEADLINE_COLUMNS = ["experiment", "test set", "protocol", "decoder",
                     "balanced acc. (mean over subjects) [95% block bootstrap]", "chance 95% interval, p", "pooled",
                     "flagged models", "verdict"]


def section(id: str, title: str, paragraphs: list[str] | None = None, tables: list[dict[str, Any]] | None = None,
            figures: list[dict[str, Any]] | None = None, viewers: list[dict[str, Any]] | None = None,
            notes: list[str] | None = None) -> dict[str, Any]:
    """One report section in the shape both renderers read."""
    return {"id": id, "title": title, "paragraphs": paragraphs or [], "tables": tables or [],
            "figures": figures or [], "viewers": viewers or [], "notes": notes or []}


def table(columns: list[str], rows: list[list[Any]], sortable: bool = True) -> dict[str, Any]:
    """A report table (cells as text)."""
    return {"columns": list(columns), "rows": [[str(c) for c in r] for r in rows], "sortable": sortable}


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


def headline_table(rows: list[dict[str, Any]], alpha: float = 0.05) -> dict[str, Any]:
    """The headline table: balanced accuracy per protocol and decoder with chance tests and verdicts."""
    cells = []
    for row in rows:
        mean, pooled = row.get("mean") or {}, row.get("pooled") or {}
        verdict = mean.get("verdict") or "untested"
        shown = _why(mean, alpha) if verdict == "untested" else f"**{verdict}**" if verdict == "above" else verdict
        ci = (f" [{format_number(pooled.get('balanced_accuracy_ci_low'))}, {format_number(pooled.get('balanced_accuracy_ci_high'))}]"
              if pooled.get("balanced_accuracy_ci_low") is not None else "")
        cells.append([_PROTOCOLS.get((row["experiment"], row["test_set"]), row["experiment"]), row["test_set"],
                      row.get("protocol", "-"), row["decoder"], format_number(mean.get("balanced_accuracy")),
                      _chance(mean), f"{format_number(pooled.get('balanced_accuracy'))}{ci}",
                      f"{mean.get('n_flagged', 0) or 0} of {mean.get('n_models', 0) or 0}", shown])
    return table(_HEADLINE_COLUMNS, cells)


def headline_markdown(rows: list[dict[str, Any]], alpha: float = 0.05) -> str:
    """The headline table as Markdown."""
    return _markdown_table(headline_table(rows, alpha))


def _statistics_text(summary: dict[str, Any]) -> str:
    stats = summary.get("statistics") or {}
    correction = {"fdr": "Benjamini-Hochberg FDR", "holm": "Holm"}.get(stats.get("correction"), "-")
    return (f"Verdicts follow the one-sided permutation p-value, corrected ({correction}, alpha "
            f"{stats.get('alpha')}) across each table of tests (the MEAN rows here; POOLED and per-subject rows "
            "of results.csv are corrected in their own tables). Experiments of single-subject models "
            f"({', '.join(stats.get('group_experiments', []))}) get the group test: every subject has its own "
            "independent circular shifts, and the mean over subjects is compared with every combination of one "
            "permutation score (or the observed one) per subject (an exact Stelzer-style group null). Other rows: "
            "p = (1 + #null >= observed) / (1 + n); with fewer than 19 permutations the verdict is `untested`. "
            "Protocol `clean`: no movie moment of the test set was heard in training by any subject; "
            "`stimulus-seen`: the training subjects heard it; `leaky`: the seed's random split. Intervals of "
            "balanced accuracy and recall: block bootstrap over episodes (docs/study.md). Gap around held-out "
            f"runs: {format_number(stats.get('gap'), 1)} s of movie time.")


def _clustering_verdict(within: float, between: float) -> str:
    """What the co-occurrence numbers say about the seed's five-class "heuristic clustering"."""
    if within - between < 0.15:
        return ("Categories merged into one class are hardly more related in time than any two "
                "categories: the observers' use does not support the five-class clustering.")
    return ("Categories merged into one class co-occur clearly more than others here (synthetic observers "
            "draw their tokens class by class; see docs/validation.md for the real annotations).")


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


def section_from_markdown(id: str, lines: list[str]) -> dict[str, Any] | None:
    """A section from Markdown lines (``## title``, paragraphs, ``|`` tables, ``![..](path)``); None if empty.

    For the stages that write their part of the report as Markdown (saliency, dimensions).
    """
    if not lines:
        return None
    out = section(id, "")
    block: list[str] = []

    def flush() -> None:
        if block and block[0].startswith("|"):
            rows = [[c.strip() for c in b.strip().strip("|").split("|")] for b in block]
            separator = len(rows) > 1 and set("".join(rows[1])) <= set("-:")
            out["tables"].append(table(rows[0], rows[2:] if separator else rows[1:]))
        elif block:
            out["paragraphs"].append("\n".join(block))
        block.clear()

    for line in [*lines, ""]:
        if line.startswith("## ") and not out["title"]:
            out["title"] = line[3:].strip()
        elif line.startswith("!["):
            flush()
            alt, path = line[2:].split("](", 1)
            out["figures"].append({"path": path.rstrip(")"), "caption": alt})
        elif not line.strip() or (block and block[0].startswith("|") != line.startswith("|")):
            flush()
            if line.strip():
                block.append(line)
        else:
            block.append(line)
    return out


def _figure(summary: dict[str, Any], key: str, title: str, caption: str) -> dict[str, Any]:
    name = summary["figures"].get(key)
    return ({"path": f"figures/{name}", "title": title, "caption": caption} if name else
            {"path": None, "title": title, "caption": "(not produced: the models it needs have not run)"})


def _figures(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The study's figures 1-8 with their captions (the numbers they show)."""
    head = {(r["decoder"], r["experiment"], r["test_set"]): r for r in summary.get("headline", [])}

    def leaky(decoder: str) -> dict[str, Any] | None:
        return (head.get((decoder, "leaky", "leaky_random")) or {}).get("mean")

    def bacc(decoder: str, experiment: str, test_set: str, unit: str = "mean") -> str:
        return format_number(((head.get((decoder, experiment, test_set)) or {}).get(unit) or {}).get("balanced_accuracy"))

    pie, curves, ann, emb = (summary.get(k) or {} for k in ("pie", "curves", "annotations", "embedding"))
    unseen = [bacc(d, "unseen", t) for d in ("cnn", "linear") for t in ("seen_heldout", "unseen_heldout",
                                                                         "unseen_all_runs")]
    return [
        _figure(summary, "fig1", "1. Emotion x subject recall within subject (ALL = cross-subject model)",
                f"Recall per emotion on each subject's held-out runs (pooled over run folds). Mean balanced accuracy: "
                f"CNN {bacc('cnn', 'within', 'heldout')}, linear {bacc('linear', 'within', 'heldout')}; cross-subject "
                f"(pooled) CNN {bacc('cnn', 'cross', 'heldout', 'pooled')}, linear "
                f"{bacc('linear', 'cross', 'heldout', 'pooled')}. Chance 1/{len(summary['classes'])}."),
        _figure(summary, "fig2", f"2. What sub-{pie.get('subject', '?')}'s {pie.get('emotion', '')} volumes were "
                "called", f"{pie.get('n', 0)} held-out volumes ({pie.get('decoder', '')}, within-subject; subject "
                f"chosen by {pie.get('chosen', 'setting')}): {pie.get('predicted', {})}. Shares: this subject "
                f"{pie.get('shares', {})}; the other subjects' {pie.get('emotion', '')} volumes ({pie.get('others_n', 0)}) "
                f"{pie.get('others_shares', {})}; chance (this subject's predicted-class shares over all its volumes) "
                f"{pie.get('chance_shares', {})}."),
        _figure(summary, "fig3", "3. Seen vs unseen subjects per subject fold",
                "Mean balanced accuracy, CNN: seen subjects' held-out runs {}, unseen subjects' held-out runs {}, "
                "unseen subjects' all runs {} (linear: {}, {}, {}).".format(*unseen)),
        _figure(summary, "fig4", "4. Accuracy over epochs",
                "Band: mean +/- sd over the single-subject models; dashed: cross-subject models. Last epoch, "
                "single-subject mean: " + ", ".join(f"{k} {v:.2f}" for k, v in curves.items())
                + ". The gap between train and validation accuracy is memorisation."),
        _figure(summary, "fig5", "5. The annotations: class frequencies and category co-occurrence",
                f"Mean correlation over movie time of the observers' votes for two raw categories merged into the "
                f"same class: {ann['within_class_r']:.2f}; for categories of different classes: "
                f"{ann['between_class_r']:.2f}. " + _clustering_verdict(ann['within_class_r'], ann['between_class_r'])),
        _figure(summary, "fig6", "6. Penultimate features in 2-D",
                f"{emb.get('model', '')} on '{emb.get('test_set', '')}' ({emb.get('n', 0)} volumes): silhouette by "
                f"emotion {format_number(emb.get('silhouette'))} (cosine, 128-d features; 1 = separate clusters, 0 = none), "
                f"{format_number(emb.get('silhouette_pca'))} in the PCA plane, {format_number(emb.get('silhouette_tsne'))} in t-SNE. "
                f"References in the same feature space: by run {format_number(emb.get('silhouette_by_run'))}, by subject "
                f"{format_number(emb.get('silhouette_by_subject'))}, and a label-permuted model's silhouette by its own "
                f"(shifted) labels {format_number(emb.get('silhouette_permuted_model'))} "
                f"({emb.get('permuted_model') or 'no permuted CNN model in this study'})."),
        _figure(summary, "fig7", "7. Class x run table (run confound)",
                "Labelled volumes per class and run. Classes concentrated in few runs let a model decode 'which run' "
                "instead of 'which emotion'; held-out-run splits and per-run z-scoring guard against it."),
        _figure(summary, "fig8", "8. The seed's leaky protocol vs a clean one",
                f"Mean balanced accuracy, clean (held-out runs) vs leaky (random volumes, no lag): CNN "
                f"{bacc('cnn', 'within', 'heldout')} vs {bacc('cnn', 'leaky', 'leaky_random')}, linear "
                f"{bacc('linear', 'within', 'heldout')} vs {bacc('linear', 'leaky', 'leaky_random')}. Bars: "
                "permutation 95% chance intervals. Under the leaky split even labels shifted in time are "
                "'decoded' well above 1/5 (its own chance interval, mean over subjects: CNN "
                f"{_chance(leaky('cnn'))}; linear {_chance(leaky('linear'))}): its chance level is not 20 %."),
    ]


def _overview(summary: dict[str, Any]) -> dict[str, Any]:
    data, training, plan = summary["data"], summary["training"], summary["plan"]
    return section("overview", "Overview", [
        f"Config `{summary['config']}`. Data: "
        + (f"synthetic {data['synthetic']}" if data.get("synthetic") else f"`{data['dataset_dir']}`")
        + f"; {data['n_labelled']} labelled volumes, grid {data['spatial_shape']}, observers "
          f"'{data['observers']}', threshold {data['threshold']}, lag {data['lag']} s. Network "
          f"{training['network']}, training {({k: v for k, v in training.items() if k != 'network'})}.",
        f"Run folds {plan['run_folds']} (every class in every test fold); subject folds {plan['subject_folds']}; "
        f"models planned {plan['models']} (finished: CNN {summary['models_done']['cnn']}, linear "
        f"{summary['models_done']['linear']}). Training volumes sharing movie moments with validation or test runs "
        "(the 16 s overlap of neighbouring runs) are dropped. Chance levels: labels circularly shifted within runs, "
        "every model refitted per permutation."])


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    alpha = (summary.get("statistics") or {}).get("alpha", 0.05)
    return section("headline", "Headline", tables=[headline_table(summary.get("headline", []), alpha)], notes=[
        _statistics_text(summary),
        "The leaky row repeats the seed's protocol: neighbouring volumes (near-duplicates of one slow BOLD "
        "response, inside one emotion episode) fall on both sides of the split, and the test set doubles as "
        "the validation set. Its score measures memorisation of temporal neighbours, not emotion decoding."])


def _ranking(summary: dict[str, Any]) -> dict[str, Any]:
    return section("ranking", "Per-emotion recall", ["\n".join(
        f"- {key} ({r['unit']}): " + ", ".join(f"{c} {r['recall'][c]:.2f}" for c in r["order"])
        for key, r in (summary.get("emotion_ranking") or {}).items())])


def _saliency(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The saliency stage's section, with one interactive viewer per emotion's group map."""
    if not (summary.get("saliency") or {}).get("emotions"):
        return None  # the stage did not run (its module's imports are not needed)
    from monai_emotion.study.saliency import saliency_markdown

    found = section_from_markdown("saliency", saliency_markdown(summary["saliency"]))
    if found is not None:
        found["viewers"] = [{"path": f"saliency/{e['file']}", "title": f"{emotion} group saliency",
                             "image": f"saliency/{e['figure']}" if e.get("figure") else None}
                            for emotion, e in summary["saliency"]["emotions"].items()]
    return found


def _files(summary: dict[str, Any]) -> dict[str, Any]:
    timings = summary.get("timings")
    return section("files", "Files", [
        "`results.csv` (one row per model x test set x emotion, plus per-subject/POOLED/MEAN rows with chance "
        "intervals), `summary.json`, `models/cnn/<model>/` (bundle output: TensorBoard events, checkpoints, "
        "eval/<test set>/metrics.json + predictions.csv), `models/linear/<model>/`, `permutations_linear.csv`, "
        "`figures/`, `report.md` and `report.html` (this report; `python -m monai_emotion report <folder>` "
        "rebuilds both).", *([f"Timings (s): {timings}"] if timings else [])])


def _dimensions(summary: dict[str, Any]) -> dict[str, Any] | None:
    if not summary.get("dimensions"):
        return None  # the stage did not run (its module's imports are not needed)
    from monai_emotion.study.dimensions import dimensions_markdown

    return section_from_markdown("dimensions", dimensions_markdown(summary["dimensions"]))


def report_sections(summary: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    """Every section of the report, in order, from the summary and the study folder ``root``."""
    from monai_emotion.study import report_records as disk  # it imports this module's helpers

    root = Path(root)
    records = disk.model_records(root)
    parts = [_overview(summary), _headline(summary), disk.subject_emotion(summary, root), disk.warnings(summary, records),
             section_from_markdown("ground-truth", _oracle_text(summary.get("oracle"))), _ranking(summary),
             section("figures", "Figures", figures=_figures(summary)), _saliency(summary),
             _dimensions(summary),
             *summary.get("sections", []), disk.provenance(summary, root, records), _files(summary)]
    return [p for p in parts if p]


def _markdown_table(t: dict[str, Any]) -> str:
    return "\n".join(["| " + " | ".join(t["columns"]) + " |", "|" + "---|" * len(t["columns"]),
                      *("| " + " | ".join(row) + " |" for row in t["rows"])])


def render_markdown(title: str, sections: list[dict[str, Any]]) -> str:
    """``report.md``: the sections as Markdown (viewers as their map files and static images)."""
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s['title']}", "", *(x for p in s.get("paragraphs", []) for x in (p, ""))]
        lines += [x for t in s.get("tables", []) for x in (_markdown_table(t), "")]
        for f in s.get("figures", []):
            lines += [f"### {f['title']}", ""] if f.get("title") else []
            lines += [f"![{f.get('title') or f['caption']}]({f['path']})", ""] if f.get("path") else []
            lines += [f["caption"], ""]
        for v in s.get("viewers", []):
            lines += [f"![{v['title']}]({v['image']})" if v.get("image") else v["title"], "",
                      f"`{v['path']}` (interactive viewer in report.html)", ""]
        lines += [x for p in s.get("notes", []) for x in (p, "")]
    return "\n".join(lines)


def write_report(summary: dict[str, Any], root: Path) -> Path:
    """Write ``root/report.md`` and ``root/report.html`` from the summary.

    Parameters
    ----------
    summary
        The study summary (``summary.json``); its optional ``sections`` are appended.
    root
        The study folder (figures, ``results.csv`` and the models are read from it).

    Returns
    -------
    Path
        ``root/report.html``.
    """
    from monai_emotion.study.report_html import write_html

    root = Path(root)
    title, sections = f"Study '{summary['study']}'", report_sections(summary, root)
    atomic_write_text(root / "report.md", render_markdown(title, sections))
    return write_html(title, sections, root)


def rebuild_report(root: str | Path, sections: list[dict[str, Any]] | None = None) -> Path:
    """Rewrite both reports of a finished study from its ``summary.json`` (nothing is trained).

    Parameters
    ----------
    root
        The study folder (the ``--out`` of ``python -m monai_emotion study``).
    sections
        Extra sections (the shape of :func:`section`), e.g. the seen/unseen alignment comparison
        of :func:`monai_emotion.study.alignment_report.alignment_section`; each replaces a
        stored section of the same ``id`` and is kept in ``summary.json`` for later rebuilds.

    Returns
    -------
    Path
        ``root/report.html``.

    Raises
    ------
    MonaiEmotionError
        When ``root`` holds no ``summary.json`` (not a finished study).
    """
    root = Path(root)
    if not (root / "summary.json").is_file():
        raise MonaiEmotionError("not a finished study: no summary.json", root,
                                fix="pass the --out folder of a finished `python -m monai_emotion study` run")
    summary = load_json(root / "summary.json")
    if sections:
        new = {s["id"] for s in sections}
        summary["sections"] = [s for s in summary.get("sections", []) if s.get("id") not in new] + list(sections)
        atomic_write_json(root / "summary.json", summary)
    return write_report(summary, root)
