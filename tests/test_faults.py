"""Fault injection on tiny synthetic data: SIGKILL mid-cache and mid-training, a full disk.

Also the determinism of training (same seed, same metrics, same weights) and one bundle run
that fails on a user error, to see what the user sees. The reference training run is shared
by the tests of this module.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from bundle_runs import (
    EVALUATE,
    REPO,
    TRAIN,
    file_hashes,
    files_under,
    run_bundle,
    same_weights,
    start_bundle,
    tiny_dataset,
    train_overrides,
)

from monai_emotion.data.cache import prepare_cache
from monai_emotion.networks import EmotionCNN3D

EPOCHS = 4
#: what the bundle's preprocessing does (downsample 2, subject masks), on the tiny data
CACHE = {"downsample": 2, "progress": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.getbasetemp() / "tiny-synthetic")


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted training of EPOCHS epochs (it also builds the cache the others reuse)."""
    out = tmp_path_factory.mktemp("reference")
    proc = run_bundle("training", [TRAIN], train_overrides(data, out, EPOCHS), out / "home")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def wait_for(condition: Callable[[], bool], timeout: float, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(poll)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:] if proc.stderr else ""


def assert_same_training(run: Path, reference: Path) -> None:
    """Same final validation metrics, same best model, same record of it."""
    assert (run / "runs" / "val_metrics.json").read_bytes() == (
        reference / "runs" / "val_metrics.json"
    ).read_bytes()
    assert same_weights(run / "models" / "model.pt", reference / "models" / "model.pt")
    assert (run / "models" / "model.json").read_text() == (reference / "models" / "model.json").read_text()


def test_same_seed_same_metrics_and_weights(data: Path, reference: Path, tmp_path: Path) -> None:
    # its own cache: a run that builds the cache and one that reuses it (below) must agree too
    proc = run_bundle("training", [TRAIN], train_overrides(data, tmp_path, EPOCHS), tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_training(tmp_path, reference)


def test_sigkill_after_epoch_2_then_resume_equals_uninterrupted(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    overrides = train_overrides(data, tmp_path, EPOCHS, cache_dir=reference / "cache")
    models = tmp_path / "models"
    proc = start_bundle("training", [TRAIN], overrides, tmp_path / "home")
    try:
        wait_for(lambda: (models / "training_state_checkpoint_epoch=2.pt").exists()
                 or proc.poll() is not None, timeout=120)
    finally:
        kill(proc)
    assert not (models / f"training_state_checkpoint_epoch={EPOCHS}.pt").exists()
    # states are written atomically: whatever is there under a final name loads
    for state in models.glob("training_state_*.pt"):
        torch.load(state, map_location="cpu", weights_only=True)

    resumed = run_bundle("training", [TRAIN], {**overrides, "resume": "latest"}, tmp_path / "home")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert_same_training(tmp_path, reference)


_SLOW_CACHE_BUILD = textwrap.dedent(
    """
    import sys, time
    from monai_emotion.data.cache import build as cache_build
    from monai_emotion.data.cache import prepare_cache

    write = cache_build._write_frames

    def slow(writer, frames):
        time.sleep(0.1)  # a real run takes seconds to write: room for the kill to land inside one
        write(writer, frames)

    cache_build._write_frames = slow
    prepare_cache(sys.argv[1], sys.argv[2], downsample=2, progress=False)
    """
)


def comparable_cache(folder: Path) -> dict[str, object]:
    """A cache's files by relative name: bytes for frames and masks, sidecars without timings."""
    out: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if not path.is_file() or name == "cache_summary.json":  # says what this call built
            continue
        if path.suffix == ".json":
            meta = json.loads(path.read_text().replace(str(folder), "<cache>"))
            for volatile in ("created", "build_seconds"):
                meta.pop(volatile, None)
            out[name] = meta
        else:
            out[name] = path.read_bytes()
    return out


def test_sigkill_during_cache_build_then_rerun_is_complete_and_identical(
    data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CACHE_BUILD, str(data), str(out)],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)

    def mid_write() -> bool:
        done = list(out.glob("sub-*_run-*.json"))
        return (bool(done) and any(out.glob(".sub-*.npy.tmp-*"))) or proc.poll() is not None

    try:
        wait_for(mid_write, timeout=120, poll=0.01)
    finally:
        kill(proc)
    assert 1 <= len(list(out.glob("sub-*_run-*.json"))) < 8, "killed before the last run"
    assert list(out.glob(".sub-*.npy.tmp-*")), "killed while a run was being written"

    rerun = prepare_cache(data, out, **CACHE)
    assert len(rerun) == 8 and rerun.summary.built and rerun.summary.reused
    assert not [p for p in out.rglob(".*") if p.is_file()], "no temporary left behind"
    uninterrupted = tmp_path / "uninterrupted"
    prepare_cache(data, uninterrupted, **CACHE)
    assert comparable_cache(out) == comparable_cache(uninterrupted)


def run_with_file_size_limit(script: str, *args: str, limit: int = 64 * 1024) -> subprocess.CompletedProcess:
    """Run ``script`` under RLIMIT_FSIZE: writes past ``limit`` bytes fail as on a full disk."""

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if k != "MONAI_EMOTION_DEBUG"}
    return subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, env=env,
                          preexec_fn=limit_file_size, capture_output=True, text=True, timeout=120)


_CLEAN = "from monai_emotion.cli import run_with_clean_errors\n"


def test_full_disk_while_caching_is_a_clear_error_with_no_partial_file(
    data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    script = _CLEAN + textwrap.dedent(
        """
        import sys
        from monai_emotion.data.cache import prepare_cache
        run_with_clean_errors(lambda: prepare_cache(sys.argv[1], sys.argv[2], downsample=1, progress=False), [])
        """
    )
    before = file_hashes(data)
    proc = run_with_file_size_limit(script, str(data), str(out))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()[-2:]
    assert lines[0].startswith(f"error: {out / 'sub-01_run-01.npy'}: cannot write: file too large")
    assert lines[1].startswith("  fix: free disk space")
    assert "Traceback" not in proc.stderr
    assert files_under(out) == []  # no run, no mask, no temporary
    assert file_hashes(data) == before


def test_full_disk_while_saving_a_checkpoint_keeps_the_old_one(tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(4)}, model)
    before = model.read_bytes()
    script = _CLEAN + textwrap.dedent(
        """
        import sys, torch
        from monai_emotion.engine.checkpoints import save_checkpoint
        run_with_clean_errors(lambda: save_checkpoint({"w": torch.zeros(100_000)}, sys.argv[1]), [])
        """
    )
    proc = run_with_file_size_limit(script, str(model))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"error: {model}: cannot write: file too large")
    assert model.read_bytes() == before
    assert files_under(tmp_path) == ["model.pt"]


def test_bundle_run_with_a_wrong_checkpoint_prints_two_lines(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    ckpt_dir = tmp_path / "models"
    ckpt_dir.mkdir()
    torch.save(EmotionCNN3D(channels=(8, 16, 32), head="gap", spatial_shape=None).state_dict(),
               ckpt_dir / "model.pt")
    overrides = {**train_overrides(data, tmp_path, 1, cache_dir=reference / "cache"),
                 "ckpt_dir": ckpt_dir, "eval_dir": tmp_path / "eval"}
    proc = run_bundle("evaluating", [TRAIN, EVALUATE], overrides, tmp_path / "home")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    message = proc.stderr.strip().splitlines()[-2:]
    assert message[0].startswith(f"error: {ckpt_dir / 'model.pt'}: does not fit the network")
    assert message[1].startswith("  fix: build the network the checkpoint was trained with")
    assert not (tmp_path / "eval").exists()
