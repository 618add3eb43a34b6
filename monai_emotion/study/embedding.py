"""The network's penultimate features on held-out volumes, embedded in 2-D (PCA and t-SNE).

The network is built from the bundle's ``network_def`` with the model's own overrides and
loaded from its ``model.pt``; :meth:`EmotionCNN3D.features` gives the embedding. The
silhouette score (cosine, by true emotion, in the full feature space) says how far emotions
form clusters there: near 0 means they do not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_emotion.engine.checkpoints import load_checkpoint
from monai_emotion.study.bundle import (
    bundle_experiment,
    model_overrides,
    parse_component,
    test_overrides,
)
from monai_emotion.study.config import Study
from monai_emotion.study.plan import ModelSpec, TestSet
from monai_emotion.transforms import LoadCachedFramed

__all__ = ["penultimate_features", "embed_2d", "feature_silhouette"]


def penultimate_features(
    study: Study, base: Mapping[str, Any], spec: ModelSpec, test: TestSet, ckpt: Path,
    max_points: int = 2000, batch_size: int = 64,
) -> tuple[np.ndarray, list[dict]]:
    """``(n, hidden)`` features of (at most ``max_points``, evenly spaced) items of ``test``."""
    import torch

    network = parse_component(study, {**base, **model_overrides(spec)}, "network_def")
    # weights_only read, checked against the network (a clear error names the file)
    network.load_state_dict(load_checkpoint(ckpt, {"model": network})["model"])
    network.eval()
    items = bundle_experiment(study, {**base, **test_overrides(spec, test)})["test"]
    if len(items) > max_points:
        items = [items[int(k)] for k in np.linspace(0, len(items) - 1, max_points)]
    # the bundle's own loader: (k, X, Y, Z) samples under the study's temporal context
    load = LoadCachedFramed(context=study.training.temporal_context)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = torch.stack([load(i)["image"].as_tensor() for i in items[start:start + batch_size]])
            chunks.append(network.features(batch).numpy())
    return np.concatenate(chunks), items


def embed_2d(features: np.ndarray, labels: Sequence[int], perplexity: float = 30.0, seed: int = 0) -> dict[str, Any]:
    """PCA and t-SNE coordinates of ``features`` and silhouette scores by ``labels``."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score

    y = np.asarray(labels)
    x = features - features.mean(axis=0)
    pca = PCA(n_components=2, random_state=seed).fit(x)
    perplexity = float(min(perplexity, max(5.0, (len(x) - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    several = len(np.unique(y)) > 1 and len(y) > len(np.unique(y))
    scores = {}
    if several:
        scores = {"silhouette": float(silhouette_score(x, y, metric="cosine")) if np.any(x) else float("nan"),
                  "silhouette_pca": float(silhouette_score(pca.transform(x), y)),
                  "silhouette_tsne": float(silhouette_score(tsne, y))}
    return {"pca": pca.transform(x), "tsne": tsne, "pca_explained": pca.explained_variance_ratio_.tolist(),
            "perplexity": perplexity, **scores}


def feature_silhouette(features: np.ndarray, groups: Sequence[Any]) -> float | None:
    """Cosine silhouette of ``features`` grouped by ``groups`` (runs, subjects, emotions) in feature space.

    ``None`` with fewer than two groups (or as many groups as points): nothing to compare.
    """
    from sklearn.metrics import silhouette_score

    y = np.asarray([str(g) for g in groups])
    x = features - features.mean(axis=0)
    if not 1 < len(np.unique(y)) < len(y) or not np.any(x):
        return None
    return float(silhouette_score(x, y, metric="cosine"))
