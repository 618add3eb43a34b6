"""Screen CNN recipe ideas fast: the within-subject CNN replicated in a plain PyTorch loop.

The bundle's within-subject recipe (EmotionCNN3D, flatten head, AdamW lr 1e-3, batch 16,
balanced class weights, 8 epochs, the checkpoint of the best validation balanced accuracy)
on the study's own items, splits and cached frames, without the engine and bundle start-up,
so that an idea costs seconds per model instead of a bundle run. Replicates the bundle's
mean within a few thousandths on the realistic world (docs/decoder_quality.md); an idea that
wins here still has to be built into the bundle and measured there.

Variants are JSON objects: ``{}`` (the recipe), ``{"ema": 0.9}`` (weight EMA),
``{"mixup": 0.4}``, ``{"ensemble": 3}`` (softmax mean of 3 seeds), ``{"noise": 1.0}`` (input
noise), ``{"screen": 0.2}`` (only the top 20 % of voxels by the training items' ANOVA F).

    python tools/cnn_recipe_screen.py --study studies/realistic.json --variants '{},{"screen":0.5}'
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from pathlib import Path

import fire
import numpy as np
import torch
from torch import nn

_PARTS = ("train", "validate", "test")


def _volumes(store, items: list[dict]) -> torch.Tensor:
    out = np.zeros((len(items), int(np.prod(store.shape))), np.float32)
    out[:, store.columns] = store.matrix(items)
    return torch.from_numpy(out.reshape(len(items), 1, *store.shape))


def _train(x: dict, y: dict, v: dict, seed: int) -> nn.Module:
    from sklearn.metrics import balanced_accuracy_score

    from monai_emotion.engine.recipe import balanced_class_weights
    from monai_emotion.networks import EmotionCNN3D

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = EmotionCNN3D(spatial_shape=tuple(x["train"].shape[2:]), dropout=v.get("dropout", 0.0))
    weights = balanced_class_weights([{"label": int(c)} for c in y["train"]], 5)
    loss_fn = nn.CrossEntropyLoss(weight=torch.as_tensor(weights, dtype=torch.float32))
    opt = torch.optim.AdamW(net.parameters(), lr=v.get("lr", 1e-3), weight_decay=v.get("wd", 0.0))
    swa = torch.optim.swa_utils
    ema = swa.AveragedModel(net, multi_avg_fn=swa.get_ema_multi_avg_fn(v["ema"])) if v.get("ema") else None
    best, best_model = -1.0, None
    order = torch.Generator().manual_seed(seed)
    for _ in range(v.get("epochs", 8)):
        net.train()
        perm = torch.randperm(len(y["train"]), generator=order)
        for b in range(0, len(perm), 16):
            xb, yb = x["train"][perm[b:b + 16]], y["train"][perm[b:b + 16]]
            if v.get("noise"):
                xb = xb + v["noise"] * torch.randn_like(xb)
            if v.get("mixup"):
                lam, other = float(rng.beta(v["mixup"], v["mixup"])), torch.randperm(len(yb))
                out = net(lam * xb + (1 - lam) * xb[other])
                loss = lam * loss_fn(out, yb) + (1 - lam) * loss_fn(out, yb[other])
            else:
                loss = loss_fn(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(net)
        model = net
        if ema is not None:
            swa.update_bn([(x["train"][i:i + 16],) for i in range(0, len(x["train"]), 16)], ema)
            model = ema
        model.eval()
        with torch.no_grad():
            score = balanced_accuracy_score(y["validate"].numpy(), model(x["validate"]).argmax(1).numpy())
        if score > best:
            best, best_model = score, copy.deepcopy(model)
    return best_model.eval()


def _screen(x: dict, y: dict, share: float) -> dict:
    from sklearn.feature_selection import f_classif

    flat = x["train"].reshape(len(x["train"]), -1).numpy()
    used = flat.std(axis=0) > 0
    f = np.zeros(flat.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f[used] = np.nan_to_num(f_classif(flat[:, used], y["train"].numpy())[0])
    keep = used & (f >= np.quantile(f[used], 1 - share))
    keep_t = torch.from_numpy(keep.reshape(x["train"].shape[1:]).astype(np.float32))
    return {k: t * keep_t for k, t in x.items()}


def screen(study: str = "studies/realistic.json", variants: str = "{}", out: str = "/tmp/cnn_recipe_screen") -> None:
    """Print each variant's mean within-subject balanced accuracy over every planned model."""
    from sklearn.metrics import balanced_accuracy_score

    from monai_emotion.experiment import make_splits
    from monai_emotion.study.config import load_study
    from monai_emotion.study.context import prepare_context
    from monai_emotion.study.features import select_subjects

    torch.set_num_threads(1)
    ctx = prepare_context(load_study(study), Path(out), log=lambda line: None)
    specs = [s for s in ctx.plan.models if s.experiment == "within"]
    text = variants if isinstance(variants, str) else ",".join(json.dumps(v) for v in variants)
    for v in json.loads(f"[{text}]"):
        start, scores = time.perf_counter(), []
        for spec in specs:
            items, store = ctx.views.model_data(spec)
            parts = make_splits(select_subjects(items, spec.subjects), dict(spec.split))
            x = {k: _volumes(store, parts[k]) for k in _PARTS}
            y = {k: torch.tensor([int(i["label"]) for i in parts[k]]) for k in _PARTS}
            if v.get("screen"):
                x = _screen(x, y, float(v["screen"]))
            probs = sum(torch.softmax(_train(x, y, v, seed).forward(x["test"]).detach(), 1)
                        for seed in range(v.get("ensemble", 1)))
            scores.append(balanced_accuracy_score(y["test"].numpy(), probs.argmax(1).numpy()))
        print(json.dumps({"variant": v, "mean_balanced_accuracy": round(float(np.mean(scores)), 4),
                          "per_model": [round(float(s), 3) for s in scores], "models": len(scores),
                          "seconds": round(time.perf_counter() - start)}), flush=True)


if __name__ == "__main__":
    fire.Fire(screen)
