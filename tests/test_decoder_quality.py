"""Decoder quality: own masks for single-subject models, collapse flags, the nilearn peer's protocol."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from monai_emotion.engine.handlers import MetricsJSONWriter
from monai_emotion.engine.recipe import EarlyStopping, LrSchedule, balanced_class_weights
from monai_emotion.experiment import prepare_experiment
from monai_emotion.metrics import (
    classification_report_from_confusion,
    confusion_from_labels,
    degeneracy,
)
from monai_emotion.study.features import DataViews
from monai_emotion.study.peers import NilearnPeer, PeerSettings
from monai_emotion.study.plan import ModelSpec
from monai_emotion.study.plan import TestSet as HeldOut

WORLD = {"subjects": 2, "scale": 6, "volumes_per_run": 36, "seed": 5, "preset": "realistic"}
SPLIT = {"kind": "runs", "validate_runs": [3], "test_runs": [1, 2], "gap": 0.0}


@pytest.fixture(scope="module")
def world(tmp_path_factory, real_annotations) -> dict:
    from monai_emotion.data.synthetic import make_synthetic

    tmp = tmp_path_factory.mktemp("quality")
    make_synthetic(tmp / "bids", progress=False, oracle=False, **WORLD)
    common = dict(dataset_dir=str(tmp / "bids"), annotations_dir=str(tmp / "bids" / "annotations"),
                  split={"kind": "runs"}, progress=False)
    group = prepare_experiment(cache_dir=str(tmp / "group"), **common)
    own = prepare_experiment(cache_dir=str(tmp / "own"), subjects=["01"], **common)
    return {"tmp": tmp, "group": group, "own": own, "common": common}


def test_single_subject_models_use_their_own_mask(world):
    group, own = world["group"], world["own"]
    assert group["preprocessing"].mask_strategy == "group" and own["preprocessing"].mask_strategy == "subject"
    n_own = json.loads(Path(own["train"][0]["image"]).with_suffix(".json").read_text())["mask"]
    n_group = json.loads(Path(group["train"][0]["image"]).with_suffix(".json").read_text())["mask"]
    # the subject's own mask holds voxels the group mask (voxels of at least half the subjects) drops
    assert n_own["n_voxels_stored_grid"] != n_group["n_voxels_stored_grid"]
    assert "masks/sub-01_mask" in n_own["path"] and "group_mask" in n_group["path"]


def test_constant_prediction_is_flagged_in_metrics_json(tmp_path):
    true = np.array([0, 1, 2, 3, 4] * 20)
    report = classification_report_from_confusion(confusion_from_labels(true, np.zeros_like(true), 5))
    assert report["degeneracy"]["flagged"] and report["degeneracy"]["top_class_share"] == 1.0
    assert report["degeneracy"]["entropy"] == 0.0
    engine = SimpleNamespace(state=SimpleNamespace(metrics={"m": 0.2}, epoch=1))
    with pytest.warns(UserWarning, match="degenerate model"):
        MetricsJSONWriter("m", tmp_path, warn_degenerate=True).write(engine, report)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["degeneracy"]["flagged"] and "collapsed" in saved["degeneracy"]["reasons"][0]
    good = classification_report_from_confusion(confusion_from_labels(true, true, 5))
    assert not good["degeneracy"]["flagged"] and good["degeneracy"]["entropy_ratio"] == pytest.approx(1.0)


def test_below_majority_share_is_flagged_only_when_the_majority_rule_dominates():
    # 75 % of the volumes are class 0; a class-weighted model gets the minority classes right
    weighted = np.array([[45, 15, 15], [0, 12, 1], [0, 1, 11]])  # accuracy 0.68 < 0.75, balanced 0.81
    worse = np.array([[20, 20, 20], [10, 5, 5], [10, 5, 5]])  # accuracy 0.30 < 0.60, balanced 0.28 < 1/3
    assert degeneracy(weighted)["majority_share"] == 0.75 and not degeneracy(weighted)["flagged"]
    assert degeneracy(worse)["flagged"] and "largest class" in degeneracy(worse)["reasons"][0]


def test_balanced_class_weights_and_early_stopping():
    items = [{"label": 0}] * 30 + [{"label": 1}] * 10 + [{"label": -1}] * 5
    assert balanced_class_weights(items, 3) == pytest.approx([40 / 60, 40 / 20, 0.0])
    validator = SimpleNamespace(state=SimpleNamespace(epoch=0, metrics={}))
    trainer = SimpleNamespace(state=SimpleNamespace(epoch=0), stopped=False)
    trainer.terminate = lambda: setattr(trainer, "stopped", True)
    stop = EarlyStopping(2, validator, "val")
    for epoch, value in enumerate([0.3, 0.4, 0.35, 0.38], start=1):
        validator.state.epoch, validator.state.metrics["val"], trainer.state.epoch = epoch, value, epoch
        stop(trainer)
    assert trainer.stopped and stop.best == 0.4


def test_cosine_schedule_is_pytorchs_and_depends_on_the_epoch_only():
    """The rate of an epoch is a function of the epoch number, so a resumed run gets the same rates."""
    net = torch.nn.Linear(2, 2)
    ours, theirs = (torch.optim.SGD(net.parameters(), lr=0.1) for _ in range(2))
    schedule, reference = LrSchedule("cosine", ours, 6), torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=6)
    for epoch in range(1, 7):
        schedule(SimpleNamespace(state=SimpleNamespace(epoch=epoch)))
        assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"])
        theirs.step(), reference.step()
    fresh = torch.optim.SGD(net.parameters(), lr=0.1)  # a resumed process: a new schedule, epoch 4 first
    LrSchedule("cosine", fresh, 6)(SimpleNamespace(state=SimpleNamespace(epoch=4)))
    assert fresh.param_groups[0]["lr"] == pytest.approx(0.1 * (1 + np.cos(np.pi * 3 / 6)) / 2)


def _peer_fit(experiment: dict) -> np.ndarray:
    spec = ModelSpec("within/sub-01/fold-0", "within", ("01",), SPLIT, 4.0, "0", (HeldOut("heldout", ("01",), SPLIT),))
    peer = NilearnPeer(DataViews(experiment), PeerSettings(C=(0.01, 1.0)), experiment["classes"])
    decoder, tests, _ = peer.fit(spec)
    assert {int(i["run"]) for i in tests["heldout"]} == {1, 2}
    return np.concatenate([np.ravel(decoder.coef_), np.ravel(decoder.intercept_)])


def test_nilearn_peer_never_sees_the_test_runs(world):
    before = _peer_fit(world["own"])
    # overwrite the held-out runs' in-mask voxels with noise: a fit that used them would change
    for path in sorted({i["image"] for i in world["own"]["train"] if int(i["run"]) in SPLIT["test_runs"]}):
        frames = np.load(path, mmap_mode="r+")
        noise = np.random.default_rng(len(path)).standard_normal(frames.shape).astype(np.float16)
        frames[:] = noise * (frames != 0)
        frames.flush()
    after = _peer_fit(world["own"])
    np.testing.assert_array_equal(before, after)
