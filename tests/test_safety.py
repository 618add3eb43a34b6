"""Safety: checkpoints are read weights-only, bundle configs use the checked loader, no network."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from bundle_runs import CONFIGS, TRAIN, run_bundle

import monai_emotion

PACKAGE = Path(monai_emotion.__file__).parent


def _calls(tree: ast.AST, module: str, function: str) -> list[ast.Call]:
    """Calls written ``module.function(...)`` (how the package calls torch.load / np.load)."""
    return [
        node for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == function and isinstance(node.func.value, ast.Name)
        and node.func.value.id == module
    ]


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else keyword.value
    return None


def test_every_checkpoint_read_in_the_package_is_weights_only() -> None:
    loads, unsafe = 0, []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for call in _calls(tree, "torch", "load"):
            loads += 1
            if _keyword(call, "weights_only") is not True:
                unsafe.append(f"{path.relative_to(PACKAGE)}:{call.lineno} torch.load without weights_only=True")
        for call in _calls(tree, "np", "load"):
            if _keyword(call, "allow_pickle") not in (None, False):
                unsafe.append(f"{path.relative_to(PACKAGE)}:{call.lineno} np.load(allow_pickle=...)")
        unsafe += [f"{path.relative_to(PACKAGE)}:{call.lineno} pickle.{name}"
                   for name in ("load", "loads") for call in _calls(tree, "pickle", name)]
    assert loads >= 1, "the scan should see monai_emotion.engine.checkpoints' torch.load"
    assert unsafe == []


def _targets(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return found + [t for value in node.values() for t in _targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in _targets(value)]
    return []


def test_bundle_configs_load_and_save_checkpoints_through_the_package() -> None:
    targets = [t for path in sorted(CONFIGS.glob("*.json")) for t in _targets(json.loads(path.read_text()))]
    assert "monai_emotion.engine.checkpoints.CheckpointLoader" in targets
    assert "monai_emotion.engine.checkpoints.BestModelSaver" in targets
    # MONAI's own loader gives no clear errors; its saver writes in place (partial files on a kill)
    assert not {"CheckpointLoader", "CheckpointSaver", "monai.handlers.CheckpointSaver"} & set(targets)


_NO_NETWORK = """
import os, runpy, socket, sys

LOG = os.environ["NETWORK_LOG"]


def record(what):
    with open(LOG, "a") as fh:
        fh.write(what + "\\n")


connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def guarded(real):
    def call(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):  # local (unix) sockets stay allowed
            record(f"connect {address!r}")
            raise OSError("network access is blocked in this test")
        return real(self, address, *args)
    return call


def resolve(host, *args, **kwargs):
    record(f"getaddrinfo {host!r}")
    raise socket.gaierror("name resolution is blocked in this test")


socket.socket.connect = guarded(connect)
socket.socket.connect_ex = guarded(connect_ex)
socket.getaddrinfo = resolve
sys.argv = ["monai.bundle", *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


def test_demo_training_needs_no_network(tmp_path: Path, monkeypatch) -> None:
    log = tmp_path / "network.log"
    monkeypatch.setenv("NETWORK_LOG", str(log))
    # the demo path: no dataset_dir, so the synthetic demo data are generated, cached, trained on
    overrides = {"epochs": 1, "batch_size": 8, "output_dir": tmp_path / "runs",
                 "ckpt_dir": tmp_path / "models",
                 "data#demo": "{'scale': 6, 'volumes_per_run': 40}"}
    proc = run_bundle("training", [TRAIN], overrides, tmp_path / "home", launcher=["-c", _NO_NETWORK])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not log.exists(), log.read_text()
    assert (tmp_path / "models" / "model.pt").is_file()
    assert list((tmp_path / "home").glob("demo-*/.complete"))
