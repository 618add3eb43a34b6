"""ClassificationMetric and its handlers, run through a real MONAI SupervisedEvaluator."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
import torch
from monai.data import DataLoader, DistributedSampler
from monai.engines import SupervisedEvaluator
from monai.transforms import Activationsd, AsDiscreted, Compose
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)

from monai_emotion.engine.handlers import (
    ClassificationMetric,
    ClassificationTensorBoardHandler,
    MetricsJSONWriter,
    subjects_from_batch,
)
from monai_emotion.errors import ConfigError, DataError
from monai_emotion.metrics import classification_report_from_confusion, confusion_from_labels

K = 5
NAMES = ["HAPPINESS", "SADNESS", "FEAR", "LOVE", "ANGER"]
SUBJECTS = ["01", "02", "05"]


def _items(n: int = 23, seed: int = 0, onehot_label: bool = False) -> list[dict]:
    """Each image *is* the logits (the network is a flatten), so predictions are known."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    logits = rng.normal(size=(n, K)).astype(np.float32)
    logits[np.arange(n), labels] += 0.8  # better than chance, not perfect
    items = []
    for i in range(n):
        label = np.eye(K, dtype=np.float32)[labels[i]] if onehot_label else int(labels[i])
        items.append({"image": torch.from_numpy(logits[i])[None], "label": label, "subject": SUBJECTS[i % 3]})
    return items


def _truth(items: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.array([int(np.argmax(it["label"])) if np.ndim(it["label"]) else it["label"] for it in items])
    p = np.array([int(it["image"].argmax()) for it in items])
    return y, p, np.array([it["subject"] for it in items])


def _evaluator(items, handlers=(), sampler=None, subject_key="subject"):
    post = [Activationsd("pred", softmax=True), AsDiscreted("pred", argmax=True, to_onehot=K)]
    metric = lambda m: ClassificationMetric(K, m, NAMES, subject_key=subject_key)  # noqa: E731
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(items, batch_size=4, sampler=sampler, num_workers=0),
        network=torch.nn.Flatten(1),
        postprocessing=Compose(post),
        key_val_metric={"val_balanced_accuracy": metric("balanced_accuracy")},
        additional_metrics={
            "val_macro_f1": metric("macro_f1"),
            "val_accuracy": metric("accuracy"),
            "val_recall_FEAR": metric("recall:FEAR"),
        },
        val_handlers=list(handlers),
    )


def _sk(y, p) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on classes absent from one side
        return {
            "balanced_accuracy": balanced_accuracy_score(y, p),
            "macro_f1": f1_score(y, p, average="macro"),
            "recall": recall_score(y, p, labels=range(K), average=None, zero_division=0),
            "precision": precision_score(y, p, labels=range(K), average=None, zero_division=0),
            "cm": confusion_matrix(y, p, labels=range(K)),
        }


@pytest.mark.parametrize("onehot_label", [False, True])
def test_evaluator_metrics_equal_sklearn(tmp_path, caplog, onehot_label):
    items = _items(onehot_label=onehot_label)
    y, p, subjects = _truth(items)
    writer = MetricsJSONWriter("val_balanced_accuracy", tmp_path)
    ev = _evaluator(items, [writer])
    with caplog.at_level(logging.INFO):
        ev.run()
    assert "val_balanced_accuracy per-subject balanced accuracy: 01=" in caplog.text
    sk, m = _sk(y, p), ev.state.metrics
    assert m["val_balanced_accuracy"] == pytest.approx(sk["balanced_accuracy"])
    assert m["val_macro_f1"] == pytest.approx(sk["macro_f1"])
    assert m["val_accuracy"] == pytest.approx(np.mean(y == p))
    assert m["val_recall_FEAR"] == pytest.approx(sk["recall"][2])
    assert ev.state.best_metric == pytest.approx(sk["balanced_accuracy"])  # usable as key metric
    report = ev.state.metric_details["val_balanced_accuracy"]
    np.testing.assert_array_equal(report["confusion_matrix"], sk["cm"])
    np.testing.assert_allclose([report["recall"][c] for c in NAMES], sk["recall"])
    for s in SUBJECTS:
        sel = subjects == s
        expected = _sk(y[sel], p[sel])["balanced_accuracy"]
        assert report["per_subject"][s]["balanced_accuracy"] == pytest.approx(expected)

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["chance_level"] == pytest.approx(1 / K) and saved["n"] == len(items)
    assert saved["balanced_accuracy"] == pytest.approx(sk["balanced_accuracy"])
    np.testing.assert_allclose([saved["precision"][c] for c in NAMES], sk["precision"])
    assert saved["support"] == {c: int((y == i).sum()) for i, c in enumerate(NAMES)}
    assert set(saved["per_subject"]) == set(SUBJECTS)


def test_report_matches_sklearn_with_absent_classes():
    y = np.array([0, 0, 1, 1, 1, 2, 2, 0])
    p = np.array([0, 3, 1, 1, 0, 2, 3, 0])  # class 4 absent, class 3 only predicted
    report = classification_report_from_confusion(confusion_from_labels(y, p, K), NAMES)
    sk = _sk(y, p)
    assert report["balanced_accuracy"] == pytest.approx(sk["balanced_accuracy"])
    assert report["macro_f1"] == pytest.approx(sk["macro_f1"])
    assert report["recall"]["ANGER"] is None and report["precision"]["LOVE"] == 0.0
    lo, hi = report["recall_ci95"]["HAPPINESS"]
    assert lo < report["recall"]["HAPPINESS"] < hi


def test_tensorboard_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    handler = ClassificationTensorBoardHandler("val_balanced_accuracy", log_dir=str(tmp_path))
    ev = _evaluator(_items(), [handler])
    ev.run(global_epoch=3)  # as ValidationHandler does at trainer epoch 3
    handler.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    expected = {"val/balanced_accuracy", "val/macro_f1", "val/accuracy"}
    expected |= {f"val/recall/{c}" for c in NAMES}
    expected |= {f"val/per_subject/{s}/balanced_accuracy" for s in SUBJECTS}
    assert expected <= scalars
    assert acc.Tags()["images"] == ["val/confusion_matrix"]
    assert acc.Scalars("val/balanced_accuracy")[0].step == 3
    assert acc.Images("val/confusion_matrix")[0].height > 100


def test_errors_name_the_fix():
    with pytest.raises(ConfigError, match="recall:<class>"):
        ClassificationMetric(K, "recall:JOY", NAMES)
    with pytest.raises(ConfigError, match="class_names"):
        ClassificationMetric(K, class_names=NAMES[:3])
    with pytest.raises(DataError, match="TIE/NONE"):
        confusion_from_labels([0, 5], [0, 1], K)
    ev = _evaluator(_items(8), [MetricsJSONWriter("val_balanced_acc", "unused")])
    with pytest.raises(ConfigError, match="val_balanced_acc"):
        ev.run()
    with pytest.raises(DataError, match="subject"):
        subjects_from_batch([{"image": torch.zeros(1)}], "subject")


def test_subjects_from_batch_forms():
    from monai.data import MetaTensor

    assert subjects_from_batch({"subject": ["01", "02"]}) == ["01", "02"]
    assert subjects_from_batch([{"subject": "01"}, {"subject": "02"}]) == ["01", "02"]
    meta = [{"image": MetaTensor(torch.zeros(1), meta={"subject": "03"})}]
    assert subjects_from_batch(meta) == ["03"]


def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        items = _items()
        sampler = DistributedSampler(items, even_divisible=False, shuffle=False)
        ev = _evaluator(items, sampler=sampler)
        ev.run()
        if rank == 0:
            report = ev.state.metric_details["val_balanced_accuracy"]
            with open(out, "w") as f:
                json.dump({"metrics": ev.state.metrics, "report": report, "n_local": len(sampler)}, f)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_single_process(tmp_path):
    items = _items()  # 23 items: shards of 12 and 11
    single = _evaluator(items)
    single.run()
    out = tmp_path / "ddp.json"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2)
    ddp = json.loads(out.read_text())
    assert ddp["n_local"] == 12 and ddp["report"]["n"] == len(items)
    for name, value in single.state.metrics.items():
        assert ddp["metrics"][name] == pytest.approx(value), name
    want = single.state.metric_details["val_balanced_accuracy"]
    assert ddp["report"]["confusion_matrix"] == want["confusion_matrix"]
    for s in SUBJECTS:
        assert ddp["report"]["per_subject"][s]["n"] == want["per_subject"][s]["n"]
        assert ddp["report"]["per_subject"][s]["balanced_accuracy"] == pytest.approx(
            want["per_subject"][s]["balanced_accuracy"]
        )
