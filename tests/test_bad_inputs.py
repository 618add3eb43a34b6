"""Catalogue of broken inputs: each must stop with a clear error that names the file.

Every case builds a broken input in a temporary folder and runs the entry point a user
would run on it (the ``labels`` command, the cache build, the bundle's experiment
preparation, config parsing, the bundle's checkpoint loader). Each case asserts

- the error type (found in the exception chain, as the command line and the bundle
  excepthook find it),
- that the one or two printed lines name the file (and carry a fix),
- that nothing was written into the output folder,
- that the input files are byte-for-byte unchanged.

The observer-file texts of ``test_annotations.BAD_FILES`` are reused here through the
``labels`` command; the cache helpers come from ``test_cache``, the NIfTI writers from ``nifti_helpers``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_runs import TRAIN, file_hashes, files_under
from ignite.engine import Engine
from nifti_helpers import AFFINE, SHAPE, T, save_nifti
from test_annotations import BAD_FILES, HEADER
from test_cache import build, write_run

from monai_emotion import cli
from monai_emotion.data.annotations import Episode, write_observer_file
from monai_emotion.data.cache import CacheIndex, attach_cache
from monai_emotion.data.studyforrest import SEGMENT_STARTS, bold_path
from monai_emotion.engine.checkpoints import CheckpointLoader
from monai_emotion.engine.resume import attach_training_state
from monai_emotion.errors import (
    AnnotationError,
    CacheError,
    CheckpointError,
    ConfigError,
    DataError,
    ImageError,
    LayoutError,
    MonaiEmotionError,
    find_user_error,
    format_user_error,
)
from monai_emotion.experiment import prepare_experiment
from monai_emotion.networks import EmotionCNN3D


@dataclass
class Scenario:
    """A broken input, ready to run."""

    run: Callable[[], object]
    names: Path | str  # what the message must name
    inputs: tuple[Path, ...]  # must be unchanged afterwards
    output: Path  # must hold no file afterwards
    config_files: tuple[str, ...] = ()  # what a bundle run would name for path-less errors
    also: str = ""  # a further locator the message must hold (a volume)


#: case name -> (expected error type, builder of the scenario in a temporary folder)
CASES: dict[str, tuple[type[MonaiEmotionError], Callable[[Path], Scenario]]] = {}


def case(name: str, error: type[MonaiEmotionError]) -> Callable:
    def register(builder: Callable[[Path], Scenario]) -> Callable[[Path], Scenario]:
        CASES[name] = (error, builder)
        return builder

    return register


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # default cache folders must land in the test's folder, never in ~/.cache
    monkeypatch.setenv("MONAI_EMOTION_HOME", str(tmp_path / "home"))


# ---- annotations, through the `labels` command (python -m monai_emotion labels --out ...)


def observer_set(folder: Path) -> Path:
    """Three observers who mark FEAR over the whole movie (two also HAPPINESS): every volume FEAR."""
    whole = (0.0, SEGMENT_STARTS[-1] + 1000.0)
    for k in (1, 2, 3):
        episodes = [Episode(*whole, "FORREST", "HIGH", "NEG", "SELF", ("FEAR",))]
        if k < 3:
            episodes.append(Episode(*whole, "JENNY", "LOW", "POS", "OTHER", ("HAPPINESS",)))
        write_observer_file(folder / f"av1o0{k}.csv", episodes)
    return folder


def labels_scenario(tmp: Path, broken: str | bytes | None = None, emotion_map: Path | None = None) -> Scenario:
    folder = observer_set(tmp / "annotations")
    target = folder / "av1o02.csv"
    if isinstance(broken, bytes):
        target.write_bytes(broken)
    elif broken is not None:
        target.write_text(broken)
    out = tmp / "labels_out"
    map_arg = str(emotion_map) if emotion_map else None
    inputs = (folder,) + ((emotion_map,) if emotion_map else ())
    return Scenario(lambda: cli.labels(str(folder), out=str(out), emotion_map=map_arg),
                    emotion_map or target, inputs, out)


def _register_observer_text(name: str, text: str | bytes) -> None:
    case(f"annotation_{name}", AnnotationError)(lambda tmp: labels_scenario(tmp, text))


for _name, (_text, _phrase, _line) in BAD_FILES.items():
    _register_observer_text(_name, _text)
_register_observer_text("non_finite_time", HEADER + "\n1,inf,X,LOW,POS,SELF,FEAR,,\n")
_register_observer_text("not_text", b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary")


@case("annotation_files_misnamed", AnnotationError)
def _misnamed(tmp: Path) -> Scenario:
    scenario = labels_scenario(tmp)
    folder = scenario.inputs[0]
    observers = sorted(folder.glob("av1o*.csv"))
    assert len(observers) == 3, observers  # what observer_set wrote: the case renames them all
    for path in observers:
        path.rename(path.with_name(path.stem.replace("av1o", "observer") + ".csv"))
    scenario.names = folder
    return scenario


@case("emotion_map_unknown_class", ConfigError)
def _map_unknown_class(tmp: Path) -> Scenario:
    path = tmp / "map.json"
    path.write_text(json.dumps({"classes": ["POS", "NEG"], "map": {"FEAR": "NEG", "HAPPINESS": "JOY"}}))
    return labels_scenario(tmp, emotion_map=path)


@case("emotion_map_not_json", ConfigError)
def _map_not_json(tmp: Path) -> Scenario:
    path = tmp / "map.json"
    path.write_text('{"classes": ["POS", "NEG"],\n "map": {"FEAR": "NEG",}}\n')
    return labels_scenario(tmp, emotion_map=path)


# ---- images, through the cache build (prepare_cache)


def bids_tree(tmp: Path, n_runs: int = 2) -> Path:
    root = tmp / "bids"
    for run in range(1, n_runs + 1):
        write_run(root, "01", run, seed=run)
    return root


def rewrite(path: Path, *, data: np.ndarray | None = None, affine: np.ndarray | None = None,
            tr: float | None = None) -> None:
    """Save ``path`` again with other voxels, affine or TR (what a botched conversion does)."""
    img = nib.load(str(path))
    save_nifti(path, np.asarray(img.dataobj) if data is None else data,
               img.affine if affine is None else affine, tr=tr, units=False, header=img.header)


def cache_scenario(tmp: Path, broken: Path | str, **kwargs: object) -> Scenario:
    root = tmp / "bids"
    out = tmp / "cache"
    inputs = (root,) + tuple(p for p in kwargs.values() if isinstance(p, Path))
    # expected volumes as built: a run with more is refused, as a 452-volume run 1 would be
    return Scenario(lambda: build(root, out, expected_volumes=(T, T), **kwargs), broken, inputs, out)


def broken_run(tmp: Path, run: int = 1) -> Path:
    """The tree, and the path of the run a case breaks."""
    return bold_path(bids_tree(tmp), "01", run)


@case("image_3d_not_4d", ImageError)
def _image_3d(tmp: Path) -> Scenario:
    path = broken_run(tmp)
    save_nifti(path, np.ones(SHAPE, np.float32), AFFINE)
    return cache_scenario(tmp, path)


@case("image_truncated_gzip", ImageError)
def _image_truncated(tmp: Path) -> Scenario:
    path = broken_run(tmp)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    return cache_scenario(tmp, path)


@case("image_not_nifti", ImageError)
def _image_garbage(tmp: Path) -> Scenario:
    path = broken_run(tmp)
    path.write_bytes(b"this is not a NIfTI file at all\n" * 50)
    return cache_scenario(tmp, path)


def _image_with(tmp: Path, value: float) -> Scenario:
    path = broken_run(tmp)
    data = np.asarray(nib.load(str(path)).dataobj).copy()
    data[8, 9, 5, T - 5] = value  # after the volumes the mask is computed from
    rewrite(path, data=data)
    scenario = cache_scenario(tmp, path)
    scenario.also = f"volume {T - 5}"
    return scenario


case("image_nan_voxel", ImageError)(lambda tmp: _image_with(tmp, np.nan))
case("image_inf_voxel", ImageError)(lambda tmp: _image_with(tmp, np.inf))


@case("image_wrong_tr_header", ImageError)
def _image_tr(tmp: Path) -> Scenario:
    path = broken_run(tmp)
    rewrite(path, tr=2.5)
    return cache_scenario(tmp, path)


@case("image_sidecar_tr_disagrees", ImageError)
def _image_sidecar(tmp: Path) -> Scenario:
    path = broken_run(tmp)
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text('{"RepetitionTime": 1.0}\n')
    return cache_scenario(tmp, path)


@case("image_more_volumes_than_the_run", ImageError)
def _image_long(tmp: Path) -> Scenario:
    root = bids_tree(tmp)
    path = write_run(root, "01", 1, seed=1, n=T + 6)
    return cache_scenario(tmp, path)


@case("image_orientation_differs_from_mask", ImageError)
def _image_flipped(tmp: Path) -> Scenario:
    path = broken_run(tmp, run=2)
    flipped = AFFINE.copy()
    flipped[0, 0] = -flipped[0, 0]  # x runs right-to-left: LAS instead of RAS
    rewrite(path, affine=flipped)
    return cache_scenario(tmp, path)


@case("image_voxel_size_differs_from_mask", ImageError)
def _image_voxels(tmp: Path) -> Scenario:
    path = broken_run(tmp, run=2)
    rewrite(path, affine=np.diag([1.4, 1.4, 1.4, 1.0]) @ np.diag([1 / 1.2] * 3 + [1]) @ AFFINE)
    return cache_scenario(tmp, path)


def _user_mask(tmp: Path, data: np.ndarray, affine: np.ndarray) -> Scenario:
    bids_tree(tmp)
    mask = tmp / "mask.nii.gz"
    save_nifti(mask, data.astype(np.uint8), affine)
    return cache_scenario(tmp, mask, mask=mask)


@case("mask_orientation_differs", ImageError)
def _mask_flipped(tmp: Path) -> Scenario:
    return _user_mask(tmp, np.ones(SHAPE), AFFINE @ np.diag([-1.0, 1.0, 1.0, 1.0]))


@case("mask_wrong_shape", ImageError)
def _mask_shape(tmp: Path) -> Scenario:
    return _user_mask(tmp, np.ones((SHAPE[0] // 2, *SHAPE[1:])), AFFINE)


# ---- a built cache, used after a hand copy went wrong


@case("cache_frames_truncated", CacheError)
def _cache_truncated(tmp: Path) -> Scenario:
    cache = tmp / "cache"
    npy = Path(build(bids_tree(tmp), cache)[("01", 1)].path)
    npy.write_bytes(npy.read_bytes()[:-1000])
    return Scenario(lambda: CacheIndex.load(cache), npy, (cache,), tmp / "out")


@case("run_shorter_than_its_labels", DataError)
def _cache_short(tmp: Path) -> Scenario:
    root = bids_tree(tmp)
    cache = tmp / "cache"
    index = build(root, cache)
    source = bold_path(root, "01", 2)
    # a data list made from a longer copy of run 2
    items = [{"image": str(source), "frame": T + 3, "label": 2, "subject": "01", "run": 2}]
    return Scenario(lambda: attach_cache(items, index), source, (root, cache), tmp / "out")


# ---- BIDS layout and bundle configs, through the bundle's experiment preparation


def experiment_scenario(tmp: Path, names: Path | str | None = None, **kwargs: object) -> Scenario:
    root = tmp / "bids"
    if not root.exists():
        bids_tree(tmp)
    annotations = observer_set(tmp / "annotations")
    out = tmp / "cache"
    options = {"dataset_dir": str(root), "annotations_dir": str(annotations), "cache_dir": str(out),
               "progress": False, "preprocessing": {"mask_options": {"opening": 1}}, **kwargs}
    return Scenario(lambda: prepare_experiment(**options), names or TRAIN, (root, annotations), out,
                    config_files=(TRAIN,))


@case("dataset_dir_missing", LayoutError)
def _no_dataset(tmp: Path) -> Scenario:
    return experiment_scenario(tmp, tmp / "no-such-dataset", dataset_dir=str(tmp / "no-such-dataset"))


@case("subject_missing", LayoutError)
def _no_subject(tmp: Path) -> Scenario:
    return experiment_scenario(tmp, tmp / "bids", subjects=["01", "02"])


@case("run_missing", LayoutError)
def _no_run(tmp: Path) -> Scenario:
    return experiment_scenario(tmp, bold_path(tmp / "bids", "01", 3), runs=[1, 2, 3])


@case("duplicate_subject_folders", LayoutError)
def _dup_subject(tmp: Path) -> Scenario:
    root = bids_tree(tmp)
    copy = root / "derivatives" / "non-linear_anatomical_alignment" / "sub-1"
    copy.mkdir(parents=True)
    return experiment_scenario(tmp, copy)


@case("duplicate_runs", LayoutError)
def _dup_runs(tmp: Path) -> Scenario:
    root = bids_tree(tmp)
    run = bold_path(root, "01", 1)
    twin = run.with_name(run.name.replace("_bold", "_rec-copy_bold"))
    twin.write_bytes(run.read_bytes())
    return experiment_scenario(tmp, run, space="derivatives/*/sub-*/*/func/*_bold.nii.gz")


@case("config_num_classes_wrong", ConfigError)
def _classes_count(tmp: Path) -> Scenario:
    return experiment_scenario(tmp, num_classes=4)


@case("config_class_names_reordered", ConfigError)
def _classes_order(tmp: Path) -> Scenario:
    return experiment_scenario(tmp, class_names=["SADNESS", "HAPPINESS", "FEAR", "LOVE", "ANGER"])


@case("config_split_run_not_in_data", ConfigError)
def _split_runs(tmp: Path) -> Scenario:
    return experiment_scenario(tmp, split={"kind": "runs", "validate_runs": [7], "test_runs": [8]})


@case("config_unknown_split_kind", ConfigError)
def _split_kind(tmp: Path) -> Scenario:
    return experiment_scenario(tmp, split={"kind": "random"})


@case("config_threshold_out_of_range", ConfigError)
def _threshold(tmp: Path) -> Scenario:
    return experiment_scenario(tmp, threshold=1.5)


@case("config_annotations_dir_missing", ConfigError)
def _no_annotations(tmp: Path) -> Scenario:
    return experiment_scenario(tmp, annotations_dir="")


@case("config_unknown_network", ConfigError)
def _unknown_network(tmp: Path) -> Scenario:
    from monai.bundle import ConfigParser

    override = tmp / "network.json"
    override.write_text(json.dumps({"network_def": {
        "_target_": "monai_emotion.networks.build_network", "name": "ResNet999", "num_classes": 5}}))
    parser = ConfigParser()
    parser.read_config([TRAIN, str(override)])
    return Scenario(lambda: parser.get_parsed_content("network_def"), override, (override,),
                    tmp / "out", config_files=(TRAIN, str(override)))


# ---- checkpoints, through the bundle's CheckpointLoader (evaluate.json, inference.json)


def small_net(**kwargs: object) -> EmotionCNN3D:
    return EmotionCNN3D(head="gap", spatial_shape=None, **{"channels": (4, 8, 8), **kwargs})


def checkpoint_scenario(tmp: Path, write: Callable[[Path], None]) -> Scenario:
    path = tmp / "models" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
    net = small_net()
    return Scenario(lambda: CheckpointLoader(str(path), {"model": net}), path, (path.parent,), tmp / "out")


def _saved(net: torch.nn.Module) -> Callable[[Path], None]:
    return lambda path: torch.save(net.state_dict(), path)


def checkpoint_case(name: str, write: Callable[[Path], None], also: str = "") -> None:
    """Register a checkpoint case whose message must also say ``also`` (the key, shape, ...)."""

    def make(tmp: Path) -> Scenario:
        scenario = checkpoint_scenario(tmp, write)
        scenario.also = also
        return scenario

    case(name, CheckpointError)(make)


checkpoint_case("checkpoint_wrong_architecture", _saved(small_net(channels=(8, 16, 32))),
                "encoder.0.weight is (8, 1, 3, 3, 3) in the file, (4, 1, 3, 3, 3) in the network")
checkpoint_case("checkpoint_wrong_class_count", _saved(small_net(num_classes=3)),
                "classifier.weight is (3, 128) in the file, (5, 128) in the network")


def _truncated(path: Path) -> None:
    torch.save(small_net().state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


checkpoint_case("checkpoint_truncated", _truncated, "truncated or corrupt")
checkpoint_case("checkpoint_not_a_checkpoint", lambda path: path.write_text("weights: see mail\n"),
                "not a PyTorch checkpoint")


class _Payload:
    """Stands for arbitrary code in a pickle: weights_only=True must refuse it."""

    def __reduce__(self) -> tuple:
        return (print, ("this would have run",))


checkpoint_case("checkpoint_pickles_python_objects",
                lambda path: torch.save({"model": _Payload()}, path), "refused")
checkpoint_case("checkpoint_missing", lambda path: None, "not found")


def resume_scenario(tmp: Path, write: Callable[[Path, dict], None]) -> Scenario:
    ckpt_dir = tmp / "models"
    ckpt_dir.mkdir()
    net = small_net()
    objects = {"model": net, "optimizer": torch.optim.Adam(net.parameters())}
    state = ckpt_dir / "training_state_checkpoint_epoch=3.pt"
    write(state, objects)
    trainer = Engine(lambda engine, batch: None)
    return Scenario(lambda: attach_training_state(trainer, objects, ckpt_dir, "latest"), state,
                    (ckpt_dir,), tmp / "runs")


@case("resume_state_truncated", CheckpointError)
def _resume_truncated(tmp: Path) -> Scenario:
    def write(path: Path, objects: dict) -> None:
        torch.save({k: v.state_dict() for k, v in objects.items()}, path)
        path.write_bytes(path.read_bytes()[:-200])

    return resume_scenario(tmp, write)


@case("resume_from_weights_only_file", CheckpointError)
def _resume_model_pt(tmp: Path) -> Scenario:
    return resume_scenario(tmp, lambda path, objects: torch.save(objects["model"].state_dict(), path))


# ---- the tests


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_stops_with_a_clear_error(name: str, tmp_path: Path) -> None:
    expected, make = CASES[name]
    scenario = make(tmp_path)
    before = file_hashes(*scenario.inputs)
    with pytest.raises(Exception) as info:  # noqa: B017 - the type is checked in the chain below
        scenario.run()
    error = find_user_error(info.value)
    assert isinstance(error, expected), f"{type(info.value).__name__}: {info.value}"
    message = format_user_error(info.value, scenario.config_files)
    assert str(scenario.names) in message and scenario.also in message, message
    assert "fix:" in message and len(message.splitlines()) <= 2, message
    assert files_under(scenario.output) == []
    assert file_hashes(*scenario.inputs) == before


def test_catalogue_covers_every_kind_of_input() -> None:
    kinds = {error for error, _ in CASES.values()}
    assert len(CASES) >= 25
    assert {AnnotationError, ImageError, LayoutError, ConfigError, CheckpointError, CacheError} <= kinds


def test_command_line_prints_two_lines_and_exits_2(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MONAI_EMOTION_DEBUG", "0")  # restored after `--debug` sets it
    scenario = labels_scenario(tmp_path, BAD_FILES["unknown_token"][0])
    folder = scenario.inputs[0]
    monkeypatch.setattr(sys, "argv", ["monai-emotion", "labels", "--annotations", str(folder)])
    with pytest.raises(SystemExit) as info:
        cli.main()
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 2
    assert str(scenario.names) in err and "Traceback" not in err
    monkeypatch.setattr(sys, "argv", ["monai-emotion", "labels", "--annotations", str(folder), "--debug"])
    with pytest.raises(AnnotationError):
        cli.main()


_WRAPPED = """
import monai_emotion.runtime
from monai_emotion.errors import {error}
monai_emotion.runtime.install_clean_errors()  # a bundle config's first initialize step
try:
    raise {error}("the thing is broken", {path!r}, fix="mend it")
except Exception as exc:
    raise RuntimeError("Failed to instantiate component 'x'") from exc
"""


def test_import_has_no_side_effects() -> None:
    """``import monai_emotion`` leaves the host's excepthook and log-record factory alone."""
    script = ("import sys, logging; hook, factory = sys.excepthook, logging.getLogRecordFactory(); "
              "import monai_emotion, monai_emotion.experiment, monai_emotion.engine.handlers; "
              "print(sys.excepthook is hook, logging.getLogRecordFactory() is factory)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=_clean_env())
    assert proc.stdout.split() == ["True", "True"], proc.stderr


@pytest.mark.parametrize("debug", [False, True])
def test_excepthook_shortens_wrapped_user_errors(debug: bool, tmp_path: Path) -> None:
    """What a bundle run shows: MONAI's RuntimeError around our error, argv naming the config."""
    script = _WRAPPED.format(error="ConfigError", path=None)
    env = {"MONAI_EMOTION_DEBUG": "1"} if debug else {}
    proc = subprocess.run(
        [sys.executable, "-c", script, "run", "--config_file", "configs/train.json"],
        capture_output=True, text=True, timeout=60, env={**_clean_env(), **env},
    )
    assert proc.returncode == 1
    if debug:
        assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr
    else:
        assert proc.stderr.splitlines() == [
            "error: configs/train.json: the thing is broken", "  fix: mend it"]


def test_excepthook_leaves_other_errors_alone() -> None:
    proc = subprocess.run([sys.executable, "-c", "import monai_emotion; 1 / 0"], capture_output=True,
                          text=True, timeout=60, env=_clean_env())
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "MONAI_EMOTION_DEBUG"}


def test_logged_user_errors_keep_the_message_not_the_traceback(caplog, monkeypatch) -> None:
    """Engine handlers log an exception before re-raising it: no traceback for ours."""
    monkeypatch.delenv("MONAI_EMOTION_DEBUG", raising=False)
    logger = logging.getLogger("monai_emotion.test.engine")
    for error, traceback_kept in ((ConfigError("bad value", "x.json", fix="mend"), False),
                                  (ZeroDivisionError("division by zero"), True)):
        try:
            raise RuntimeError("Failed to instantiate") from error
        except RuntimeError:
            logger.exception("Exception: %s", error)
        assert (caplog.records[-1].exc_info is not None) == traceback_kept
