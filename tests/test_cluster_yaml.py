"""ray-cluster.yaml: valid for the Ray cluster launcher, a CPU head and autoscaling GPU workers."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")
ray_autoscaler = pytest.importorskip("ray.autoscaler")

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "ray-cluster.yaml"
SCHEMA = Path(ray_autoscaler.__file__).parent / "ray-schema.json"
GPU_INSTANCE_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3", "p4d", "p5")


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    assert SCHEMA.is_file(), f"the ray package ships no autoscaler schema at {SCHEMA}"
    return json.loads(SCHEMA.read_text())


def test_config_matches_the_autoscaler_schema(config, schema):
    jsonschema.validate(config, schema)


def test_the_schema_check_catches_mistakes(config, schema):
    """The validation above is not vacuous: a typo'd key or a wrong type is rejected."""
    typo = copy.deepcopy(config)
    typo["available_node_types"]["worker.gpu"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, schema)
    wrong_type = copy.deepcopy(config)
    wrong_type["max_workers"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong_type, schema)


def test_launcher_accepts_the_config_after_filling_defaults(config):
    """What `ray up` does before launching: merge the provider defaults, then validate."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    prepared = util.prepare_config(copy.deepcopy(config))
    util.validate_config(prepared)
    assert prepared["head_node_type"] == "head.cpu"


def test_cpu_head_and_autoscaling_gpu_workers(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(GPU_INSTANCE_FAMILIES)
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    gpu = [t for t in workers if t["node_config"]["InstanceType"].split(".")[0] in GPU_INSTANCE_FAMILIES
           or t["resources"].get("GPU", 0) > 0]
    assert gpu, "no GPU worker node type"
    for t in gpu:
        assert 0 <= t["min_workers"] < t["max_workers"] <= config["max_workers"]  # room to scale


def test_every_node_installs_torch_then_the_package(config):
    commands = config["setup_commands"]  # run on head and workers
    torch_at = next(i for i, c in enumerate(commands) if "pip install" in c and "torch" in c)
    package_at = next(i for i, c in enumerate(commands) if "pip install" in c and ("-e " in c or ".whl" in c))
    assert torch_at < package_at, "torch must be installed before the package (pins the build)"
    mounted = config["file_mounts"]
    assert any(f"-e {remote}" in commands[package_at] for remote in mounted), "the package installed is not the synced one"
    assert not config["available_node_types"]["worker.gpu"].get("worker_setup_commands"), \
        "a node-type setup list would replace the common setup_commands on the workers"


def test_gpu_nodes_install_the_cuda_build_of_the_pinned_torch(config):
    """The documented GPU-node install line is the one the cluster runs: the CUDA build, from the
    PyTorch index, of the torch version pyproject.toml pins (issue 15, item 2)."""
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    version = next(re.fullmatch(r"torch==(\S+)", p).group(1) for p in pins if p.startswith("torch=="))
    line = next(c for c in config["setup_commands"] if "pip install" in c and "torch" in c)
    assert f"torch=={version} " in line
    index = re.search(r"--index-url (https://download\.pytorch\.org/whl/cu\d+)\b", line)
    assert index, f"not the CUDA build from the PyTorch index: {line}"
    documented = f"pip install torch=={version} --index-url {index.group(1)}"
    for doc in ("README.md", "docs/CLUSTER.md"):
        assert documented in (REPO / doc).read_text(), f"{doc} does not give the install line {documented!r}"
