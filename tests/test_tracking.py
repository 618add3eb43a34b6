"""MLflow tracking through MONAI's own ``--tracking`` (configs/mlflow.json, monai_emotion/tracking.py).

A two-epoch tiny training into a local SQLite store, read back with ``MlflowClient``: the
bundle's parameters, one validation balanced accuracy and one mean training loss per epoch,
the tags, and the model among the run's artifacts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from bundle_runs import CONFIGS, REPO, TRAIN, bundle_env, tiny_dataset, train_overrides

from monai_emotion.tracking import MAX_PARAM_LENGTH, flat_params

MLFLOW_SETTINGS = str(CONFIGS / "mlflow.json")


@pytest.fixture(scope="module")
def mlflow():
    """The ``tracking`` extra, or a skip; under ``CI=true`` a missing mlflow fails."""
    try:
        import mlflow
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("mlflow is not installed; CI installs the tracking extra (.ci/run)", pytrace=False)
        pytest.skip('mlflow not installed: pip install -e ".[tracking]"')
    return mlflow


def test_flat_params():
    params = flat_params({"epochs": 2, "data": {"split": {"kind": "runs", "runs": [3, 7]}, "labels": {}},
                          "long": "x" * (MAX_PARAM_LENGTH + 10)})
    assert params["epochs"] == "2"
    assert params["data.split.kind"] == "runs" and params["data.split.runs"] == "[3, 7]"
    assert params["data.labels"] == "{}"
    assert len(params["long"]) == MAX_PARAM_LENGTH


def test_training_run_is_tracked(mlflow, tmp_path_factory, tmp_path):
    data = tiny_dataset(tmp_path_factory.mktemp("tracking") / "bids")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overrides = {**train_overrides(data, tmp_path, 2), "tracking_uri": uri, "experiment_name": "tiny_study",
                 "run_name": "model-01", "tracking_tags": json.dumps({"study": "tiny_study", "model": "model-01"})}
    args = ["run", "training", "--config_file", TRAIN, "--tracking", MLFLOW_SETTINGS]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=REPO, env=bundle_env(tmp_path / "home"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny_study")
    runs = client.search_runs(experiment.experiment_id)
    assert [r.info.run_name for r in runs] == ["model-01"]  # trainer and evaluator log into one run
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["study"] == "tiny_study" and run.data.tags["model"] == "model-01"
    params = run.data.params
    assert params["epochs"] == "2" and params["batch_size"] == "8" and params["learning_rate"] == "0.001"
    assert params["data.split.kind"] == "runs" and params["network.name"] == "EmotionCNN3D"
    assert int(params["train_items"]) > 0 and params["max_epochs"] == "2"

    def history(key: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))

    for key in ("val_balanced_accuracy", "val_accuracy", "val_macro_f1", "train_loss_epoch", "train_accuracy"):
        assert history(key) == [1, 2], key
    assert len(history("train_loss")) > 2  # per iteration, as MONAI's default handler logs it
    last = json.loads((tmp_path / "runs" / "val_metrics.json").read_text())  # the bundle's own record
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_balanced_accuracy")}
    assert logged[last["epoch"]] == pytest.approx(last["value"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "contract.json", "mask.nii.gz", "val_metrics.json"} <= artifacts


def test_study_tags_each_model_run(tmp_path):
    from monai_emotion.study.bundle import CNNRunner
    from monai_emotion.study.config import parse_study

    def runner(runtime: dict) -> CNNRunner:
        study = parse_study({"name": "tiny_study", "runtime": runtime, "data": {"synthetic": {"subjects": 1}}},
                            tmp_path / "study.json")
        return CNNRunner(study, tmp_path / "models", {})

    class Spec:
        id = "single-01-fold0"

    assert runner({})._tracking(Spec()) == (None, {})  # off by default: no overrides, no settings file
    settings, overrides = runner({"mlflow": True})._tracking(Spec())
    assert settings == MLFLOW_SETTINGS
    assert overrides == {"tracking_uri": f"sqlite:///{(tmp_path / 'models' / 'mlruns.db').resolve()}",
                         "experiment_name": "tiny_study", "run_name": "single-01-fold0",
                         "tracking_tags": {"study": "tiny_study", "model": "single-01-fold0"}}
    _, overrides = runner({"mlflow": True, "mlflow_uri": "http://mlflow.lab:5000"})._tracking(Spec())
    assert overrides["tracking_uri"] == "http://mlflow.lab:5000"
