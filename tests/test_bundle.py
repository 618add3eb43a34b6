"""The emotion_3dcnn bundle through MONAI's own entry points, on tiny synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_runs import CONFIGS, EVALUATE, REPO, TRAIN, tiny_bundle

INFERENCE = str(CONFIGS / "inference.json")
MULTI_GPU = str(CONFIGS / "multi_gpu_train.json")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """One synthetic subject on a coarse grid; every override a bundle run needs."""
    bundle = tiny_bundle(tmp_path_factory.mktemp("bundle"))
    bundle["overrides"]["data#preprocessing#downsample"] = 1
    return bundle


def _cli_args(overrides: dict) -> list[str]:
    return [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()]


def _bundle(run_id: str, config_files: list[str] | str, overrides: dict, cwd: Path,
            launcher: list[str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` exactly as a user types it (in another working directory)."""
    config = config_files if isinstance(config_files, str) else str(config_files).replace(" ", "")
    cmd = (launcher or [sys.executable]) + ["-m", "monai.bundle", "run", run_id, "--config_file", config]
    env = {**os.environ, "MONAI_EMOTION_HOME": str(cwd / "home"), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd + _cli_args(overrides), cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _run(run_id: str, config_files: list[str] | str, overrides: dict, home: Path,
         monkeypatch: pytest.MonkeyPatch) -> None:
    """The same run in this process (MONAI's ``run`` function): no interpreter start-up cost."""
    from monai.bundle import run

    monkeypatch.setenv("MONAI_EMOTION_HOME", str(home / "home"))  # undone after the test
    run(run_id, config_file=config_files, logging_file=str(CONFIGS / "logging.conf"),
        meta_file=str(CONFIGS / "metadata.json"), **{k.replace("#", "::"): v for k, v in overrides.items()})


def test_train_evaluate_infer_export_round_trip(tiny, tmp_path, monkeypatch):
    out = {**tiny["overrides"], "epochs": 2, "bundle_root": str(tmp_path)}
    proc = _bundle("training", TRAIN, out, tmp_path)
    assert "best val_balanced_accuracy" in proc.stdout
    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and list(models.glob("training_state*.pt"))
    run_dir = tmp_path / "runs" / "train"
    record = json.loads((run_dir / "versions.json").read_text())
    assert record["torch"] == torch.__version__ and record["data"]["n_items"]["train"] > 0
    assert json.loads((run_dir / "config_resolved.json").read_text())["epochs"] == 2

    # TensorBoard: learning curves, per-class scalars and the confusion matrix image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars, images = set(acc.Tags()["scalars"]), set(acc.Tags()["images"])
    assert {"train_loss", "train_accuracy", "val_balanced_accuracy", "val/balanced_accuracy",
            "val/macro_f1", "val/recall/FEAR"} <= scalars
    assert "val/confusion_matrix" in images

    _run("evaluating", [TRAIN, EVALUATE], out, tmp_path, monkeypatch)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "recall", "precision", "confusion_matrix",
                "support", "chance_level"):
        assert key in metrics
    lines = (tmp_path / "eval" / "predictions.csv").read_text().splitlines()
    assert lines[0].startswith("subject,run,volume,movie_time,true_label,predicted_label,prob_HAPPINESS")
    assert len(lines) - 1 == sum(metrics["support"].values())
    assert {line.split(",")[1] for line in lines[1:]} == {"8"}  # the test split: run 8 only

    inf = {"dataset_dir": tiny["overrides"]["dataset_dir"], "bundle_root": str(tmp_path),
           "cache_dir": str(tmp_path / "inf_cache")}
    _run("inferring", INFERENCE, inf, tmp_path, monkeypatch)
    events = sorted((tmp_path / "runs" / "inference").glob("*_events.tsv"))
    assert len(events) == 8
    rows = events[0].read_text().splitlines()
    assert rows[0].split("\t")[:3] == ["onset", "duration", "trial_type"]
    assert len(rows) - 1 == 40  # every volume, labelled or not

    ts = tmp_path / "models" / "model.ts"
    subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
         "--ckpt_file", str(models / "model.pt"), "--meta_file", str(CONFIGS / "metadata.json"),
         "--config_file", INFERENCE, "--bundle_root", str(tmp_path)],
        check=True, capture_output=True, cwd=tmp_path, timeout=300,
    )
    from monai.data import load_net_with_metadata

    from monai_emotion.networks import EmotionCNN3D

    _check_properties(tiny, tmp_path)
    scripted, meta, extra = load_net_with_metadata(str(ts), more_extra_files=("inference.json",))
    assert meta["version"] and "inference.json" in extra
    shape = json.loads((models / "contract.json").read_text())["spatial_shape"]
    net = EmotionCNN3D(num_classes=5, head="flatten", spatial_shape=shape)
    net.load_state_dict(torch.load(models / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)


def test_metadata_validates_and_names_this_version(tmp_path):
    """The bundle's own metadata passes the schema; the declared shape is checked on export."""
    env = {**os.environ, "MONAI_EMOTION_HOME": str(tmp_path / "home"), "PYTHONWARNINGS": "ignore"}
    meta = str(CONFIGS / "metadata.json")
    verify = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", meta,
         "--filepath", str(REPO / "bundles" / "meta_schema.json")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert verify.returncode == 0 and "verified with no error" in verify.stdout + verify.stderr
    declared = json.loads(Path(meta).read_text())
    import monai_emotion

    assert declared["required_packages_version"]["monai-emotion"] == monai_emotion.__version__
    assert declared["version"] in declared["changelog"]


def _check_properties(tiny: dict, bundle_root: Path) -> None:
    """MONAI's property check of the train and inference workflows (needs a trained model)."""
    from monai.bundle import ConfigWorkflow

    common = {"bundle_root": str(bundle_root), "meta_file": str(CONFIGS / "metadata.json"),
              "logging_file": str(CONFIGS / "logging.conf")}
    train = ConfigWorkflow(config_file=TRAIN, workflow_type="train", **common,
                           **{k.replace("#", "::"): v for k, v in tiny["overrides"].items()},
                           output_dir=str(bundle_root / "props"))
    train.initialize()
    assert train.check_properties() == []
    infer = ConfigWorkflow(config_file=INFERENCE, workflow_type="infer", **common,
                           dataset_dir=tiny["overrides"]["dataset_dir"],
                           cache_dir=str(bundle_root / "inf_cache"),
                           output_dir=str(bundle_root / "props_inf"))
    infer.initialize()
    assert infer.check_properties() == []


def _val_metrics(folder: Path) -> dict:
    metrics = json.loads((folder / "runs" / "train" / "val_metrics.json").read_text())
    return {k: metrics[k] for k in ("epoch", "accuracy", "balanced_accuracy", "macro_f1",
                                     "confusion_matrix")}


def test_resume_equals_uninterrupted_run(tiny, tmp_path, capsys, monkeypatch):
    whole, split = tmp_path / "whole", tmp_path / "split"

    # augmentation on: its random draws must be the same after a resume
    recipe = {"augment": 0.5}

    def train(root: Path, epochs: int, **extra: str) -> None:
        overrides = {**tiny["overrides"], **recipe, "epochs": epochs, "bundle_root": str(root), **extra}
        _run("training", TRAIN, overrides, tmp_path, monkeypatch)

    train(whole, 4)
    train(split, 2)
    assert _val_metrics(split)["epoch"] == 2
    train(split, 4, resume="latest")
    assert "resuming from" in capsys.readouterr().out
    assert _val_metrics(split) == _val_metrics(whole)
    assert _val_metrics(whole)["epoch"] == 4


def test_two_process_gloo_training(tiny, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                "--nproc_per_node=2"]
    _bundle("training", [TRAIN, MULTI_GPU], {**tiny["overrides"], "epochs": 1,
                                              "bundle_root": str(tmp_path)}, tmp_path, launcher)
    models = tmp_path / "models"
    assert [p.name for p in models.glob("model.pt")] == ["model.pt"]
    assert len(list(models.glob("training_state*.pt"))) == 1
    events = list((tmp_path / "runs" / "train").glob("events.out.tfevents.*"))
    assert events and len({p.name.split(".")[-2] for p in events}) == 1  # one writer process: rank 0
