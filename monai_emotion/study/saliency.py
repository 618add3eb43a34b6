"""Group saliency maps per emotion over the study's single-subject models (study key ``saliency``).

Each finished model of ``saliency.experiments`` (``within`` by default) gets
``configs/saliency.json`` run on its first test set (``models/cnn/<model>/saliency/``), and
so does each finished label-permuted copy of it (all held-out volumes: a permuted model gets
few right). The study's data are in one template space (every subject on one source grid), so
the maps of different subjects are voxel-aligned. Per subject and emotion the map is scaled
to unit mean |value| over its mask (models differ in logit scale) and averaged over the
subject's folds; the group map is the mean over subjects (``saliency/desc-<EMOTION>_group.nii.gz``,
descriptive).

The test, only when it can be honest: per subject, ``d = |true map| - |permuted map|`` (both
scaled as above, the permuted model of the same subject, folds and first permutation seed),
and a one-sided sign-flip test of the mean over subjects with the maximum over voxels for
family-wise error control (exact over all 2^S sign patterns). Subjects are independent and,
under the null that the true model weights a voxel no more than a model trained without the
label information, each ``d`` is symmetric about zero. It asks "does the model lean on this
voxel more than a label-blind model", not "does this voxel carry emotion". With fewer than
``log2(1/alpha)`` subjects (5 for 0.05) no voxel can reach ``alpha``: the maps are then
written and labelled descriptive, and no p-values are produced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from monai_emotion.errors import ConfigError
from monai_emotion.fileio import atomic_write_json, read_json
from monai_emotion.study.bundle import config_files, run_workflow, test_overrides
from monai_emotion.study.context import StudyContext
from monai_emotion.study.permutation import permutation_seeds
from monai_emotion.study.plan import ModelSpec
from monai_emotion.study.report import format_number

__all__ = ["group_saliency", "model_maps", "sign_flip_max", "MAX_EXACT_SUBJECTS"]

#: above this many subjects the sign patterns are drawn (10,000) instead of enumerated
MAX_EXACT_SUBJECTS = 14


def model_maps(ctx: StudyContext, spec: ModelSpec, volumes: str) -> Path | None:
    """Run ``configs/saliency.json`` for ``spec`` on its first test set, unless already done; its folder."""
    if not spec.test_sets or not ctx.cnn.done(spec):
        return None
    settings = ctx.study.saliency
    folder = ctx.cnn.folder(spec) / "saliency"
    wanted = {"method": settings.method, "volumes": volumes}
    record = read_json(folder / "saliency.json")
    if record is not None and record.get("method") == wanted["method"] and \
            (record.get("settings") or {}).get("volumes") == volumes:
        return folder
    test = spec.test_sets[0]
    model = ctx.cnn.folder(spec)
    run_workflow(config_files(ctx.study, "train.json", "saliency.json"),
                 {**ctx.base, **test_overrides(spec, test), "output_dir": str(model / "train"),
                  "ckpt_dir": str(model / "ckpt"), "interpret#output_dir": str(folder),
                  "interpret#method": settings.method, "interpret#volumes": volumes, "interpret#figures": False,
                  "interpret#progress": False},
                 model / "saliency.log")
    return folder


def _scaled(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A map scaled to unit mean |value| over its nonzero voxels; the voxels; the affine."""
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float64)
    inside = data != 0
    scale = float(np.abs(data[inside]).mean()) if inside.any() else 0.0
    return (data / scale if scale > 0 else data), inside, img.affine


def sign_flip_max(d: np.ndarray, seed: int = 0, draws: int = 10000) -> tuple[np.ndarray, int]:
    """One-sided FWE p-values of the mean of ``d`` ``(S, V)`` over subjects, by sign flips and the voxel maximum.

    Exact over all ``2**S`` sign patterns for ``S <= MAX_EXACT_SUBJECTS``, else ``draws`` random
    patterns (plus the observed one). Returns the p-values ``(V,)`` and the number of patterns.
    """
    n = d.shape[0]
    if n <= MAX_EXACT_SUBJECTS:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)[None]) & 1)
    else:
        rng = np.random.default_rng(seed)
        signs = np.vstack([np.ones((1, n), dtype=int), rng.choice([-1, 1], size=(draws, n))])
    observed = d.mean(axis=0)
    maxima = np.array([(s[:, None] * d).mean(axis=0).max() for s in signs])
    p = (maxima[None, :] >= observed[:, None] - 1e-12).mean(axis=1)
    return p, len(signs)


def _subject_maps(folders: Sequence[tuple[str, Path]], emotion: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per subject: the mean over its models of the scaled map, and the voxels any of them covers."""
    per: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for subject, folder in folders:
        path = folder / f"sub-{subject}_desc-{emotion}_saliency.nii.gz"
        if path.is_file():
            data, inside, _ = _scaled(path)
            per.setdefault(subject, []).append((data, inside))
    return {s: (np.mean([d for d, _ in v], axis=0), np.any([m for _, m in v], axis=0)) for s, v in per.items()}


def _check_grid(folders: Sequence[tuple[str, Path]], emotion: str) -> tuple[np.ndarray, tuple[int, ...]]:
    first, affine, shape = None, None, None
    for subject, folder in folders:
        path = folder / f"sub-{subject}_desc-{emotion}_saliency.nii.gz"
        img = nib.load(path)
        if affine is None:
            first, affine, shape = path, img.affine, img.shape
        elif img.shape != shape or not np.allclose(img.affine, affine, atol=1e-3):
            raise ConfigError(f"saliency maps on different grids ({first} and {path}); a group map needs one "
                              "template space", path, fix="run the study on data in one space (data.space)")
    return np.asarray(affine), tuple(shape)


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> str:
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path.name


def _truth_r(ctx: StudyContext, group: np.ndarray, k: int, mask: np.ndarray) -> float | None:
    """r of |group map| with |planted group contrast| (synthetic data only)."""
    from monai_emotion.interpret.truth import map_truth_correlation, planted_contrasts

    path = Path(ctx.synthetic_root or "") / "ground_truth" / "patterns_group.nii.gz"
    if ctx.synthetic_root is None or not path.is_file():
        return None
    contrast = planted_contrasts(path)[k]
    return map_truth_correlation(group, contrast, mask)["r_abs"]


def _permuted_folders(ctx: StudyContext, specs: Sequence[ModelSpec]) -> tuple[int | None, list[tuple[str, Path]]]:
    """The first permutation seed whose permuted copy of every model is finished, and their map folders."""
    perms = ctx.study.permutations
    for seed in permutation_seeds(perms.first_seed, perms.cnn):
        permuted = [s.permuted(seed) for s in specs]
        if permuted and all(ctx.cnn.done(p) for p in permuted):
            found = [(p.subjects[0], model_maps(ctx, p, "all")) for p in permuted]
            return seed, [(s, f) for s, f in found if f is not None]
    return None, []


def group_saliency(ctx: StudyContext) -> dict[str, Any]:
    """Map every selected model, then write the group maps (and the test when honest); the summary."""
    settings, alpha = ctx.study.saliency, ctx.study.statistics.alpha
    specs = [m for m in ctx.plan.models if m.experiment in settings.experiments and ctx.cnn.done(m)]
    multi = [m.id for m in specs if len(m.subjects) != 1]
    if multi:
        raise ConfigError(f"saliency group maps need single-subject models; {multi[0]} has several subjects",
                          where="study key 'saliency.experiments'", fix="use 'within' and/or 'leaky'")
    out = ctx.root / "saliency"
    summary: dict[str, Any] = {"method": settings.method, "experiments": list(settings.experiments),
                               "volumes": settings.volumes, "n_models": len(specs), "emotions": {}}
    if not specs:
        summary["note"] = "no finished model of these experiments"
        return summary
    ctx.log(f"saliency ({settings.method}): {len(specs)} model(s)")
    true = [(m.subjects[0], model_maps(ctx, m, settings.volumes)) for m in specs]
    true = [(s, f) for s, f in true if f is not None]
    seed, null = _permuted_folders(ctx, specs)
    subjects = sorted({s for s, _ in true})
    smallest_p = 1.0 / 2 ** len(subjects)
    testable = bool(null) and smallest_p <= alpha
    summary.update({"subjects": subjects, "permutation_seed": seed, "testable": testable,
                    "kind": "sign-flip test vs permuted models (FWE, voxel maximum)" if testable else
                    "descriptive" + ("" if null else " (no finished permuted models)") +
                    (f" ({len(subjects)} subjects: the smallest sign-flip p is {smallest_p:.3g} > alpha {alpha})"
                     if null and not testable else "")})
    for k, emotion in enumerate(ctx.classes):
        affine, _ = _check_grid(true, emotion)
        maps_true = _subject_maps(true, emotion)
        stack = np.stack([maps_true[s][0] for s in subjects])
        covered = np.all(np.stack([maps_true[s][1] for s in subjects]), axis=0)
        group = np.where(covered, stack.mean(axis=0), 0.0)
        entry: dict[str, Any] = {"file": _save(out / f"desc-{emotion}_group.nii.gz", group, affine),
                                 "voxels": int(covered.sum()), "r_abs_planted": _truth_r(ctx, group, k, covered)}
        maps_null = _subject_maps(null, emotion) if null else {}
        if maps_null and set(maps_null) >= set(subjects):
            d = np.stack([np.abs(maps_true[s][0]) - np.abs(maps_null[s][0]) for s in subjects])[:, covered]
            diff = np.zeros(covered.shape)
            diff[covered] = d.mean(axis=0)
            entry["difference_file"] = _save(out / f"desc-{emotion}_group-minus-permuted.nii.gz", diff, affine)
            null_group = np.where(covered, np.stack([maps_null[s][0] for s in subjects]).mean(axis=0), 0.0)
            entry["r_abs_planted_permuted"] = _truth_r(ctx, null_group, k, covered)
            if testable:
                p, patterns = sign_flip_max(d)
                logp = np.zeros(covered.shape)
                logp[covered] = -np.log10(p)
                entry.update({"p_file": _save(out / f"desc-{emotion}_group-logp-fwe.nii.gz", logp, affine),
                              "n_significant": int((p <= alpha).sum()), "sign_patterns": patterns})
        entry["figure"] = _figure(out, emotion, entry["file"], summary["kind"])
        summary["emotions"][emotion] = entry
    atomic_write_json(out / "group_saliency.json", summary)
    return summary


def _figure(out: Path, emotion: str, name: str, kind: str) -> str:
    from monai_emotion.interpret.figures import plot_map

    title = f"{emotion} group saliency ({'descriptive' if kind.startswith('descriptive') else 'tested'})"
    return plot_map(out / name, out / f"desc-{emotion}_group.png", title).name


def saliency_markdown(summary: Mapping[str, Any] | None) -> list[str]:
    """The report's lines about the group maps (nothing when the stage did not run)."""
    if not summary or not summary.get("emotions"):
        return []
    lines = ["## Group saliency maps", "",
             f"Method `{summary['method']}`, models of {', '.join(summary['experiments'])} "
             f"({summary['n_models']}), subjects {', '.join(summary.get('subjects', []))}; "
             f"**{summary['kind']}**. Files in `saliency/` (docs/saliency.md).", "",
             "| emotion | map | r of abs map with abs planted group contrast | same, permuted models | "
             "voxels with p_FWE <= alpha |",
             "|---|---|---|---|---|"]
    for emotion, e in summary["emotions"].items():
        lines.append(f"| {emotion} | {e['file']} | {format_number(e.get('r_abs_planted'))} | "
                     f"{format_number(e.get('r_abs_planted_permuted'))} | {e.get('n_significant', 'untested')} |")
    return [*lines, ""]
