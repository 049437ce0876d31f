"""Packaging: the declared dependencies match the imports, the default configs are package data.

The wheel itself is built, installed into a fresh venv and run by `.ci/wheel_check.sh` (CI).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from lipsync.config import CONFIG_DIR, CONFIG_FILES

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("lipsync", "lipsync_cli", "cluster", "jobs")
FIRST_PARTY = {"lipsync", "lipsync_cli", "cluster", "jobs"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return {_normal(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in reqs}


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a `try:` whose handlers catch ImportError (an optional import)."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.Try) and node in parent.body:
            for handler in parent.handlers:
                names = ast.unparse(handler.type) if handler.type is not None else "ImportError"
                if "ImportError" in names or "ModuleNotFoundError" in names:
                    return True
        node = parent
    return False


def _third_party_imports() -> dict[str, str]:
    """Top-level module -> first file that imports it unguarded."""
    local = {p.stem for d in SOURCES for p in (REPO / d).rglob("*.py")}
    found: dict[str, str] = {}
    for directory in SOURCES:
        for path in sorted((REPO / directory).rglob("*.py")):
            tree = ast.parse(path.read_text())
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top in FIRST_PARTY or top in local:
                        continue
                    if not _guarded(node, parents):
                        found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_imported_distribution_is_declared():
    declared = _declared()
    owners = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(_third_party_imports().items()):
        dists = {_normal(d) for d in owners.get(module, [])}
        assert dists, f"{module} (imported in {where}) is not installed: which distribution provides it?"
        if not dists & declared:
            missing.append(f"{module} ({where}) from {sorted(dists)}")
    assert not missing, "imported but not declared in pyproject.toml: " + "; ".join(missing)


def test_the_check_sees_known_imports():
    """Not vacuous: the scan finds imports the library makes (cv2, torch, ...)."""
    found = _third_party_imports()
    assert {"cv2", "torch", "mediapipe", "yaml", "fsspec"} <= set(found)
    assert not {"scipy", "librosa"} & set(found)  # the audio front end is numpy (tests/test_audio.py)
    assert "botocore" not in found  # imported inside try/except ImportError only


def test_cv2_is_the_opencv_mediapipe_depends_on():
    owners = {_normal(d) for d in importlib.metadata.packages_distributions()["cv2"]}
    assert owners == {"opencv-contrib-python"}  # one cv2 only: no opencv-python beside it
    mediapipe_needs = {_normal(re.match(r"[A-Za-z0-9._-]+", r).group(0))
                       for r in importlib.metadata.requires("mediapipe") or []}
    assert "opencv-contrib-python" in mediapipe_needs


def test_default_configs_are_package_data():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "configs/*.yaml" in project["tool"]["setuptools"]["package-data"]["lipsync"]
    assert Path(str(CONFIG_DIR)).resolve() == (REPO / "lipsync" / "configs").resolve()
    for name in [*CONFIG_FILES.values(), "models"]:
        assert (CONFIG_DIR / f"{name}.yaml").is_file(), name
    assert not list(REPO.glob("configs/*.yaml"))  # one home for the defaults
