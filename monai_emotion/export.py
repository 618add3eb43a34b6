"""Model-zoo export of a trained bundle: a self-describing folder that passes the zoo's checks.

:func:`export_bundle` copies the bundle (configs, docs, license) with the model the user
trained (``model.pt`` and its contract), writes ``configs/metadata.json`` with the declared
input shape and classes **of that model**, exports TorchScript and ONNX, and runs the checks
that the MONAI model zoo's CI runs on a bundle (required files, version in the changelog,
metadata schema, ``verify_net_in_out``, TorchScript export and load), plus an ONNX Runtime
comparison with torch. Every check's outcome goes to ``export_report.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monai_emotion import __version__
from monai_emotion.contract import Contract, copy_contract, load_contract
from monai_emotion.errors import MonaiEmotionError
from monai_emotion.fileio import atomic_write_json, load_json

__all__ = ["ExportError", "export_bundle", "declared_metadata", "print_report", "REQUIRED_FILES"]

#: what the model zoo requires (or its CI reads) in a bundle folder
REQUIRED_FILES = ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md",
                  "LICENSE")
#: ONNX Runtime's logits must equal torch's to this absolute tolerance
ONNX_TOLERANCE = 1e-4


class ExportError(MonaiEmotionError):
    """A model-zoo check failed on the exported bundle."""


def declared_metadata(metadata: dict[str, Any], contract: Contract) -> dict[str, Any]:
    """``metadata`` with the network data format of the contract's model (shape, classes).

    A multi-task model's output has ``K + D`` channels, the ``K`` class logits first (which
    inference's softmax reads: ``networks.split_outputs``), then its dimensions (valence,
    arousal): all ``K + D`` are declared, named in ``channel_def``, so ``verify_net_in_out``
    and the TorchScript/ONNX checks see the network as it is.
    """
    meta = json.loads(json.dumps(metadata))
    fmt = meta["network_data_format"]
    fmt["inputs"]["image"]["spatial_shape"] = list(contract.spatial_shape)
    fmt["inputs"]["image"]["num_channels"] = int(contract.temporal_context)  # k volumes as channels
    pred = fmt["outputs"]["pred"]
    channels = [*contract.classes, *contract.dimension_names]
    pred["num_channels"] = len(channels)
    pred["channel_def"] = {str(k): name for k, name in enumerate(channels)}
    meta["label_classes"] = ", ".join(f"{k} {name}" for k, name in enumerate(contract.classes))
    meta.setdefault("required_packages_version", {})["monai-emotion"] = __version__
    return meta


def export_bundle(
    bundle_root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    ckpt_dir: str | os.PathLike | None = None,
    schema: str | os.PathLike | None = None,
    onnx: bool = True,
) -> dict[str, Any]:
    """Export the trained model of ``bundle_root`` as a model-zoo bundle folder and check it.

    Parameters
    ----------
    bundle_root
        The bundle that was trained (``configs/``, ``docs/``, ``LICENSE``).
    out
        The exported bundle folder (default ``<bundle_root>/export``); replaced if it exists.
    ckpt_dir
        Where the trained model is (default ``<bundle_root>/models``).
    schema
        The metadata schema file (default: ``meta_schema.json`` beside the bundle, the
        offline copy this project keeps; the zoo downloads the same schema).
    onnx
        Also export ONNX and compare ONNX Runtime's logits with torch's.

    Returns
    -------
    dict
        The report: ``out``, ``checks`` (name -> ``{"ok", "detail", "seconds"}``).

    Raises
    ------
    ExportError
        After writing the report, when any check failed.
    """
    root = Path(bundle_root).resolve()
    models = Path(ckpt_dir) if ckpt_dir else root / "models"
    contract = load_contract(models)
    dest = Path(out).resolve() if out else root / "export"
    if dest == root:
        raise ExportError("the export folder must not be the bundle itself", dest, fix="pass another --out")
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "models").mkdir(parents=True)
    shutil.copytree(root / "configs", dest / "configs")
    for name in ("docs", "LICENSE"):
        source = root / name
        if source.is_dir():
            shutil.copytree(source, dest / name)
        elif source.is_file():
            shutil.copy2(source, dest / name)
    shutil.copy2(models / "model.pt", dest / "models" / "model.pt")
    copy_contract(models, dest / "models")
    meta_file = dest / "configs" / "metadata.json"
    metadata = load_json(root / "configs" / "metadata.json", ExportError)
    atomic_write_json(meta_file, declared_metadata(metadata, contract), ExportError, indent=4)

    schema = Path(schema) if schema else root.parent / "meta_schema.json"
    report: dict[str, Any] = {"out": str(dest), "contract": contract.digest(), "checks": {}}
    checks: list[tuple[str, Callable[[], str]]] = [
        ("required files", lambda: _required_files(dest)),
        ("version in changelog", lambda: _version_in_changelog(meta_file)),
        ("metadata schema", lambda: _metadata_schema(meta_file, schema)),
        ("verify_net_in_out", lambda: _net_in_out(dest)),
        ("torchscript export and load", lambda: _torchscript(dest)),
    ]
    if onnx:
        checks.append(("onnx export, onnxruntime == torch", lambda: _onnx(dest)))
    for name, check in checks:
        started = time.perf_counter()
        try:
            detail, ok = check(), True
        except Exception as exc:  # every check runs and is reported, whatever fails
            detail, ok = f"{type(exc).__name__}: {exc}"[:2000], False
        report["checks"][name] = {"ok": ok, "detail": detail, "seconds": round(time.perf_counter() - started, 2)}
    atomic_write_json(dest / "export_report.json", report, ExportError)
    failed = [name for name, result in report["checks"].items() if not result["ok"]]
    if failed:
        raise ExportError(f"model-zoo check(s) failed: {', '.join(failed)}", dest / "export_report.json",
                          fix="read the details in the report; retrain or fix the configs, then export again")
    return report


def _required_files(dest: Path) -> str:
    missing = [name for name in REQUIRED_FILES if not (dest / name).is_file()]
    if missing:
        raise ExportError(f"missing {missing}")
    return f"{len(REQUIRED_FILES)} present"


def _version_in_changelog(meta_file: Path) -> str:
    meta = json.loads(meta_file.read_text())
    version = meta.get("version")
    if version not in meta.get("changelog", {}):
        raise ExportError(f"version {version!r} is not in the changelog")
    return f"version {version}"


def _quiet(call: Callable[[], Any]) -> Any:
    # MONAI's bundle scripts log their arguments at length; the report keeps the outcome
    with contextlib.redirect_stdout(io.StringIO()):
        return call()


def _metadata_schema(meta_file: Path, schema: Path) -> str:
    from monai.bundle import verify_metadata

    if not schema.is_file():
        raise ExportError("metadata schema file not found", schema)
    _quiet(lambda: verify_metadata(meta_file=str(meta_file), filepath=str(schema)))
    return f"valid against {schema.name}"


def _net_in_out(dest: Path) -> str:
    from monai.bundle import verify_net_in_out

    _quiet(lambda: verify_net_in_out(net_id="network_def", meta_file=str(dest / "configs" / "metadata.json"),
                                     config_file=str(dest / "configs" / "inference.json"),
                                     bundle_root=str(dest)))
    return "declared input shape and channels match the model"


def _reference(dest: Path) -> tuple[Any, Any, Any]:
    """(eager network with the trained weights, a random input of the declared shape, its logits)."""
    import torch

    from monai_emotion.contract import network_from_contract

    contract = load_contract(dest / "models")
    net = network_from_contract(dest / "models")
    net.load_state_dict(torch.load(dest / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    x = torch.randn(2, int(contract.temporal_context), *contract.spatial_shape,
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return net, x, net(x)


def _export_args(dest: Path, filename: str) -> dict[str, Any]:
    return {"net_id": "network_def", "filepath": str(dest / "models" / filename),
            "ckpt_file": str(dest / "models" / "model.pt"), "meta_file": str(dest / "configs" / "metadata.json"),
            "config_file": str(dest / "configs" / "inference.json"), "bundle_root": str(dest)}


def _torchscript(dest: Path) -> str:
    import torch
    from monai.bundle import ckpt_export

    _quiet(lambda: ckpt_export(**_export_args(dest, "model.ts")))
    scripted = torch.jit.load(str(dest / "models" / "model.ts"), map_location="cpu")
    _net, x, expected = _reference(dest)
    with torch.no_grad():
        diff = float((scripted(x) - expected).abs().max())
    if diff > 1e-5:
        raise ExportError(f"TorchScript logits differ from torch's by {diff:.3g}")
    return f"models/model.ts loads; max |logit difference| {diff:.2g}"


def _onnx(dest: Path) -> str:
    import numpy as np
    import onnxruntime
    from monai.bundle import onnx_export

    _net, x, expected = _reference(dest)
    _quiet(lambda: onnx_export(**_export_args(dest, "model.onnx"), use_trace=True, input_shape=list(x.shape)))
    session = onnxruntime.InferenceSession(str(dest / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = session.run(None, {name: x.numpy()})[0]
    diff = float(np.abs(logits - expected.numpy()).max())
    if diff > ONNX_TOLERANCE:
        raise ExportError(f"ONNX Runtime logits differ from torch's by {diff:.3g} (tolerance {ONNX_TOLERANCE})")
    return f"models/model.onnx; max |logit difference| {diff:.2g} (tolerance {ONNX_TOLERANCE})"


def print_report(report: dict[str, Any]) -> None:
    """One line per check: ok/FAIL, name, detail, seconds."""
    print(f"exported {report['out']}")
    for name, result in report["checks"].items():
        print(f"  {'ok  ' if result['ok'] else 'FAIL'} {name:<36} {result['detail']} ({result['seconds']} s)")
