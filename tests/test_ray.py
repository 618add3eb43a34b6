"""The Ray executor (docs/scaling.md): one task per model on a local 2-CPU Ray cluster.

One tiny study (1 synthetic subject, the within-subject CNN and linear models of one fold,
1 epoch, 2 linear permutations) runs twice: with the local executor, and with Ray while a watcher
SIGKILLs the worker process of the CNN model as soon as that model has started writing. Ray
retries the task; the study must finish with the same ``results.csv`` and the same model
digests as the local run. Under ``CI=true`` a missing Ray fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from monai_emotion.errors import ConfigError
from monai_emotion.study.config import parse_study
from monai_emotion.study.executor import TASK_LOG
from monai_emotion.study.runner import run_study

#: the watched model: its first attempt is killed mid-training
KILLED = "within/sub-01/fold-0"


def _study(path: Path, data: Path, executor: str) -> str:
    config = {
        "name": "tiny_ray", "data": {"synthetic": {"subjects": 1, "scale": 6, "volumes_per_run": 40, "seed": 0},
                                     "synthetic_root": str(data)},
        "network": {"head": "flatten"}, "training": {"epochs": 1, "batch_size": 16},
        "preprocessing": {"downsample": 2, "mask_strategy": "group"},
        "splits": {"run_folds": 4, "folds": [0]}, "experiments": ["within"],
        "permutations": {"linear": 2, "cnn": 0}, "peers": {"decoders": []},
        "statistics": {"bootstrap": 0, "group_draws": 100, "observer_sensitivity": False},
        # local: the linear stage inline (a second process would cost its own imports)
        "runtime": {"executor": executor, "parallel_baseline": False},
    }
    path.write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="module")
def ray_module(tmp_path_factory):
    try:
        import ray
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("ray is not installed; CI=true: pip install 'monai-emotion[ray]'", pytrace=False)
        pytest.skip("ray is not installed (pip install 'monai-emotion[ray]')")
    with pytest.MonkeyPatch.context() as mp:
        # set before the cluster starts: its workers inherit it and find the driver's cache
        mp.setenv("MONAI_EMOTION_HOME", str(tmp_path_factory.mktemp("ray_home")))
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False,
                 configure_logging=False)
        try:
            yield ray
        finally:
            ray.shutdown()


def _kill_when_started(root: Path, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the worker running :data:`KILLED` once its training log exists and its record does not."""
    folder, attempts = root / "models" / "cnn" / KILLED, root / TASK_LOG / ("cnn--" + KILLED.replace("/", "__") + ".txt")
    while not stop.is_set():
        if (folder / "train.log").is_file() and attempts.is_file() and not (folder / "model.json").is_file():
            pid = int(attempts.read_text().split()[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.02)


@pytest.fixture(scope="module")
def runs(ray_module, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray_study")
    seconds = {}
    for executor in ("local", "ray"):
        stop, killed = threading.Event(), []
        root = tmp / executor
        watcher = threading.Thread(target=_kill_when_started, args=(root, stop, killed), daemon=True)
        if executor == "ray":
            watcher.start()
        start = time.perf_counter()
        try:
            run_study(_study(tmp / f"{executor}.json", tmp / "data", executor), out=root, log=lambda line: None)
        finally:
            stop.set()
        seconds[executor] = time.perf_counter() - start
    print(f"tiny study: local {seconds['local']:.1f} s, ray {seconds['ray']:.1f} s", file=sys.stderr)
    return tmp, killed


def test_ray_results_match_local(runs):
    tmp, _ = runs
    local, ray = (pd.read_csv(tmp / e / "results.csv") for e in ("local", "ray"))
    assert len(local) > 0
    pd.testing.assert_frame_equal(local, ray)
    digests = {json.loads((tmp / e / "models" / "cnn" / KILLED / "model.json").read_text())["digest"]
               for e in ("local", "ray")}
    assert len(digests) == 1  # runtime keys are not in the model digests
    null = {e: pd.read_csv(tmp / e / "permutations_linear.csv") for e in ("local", "ray")}
    pd.testing.assert_frame_equal(null["local"], null["ray"])
    assert not (tmp / "ray" / "permutations_linear.parts" / "1.csv").exists()


def test_killed_worker_is_retried(runs):
    tmp, killed = runs
    assert len(killed) == 1, "the watcher never saw the model start training"
    attempts = (tmp / "ray" / TASK_LOG / ("cnn--" + KILLED.replace("/", "__") + ".txt")).read_text().splitlines()
    pids = [int(line.split()[1]) for line in attempts]
    assert len(pids) == 2 and pids[0] == killed[0] and pids[1] != killed[0]
    assert (tmp / "ray" / "models" / "cnn" / KILLED / "model.json").is_file()


def test_finished_models_are_not_resubmitted(runs):
    from monai_emotion.study.config import load_study
    from monai_emotion.study.context import prepare_context
    from monai_emotion.study.executor import _ray_tasks

    tmp, _ = runs
    ctx = prepare_context(load_study(tmp / "ray.json"), tmp / "ray", log=lambda line: None)
    assert _ray_tasks(ctx, None, force=False) == []
    assert len(_ray_tasks(ctx, None, force=True)) == 2  # the CNN and the linear model (permutations are stored)


def test_task_error_is_raised_as_the_user_error(ray_module):
    from monai_emotion.study.executor import _gather

    @ray_module.remote(max_retries=0)
    def fails():
        raise ConfigError("bad setting", "study.json", fix="correct it")

    ref = fails.remote()
    with pytest.raises(ConfigError, match="bad setting") as err:
        _gather(ray_module, {ref: ("cnn", "model")}, log=lambda line: None)
    assert type(err.value) is ConfigError  # not Ray's wrapper around it


def test_runtime_settings(tmp_path, monkeypatch):
    def runtime(**given):
        return parse_study({"data": {"synthetic": {"subjects": 1}}, "runtime": given}, tmp_path / "s.json").runtime

    assert runtime().executor == "local"
    ray = runtime(executor="ray", ray_address="auto", ray_cnn={"num_gpus": 0.25}, ray_linear={"memory": 2**30})
    assert ray.ray_cnn.options(cluster_gpus=1) == {"num_cpus": 1.0, "num_gpus": 0.25}
    assert runtime().ray_cnn.options(cluster_gpus=2)["num_gpus"] == 1.0  # default: one GPU where there are any
    assert runtime().ray_cnn.options(cluster_gpus=0)["num_gpus"] == 0.0
    assert ray.ray_linear.options(cluster_gpus=1) == {"num_cpus": 1.0, "num_gpus": 0.0, "memory": 2**30}
    for bad, match in (({"executor": "dask"}, "executor"), ({"ray_cnn": {"gpus": 1}}, "ray_cnn"),
                       ({"ray_linear": {"num_cpus": -1}}, "num_cpus")):
        with pytest.raises(ConfigError, match=match):
            runtime(**bad)
    from monai_emotion.study import executor

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"monai-emotion\[ray\]"):
        executor._ray(None)
