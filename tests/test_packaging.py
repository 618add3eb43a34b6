"""Packaging: every package the library and its tools import is declared in setup.cfg."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("monai_emotion", "tools")


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement line (``scikit-learn>=1.3`` -> ``scikit_learn``)."""
    return re.sub(r"[-_.]+", "_", re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]).lower()


def _requirements(text: str) -> set[str]:
    # one requirement a line; "%(test)s" lines include another extra, counted there
    return {_name(ln) for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("%(")}


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "setup.cfg")
    extras = {key: _requirements(value) for key, value in cfg["options.extras_require"].items()}
    return _requirements(cfg["options"]["install_requires"]), extras


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """Third-party top-level modules -> [(file:line, imported at module level)]."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for folder in SOURCES:
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            top = {id(node) for node in tree.body}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    module = name.split(".")[0]
                    if module in sys.stdlib_module_names or module == "monai_emotion":
                        continue
                    where = f"{path.relative_to(REPO)}:{node.lineno}"
                    found.setdefault(module, []).append((where, id(node) in top))
    return found


def _distributions(module: str, installed: dict[str, list[str]]) -> set[str]:
    # installed: what the module's files belong to (sklearn -> scikit-learn); else its own name
    return {_name(d) for d in installed.get(module, [module])}


def test_every_imported_package_is_declared() -> None:
    required, extras = _declared()
    optional = set().union(*extras.values())
    found = _imports()
    installed = packages_distributions()
    assert {"torch", "monai", "numpy", "scipy", "pandas", "threadpoolctl"} <= set(found)
    missing, not_required = [], []
    for module, places in sorted(found.items()):
        names = _distributions(module, installed)
        if not names & (required | optional):
            missing.append(f"{module} ({places[0][0]})")
        elif any(at_top for _, at_top in places) and not names & required:
            not_required.append(f"{module} ({next(w for w, t in places if t)}): imported on module load")
    assert missing == [], "add to setup.cfg install_requires (or an extra if optional)"
    assert not_required == [], "an extra may only hold packages imported inside functions"


def test_export_extra_and_ci_install_it() -> None:
    _required, extras = _declared()
    assert {"onnx", "onnxruntime", "onnxscript"} <= extras["export"]
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[test,export]"' in ci
